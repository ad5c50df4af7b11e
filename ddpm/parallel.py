"""Data parallelism over torch.distributed: DDP replicates the UNet on every rank, FSDP2
(`fully_shard`) shards its parameters, gradients and optimizer state across the ranks.

The process group comes from the launcher (torchrun sets RANK, WORLD_SIZE, MASTER_ADDR); gloo on
the CPU, NCCL on CUDA with one card per rank."""

from __future__ import annotations

import torch
from torch import nn

PARALLEL = ("none", "ddp", "fsdp")


def shard(model: nn.Module, mesh=None) -> nn.Module:
    """FSDP2: each ResBlock and attention block is its own unit (its parameters are gathered
    just before it runs and freed after), then the model, which holds the rest."""
    from torch.distributed.fsdp import fully_shard

    from ddpm.unet import AttentionBlock, ResBlock

    for module in model.modules():
        if isinstance(module, (ResBlock, AttentionBlock)):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def replicate(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP: a full copy per rank; gradients are averaged across ranks in buckets during
    backward."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def wrap(model: nn.Module, parallel: str, device: torch.device, mesh=None) -> nn.Module:
    if parallel == "fsdp":
        return shard(model, mesh)
    if parallel == "ddp":
        return replicate(model, device)
    return model
