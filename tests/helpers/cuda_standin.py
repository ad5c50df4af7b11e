"""A strict stand-in for torch.cuda and pynvml, so the CUDA code paths run on a machine without a
GPU and are held to the real contracts.

Every torch.cuda function here takes its device argument through torch's own
torch.cuda._utils._get_device_index with the `optional` flag the real function uses, so an
index-less "cuda" is refused exactly where torch refuses it, and an index past the card raises
what torch raises. The allocator's figures move (allocate/free below), so peaks and their resets
can be observed. The pynvml stand-in issues handles and accepts only those, needs nvmlInit first,
checks the memory-info version, and raises pynvml's own NVMLError subclasses.

Anything that really runs on the device (a tensor on "cuda:0") is not replaced: on this machine
it raises NO_DRIVER, which marks the first real CUDA operation.

    def test_something(fake_cuda):
        gpu = fake_cuda(capability=(7, 5), total_mib=8192)   # one RTX 2070-like card
        ...code under test...
        assert ("set_device", 0) in gpu.calls
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass, field

import pynvml as real_nvml
import pytest
import torch
from torch.cuda._utils import _get_device_index

MIB = 2**20
NO_DRIVER = "Found no NVIDIA driver"  # what torch raises at the first real CUDA operation here
OTHER_PID = 4_000_000  # a process that is not this one
MIG_SLOTS = 7  # instances an A100/H100 can hold


@dataclass
class Card:
    """The device the stand-in shows. With mig=True, CUDA sees one MIG instance of a larger GPU,
    which holds a second instance (the neighbour) used by another process."""

    name: str = "NVIDIA GeForce RTX 3070"
    capability: tuple[int, int] = (8, 6)
    # This torch build's list: no sm_89, whose cards run sm_86 code.
    arch_list: tuple[str, ...] = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")
    total_mib: int = 8192  # the CUDA device's memory (the instance's under MIG)
    count: int = 1  # CUDA devices; all alike
    current: int = 0  # torch.cuda.current_device() before anything sets it
    context_mib: int = 300  # this process's CUDA context, once CUDA has started
    others_mib: int = 200  # other processes on this device (instance)
    driver_reserved_mib: int = 250  # what NVML memory info v2 reports apart as 'reserved'
    process_figure: bool = True  # False: the driver reports usedGpuMemory as not available
    nvml_knows_device: bool = True  # False: NVML lists a GPU whose UUID is not this device's
    mig: bool = False
    mig_lookup_by_uuid: bool = True  # whether nvmlDeviceGetHandleByUUID accepts MIG UUIDs
    gpu_total_mib: int = 81920  # the whole GPU under MIG
    neighbour_mib: int = 5000  # used on the other MIG instance
    uuid: str = "5e1d3b2a-7c4f-4e8a-9b61-0c2d4e6f8a10"  # as str(props.uuid) prints it
    driver: str = "550.54.15"


class CUuuid:
    """torch._C._CUuuid: str() gives the bare hex form, no GPU-/MIG- prefix."""

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text


@dataclass
class FakeCuda:
    """torch.cuda's functions over one configurable card and a moving allocator."""

    card: Card
    initialized: bool = False
    allocated: int = 0
    reserved: int = 0
    peak_allocated: int = 0
    peak_reserved: int = 0
    fraction: float | None = None
    calls: list = field(default_factory=list)

    # -- what tests do with the allocator -------------------------------------------------------

    def allocate(self, nbytes: int) -> None:
        """A tensor of nbytes: refused past the memory fraction as the caching allocator does."""
        self._init()
        if self.fraction is not None and self.allocated + nbytes > self.fraction * self._total():
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {nbytes / MIB:.2f} MiB"
            )
        self.allocated += nbytes
        self.reserved = max(self.reserved, self.allocated)  # the cache keeps what it got
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def free(self, nbytes: int) -> None:
        assert nbytes <= self.allocated, "freed more than allocated"
        self.allocated -= nbytes

    # -- helpers ---------------------------------------------------------------------------------

    def _total(self) -> int:
        return self.card.total_mib * MIB

    def _index(
        self,
        name: str,
        device,
        optional: bool,
        error: type[Exception] = RuntimeError,
        message: str = "CUDA error: invalid device ordinal",
    ) -> int:
        index = _get_device_index(device, optional=optional)
        if not 0 <= index < self.card.count:
            raise error(message)
        self.calls.append((name, index))
        return index

    def _init(self) -> None:
        self.initialized = True

    def process_bytes(self) -> int:
        """This process's device memory as the driver sees it: context and allocator cache."""
        return (self.card.context_mib * MIB + self.reserved) if self.initialized else 0

    # -- torch.cuda ------------------------------------------------------------------------------

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialized

    def device_count(self) -> int:
        return self.card.count

    def current_device(self) -> int:
        self._init()
        return self.card.current

    def set_device(self, device) -> None:
        index = _get_device_index(device)  # optional=False, as torch.cuda.set_device
        if index >= 0:
            self._init()
            self.card.current = self._index("set_device", index, optional=False)

    def get_device_properties(self, device=None):
        self._init()
        self._index(
            "get_device_properties",
            device,
            optional=True,
            error=AssertionError,
            message="Invalid device id",
        )
        major, minor = self.card.capability
        return types.SimpleNamespace(
            name=self.card.name,
            major=major,
            minor=minor,
            total_memory=self._total(),
            multi_processor_count=46,
            uuid=CUuuid(self.card.uuid),
        )

    def get_device_capability(self, device=None) -> tuple[int, int]:
        props = self.get_device_properties(device)
        return props.major, props.minor

    def get_device_name(self, device=None) -> str:
        return self.get_device_properties(device).name

    def get_arch_list(self) -> list[str]:
        return list(self.card.arch_list)

    def is_bf16_supported(self, including_emulation: bool = True) -> bool:
        # As torch: the current device decides, and sm_75 "supports" bf16 through emulation.
        major = self.get_device_properties(self.current_device()).major
        return major >= 8 or including_emulation

    def mem_get_info(self, device=None) -> tuple[int, int]:
        if device is None:
            device = self.current_device()
        self._index("mem_get_info", device, optional=True)
        self._init()
        used = self.card.others_mib * MIB + self.process_bytes()
        return self._total() - used, self._total()

    def _stat(self, name: str, device, value: int) -> int:
        if not self.initialized:  # torch's memory_stats is {} before CUDA starts
            return 0
        self._index(
            name,
            device,
            optional=True,
            message=f"Invalid device argument {device}: did you call init?",
        )
        return value

    def memory_allocated(self, device=None) -> int:
        return self._stat("memory_allocated", device, self.allocated)

    def memory_reserved(self, device=None) -> int:
        return self._stat("memory_reserved", device, self.reserved)

    def max_memory_allocated(self, device=None) -> int:
        return self._stat("max_memory_allocated", device, self.peak_allocated)

    def max_memory_reserved(self, device=None) -> int:
        return self._stat("max_memory_reserved", device, self.peak_reserved)

    def reset_peak_memory_stats(self, device=None) -> None:
        self._index(
            "reset_peak_memory_stats",
            device,
            optional=True,
            message=f"Invalid device argument {device}: did you call init?",
        )
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

    def empty_cache(self) -> None:  # torch's takes no device: it empties the current one
        self.calls.append(("empty_cache", None))
        if self.initialized:
            self.reserved = self.allocated

    def synchronize(self, device=None) -> None:
        self._init()
        self._index("synchronize", device, optional=True)

    def set_per_process_memory_fraction(self, fraction, device=None) -> None:
        self._init()
        if device is None:
            device = self.current_device()
        index = _get_device_index(device)  # optional=False, as torch
        if not isinstance(fraction, float):
            raise TypeError("Invalid type for fraction argument, must be `float`")
        if fraction < 0 or fraction > 1:
            raise ValueError(f"Invalid fraction value: {fraction}. Allowed range: 0~1")
        self._index("set_per_process_memory_fraction", index, optional=False)
        self.fraction = fraction

    def manual_seed_all(self, seed) -> None:  # torch.manual_seed seeds every CUDA device
        self.calls.append(("manual_seed_all", int(seed)))


TORCH_FUNCTIONS = [
    "is_available",
    "is_initialized",
    "device_count",
    "current_device",
    "set_device",
    "get_device_properties",
    "get_device_capability",
    "get_device_name",
    "get_arch_list",
    "is_bf16_supported",
    "mem_get_info",
    "memory_allocated",
    "memory_reserved",
    "max_memory_allocated",
    "max_memory_reserved",
    "reset_peak_memory_stats",
    "empty_cache",
    "synchronize",
    "set_per_process_memory_fraction",
    "manual_seed_all",
]


# -- pynvml -------------------------------------------------------------------------------------


class Handle:
    """An nvmlDevice_t the stand-in issued."""

    def __init__(self, uuid: str, mig: bool = False):
        self.uuid, self.mig = uuid, mig


def _nvml_error(code: int) -> real_nvml.NVMLError:
    return real_nvml.NVMLError(code)  # pynvml picks the subclass, e.g. NVMLError_NotFound


class FakeNvml:
    """The NVML calls bench makes, over the same card: handles for the GPU (and, under MIG, the
    instance CUDA uses and a neighbour), memory in use that follows the torch stand-in."""

    def __init__(self, card: Card, cuda: FakeCuda):
        self.card, self.cuda, self.inits = card, cuda, 0
        own = ("MIG-" if card.mig else "GPU-") + card.uuid
        if not card.nvml_knows_device:
            own = ("MIG-" if card.mig else "GPU-") + "0badc0de-0000-4000-8000-000000000000"
        self.own = Handle(own, mig=card.mig)
        self.gpu = Handle("GPU-9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a") if card.mig else self.own
        self.neighbour = Handle("MIG-1a2b3c4d-0000-4111-8222-333344445555", mig=True)
        self.issued = {self.gpu, self.own} | ({self.neighbour} if card.mig else set())

    def _check(self, handle=None) -> None:
        if not self.inits:
            raise _nvml_error(real_nvml.NVML_ERROR_UNINITIALIZED)
        if handle is not None and handle not in self.issued:
            raise _nvml_error(real_nvml.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self._check()
        self.inits -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return self.card.driver

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Handle:
        self._check()
        if index != 0:
            raise _nvml_error(real_nvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.gpu

    def nvmlDeviceGetHandleByUUID(self, uuid) -> Handle:
        self._check()
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for handle in self.issued:
            if handle.uuid == uuid and (not handle.mig or self.card.mig_lookup_by_uuid):
                return handle
        raise _nvml_error(real_nvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, handle: Handle) -> str:
        self._check(handle)
        return handle.uuid

    def nvmlDeviceGetMigMode(self, handle: Handle) -> list[int]:
        self._check(handle)
        if handle.mig:
            raise _nvml_error(real_nvml.NVML_ERROR_INVALID_ARGUMENT)
        if not self.card.mig:  # a GeForce card: no MIG at all
            raise _nvml_error(real_nvml.NVML_ERROR_NOT_SUPPORTED)
        return [real_nvml.NVML_DEVICE_MIG_ENABLE, real_nvml.NVML_DEVICE_MIG_ENABLE]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Handle) -> int:
        self.nvmlDeviceGetMigMode(handle)
        return MIG_SLOTS

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Handle, index: int) -> Handle:
        self.nvmlDeviceGetMigMode(handle)
        instances = {0: self.neighbour, 3: self.own}  # slots 1, 2, 4.. are empty
        if index not in instances:
            raise _nvml_error(real_nvml.NVML_ERROR_NOT_FOUND)
        return instances[index]

    def _used(self, handle: Handle) -> tuple[int, int]:
        """(used, total) bytes of a handle; driver-reserved memory apart."""
        own = self.card.others_mib * MIB + self.cuda.process_bytes()
        neighbour = self.card.neighbour_mib * MIB
        if handle is self.own:
            return own, self.card.total_mib * MIB
        if handle is self.neighbour:
            return neighbour, self.card.total_mib * MIB
        if self.card.mig:  # the whole GPU holds both instances
            return own + neighbour, self.card.gpu_total_mib * MIB
        return own, self.card.total_mib * MIB  # a GPU NVML lists, not the CUDA device

    def nvmlDeviceGetMemoryInfo(self, handle: Handle, version=None):
        self._check(handle)
        used, total = self._used(handle)
        reserved = self.card.driver_reserved_mib * MIB
        free = total - reserved - used
        if not version:  # version 1: driver-reserved memory counts as used
            return types.SimpleNamespace(total=total, free=free, used=used + reserved)
        if version != real_nvml.nvmlMemory_v2:
            raise _nvml_error(real_nvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        return types.SimpleNamespace(
            version=version, total=total, reserved=reserved, free=free, used=used
        )

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Handle) -> list:
        self._check(handle)
        if handle is self.neighbour:
            return [self._process(OTHER_PID, self.card.neighbour_mib * MIB)]
        # A MIG-enabled GPU's own handle lists processes without their memory.
        known = self.card.process_figure and not (self.card.mig and handle is self.gpu)
        found = [self._process(OTHER_PID, self.card.others_mib * MIB, known)]
        if self.cuda.initialized:
            found.append(self._process(os.getpid(), self.cuda.process_bytes(), known))
        return found

    @staticmethod
    def _process(pid: int, used: int, known: bool = True):
        # pynvml turns NVML_VALUE_NOT_AVAILABLE into None.
        return types.SimpleNamespace(
            pid=pid, usedGpuMemory=used if known else None, gpuInstanceId=0, computeInstanceId=0
        )

    def module(self) -> types.ModuleType:
        """A pynvml look-alike: pynvml's own errors and constants, only these functions."""
        fake = types.ModuleType("pynvml")
        for name in dir(real_nvml):
            if name.startswith(("NVMLError", "NVML_")) or name == "nvmlMemory_v2":
                setattr(fake, name, getattr(real_nvml, name))
        for name in dir(self):
            if name.startswith("nvml"):
                setattr(fake, name, getattr(self, name))
        return fake


@dataclass
class StandIn:
    card: Card
    cuda: FakeCuda
    nvml: FakeNvml

    @property
    def calls(self) -> list:
        return self.cuda.calls

    def allocate(self, mib: float) -> None:
        self.cuda.allocate(int(mib * MIB))

    def free(self, mib: float) -> None:
        self.cuda.free(int(mib * MIB))


@pytest.fixture
def fake_cuda(monkeypatch):
    """fake_cuda(**Card fields) -> StandIn: torch.cuda and pynvml replaced for this test."""

    def install(**fields) -> StandIn:
        card = Card(**fields)
        cuda = FakeCuda(card)
        nvml = FakeNvml(card, cuda)
        for name in TORCH_FUNCTIONS:
            monkeypatch.setattr(torch.cuda, name, getattr(cuda, name))
        monkeypatch.setitem(sys.modules, "pynvml", nvml.module())
        return StandIn(card, cuda, nvml)

    return install
