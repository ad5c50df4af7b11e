"""Every CUDA- and NVML-touching function, run through the strict stand-in
(tests/helpers/cuda_standin.py)
that holds it to torch's and NVML's argument contracts: device resolution, the per-harness setup,
the budget cap, allocator peaks, the context figure, the NVML monitor (version 2, this process's
own figure, MIG instances, no figure of another device), the environment record, OOM
classification, the capability check, the max-batch probe, and the harnesses reaching their first
real CUDA operation."""

from __future__ import annotations

import argparse
import csv
from types import SimpleNamespace

import pytest
import torch

from bench import harnesses
from bench import throughput as throughput_command
from bench.core import RunContext
from bench.harnesses import memory, throughput
from bench.measure import cuda, monitor
from bench.models import workload
from bench.parsers import SpecError, parse_device
from bench.passes import training
from bench.spec import BenchSpec
from bench.sweep.worker import run_spec
from bench.tables.env import describe, environment
from ddpm.cli import train as train_cli
from ddpm.cli.args import device_arg
from tests.helpers.cli_checks import check_one_line_error
from tests.helpers.cuda_standin import NO_DRIVER

CUDA0 = torch.device("cuda:0")


@pytest.fixture(autouse=True)
def no_baseline(monkeypatch):
    """Each test starts as a fresh worker process: no NVML baseline taken yet."""
    monkeypatch.setattr(monitor, "_BASELINE", None)


def tiny(**changes) -> BenchSpec:
    fields = dict(
        preset="tiny",
        image_size=16,
        attention="8",
        batch=2,
        accum=1,
        measure_steps=1,
        warmup_steps=1,
        device="cuda:0",
    )
    return BenchSpec(**{**fields, **changes})


# ----- the stand-in refuses what torch refuses ----------------------------------------------------


def test_standin_refuses_an_index_less_device_where_torch_does(fake_cuda):
    fake_cuda()
    with pytest.raises(ValueError, match="Expected a torch.device with a specified index"):
        torch.cuda.set_device(torch.device("cuda"))
    with pytest.raises(ValueError, match="Expected a torch.device with a specified index"):
        torch.cuda.set_per_process_memory_fraction(0.5, torch.device("cuda"))
    torch.cuda.mem_get_info(torch.device("cuda"))  # optional=True: the current device
    torch.cuda.reset_peak_memory_stats("cuda")


def test_standin_refuses_a_missing_device_and_bad_fractions(fake_cuda):
    fake_cuda()
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        torch.cuda.set_device(1)
    with pytest.raises(AssertionError, match="Invalid device id"):
        torch.cuda.get_device_properties("cuda:1")
    with pytest.raises(ValueError, match="Allowed range"):
        torch.cuda.set_per_process_memory_fraction(1.5, CUDA0)
    with pytest.raises(TypeError, match="must be `float`"):
        torch.cuda.set_per_process_memory_fraction(0, CUDA0)
    with pytest.raises(TypeError):
        torch.cuda.empty_cache(CUDA0)  # torch's takes no device


# ----- device resolution -------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["auto", "cuda", "cuda:0"])
def test_parse_device_gives_an_indexed_device(fake_cuda, text):
    fake_cuda()
    assert parse_device(text) == "cuda:0"
    assert device_arg(text) == "cuda:0"


def test_index_less_cuda_means_the_current_device(fake_cuda):
    fake_cuda(count=2, current=1)
    assert parse_device("cuda") == "cuda:1" and device_arg("cuda") == "cuda:1"
    assert cuda.resolve("cuda") == torch.device("cuda:1")
    assert parse_device("cuda:0") == "cuda:0" and cuda.resolve("cpu") == torch.device("cpu")


def test_a_device_past_the_last_is_one_line(fake_cuda):
    fake_cuda()
    with pytest.raises(SpecError) as info:
        parse_device("cuda:1")
    assert "cuda:1" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(argparse.ArgumentTypeError, match="cuda:1"):
        device_arg("cuda:1")


def test_cli_device_past_the_last_is_one_line_exit_2(fake_cuda, tmp_path, capsys):
    fake_cuda()
    for main, args in (
        (throughput_command.main, ["--preset", "tiny", "--out", str(tmp_path / "o")]),
        (train_cli.main, ["--preset", "tiny", "--out", str(tmp_path / "t")]),
    ):
        with pytest.raises(SystemExit) as info:
            main([*args, "--device", "cuda:1"])
        captured = capsys.readouterr()
        check_one_line_error("cuda:1", info.value.code, captured.err, captured.out)
    assert not any(tmp_path.iterdir())


# ----- the per-harness setup, the budget cap, the peaks ------------------------------------------


def test_start_selects_the_indexed_device_and_measures_the_context(fake_cuda):
    gpu = fake_cuda(context_mib=300, others_mib=200)
    figures = cuda.start(cuda.resolve("cuda"), "fp32")
    assert ("set_device", 0) in gpu.calls
    assert figures == {"measured_context_mib": 500.0}  # context + the other process
    assert cuda.start(torch.device("cpu"), "bf16") == {}


def test_context_leaves_out_the_allocator_cache(fake_cuda):
    gpu = fake_cuda(context_mib=300, others_mib=0)
    gpu.allocate(1000)
    gpu.free(1000)  # still reserved by the cache
    assert cuda.context_mib(CUDA0) == 300.0


def test_cap_to_budget_sets_a_float_fraction_on_the_indexed_device(fake_cuda):
    gpu = fake_cuda(total_mib=8192)
    assert cuda.cap_to_budget(CUDA0, budget_mib=4096, context_mib=500) == 3596 / 8192
    assert gpu.cuda.fraction == 3596 / 8192
    assert ("set_per_process_memory_fraction", 0) in gpu.calls
    assert cuda.cap_to_budget(CUDA0, budget_mib=100, context_mib=500) == 0.0  # nothing fits
    gpu.cuda.fraction = None
    assert cuda.cap_to_budget(CUDA0, budget_mib=9000, context_mib=500) is None  # within budget
    assert gpu.cuda.fraction is None


def test_peaks_reset_and_read(fake_cuda):
    gpu = fake_cuda()
    gpu.allocate(300)
    gpu.free(200)
    assert cuda.peaks_mib(CUDA0) == (300.0, 300.0)
    cuda.reset_peaks(CUDA0, release_cache=False)
    assert cuda.peaks_mib(CUDA0) == (100.0, 300.0)  # the cache stays reserved
    cuda.reset_peaks(CUDA0)
    assert cuda.peaks_mib(CUDA0) == (100.0, 100.0)  # the cache went back to the driver
    gpu.allocate(50)
    assert cuda.peaks_mib(CUDA0) == (150.0, 150.0)


# ----- the timed pass: warm-up peaks apart from the steady state --------------------------------


class AdamLikeTrainer:
    """Parameters at build; each step holds activations until backward ends, and the first step
    then creates the optimizer state, as AdamW does; the first step may also use a one-off
    workspace (an autotuner's). Frees what it holds when dropped."""

    def __init__(
        self, gpu, params_mib=100, activations_mib=300, state_mib=200, first_mib=0, log=None
    ):
        self.gpu, self.steps, self.held = gpu, 0, 0
        self.activations_mib, self.state_mib, self.first_mib = activations_mib, state_mib, first_mib
        self.log = [] if log is None else log  # steps per trainer, kept after it is dropped
        self.log.append(0)
        self.slot = len(self.log) - 1
        self._take(params_mib)

    def _take(self, mib):
        self.gpu.allocate(mib)
        self.held += mib

    def _give(self, mib):
        self.gpu.free(mib)
        self.held -= mib

    def step(self, images, on_micro_batch=None):
        self.steps += 1
        self.log[self.slot] = self.steps
        self._take(self.activations_mib)
        if self.steps == 1:
            self._take(self.first_mib)
            self._give(self.first_mib)
        self._give(self.activations_mib)
        if self.steps == 1:
            self._take(self.state_mib)

    def __del__(self):
        self.gpu.free(self.held)


def test_timed_training_reports_warm_up_and_steady_state_peaks(fake_cuda, monkeypatch):
    gpu = fake_cuda(context_mib=300, others_mib=200)
    monitor.take_baseline()  # as the worker does, before CUDA starts
    steps = []
    monkeypatch.setattr(
        workload,
        "build_trainer",
        lambda spec, device: AdamLikeTrainer(
            gpu, params_mib=100, activations_mib=300, state_mib=200, first_mib=1000, log=steps
        ),
    )
    figures = training.timed_training(tiny(measure_steps=2), CUDA0)
    assert steps == [3]
    # Warm-up: parameters, activations and the one-off workspace.
    assert (figures["warmup_peak_alloc_mib"], figures["warmup_peak_reserved_mib"]) == (1400, 1400)
    # Steady state: parameters, optimizer state and activations; the cache keeps what it got.
    assert (figures["peak_alloc_mib"], figures["peak_reserved_mib"]) == (600, 1400)
    assert figures["nvml_peak_mib"] == 200 + 300 + 1400  # others + context + cache
    assert figures["nvml_process_peak_mib"] == 300 + 1400  # this process alone
    assert figures["nvml_baseline_mib"] == 200  # before this process's context
    assert ("synchronize", 0) in gpu.calls


# ----- the NVML monitor ---------------------------------------------------------------------------


def test_monitor_uses_memory_info_v2_and_this_process_figure(fake_cuda):
    gpu = fake_cuda(context_mib=300, others_mib=200, driver_reserved_mib=250)
    monitor.take_baseline()
    cuda.select(CUDA0)
    with monitor.Monitor(CUDA0) as m:
        gpu.allocate(1000)
    # Version 1 would count the 250 MiB the driver reserves as used.
    assert m.figures()["nvml_peak_mib"] == 1500
    assert m.figures()["nvml_process_peak_mib"] == 1300
    assert m.figures()["nvml_baseline_mib"] == 200


def test_monitor_without_a_per_process_figure(fake_cuda):
    gpu = fake_cuda(process_figure=False)
    cuda.select(CUDA0)
    with monitor.Monitor(CUDA0) as m:
        gpu.allocate(100)
    assert m.nvml_peak_mib == 200 + 300 + 100
    assert m.nvml_process_peak_mib is None


def test_baseline_is_not_taken_once_cuda_started(fake_cuda):
    fake_cuda()
    cuda.select(CUDA0)
    monitor.take_baseline()
    with monitor.Monitor(CUDA0) as m:
        pass
    assert m.nvml_baseline_mib is None and m.nvml_peak_mib == 500


@pytest.mark.parametrize("lookup", [True, False], ids=["by-uuid", "by-walking-instances"])
def test_monitor_under_mig_reads_this_instance(fake_cuda, lookup):
    gpu = fake_cuda(
        mig=True,
        mig_lookup_by_uuid=lookup,
        total_mib=10240,
        context_mib=300,
        others_mib=0,
        neighbour_mib=5000,
    )
    monitor.take_baseline()
    cuda.select(CUDA0)
    with monitor.Monitor(CUDA0) as m:
        gpu.allocate(700)
    assert m.nvml_peak_mib == 1000  # not the whole GPU (6000), not the neighbour (5000)
    assert m.nvml_process_peak_mib == 1000
    assert m.nvml_baseline_mib == 0


def test_monitor_reports_nothing_for_a_device_nvml_cannot_name(fake_cuda):
    gpu = fake_cuda(nvml_knows_device=False)
    cuda.select(CUDA0)
    monitor.take_baseline()
    with monitor.Monitor(CUDA0) as m:
        gpu.allocate(100)
    assert m.figures() == {
        "nvml_peak_mib": None,
        "nvml_process_peak_mib": None,
        "nvml_baseline_mib": None,
        "cpu_util_pct": m.cpu_percent,
    }


# ----- the environment record ---------------------------------------------------------------------


def test_environment_record_on_cuda(fake_cuda, monkeypatch):
    fake_cuda(name="NVIDIA GeForce RTX 3070", capability=(8, 6), total_mib=8192)
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    monkeypatch.setenv("CUDA_MODULE_LOADING", "LAZY")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    record = environment("cuda")
    assert record["device"] == "cuda:0" and record["device_name"] == "NVIDIA GeForce RTX 3070"
    assert record["device_memory_mib"] == 8192 and record["compute_capability"] == "8.6"
    assert record["driver"] == "550.54.15" and record["cudnn_benchmark"] is True
    assert record["pytorch_cuda_alloc_conf"] == "expandable_segments:True"
    assert record["cuda_module_loading"] == "LAZY"
    assert record["tf32_matmul"] is torch.backends.cuda.matmul.allow_tf32
    assert record["tf32_cudnn"] is torch.backends.cudnn.allow_tf32
    line = describe(record)
    assert "\n" not in line and "compute capability 8.6" in line and "driver 550.54.15" in line


# ----- out of memory, however it arrives ----------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED",
        "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported",
        "cudaErrorMemoryAllocation: out of memory",
        "CUDA driver error: out of memory",
        "Triton Error [CUDA]: out of memory",
    ],
)
def test_library_out_of_memory_is_oom(message):
    assert cuda.is_oom(RuntimeError(message))


def test_what_is_and_is_not_oom():
    assert cuda.is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    wrapped = RuntimeError("backend compiler failed")
    wrapped.__cause__ = RuntimeError("CUDA error: out of memory")
    assert cuda.is_oom(wrapped)
    assert not cuda.is_oom(RuntimeError("shape mismatch"))
    assert not cuda.is_oom(RuntimeError(f"{NO_DRIVER} on your system"))
    assert not cuda.is_oom(ValueError("CUDA error: out of memory"))  # not a CUDA error at all


def test_worker_row_for_a_library_oom_is_oom(monkeypatch, tmp_path):
    def measure(spec, context):
        raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate`")

    monkeypatch.setattr(throughput.HARNESS, "measure", measure)
    result = run_spec(
        harnesses.named("throughput"), tiny(device="cpu"), RunContext(tmp_path, "run")
    )
    assert result["status"] == "oom" and "CUBLAS_STATUS_ALLOC_FAILED" in result["error"]
    monkeypatch.setattr(throughput.HARNESS, "measure", lambda spec, context: 1 / 0)
    assert (
        run_spec(harnesses.named("throughput"), tiny(device="cpu"), RunContext(tmp_path, "run"))[
            "status"
        ]
        == "error"
    )


# ----- the capability check ---------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["bf16", "tf32"])
def test_ampere_precisions_refused_below_8_0(fake_cuda, precision):
    fake_cuda(name="Tesla T4", capability=(7, 5))
    assert torch.cuda.is_bf16_supported()  # emulation makes torch say yes
    with pytest.raises(cuda.CapabilityError) as info:
        cuda.start(CUDA0, precision)
    line = str(info.value)
    assert "\n" not in line and precision in line and "7.5" in line and "Tesla T4" in line


def test_fp32_and_fp16_run_on_7_5_and_bf16_on_8_6(fake_cuda):
    fake_cuda(capability=(7, 5))
    cuda.check_capability(CUDA0, "fp32")
    cuda.check_capability(CUDA0, "fp16")
    fake_cuda(capability=(8, 6))
    cuda.check_capability(CUDA0, "bf16")
    fake_cuda(capability=(8, 9))  # no sm_89 in this build: sm_86 code runs on it
    cuda.check_capability(CUDA0, "bf16")


@pytest.mark.parametrize(
    "capability, archs",
    [
        ((6, 1), ("sm_75", "sm_80", "sm_86", "sm_90")),  # a Pascal card on a build without it
        ((8, 6), ("sm_75", "sm_90")),  # sm_75 code is another major version
        ((8, 0), ("sm_90a", "compute_90")),  # 'a' code and PTX of a newer card
    ],
)
def test_missing_architecture_is_refused(fake_cuda, capability, archs):
    fake_cuda(capability=capability, arch_list=archs)
    with pytest.raises(cuda.CapabilityError) as info:
        cuda.check_capability(CUDA0, "fp32")
    assert "\n" not in str(info.value) and f"sm_{capability[0]}{capability[1]}" in str(info.value)


@pytest.mark.parametrize(
    "arch, capability, runs",
    [
        ("sm_86", 86, True),
        ("sm_86", 89, True),
        ("sm_86", 80, False),
        ("sm_80", 90, False),
        ("sm_90a", 90, True),
        ("sm_90a", 91, False),
        ("compute_80", 90, True),
        ("compute_90", 86, False),
        ("sm_100f", 103, True),
        ("sm_120", 121, True),
    ],
)
def test_which_code_runs_on_which_card(arch, capability, runs):
    assert cuda.runs_on(arch, capability) is runs


# A stand-in for the fake-tensor prediction: on CUDA's stand-in, AdamW would ask the (absent)
# driver whether a CUDA graph is being captured.
FITS = SimpleNamespace(fits=True, figures=lambda: {"fits": True})


# ----- the largest batch, measured -------------------------------------------------------------


def test_fits_measured_takes_two_optimizer_steps(fake_cuda, monkeypatch):
    gpu = fake_cuda(total_mib=8192)
    steps = []
    monkeypatch.setattr(
        workload, "build_trainer", lambda spec, device: AdamLikeTrainer(gpu, log=steps)
    )
    # One step peaks at 400 MiB (parameters + activations), two at 600 (+ AdamW's state).
    cuda.cap_to_budget(CUDA0, budget_mib=500, context_mib=0)
    assert training.fits_measured(tiny(), CUDA0) is False
    assert gpu.cuda.allocated == 0  # the failed probe's trainer is gone before the next
    cuda.cap_to_budget(CUDA0, budget_mib=700, context_mib=0)
    assert training.fits_measured(tiny(), CUDA0) is True
    assert steps == [2, 2] and gpu.cuda.allocated == 0


def test_fits_measured_counts_a_library_oom_as_no_and_raises_anything_else(fake_cuda, monkeypatch):
    fake_cuda()

    class Failing:
        def __init__(self, error):
            self.error = error

        def step(self, images, on_micro_batch=None):
            raise self.error

    monkeypatch.setattr(
        workload,
        "build_trainer",
        lambda spec, device: Failing(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")),
    )
    assert training.fits_measured(tiny(), CUDA0) is False
    monkeypatch.setattr(
        workload, "build_trainer", lambda spec, device: Failing(RuntimeError("shape mismatch"))
    )
    with pytest.raises(RuntimeError, match="shape mismatch"):
        training.fits_measured(tiny(), CUDA0)


def test_max_batch_on_cuda_searches_under_the_cap(fake_cuda, monkeypatch):
    gpu = fake_cuda(total_mib=8192)

    def build(spec, device):
        assert device == CUDA0
        return AdamLikeTrainer(gpu, params_mib=100, activations_mib=50 * spec.batch, state_mib=200)

    monkeypatch.setattr(workload, "build_trainer", build)
    monkeypatch.setattr(memory, "predict_fit", lambda spec, *card: FITS)
    # 800 MiB for the allocator: 100 + 200 + 50 b <= 800 up to b = 10 (one step would say 14).
    row = memory.max_batch_row(
        tiny(device="cuda", budget=1300, context_mib=500, find_max_batch=True)
    )
    assert row["batch"] == 10 and row["max_batch_source"] == "measured"
    assert ("set_device", 0) in gpu.calls and gpu.cuda.fraction == 800 / 8192


# ----- the harnesses reach their first real CUDA operation --------------------------------------


@pytest.mark.parametrize("device", ["cuda:0", "cuda"])
def test_memory_measure_on_cuda_reaches_the_first_real_operation(fake_cuda, device, monkeypatch):
    gpu = fake_cuda()
    monkeypatch.setattr(memory, "predict_fit", lambda spec, *card: FITS)
    with pytest.raises(RuntimeError, match=NO_DRIVER):
        memory.measure(tiny(device=device))
    assert ("set_device", 0) in gpu.calls
    assert ("mem_get_info", 0) in gpu.calls
    assert ("set_per_process_memory_fraction", 0) in gpu.calls


@pytest.mark.parametrize("device", ["cuda:0", "cuda"])
def test_throughput_measure_on_cuda_reaches_the_first_real_operation(fake_cuda, device, tmp_path):
    gpu = fake_cuda()
    with pytest.raises(RuntimeError, match=NO_DRIVER):
        throughput.measure(tiny(device=device), RunContext(tmp_path, "run"))
    assert ("set_device", 0) in gpu.calls


def test_worker_refuses_bf16_on_7_5_before_any_work(fake_cuda, tmp_path):
    gpu = fake_cuda(capability=(7, 5))
    result = run_spec(
        harnesses.named("memory"), tiny(precision="bf16"), RunContext(tmp_path, "run")
    )
    assert result["status"] == "error" and result["error"].startswith("CapabilityError: bf16")
    assert ("set_per_process_memory_fraction", 0) not in gpu.calls


def test_throughput_cli_on_cuda_gets_to_the_device(fake_cuda, tmp_path):
    gpu = fake_cuda()
    throughput_command.main(
        [
            "--preset",
            "tiny",
            "--image-size",
            "16",
            "--attention",
            "8",
            "--device",
            "cuda",
            "--precision",
            "fp32",
            "--inline",
            "--out",
            str(tmp_path),
        ]
    )
    with open(tmp_path / "throughput.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["device"] == "cuda:0" and row["status"] == "error"
    assert NO_DRIVER in row["error"]  # past set_device and every check, at the first kernel
    assert ("set_device", 0) in gpu.calls
