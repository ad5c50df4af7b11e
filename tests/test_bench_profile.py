"""`python -m bench.profile` on the tiny preset (CPU): the trace files, the phase ranges in them,
the summary row and operator table, TensorBoard's PyTorch Profiler plugin serving the run, and
the bad-input paths. One profiling sweep (train and sample) is shared by the module."""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch

from bench import profile, profile_summary
from bench.spec import BenchSpec
from bench.worker import RunContext

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
BASE = ["--preset", "tiny", "--device", "cpu", "--batch", "2"]
TRAIN = BenchSpec(preset="tiny", image_size=16, attention="8", batch=2, accum=1)
SAMPLE = TRAIN.replace(sampler="ddim", sampling_steps=50)


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.profile", *args], env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("profile")
    done = run_cli(*BASE, "--target", "train,sample", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def rows(out: Path) -> list[dict]:
    with open(out / "profile.csv", newline="") as f:
        return list(csv.DictReader(f))


def trace_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.pt.trace.json*"))


def load(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)


# ----- files, phases, summary ----------------------------------------------------------------

def test_one_trace_folder_per_spec_named_by_spec(profiled):
    traces = profiled / "traces"
    assert sorted(p.name for p in traces.iterdir()) == sorted([TRAIN.name, SAMPLE.name])
    for spec in (TRAIN, SAMPLE):
        files = trace_files(traces / spec.name)
        assert len(files) == 1  # --repeat 1: one cycle, one file
        assert files[0].name.startswith(spec.name + ".")  # worker name = spec name, stable
    by_sampler = {r["sampler"]: r for r in rows(profiled)}
    assert by_sampler["none"]["trace_dir"] == str(traces / TRAIN.name)
    assert by_sampler["ddim"]["trace_dir"] == str(traces / SAMPLE.name)


def test_phase_ranges_are_in_the_trace_inside_each_profiled_step(profiled):
    trace = load(trace_files(profiled / "traces" / TRAIN.name)[0])
    assert trace["profile_memory"] and trace["record_shapes"]
    ranges = [e for e in trace["traceEvents"]
              if e.get("cat") == "user_annotation" and e.get("ph") == "X"]
    steps = [e for e in ranges if e["name"].startswith("ProfilerStep#")]
    assert len(steps) == 2  # --steps 2 active steps (wait 1 and warm-up 1 are not kept)
    for phase in profile.TRAIN_PHASES:
        found = [e for e in ranges if e["name"] == phase]
        assert len(found) == 2, phase  # once per optimizer step at accum 1
        for event in found:
            assert any(s["ts"] <= event["ts"] and event["ts"] + event["dur"] <= s["ts"] + s["dur"]
                       for s in steps), f"{phase} outside every ProfilerStep range"
    sampling = load(trace_files(profiled / "traces" / SAMPLE.name)[0])
    names = [e["name"] for e in sampling["traceEvents"] if e.get("cat") == "user_annotation"]
    assert names.count("denoise_step") == 2


def test_phase_shares_add_up_to_the_step_time(profiled):
    by_sampler = {r["sampler"]: r for r in rows(profiled)}
    train = by_sampler["none"]
    assert train["status"] == "ok" and int(train["profiled_steps"]) == 2
    shares = [float(train[f"phase_{p}_pct"]) for p in profile.TRAIN_PHASES]
    assert all(s >= 0 for s in shares)
    # The ranges cover Trainer.step: what falls outside (model.train(), zero_grad, the sync) is
    # within 10%; the stacks' Python tracer makes model.train() a few percent of a tiny step.
    assert 90.0 <= sum(shares) <= 100.0 + 1e-6
    assert sum(shares) + float(train["other_pct"]) == pytest.approx(100.0)
    # The same shares, recomputed from the trace the row came from.
    trace = load(trace_files(Path(train["trace_dir"]))[0])
    durs: dict[str, float] = {}
    step_us = 0.0
    for e in trace["traceEvents"]:
        if e.get("cat") == "user_annotation" and e.get("ph") == "X":
            if e["name"].startswith("ProfilerStep#"):
                step_us += e["dur"]
            durs[e["name"]] = durs.get(e["name"], 0.0) + e["dur"]
    assert float(train["step_ms"]) == pytest.approx(step_us / 2 / 1000, rel=1e-6)
    for p in profile.TRAIN_PHASES:
        assert float(train[f"phase_{p}_pct"]) == pytest.approx(100 * durs[p] / step_us, rel=1e-6)
    sample = by_sampler["ddim"]
    assert sample["phase_forward_pct"] == ""  # training phases are empty for sampling
    assert 95.0 <= float(sample["phase_denoise_step_pct"]) <= 100.0 + 1e-6


def test_summary_files_and_peak_memory(profiled):
    for row in rows(profiled):
        assert 0 < float(row["peak_memory_mib"]) < 1024
        assert row["peak_alloc_mib"] == ""  # a CUDA figure is never reported from a CPU
        with open(Path(row["trace_dir"]) / profile.OPERATORS_FILE, newline="") as f:
            ops = list(csv.DictReader(f))
        names = [op["name"] for op in ops]
        assert not any(n.startswith("ProfilerStep") or n in profile.PHASES for n in names)
        times = [float(op["self_cpu_ms"]) for op in ops]
        assert times == sorted(times, reverse=True)
        assert sum(float(op["self_cpu_pct"]) for op in ops) == pytest.approx(100.0)
        assert any("convolution" in n for n in names[:5])
    report = (profiled / "profile.md").read_text()
    assert "phase_backward_pct" in report and "Top 15 operators of" in report
    assert "aten::" in report


def test_traces_carry_call_stacks_and_module_events(profiled):
    trace = load(trace_files(profiled / "traces" / TRAIN.name)[0])
    assert trace["with_stack"]
    convolutions = [e for e in trace["traceEvents"]
                    if e.get("cat") == "cpu_op" and e["name"] == "aten::convolution"]
    assert convolutions
    for event in convolutions:  # the field the plugin's View CallStack reads
        stack = event["args"]["Call stack"]
        assert "ddpm/unet.py" in stack and "nn.Module: UNet_0" in stack
    modules = {e["name"] for e in trace["traceEvents"] if e.get("cat") == "python_function"}
    assert {"nn.Module: UNet_0", "nn.Module: AttentionBlock_0"} <= modules


def test_summary_html_is_one_self_contained_page(profiled):
    for row in rows(profiled):
        page = (Path(row["trace_dir"]) / profile_summary.SUMMARY_FILE).read_text()
        links = re.findall(r'(?:src|href)="([^"]*)"', page)
        assert len(links) == 2 and all(u.startswith("data:image/png;base64,") for u in links)
        assert "http" not in page and "<script" not in page
        assert f"{float(row['step_ms']):.2f} ms per step" in page
        for heading in ("Phase breakdown", "Top operators by self CPU time",
                        "Memory over the profiled steps"):
            assert heading in page
    assert profile_summary.SUMMARY_FILE in (profiled / "profile.md").read_text()


def test_no_stack_leaves_stacks_out(tmp_path):
    done = run_cli(*BASE, "--no-stack", "--wait", "0", "--steps", "1", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = rows(tmp_path)
    trace = load(trace_files(Path(row["trace_dir"]))[0])
    assert not trace.get("with_stack")
    assert not any(e.get("cat") == "python_function" or "Call stack" in (e.get("args") or {})
                   for e in trace["traceEvents"])
    assert (Path(row["trace_dir"]) / profile_summary.SUMMARY_FILE).is_file()


# ----- TensorBoard's PyTorch Profiler plugin ---------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(base: str, route: str, **params):
    url = f"{base}/data/plugin/pytorch_profiler/{route}?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200, url
        body = response.read()
        if response.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
    return json.loads(body)


def test_tensorboard_plugin_serves_the_run(profiled, tmp_path):
    pytest.importorskip("torch_tb_profiler")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "tensorboard.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(profiled / "traces"),
         "--port", str(port), "--host", "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT,
        env=ENV)
    try:
        run = TRAIN.name
        deadline = time.monotonic() + 120  # the plugin parses traces in the background
        runs = None
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "tensorboard.log").read_text()[-2000:]
            try:
                runs = get_json(base, "runs")
                if run in runs["runs"] and not runs["loading"]:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(1)
        assert runs is not None and run in runs["runs"], runs
        assert SAMPLE.name in runs["runs"]

        views = get_json(base, "views", run=run)
        for view in ("Overview", "Operator", "Trace", "Memory", "Module"):  # Module: from stacks
            assert view in views, views
        workers = get_json(base, "workers", run=run, view="Overview")
        assert workers == [TRAIN.name]
        spans = get_json(base, "spans", run=run, worker=TRAIN.name)
        assert len(spans) == 1
        query = {"run": run, "worker": TRAIN.name, "span": spans[0]}

        overview = get_json(base, "overview", **query)
        assert overview["steps"]["rows"], overview.keys()  # one row per profiled step
        assert {"title": "Device Type", "value": "CPU"} in overview["environments"]
        table = get_json(base, "operation/table", group_by="Operation", **query)
        names = [r["name"] for r in table["data"]["rows"]] if isinstance(table["data"], dict) \
            else [r["name"] for r in table["data"]]
        assert any("convolution" in n for n in names)
        memory = get_json(base, "memory", **query)
        assert memory["rows"], memory.keys()
        assert "CPU" in json.dumps(memory["rows"])
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


# ----- options and bad input --------------------------------------------------------------------

def test_specs_from_the_target_axis():
    parser = profile.build_profile_parser()
    args = parser.parse_args(
        [*BASE, "--accum", "1,2", "--target", "train,sample", "--wait", "0", "--top", "3"])
    specs = profile.make_specs(args)
    options = profile.options(RunContext(Path("."), "r", profile.profile_options(args)))
    # Accumulation changes training only: one sampling spec for both accum values.
    assert [(s.accum, s.sampler, s.sampling_steps) for s in specs] == [
        (1, "none", 0), (1, "ddim", 50), (2, "none", 0)]
    assert len({s.name for s in specs}) == 3
    assert options["wait"] == 0 and options["top"] == 3 and options["with_stack"]
    no_stack = profile.profile_options(parser.parse_args([*BASE, "--no-stack"]))
    assert not no_stack["with_stack"]


@pytest.mark.parametrize("args, message", [
    (["--target", "infer"], "--target 'infer' is not allowed"),
    (["--wait", "-1"], "--wait -1 is not allowed"),
    (["--repeat", "0"], "--repeat 0 is not allowed"),
    (["--top", "0"], "--top 0 is not allowed"),
    (["--steps", "0"], "--steps 0 is not allowed"),
    (["--find-max-batch"], "--find-max-batch"),
    (["--memory-snapshot"], "--memory-snapshot records the CUDA caching allocator"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    done = run_cli(*BASE, "--out", str(tmp_path / "out"), *args, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "profile.csv").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_memory_snapshot_and_device_times(tmp_path):
    done = run_cli("--preset", "tiny", "--device", "cuda", "--batch", "2", "--memory-snapshot",
                   "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = rows(tmp_path)
    assert row["status"] == "ok", row["error"]
    snapshot = Path(row["memory_snapshot"])
    assert snapshot.is_file() and snapshot.parent == Path(row["trace_dir"])
    import pickle

    with open(snapshot, "rb") as f:
        data = pickle.load(f)
    assert data["segments"] and any(t for t in data["device_traces"])
    assert float(row["peak_alloc_mib"]) > 0 and float(row["peak_memory_mib"]) > 0
    with open(Path(row["trace_dir"]) / profile.OPERATORS_FILE, newline="") as f:
        assert any(float(op["self_device_ms"]) > 0 for op in csv.DictReader(f))
