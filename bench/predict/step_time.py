"""How long the kernels of one traced step (bench.predict.kernels) take on a card: each kernel's
time on the card, the host's time to dispatch it, and the two played out in program order.

On the card, a GEMM (convolution, matmul, attention) runs at

    FLOPs / (datasheet peak of its path x compute_efficiency x tiles-and-waves share)

or its bytes at the memory rate, whichever is longer. The path is the math it runs in: the FP32
CUDA cores, TF32 (fp32 convolutions from compute capability 8.0 by torch's default), or the
FP16/BF16 tensor cores (`peak_tflops`). The tiles-and-waves share (`gemm_share`) is the part
of the card's SMs the GEMM keeps busy: its output is cut into thread-block tiles, each SM runs
one at a time, and a last wave that does not fill the SMs leaves the rest idle (NVIDIA, "Matrix
Multiplication Background User's Guide", Dimension Quantization Effects). Every other kernel
moves its bytes at datasheet bandwidth x memory_efficiency. Each launch adds launch_s.

On the host, eager PyTorch dispatches each aten op in order (host_*_s per op), and the card
runs a kernel once the host has issued it and the kernel before it is done; `.item()` makes the
host wait for the card. A collective runs on its own stream once the compute before it is done,
over the card's link (a ring: 2(N-1)/N of an all-reduce's message per rank); the compute waits
for it where the step needs its result (DDP: when the backward ends). A blocking copy to host
memory (--ema cpu's parameters) starts once the host has issued it and the card is done, and
the host waits for it: it moves its bytes over the card's PCIe slot at its datasheet rate x
link_efficiency, plus a launch per tensor. Work the host's CPU does on host memory (the EMA's
update there) takes its bytes at host_memory_gbs, while the card idles. The step is the time
the last of the three ends, starting from an idle card and host.

The constants are in time_constants.json, written by `python -m bench.predict.calibrate`,
which says where each comes from (docs/throughput.md)."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from bench.cards import Card
from bench.predict.kernels import Kernel

CONSTANTS_FILE = Path(__file__).with_name("time_constants.json")
# Thread-block tiles a GEMM library chooses among (the guide's 256x128 down to 64x64), with the
# share of an SM's peak each keeps: a tile's operand reuse, tm x tn / (tm + tn), against
# 128x128's, at most 1 (larger tiles are no faster once the SM's math is the limit).
TILES = tuple(
    ((tm, tn), min(1.0, (tm * tn / (tm + tn)) / 64.0))
    for tm, tn in ((256, 128), (128, 128), (128, 64), (64, 64))
)
# Split-K: a GEMM with few tiles and a long K splits K over more thread blocks, each at least
# this long (and writes partial sums that one more pass adds).
MIN_SPLIT_K = 256
# A ring collective moves this share of the message through each rank's link.
RING_SHARE = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
}


@dataclass(frozen=True)
class Constants:
    """The model's constants (see time_constants.json for where each comes from)."""

    compute_efficiency: float  # of the path's datasheet peak, at full tiles and waves
    memory_efficiency: float  # of datasheet DRAM bandwidth
    link_efficiency: float  # of the link's datasheet bandwidth
    launch_s: float  # per kernel on the card
    host_train_s: float  # the host's time per aten op of a training step
    host_inference_s: float  # per aten op of a denoising step (inference mode)
    host_memory_gbs: float  # the host CPU's rate through host memory, 1e9 bytes/s
    band_low: float  # measured / predicted time, the lowest over the public runs
    band_high: float  # and the highest (leave-one-out)


def load_constants(path: Path = CONSTANTS_FILE) -> Constants:
    data = json.loads(path.read_text())
    return Constants(**{f.name: float(data[f.name]["value"]) for f in fields(Constants)})


def peak_tflops(card: Card, k: Kernel, conv_tf32: bool, matmul_tf32: bool) -> float:
    """The datasheet peak an op's math runs at: tensor cores for fp16 (where the card has them)
    and bf16 (compute capability 8.0 on; before, emulated at no more than the FP32 rate), TF32
    for fp32 convolutions or matmuls where torch allows it and the card has it, else the FP32
    CUDA cores."""
    if k.dtype == torch.float16 and card.tensor_cores:
        return card.fp16_tflops
    if k.dtype == torch.bfloat16 and card.bf16:
        return card.fp16_tflops
    tf32 = conv_tf32 if k.kind == "conv" else matmul_tf32
    if k.dtype == torch.float32 and tf32 and card.tf32_tflops:
        return card.tf32_tflops
    return card.fp32_tflops


def tf32_switches(precision: str) -> tuple[bool, bool]:
    """(convolutions, matmuls) in TF32 for a precision: torch's defaults (cuDNN allows TF32,
    matmuls stay "highest"), both on for the tf32 precision (ddpm.precision)."""
    if precision == "tf32":
        return True, True
    matmul = torch.get_float32_matmul_precision() != "highest"
    return torch.backends.cudnn.allow_tf32, matmul or torch.backends.cuda.matmul.allow_tf32


@functools.lru_cache(maxsize=65536)
def gemm_share(sms: int, gemm: tuple[int, int, int, int]) -> tuple[float, int]:
    """(share of the card's SM throughput the GEMM gets, K splits) for the best tile and split:
    useful multiply-adds / those the busy waves could do, times the tile's reuse."""
    batch, m, n, k = gemm
    best, best_split = 0.0, 1
    for (tm, tn), reuse in TILES:
        tiles = batch * math.ceil(m / tm) * math.ceil(n / tn)
        for split in range(1, max(1, min(64, k // MIN_SPLIT_K)) + 1):
            blocks = tiles * split
            waves = math.ceil(blocks / sms)
            busy = waves * sms * tm * tn * math.ceil(k / split)
            share = batch * m * n * k / busy * reuse
            if share > best:
                best, best_split = share, split
    return best, best_split


def card_seconds(
    k: Kernel, card: Card, c: Constants, conv_tf32: bool, matmul_tf32: bool, waves: bool = True
) -> float:
    """The kernel's time on the card: max(math, memory) + its launches (`waves` False: every
    GEMM as if it filled the card, for the ablation)."""
    memory_rate = card.bandwidth_gbs * 1e9 * c.memory_efficiency
    moved = k.bytes
    compute = 0.0
    if k.gemm is not None and k.flops:
        share, split = gemm_share(card.sms, k.gemm) if waves else (1.0, 1)
        if split > 1:  # the partial sums: written once each and read back, in fp32
            batch, m, n, _ = k.gemm
            moved += 2 * split * batch * m * n * 4
        peak = peak_tflops(card, k, conv_tf32, matmul_tf32) * 1e12
        compute = k.flops / (peak * c.compute_efficiency * share)
    return max(compute, moved / memory_rate) + c.launch_s * k.launches


def collective_seconds(k: Kernel, card: Card, ranks: int, c: Constants) -> float:
    """A ring collective of k.bytes over `ranks` cards: the share each rank's link carries at
    its datasheet rate x link_efficiency, plus a launch."""
    if ranks <= 1:
        return 0.0
    share = RING_SHARE.get(k.op, RING_SHARE["all_reduce"])(ranks)
    return share * k.bytes / (card.link_gbs * 1e9 * c.link_efficiency) + c.launch_s


def to_host_seconds(k: Kernel, card: Card, c: Constants) -> float:
    """A blocking copy of k.bytes from the card to host memory: its PCIe slot's datasheet rate
    x link_efficiency, plus a launch per tensor copied."""
    return k.bytes / (card.pcie_gbs * 1e9 * c.link_efficiency) + c.launch_s * k.launches


def host_memory_seconds(k: Kernel, c: Constants) -> float:
    return k.bytes / (c.host_memory_gbs * 1e9)


def host_seconds(k: Kernel, c: Constants, inference: bool) -> float:
    return k.host_ops * (c.host_inference_s if inference else c.host_train_s)


@dataclass(frozen=True)
class StepTime:
    """One step on a card, and where its time went (seconds)."""

    step_s: float
    card_busy_s: float  # the card's kernels back to back
    host_s: float  # the host's dispatch
    exposed_comm_s: float  # collectives the compute waited for
    host_copy_s: float  # blocking copies to host memory and the host's work on it
    compute_s: float  # the GEMMs' share of card_busy_s
    memory_s: float  # the other kernels' share


def step_time(
    kernels: list[Kernel],
    card: Card,
    precision: str,
    ranks: int = 1,
    inference: bool = False,
    constants: Constants | None = None,
    waves: bool = True,
) -> StepTime:
    """Play the step's kernels out on the host, the card's compute stream and its
    communication stream (see the module's docstring)."""
    c = constants or load_constants()
    conv_tf32, matmul_tf32 = tf32_switches(precision)
    host = card_t = comm = waited = 0.0
    busy = compute = host_total = host_copy = 0.0
    for k in kernels:
        h = host_seconds(k, c, inference)
        host += h
        host_total += h
        if k.kind == "sync":
            host = max(host, card_t)
        elif k.kind == "collective":
            comm = max(comm, card_t, host) + collective_seconds(k, card, ranks, c)
            if k.waits:
                waited += max(0.0, comm - card_t)
                card_t = max(card_t, comm)
        elif k.kind == "join":
            waited += max(0.0, comm - card_t)
            card_t = max(card_t, comm)
        elif k.kind == "to_host":
            t = to_host_seconds(k, card, c)
            host = card_t = max(host, card_t) + t
            host_copy += t
        elif k.kind == "host_memory":
            t = host_memory_seconds(k, c)
            host += t
            host_copy += t
        elif k.kind != "host":
            t = card_seconds(k, card, c, conv_tf32, matmul_tf32, waves)
            card_t = max(card_t, host) + t
            busy += t
            compute += t if k.gemm is not None else 0.0
    return StepTime(
        step_s=max(host, card_t, comm),
        card_busy_s=busy,
        host_s=host_total,
        exposed_comm_s=waited,
        host_copy_s=host_copy,
        compute_s=compute,
        memory_s=busy - compute,
    )


def floor_seconds(kernels: list[Kernel], card: Card) -> float:
    """What no step can beat: its FLOPs at the card's fastest datasheet peak, or its bytes at
    datasheet bandwidth."""
    fastest = max(card.fp32_tflops, card.fp16_tflops or 0.0) * 1e12
    flops = sum(k.flops for k in kernels)
    moved = sum(k.bytes for k in kernels if k.kind not in ("collective", "host_memory"))
    return max(flops / fastest, moved / (card.bandwidth_gbs * 1e9))


def torch_roofline_seconds(kernels: list[Kernel], card: Card) -> float:
    """The same kernels under torch's RuntimeEstimator roofline
    (torch/utils/_runtime_estimation.py, used by torch/distributed/_tools/runtime_estimator.py):
    per op max(flops / 2 / (0.75 x peak), bytes / bandwidth) at datasheet bandwidth, no launch
    cost; its peak is the datasheet figure for the output dtype, TF32 only when matmul TF32 is
    on (so fp32 convolutions count at the FP32 rate) and bf16 at the tensor-core rate on any
    card that lists one."""
    total = 0.0
    for k in kernels:
        if k.kind in ("collective", "join", "sync", "host", "to_host", "host_memory"):
            continue
        compute = 0.0
        if k.flops:
            peak = card.fp32_tflops if k.dtype == torch.float32 else card.fp16_tflops
            compute = k.flops / 2 / (0.75 * (peak or card.fp32_tflops) * 1e12)
        total += max(compute, k.bytes / (card.bandwidth_gbs * 1e9))
    return total
