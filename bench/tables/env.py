"""The environment record that travels with every table: what produced these numbers."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

from bench.measure.cuda import resolve
from bench.spec import MIB

# Environment variables read by the CUDA caching allocator and the driver.
ALLOCATOR_SETTINGS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "CUDA_MODULE_LOADING")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# CPU flags that decide whether bf16 runs natively (AVX-512 BF16, AMX) or is emulated.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_isa(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The vector ISA torch's CPU kernels use, and the bf16 instructions present: CPU figures
    depend on them (on an AVX2-only CPU bf16 is emulated and slower than fp32)."""
    try:
        words = cpuinfo.read_text().split()
    except OSError:
        words = []
    bf16 = [flag for flag in BF16_FLAGS if flag in words]
    return f"{torch.backends.cpu.get_cpu_capability()} " + (
        f"with {' and '.join(bf16)}" if bf16 else "without native bf16"
    )


def cpu_name() -> str:
    """The CPU model and its ISA, as tables and the peak-FLOP cache name it."""
    return f"{_cpu_model()} ({cpu_isa()})"


# The committed tables are what a run writes, not what it runs: a sweep appending to them leaves
# the commit it ran clean, so the next command of results/reproduce.sh records the same commit.
TABLES = "results"


def git_commit(root: Path | None = None) -> str | None:
    """The short commit of the checkout holding this code, "-dirty" when a tracked file
    outside results/ differs from it."""
    root = root or Path(__file__).resolve().parent.parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "status",
                "--porcelain",
                "-uno",
                "--",
                ".",
                f":(exclude){TABLES}",
            ],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _driver() -> str | None:
    from bench.measure.monitor import open_nvml

    lib = open_nvml()
    try:
        return None if lib is None else lib.nvmlSystemGetDriverVersion()
    except lib.NVMLError:
        return None


def _settings() -> dict:
    """The switches that change CUDA numbers without changing the code: cuDNN's algorithm search,
    TF32, the allocator's configuration and lazy module loading (as this process starts them;
    each harness sets TF32 per spec from --precision)."""
    return {
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        **{name.lower(): os.environ.get(name) for name in ALLOCATOR_SETTINGS},
    }


def _cuda_device(device: str) -> dict:
    card = resolve(device)
    props = torch.cuda.get_device_properties(card)
    major, minor = torch.cuda.get_device_capability(card)
    return {
        "device": str(card),
        "device_name": props.name,
        "device_memory_mib": round(props.total_memory / MIB),
        "compute_capability": f"{major}.{minor}",
        "driver": _driver(),
    }


def environment(device: str = "cpu") -> dict:
    record = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu": _cpu_model(),
        "cpu_isa": cpu_isa(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "device": device,
        "device_name": cpu_name(),
        "device_memory_mib": None,
        "compute_capability": None,
        "driver": None,
        **_settings(),
    }
    if device.startswith("cuda"):
        record.update(_cuda_device(device))
    return record


def describe(record: dict) -> str:
    """One line for table headers."""
    parts = [f"torch {record['torch']}", f"{record['device_name']}"]
    if record.get("device_memory_mib"):
        parts.append(f"{record['device_memory_mib']} MiB")
    if record.get("compute_capability"):
        parts.append(f"compute capability {record['compute_capability']}")
    if record.get("cuda"):
        parts.append(f"CUDA {record['cuda']}")
    if record.get("driver"):
        parts.append(f"driver {record['driver']}")
    parts.append(f"{record['torch_threads']} threads")
    parts.append(f"commit {record.get('git_commit') or 'unknown'}")
    return ", ".join(parts)
