"""The EMA's update in the time prediction: on the card (fp32 or a bf16 shadow), none (off), or
in host memory (cpu: each parameter copied over PCIe, then the host's lerp), held to hand sums
of the model's bytes and to the PCIe link's datasheet rate."""

from __future__ import annotations

import pytest
import torch

from bench.cards import CARDS
from bench.models.fake import fake_mode
from bench.models.workload import build_model
from bench.predict.host import SPEC
from bench.predict.kernels import HOST, Kernel, KernelRecorder
from bench.predict.runtime import train_step_kernels
from bench.predict.step_time import step_time
from ddpm.ema import EMA
from tests.bench.predict.test_step_time import C, card

RTX3070 = CARDS["rtx3070"]


def ema_kernels(device: str | None, dtype: torch.dtype | None) -> tuple[list[Kernel], int]:
    """The kernels of one EMA update of the tiny model, and the model's parameter values."""
    recorder = KernelRecorder(RTX3070.capability)
    with fake_mode(), recorder:
        model = build_model(SPEC, compiled=False)
        ema = EMA(model, dtype=dtype)
        if device == HOST:
            ema.to(HOST)
        recorder.on = True
        ema.update(model)
    return recorder.kernels, sum(p.numel() for p in model.parameters())


def kind_bytes(kernels: list[Kernel], kind: str) -> int:
    return sum(k.bytes for k in kernels if k.kind == kind)


def test_an_fp32_shadow_on_the_card_reads_both_and_writes_itself():
    kernels, n = ema_kernels(None, None)
    assert kind_bytes(kernels, "memory") == 3 * 4 * n
    assert kind_bytes(kernels, "to_host") == kind_bytes(kernels, "host_memory") == 0


def test_a_bf16_shadow_on_the_card_casts_first_and_moves_as_many_bytes():
    """Each fp32 parameter cast to bf16 (4 bytes read, 2 written), then a bf16 lerp (2 + 2
    read, 2 written): 12 bytes a value, as the fp32 shadow's; it halves memory, not traffic."""
    kernels, n = ema_kernels(None, torch.bfloat16)
    assert kind_bytes(kernels, "memory") == (4 + 2) * n + 3 * 2 * n


def test_a_host_shadow_copies_every_parameter_over_pcie_then_updates_on_the_host():
    kernels, n = ema_kernels(HOST, None)
    assert kind_bytes(kernels, "to_host") == 4 * n
    assert kind_bytes(kernels, "host_memory") == 3 * 4 * n
    assert kind_bytes(kernels, "memory") == 0
    # A bf16 host shadow: the blocking copy moves fp32 and the CPU converts it.
    kernels, n = ema_kernels(HOST, torch.bfloat16)
    assert kind_bytes(kernels, "to_host") == 4 * n
    assert kind_bytes(kernels, "host_memory") == (4 + 2) * n + 3 * 2 * n


def test_a_copy_to_the_host_is_its_bytes_over_the_pcie_slot_and_blocks_the_step():
    """The made-up card's PCIe 3.0 x8: 8 lanes x 8 GT/s x 128/130 / 8 bits, 7.877 GB/s, at
    link_efficiency 0.5; it waits for the card's kernel before it and the host waits for it."""
    c = card()
    copy = Kernel("_to_copy_to_host", "to_host", 0, 10**9, launches=3)
    busy = Kernel("add", "memory", 0, 10**9)  # 1 GB at 1000 GB/s x 0.5: 2 ms
    pcie = 8 * 8e9 * 128 / 130 / 8
    copy_s = 1e9 / (pcie * 0.5) + 3 * C.launch_s
    t = step_time([busy, copy], c, "fp32", constants=C)
    assert t.host_copy_s == pytest.approx(copy_s, rel=1e-12)
    assert t.step_s == pytest.approx(2e-3 + C.launch_s + copy_s, rel=1e-12)
    # and the host's pass after it, at host_memory_gbs
    lerp = Kernel("_foreach_lerp_", "host_memory", 0, 3 * 10**9, launches=0)
    t = step_time([busy, copy, lerp], c, "fp32", constants=C)
    host_s = 3e9 / (C.host_memory_gbs * 1e9)
    assert t.step_s == pytest.approx(2e-3 + C.launch_s + copy_s + host_s, rel=1e-12)


def test_the_step_with_ema_cpu_copies_the_parameters_and_buffers_and_off_updates_none():
    """The traced step on the card: cpu's copies carry every parameter and buffer once; off
    has none of the card's EMA traffic (the lerp's 12 bytes a value and the buffer copies)."""
    params = list(build_model(SPEC, compiled=False).parameters())
    buffers = list(build_model(SPEC, compiled=False).buffers())
    values = sum(p.numel() for p in params)
    buffer_bytes = sum(b.numel() * b.element_size() for b in buffers)
    on_host = train_step_kernels(SPEC.replace(ema="cpu"), RTX3070)
    assert kind_bytes(on_host, "to_host") == 4 * values + buffer_bytes
    device = train_step_kernels(SPEC, RTX3070)
    off = train_step_kernels(SPEC.replace(ema="off"), RTX3070)
    assert kind_bytes(device, "memory") - kind_bytes(off, "memory") == (
        3 * 4 * values + 2 * buffer_bytes
    )
    assert kind_bytes(device, "to_host") == kind_bytes(off, "to_host") == 0
    copy_floor = 4 * values / (RTX3070.pcie_gbs * 1e9)
    assert step_time(on_host, RTX3070, "fp32").host_copy_s > copy_floor
