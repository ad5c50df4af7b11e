"""A background sampler of process figures during a pass: NVML device memory on NVIDIA GPUs,
CPU utilisation of this process everywhere; and the NVML baseline taken before CUDA starts."""

from __future__ import annotations

import os
import threading

import psutil
import torch

from bench.spec import MIB

# Used bytes by NVML UUID, taken before this process's CUDA context exists.
_BASELINE: dict[str, int | None] | None = None


class Monitor:
    """with Monitor(device) as m: ...; then m.figures(): nvml_peak_mib (device memory in use,
    driver-reserved memory excluded), nvml_process_peak_mib (this process's own, where the
    driver reports it), nvml_baseline_mib (in use before this process started CUDA), all None
    off NVIDIA or when NVML cannot name this very device; and cpu_util_pct."""

    def __init__(self, device: torch.device, interval_s: float = 0.05):
        self.device, self.interval_s = device, interval_s
        self.nvml_peak_mib: float | None = None
        self.nvml_process_peak_mib: float | None = None
        self.nvml_baseline_mib: float | None = None
        self.cpu_percent: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._process = psutil.Process()
        self._nvml = self._handle = None

    def __enter__(self) -> Monitor:
        if self.device.type == "cuda":
            self._nvml = open_nvml()
            self._handle = device_handle(self._nvml, self.device)
            self.nvml_baseline_mib = baseline_mib(self._nvml, self._handle)
        self._process.cpu_percent(None)  # starts psutil's interval
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        # Percent of one core, as top shows it: 200 means two cores busy.
        self.cpu_percent = self._process.cpu_percent(None)

    def figures(self) -> dict:
        return {
            "nvml_peak_mib": self.nvml_peak_mib,
            "nvml_process_peak_mib": self.nvml_process_peak_mib,
            "nvml_baseline_mib": self.nvml_baseline_mib,
            "cpu_util_pct": self.cpu_percent,
        }

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        if self._handle is None:
            return
        used = used_bytes(self._nvml, self._handle)
        if used is not None:
            self.nvml_peak_mib = max(self.nvml_peak_mib or 0.0, used / MIB)
        own = own_bytes(self._nvml, self._handle)
        if own is not None:
            self.nvml_process_peak_mib = max(self.nvml_process_peak_mib or 0.0, own / MIB)


def open_nvml():
    """pynvml, initialised; None where there is no NVML library or driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no library (non-NVIDIA build, container without the driver's files)
        return None


def device_handle(lib, device: torch.device):
    """The NVML handle of this CUDA device, a whole GPU or a MIG instance, found by the UUID CUDA
    gives it (NVML counts devices in its own order, blind to CUDA_VISIBLE_DEVICES); None when
    NVML knows no such device: a figure of another device would be wrong."""
    if lib is None:
        return None
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    names = [uuid] if uuid.startswith(("GPU-", "MIG-")) else [f"GPU-{uuid}", f"MIG-{uuid}"]
    for name in names:
        try:
            return lib.nvmlDeviceGetHandleByUUID(name)
        except lib.NVMLError:
            pass
    # Drivers that look up only whole GPUs by UUID still list MIG instances under each GPU.
    try:
        return next((h for h in all_handles(lib) if lib.nvmlDeviceGetUUID(h) in names), None)
    except lib.NVMLError:
        return None


def all_handles(lib) -> list:
    """Every GPU NVML sees and, where MIG is on, each of its instances."""
    handles = []
    for index in range(lib.nvmlDeviceGetCount()):
        gpu = lib.nvmlDeviceGetHandleByIndex(index)
        handles += [gpu, *_mig_instances(lib, gpu)]
    return handles


def _mig_instances(lib, gpu) -> list:
    try:
        if lib.nvmlDeviceGetMigMode(gpu)[0] != lib.NVML_DEVICE_MIG_ENABLE:
            return []
    except lib.NVMLError_NotSupported:  # a card without MIG
        return []
    instances = []
    for slot in range(lib.nvmlDeviceGetMaxMigDeviceCount(gpu)):
        try:
            instances.append(lib.nvmlDeviceGetMigDeviceHandleByIndex(gpu, slot))
        except lib.NVMLError_NotFound:  # an empty slot
            pass
    return instances


def used_bytes(lib, handle) -> int | None:
    """Memory in use on the device; version 2 keeps driver-reserved memory out of 'used'."""
    try:
        return lib.nvmlDeviceGetMemoryInfo(handle, version=lib.nvmlMemory_v2).used
    except lib.NVMLError:  # a driver without version 2: no figure rather than a different one
        return None


def own_bytes(lib, handle) -> int | None:
    """This process's memory on the device, CUDA context included; None where the driver does
    not report it (Windows WDDM, some MIG set-ups) or knows this process by another PID (a
    container)."""
    try:
        processes = lib.nvmlDeviceGetComputeRunningProcesses(handle)
    except lib.NVMLError:
        return None
    mine = [p.usedGpuMemory for p in processes if p.pid == os.getpid()]
    return None if not mine or None in mine else sum(mine)


def take_baseline() -> None:
    """Record every NVIDIA device's used memory, by UUID, once per process and only before CUDA
    starts here: afterwards the figure would contain this process's own context."""
    global _BASELINE
    if _BASELINE is not None or torch.cuda.is_initialized():
        return
    lib = open_nvml()
    _BASELINE = {} if lib is None else _used_by_uuid(lib)


def _used_by_uuid(lib) -> dict[str, int | None]:
    try:
        return {lib.nvmlDeviceGetUUID(h): used_bytes(lib, h) for h in all_handles(lib)}
    except lib.NVMLError:
        return {}


def baseline_mib(lib, handle) -> float | None:
    """This very device's baseline in MiB; None when none was taken."""
    if handle is None or not _BASELINE:
        return None
    try:
        used = _BASELINE.get(lib.nvmlDeviceGetUUID(handle))
    except lib.NVMLError:
        return None
    return None if used is None else used / MIB
