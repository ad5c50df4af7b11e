"""The step-time model's arithmetic on a made-up card, against figures computed by hand from the
card's datasheet and round constants, and its physics bound against torch's FlopCounterMode; no
timing anywhere."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from bench.cards import CARDS, Card
from bench.measure.flops import CPU_ATTENTION
from bench.models.workload import build_model
from bench.predict import step_time
from bench.predict.kernels import Kernel
from bench.predict.runtime import train_step_kernels
from bench.predict.step_time import Constants
from bench.spec import BenchSpec


def card(capability: tuple[int, int] = (8, 6), sms: int = 4) -> Card:
    """10 TFLOP/s FP32, 40 FP16 tensor (so 20 TF32 from 8.0 on), 1000 GB/s, PCIe 3.0 x8."""
    return Card(
        key="made-up",
        name="made-up card",
        capability=capability,
        sms=sms,
        capacity_gib=8.0,
        capacity_source="made up",
        fp32_tflops=10.0,
        fp16_tflops=40.0,
        bandwidth_gbs=1000.0,
        pcie=(3, 8),
    )


# Round constants, so every figure below is a hand division.
C = Constants(
    compute_efficiency=0.5,
    memory_efficiency=0.5,
    link_efficiency=0.5,
    launch_s=1e-6,
    host_train_s=10e-6,
    host_inference_s=5e-6,
    host_memory_gbs=10.0,
    band_low=0.8,
    band_high=1.25,
)


def conv(m: int, n: int, k: int, dtype=torch.float32) -> Kernel:
    return Kernel("convolution", "conv", 2 * m * n * k, 0, dtype, gemm=(1, m, n, k))


def test_one_convolution_that_fills_the_card():
    # M=512, N=256, K=1152: 128x128 tiles, 4 x 2 = 8 of them, two full waves on 4 SMs.
    k = conv(512, 256, 1152)
    assert step_time.gemm_share(4, k.gemm) == (1.0, 1)
    # TF32 on 8.6: 301,989,888 FLOPs / (20e12 x 0.5) = 30.199 us, + 1 us of launch.
    assert step_time.card_seconds(k, card(), C, True, False) == pytest.approx(31.199e-6, rel=1e-4)
    # 7.5 has no TF32: the FP32 cores, 10e12 x 0.5: 60.398 us + 1 us.
    assert step_time.card_seconds(k, card((7, 5)), C, True, False) == pytest.approx(
        61.398e-6, rel=1e-4
    )


def test_a_small_convolution_fills_few_sms():
    """M = N = 128, K = 256 on 4 SMs: one 128x128 tile keeps 1 SM of 4 busy (share 0.25, and K
    is too short to split); four 64x64 tiles keep all 4 busy at half a 128x128 tile's reuse
    (32 / 64): share 0.5, the best."""
    k = conv(128, 128, 256)
    assert step_time.gemm_share(4, k.gemm) == (0.5, 1)
    # 8,388,608 FLOPs / (20e12 x 0.5 x 0.5) = 1.6777 us, + 1 us.
    assert step_time.card_seconds(k, card(), C, True, False) == pytest.approx(2.6777e-6, rel=1e-4)


def test_a_long_k_splits_over_the_idle_sms():
    # One 128x128 tile with K = 1024: split in 4 (each K >= 256), 4 blocks on 4 SMs: share 1,
    # and the 4 partial 128x128 fp32 sums are written and read back: 2 x 4 x 65,536 x 4 bytes.
    k = conv(128, 128, 1024)
    assert step_time.gemm_share(4, k.gemm) == (1.0, 4)
    math_s = 2 * 128 * 128 * 1024 / (20e12 * 0.5)
    memory_s = 2 * 4 * 128 * 128 * 4 / (1000e9 * 0.5)
    assert step_time.card_seconds(k, card(), C, True, False) == pytest.approx(
        max(math_s, memory_s) + 1e-6
    )


def test_one_matmul_by_hand():
    k = Kernel("mm", "matmul", 2 * 512 * 256 * 128, 4 * 3 * 65_536, gemm=(1, 512, 256, 128))
    # torch keeps fp32 matmuls off TF32 by default: 33,554,432 / 5e12 = 6.7109 us, + 1 us.
    assert step_time.card_seconds(k, card(), C, True, False) == pytest.approx(7.7109e-6, rel=1e-4)
    # fp16 on the tensor cores: 40e12 x 0.5.
    half = dataclasses.replace(k, dtype=torch.float16)
    assert step_time.card_seconds(half, card(), C, True, False) == pytest.approx(
        2.6777e-6, rel=1e-4
    )


def test_one_elementwise_op_is_its_bytes():
    k = Kernel("add", "memory", 0, 12_000)
    # 12,000 B / 500 GB/s = 0.024 us, + 1 us.
    assert step_time.card_seconds(k, card(), C, True, False) == pytest.approx(1.024e-6)


def test_one_all_reduce_over_the_link():
    """4 ranks over PCIe 3.0 x8 (8 lanes x 8 GT/s x 128/130 / 8 = 7.877 GB/s each way, at 0.5
    of it): a ring all-reduce carries 2 x 3/4 of the message through each link."""
    k = Kernel("all_reduce", "collective", 0, 100_000_000)
    link = 8 * 8e9 * 128 / 130 / 8
    assert card().link_gbs * 1e9 == pytest.approx(link)
    expected = 1.5 * 100_000_000 / (link * 0.5) + 1e-6  # 38.09 ms
    assert step_time.collective_seconds(k, card(), 4, C) == pytest.approx(expected)
    assert step_time.collective_seconds(k, card(), 1, C) == 0.0


def memory(bytes_: int, host_ops: int = 1) -> Kernel:
    return Kernel("add", "memory", 0, bytes_, host_ops=host_ops)


def test_the_host_bounds_a_step_of_small_kernels():
    # Three kernels of 1.024 us on the card, each dispatched in 10 us: the card waits for the
    # host, so the step is 3 x 10 us + the last kernel.
    t = step_time.step_time([memory(12_000)] * 3, card(), "fp32", constants=C)
    assert t.step_s == pytest.approx(30e-6 + 1.024e-6)
    assert t.card_busy_s == pytest.approx(3 * 1.024e-6)
    # Large kernels: the host runs ahead and the card's sum is the step (after the first
    # dispatch): 10 us + 3 x (20e6 / 500e9 + 1 us) = 10 + 3 x 41 us.
    t = step_time.step_time([memory(20_000_000)] * 3, card(), "fp32", constants=C)
    assert t.step_s == pytest.approx(10e-6 + 3 * 41e-6)


def test_a_sync_makes_the_host_wait_and_a_join_waits_for_the_exchange():
    sync = Kernel("item", "sync", launches=0, host_ops=1)
    # The 41 us kernel runs from 10 us to 51; the sync's dispatch ends at 20 us, then the host
    # waits until 51, dispatches the last kernel by 61, which ends 1.024 us later.
    t = step_time.step_time([memory(20_000_000), sync, memory(12_000)], card(), "fp32", constants=C)
    assert t.step_s == pytest.approx(61e-6 + 1.024e-6)
    # The exchange starts when the kernel before it ends (51 us) and overlaps the next kernel
    # (51 to 92 us); the join makes the card wait for it: the step ends at 51 us + exchange.
    reduce = Kernel("all_reduce", "collective", 0, 100_000_000, host_ops=1)
    join = Kernel("backward_end", "join", launches=0)
    kernels = [memory(20_000_000), reduce, memory(20_000_000), join]
    t = step_time.step_time(kernels, card(), "fp32", ranks=4, constants=C)
    exchange = step_time.collective_seconds(reduce, card(), 4, C)
    assert t.step_s == pytest.approx(51e-6 + exchange)
    assert t.exposed_comm_s == pytest.approx(exchange - 41e-6)


def test_dtype_paths():
    c = Kernel("convolution", "conv", 1, 1, torch.float32)
    assert step_time.peak_tflops(card(), c, True, False) == 20.0  # TF32
    assert step_time.peak_tflops(card(), c, False, False) == 10.0  # TF32 switched off
    assert step_time.peak_tflops(card((7, 5)), c, True, False) == 10.0  # no TF32 before 8.0
    bf16 = dataclasses.replace(c, dtype=torch.bfloat16)
    assert step_time.peak_tflops(card(), bf16, True, False) == 40.0
    assert step_time.peak_tflops(card((7, 5)), bf16, True, False) == 10.0  # no bf16 tensor cores
    fp16 = dataclasses.replace(c, dtype=torch.float16)
    assert step_time.peak_tflops(card((7, 5)), fp16, True, False) == 40.0


def test_torch_defaults_and_the_tf32_precision():
    assert step_time.tf32_switches("tf32") == (True, True)
    assert step_time.tf32_switches("fp32") == (
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision() != "highest",
    )


def architecture_flops(spec: BenchSpec) -> int:
    """FlopCounterMode on the eager model, forward and backward, torch's own attention
    formulas for the CPU kernel."""
    c = spec.unet_config()
    with FakeTensorMode():
        model = build_model(spec, compiled=False)
        x = torch.empty(spec.batch, c.in_channels, c.image_size, c.image_size)
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
            model(x, torch.zeros(spec.batch, dtype=torch.long)).square().mean().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize(
    ("key", "precision"),
    [("rtx3070", "fp32"), ("rtx4090", "bf16"), ("v100-32gb", "fp16"), ("gtx1070", "fp32")],
)
def test_no_step_beats_its_flops_at_the_peak_or_its_bytes_at_the_bandwidth(key, precision):
    """With the fitted constants, on real cards: the step takes at least its FLOPs (counted
    independently) at the card's fastest datasheet peak and its bytes at datasheet bandwidth."""
    spec = BenchSpec(preset="ddpm-cifar10", channels="64", image_size=16, batch=8)
    spec = spec.replace(precision=precision)
    target = CARDS[key]
    kernels = train_step_kernels(spec, target)
    t = step_time.step_time(kernels, target, precision)
    fastest = max(target.fp32_tflops, target.fp16_tflops or 0) * 1e12
    assert t.step_s >= architecture_flops(spec) / fastest
    moved = sum(k.bytes for k in kernels if k.kind != "collective")
    assert t.step_s >= moved / (target.bandwidth_gbs * 1e9)
    assert t.step_s >= step_time.floor_seconds(kernels, target)
