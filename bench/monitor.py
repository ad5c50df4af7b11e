"""A background sampler of process figures during a pass: NVML device memory on NVIDIA GPUs,
CPU utilisation of this process everywhere."""

from __future__ import annotations

import threading

import psutil
import torch

MIB = 2**20


class Monitor:
    """with Monitor(device) as m: ...; m.nvml_peak_mib (None off NVIDIA), m.cpu_percent."""

    def __init__(self, device: torch.device, interval_s: float = 0.05):
        self.device, self.interval_s = device, interval_s
        self.nvml_peak_mib: float | None = None
        self.cpu_percent: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._process = psutil.Process()
        self._nvml_handle = None

    def __enter__(self) -> Monitor:
        if self.device.type == "cuda":
            self._nvml_handle = _nvml_handle(self.device)
        self._process.cpu_percent(None)  # starts psutil's interval
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        # Percent of one core, as top shows it: 200 means two cores busy.
        self.cpu_percent = self._process.cpu_percent(None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        if self._nvml_handle is None:
            return
        import pynvml

        # Used memory of the whole device: includes the CUDA context (300-700 MiB) and any
        # other process on the card, which is what decides whether the next allocation fits.
        used = pynvml.nvmlDeviceGetMemoryInfo(self._nvml_handle).used / MIB
        self.nvml_peak_mib = max(self.nvml_peak_mib or 0.0, used)


def _nvml_handle(device: torch.device):
    try:
        import pynvml

        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        # NVML counts devices in PCI order; honour CUDA_VISIBLE_DEVICES through the UUID.
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except pynvml.NVMLError:
            return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # no NVML library (non-NVIDIA build, container): the column stays empty
        return None
