"""The device's measured peak FLOP/s at a precision: the denominator of MFU.

A probe times large matmuls and 3x3 convolutions (the UNet's two kinds of heavy work) and keeps
the faster. The figure is measured, not a datasheet's, and cached per device (a CPU named with
its vector ISA), precision, torch version and thread count, so a sweep pays for it once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.measure.timing import time_calls
from bench.tables.results import ResultsError
from ddpm.precision import COMPUTE_DTYPES, apply_matmul_precision

# Where a sweep caches the probe's results, in its results folder.
PEAK_CACHE = "peak_flops.json"
PEAK_FIGURES = ("peak_flops", "matmul_flops", "conv_flops")


def _probe_shapes(device: torch.device) -> tuple[int, int, int]:
    # (matmul side, conv channels, conv batch): big enough to saturate the device, small enough
    # to run in seconds on a 2-core CPU.
    return (4096, 256, 64) if device.type == "cuda" else (1024, 128, 8)


def measure_peak_flops(device: torch.device, precision: str, repeats: int = 10) -> dict:
    """The fastest of `repeats` calls after 5 warm-ups: a peak is the best the device did. The
    median of 5 after 2 warm-ups read bf16 at half its rate once (oneDNN's first bf16 calls),
    which put MFU above 1."""
    n, channels, batch = _probe_shapes(device)
    dtype = COMPUTE_DTYPES[precision]
    apply_matmul_precision(precision, device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    matmul = time_calls(lambda: a @ b, repeats, 5, device)
    x = torch.randn(batch, channels, 32, 32, device=device, dtype=dtype)
    w = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype)
    conv = time_calls(lambda: F.conv2d(x, w, padding=1), repeats, 5, device)
    matmul_flops = 2 * n**3 / min(matmul.times_s)
    conv_flops = 2 * batch * channels * channels * 9 * 32 * 32 / min(conv.times_s)
    return {
        "peak_flops": max(matmul_flops, conv_flops),
        "matmul_flops": matmul_flops,
        "conv_flops": conv_flops,
        "probe": f"matmul {n}x{n}x{n}, conv3x3 {channels}ch 32x32 batch {batch}",
    }


def device_key(device: torch.device, precision: str) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        from bench.tables.env import cpu_name

        name = f"{cpu_name()} x{torch.get_num_threads()} threads"
    return f"{name} | {precision} | torch {torch.__version__}"


def peak_flops(device: torch.device, precision: str, cache: Path) -> dict:
    """The cached probe result for this device and precision, measuring it on first use."""
    key = device_key(device, precision)
    table = json.loads(cache.read_text()) if cache.exists() else {}
    if key not in table:
        table[key] = measure_peak_flops(device, precision)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps(table, indent=2) + "\n")
        os.replace(tmp, cache)
    return table[key]


def read_peaks(cache: Path) -> dict[str, dict]:
    """The probe results cached in <out>/peak_flops.json ({} before the first probe);
    ResultsError, naming the file, when it is not such a record."""
    if not cache.exists():
        return {}
    try:
        table = json.loads(cache.read_text())
        entries = table.values() if isinstance(table, dict) else [None]
        valid = all(
            isinstance(e, dict)
            and isinstance(e.get("probe"), str)
            and all(isinstance(e.get(k), (int, float)) for k in PEAK_FIGURES)
            for e in entries
        )
    except (OSError, UnicodeDecodeError, ValueError):
        valid = False
    if not valid:
        raise ResultsError(
            f"{cache} is not a record of peak FLOP/s; move it aside (the next "
            "throughput run measures the peaks again)."
        )
    return table
