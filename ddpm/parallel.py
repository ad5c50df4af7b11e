"""Data parallelism over torch.distributed: DDP replicates the UNet on every rank, FSDP2
(`fully_shard`) shards its parameters, gradients and optimizer state across the ranks.

The process group comes from the launcher (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR): `init` joins it with gloo on the CPU, or NCCL on CUDA with one card per rank. A group
the caller set up already (another launcher, a fake group that predicts memory) is used as it is:
apart from `init`, every helper asks the model or the group it is given, never the environment,
and `wrap` takes a DeviceMesh to spread over.

    device = parallel.init("cuda")                 # cuda:LOCAL_RANK under torchrun
    model = parallel.wrap(UNet(config), "fsdp", device)
    trainer = Trainer(model, schedule, train_config, device)   # sees the ranks through the model
    ...
    parallel.teardown()
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

PARALLEL = ("none", "ddp", "fsdp")

# Whether `init` created the default group: `teardown` ends only that one, never a group the
# caller made (the benchmark harness's fake group outlives a trainer).
_owned = False


# ----- the process group ------------------------------------------------------------------------


def launched() -> bool:
    """Whether a launcher (torchrun) described a process group in the environment."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank(group=None) -> int:
    """This process's rank in `group` (the default group when None); 0 when not distributed."""
    return dist.get_rank(group) if initialized() else 0


def world_size(group=None) -> int:
    """The ranks in `group` (the default group when None); 1 when not distributed."""
    return dist.get_world_size(group) if initialized() else 1


def init(device: str | torch.device = "cpu") -> torch.device:
    """Join the process group torchrun describes and return this rank's device: the CPU (gloo),
    or for "cuda" (whatever its index) cuda:LOCAL_RANK (NCCL, bound to that card). Without
    torchrun's variables nothing is initialized and `device` comes back as given; an
    already-initialized group is kept."""
    device = torch.device(device)
    if not launched():
        return device
    if device.type == "cuda":
        device = _cuda_device_for_this_rank()
    if not initialized():
        global _owned
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        _owned = True
    return device


def teardown() -> None:
    """End the process group `init` created (one it found already there stays)."""
    global _owned
    if _owned and initialized():
        dist.destroy_process_group()
    _owned = False


@contextlib.contextmanager
def session(device: str | torch.device = "cpu"):
    """`init` ... `teardown` around a block: `with parallel.session("cuda") as device:`."""
    try:
        yield init(device)
    finally:
        teardown()


def _cuda_device_for_this_rank() -> torch.device:
    """cuda:LOCAL_RANK, made the current card; a one-line error when the node runs more ranks
    than it has cards (NCCL refuses two ranks on one card)."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    cards = torch.cuda.device_count()
    if local_ranks > cards:
        raise RuntimeError(
            f"{local_ranks} ranks on this node but {cards} CUDA card(s): NCCL needs one card per "
            f"rank, so start at most {cards} (torchrun --nproc-per-node {cards})."
        )
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    return device


# ----- spreading the model ----------------------------------------------------------------------


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


def replicate(model: nn.Module, device: torch.device, mesh=None) -> nn.Module:
    """DDP: a full copy per rank; gradients are averaged across ranks in buckets during
    backward. With a 1-D `mesh`, its group is the one the gradients are averaged over."""
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(device)
    return DistributedDataParallel(
        model,
        device_ids=[device] if device.type == "cuda" else None,
        process_group=mesh.get_group() if mesh is not None else None,
        # Each param.grad becomes a view into DDP's flat bucket after its first exchange, so a
        # rank keeps one copy of the gradients between steps instead of two (the bucket and
        # param.grad), and DDP skips copying the reduced bucket back; the averaged values are
        # the same. Zeroing with set_to_none still frees the views, so within a step the
        # micro-batches' fresh gradients sit beside the bucket until the last backward.
        gradient_as_bucket_view=True,
    )


def wrap(model: nn.Module, parallel: str, device: torch.device, mesh=None) -> nn.Module:
    if parallel not in PARALLEL:
        raise ValueError(
            f"parallel={parallel!r} is not allowed: choose one of {', '.join(PARALLEL)}."
        )
    if parallel == "fsdp":
        return shard(model, mesh)
    if parallel == "ddp":
        return replicate(model, device, mesh)
    return model


def _imported(name: str):
    """The module if something imported it already, else None. No FSDP model or DTensor exists
    before its module is imported, and importing it costs one-rank training ~0.5 s."""
    return sys.modules.get(name)


def _dtensor_class():
    tensor = _imported("torch.distributed.tensor")
    return tensor.DTensor if tensor is not None else ()  # isinstance(x, ()) is False


def kind(model: nn.Module) -> str:
    """How `model` is spread: "ddp", "fsdp" or "none" (one of PARALLEL)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return "ddp"
    fsdp = _imported("torch.distributed.fsdp")
    if fsdp is not None and isinstance(model, fsdp.FSDPModule):
        return "fsdp"
    return "none"


def unwrap(model: nn.Module) -> nn.Module:
    """The UNet itself: DDP's inner module (whose names lack DDP's "module." prefix); an FSDP2
    model is its own module (fully_shard keeps the class and the parameter names)."""
    return model.module if kind(model) == "ddp" else model


def group(model: nn.Module):
    """The process group `model`'s gradients are averaged over; None for a model on one rank."""
    mode = kind(model)
    if mode == "ddp":
        return model.process_group
    if mode == "fsdp":
        return next(model.parameters()).device_mesh.get_group()
    return None


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Before a micro-batch's forward: whether its backward averages gradients across ranks.
    Without it they accumulate on each rank, and the next synced backward averages the sum, the
    same mean with one exchange instead of one per micro-batch. A setting rather than a `with`
    block, so that the training loop reads the same on one rank; for DDP it is the flag that
    DDP's no_sync() sets and restores, for FSDP2 set_requires_gradient_sync on every unit."""
    mode = kind(model)
    if mode == "ddp":
        model.require_backward_grad_sync = enabled
    elif mode == "fsdp":
        model.set_requires_gradient_sync(enabled)


# ----- values across ranks ----------------------------------------------------------------------


def mean_over_ranks(value: torch.Tensor, group=None) -> torch.Tensor:
    """The mean of a tensor over the ranks of `group` (a sum: gloo has no average)."""
    if group is None:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, group=group)
    return total / dist.get_world_size(group)


def plain(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor: a replicated DTensor's local copy (clip_grad_norm_'s global norm under
    FSDP2), any other tensor as it is."""
    return value.full_tensor() if isinstance(value, _dtensor_class()) else value


def local_shards(tensors: list) -> list:
    """Each DTensor's own shard (a view of it), other tensors as they are: what a rank updates
    in place without exchanging anything (the EMA of a sharded model)."""
    dtensor = _dtensor_class()
    return [t.to_local() if isinstance(t, dtensor) else t for t in tensors]


def full_tensors(tensors: dict, keep: bool) -> dict:
    """Each DTensor gathered whole (a collective: every rank calls it, in the same order); the
    result is kept, on the CPU, where `keep` (rank 0, which writes it) and dropped elsewhere."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, tensor in tensors.items():
        full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        if keep:
            out[name] = full.detach().cpu()
    return out


def distributed_like(tensors: dict, reference: dict) -> dict:
    """Whole tensors cut like `reference`'s DTensors (each rank keeps its own shard, with no
    exchange); names whose reference is a plain tensor stay whole."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    out = {}
    for name, tensor in tensors.items():
        ref = reference.get(name)
        if isinstance(ref, DTensor) and not isinstance(tensor, DTensor):
            tensor = distribute_tensor(
                tensor.to(ref.device, ref.dtype),
                ref.device_mesh,
                ref.placements,
                src_data_rank=None,
            )
        out[name] = tensor
    return out


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The whole model and optimizer state, on rank 0's CPU, in the format one rank saves
    (nn.Module.state_dict's names, Optimizer.state_dict's parameter numbers); the other ranks'
    dicts hold no tensors. A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    if not optimizer.state:
        # Before the first update there is nothing to gather, and get_optimizer_state_dict
        # would first create the state with an update of lr 0, which counts as Adam's step 1.
        return model_state, optimizer.state_dict()
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=options)
    return model_state, _numbered(optimizer_state) if optimizer_state else {}


def load_full_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict
) -> None:
    """Load whole state dicts (what `full_state_dicts` or one rank saved) into a spread model
    and its optimizer: each rank keeps its shard (FSDP2) or a full copy (DDP)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    if not optimizer_state["state"]:
        # Saved before the first update: settings only, which every rank takes as they are
        # (set_optimizer_state_dict wants state for every parameter).
        optimizer.load_state_dict(optimizer_state)
        return
    names = {id(p): name for name, p in unwrap(model).named_parameters()}
    set_optimizer_state_dict(
        model, optimizer, _named(optimizer_state, optimizer, names), options=options
    )


def _numbered(state: dict) -> dict:
    """An optimizer state dict keyed by parameter names -> keyed by numbers, as
    Optimizer.state_dict numbers them: in parameter-group order, from 0."""
    number: dict[str, int] = {}
    groups = [
        {**g, "params": [number.setdefault(n, len(number)) for n in g["params"]]}
        for g in state["param_groups"]
    ]
    return {"state": {number[n]: s for n, s in state["state"].items()}, "param_groups": groups}


def _named(state: dict, optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict:
    """The inverse of `_numbered` for `optimizer`, whose parameters `names` names by id."""
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    if len(order) != sum(len(g["params"]) for g in state["param_groups"]):
        raise ValueError(
            f"the optimizer state holds another number of parameters than this "
            f"model's {len(order)}."
        )
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {order[i]: s for i, s in state["state"].items()}, "param_groups": groups}


def on_rank0(fn, group=None) -> None:
    """Run `fn` on rank 0 while the other ranks wait for it; its failure is raised on every
    rank (a rank left waiting at a barrier would hang)."""
    if group is None:
        fn()
        return
    error = [None]
    if dist.get_rank(group) == 0:
        try:
            fn()
        except Exception as exc:  # sent to the other ranks, then raised here too
            error = [f"rank 0: {type(exc).__name__}: {exc}"]
            failure = exc
    dist.broadcast_object_list(error, group=group, group_src=0)
    if error[0] is not None:
        if dist.get_rank(group) == 0:
            raise failure
        raise RuntimeError(error[0])
