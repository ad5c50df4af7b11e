"""`python -m bench.profile` on the tiny preset (CPU): the trace files, the phase ranges and call
stacks in them, the summary row, operator table and summary.html, TensorBoard's PyTorch Profiler
plugin serving the run, its page and summary.html in headless Chromium (loopback only), and the
bad-input paths. One profiling sweep (train and sample) is shared by the module."""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import shutil
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

from bench import profile as profile_command
from bench.core import RunContext
from bench.passes import profile as profile_pass
from bench.spec import BenchSpec
from bench.tables import operators, profile_summary
from ddpm.precision import SAMPLE_PHASES, TRAIN_PHASES
from tests.helpers import headless
from tests.helpers.cli_checks import exit_of
from tests.helpers.spies import spy_on

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
BASE = ["--preset", "tiny", "--device", "cpu", "--batch", "2"]
TRAIN = BenchSpec(preset="tiny", image_size=16, attention="8", batch=2, accum=1)
SAMPLE = TRAIN.replace(sampler="ddim", sampling_steps=50)


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.profile", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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
    ranges = [
        e for e in trace["traceEvents"] if e.get("cat") == "user_annotation" and e.get("ph") == "X"
    ]
    steps = [e for e in ranges if e["name"].startswith("ProfilerStep#")]
    assert len(steps) == 2  # --steps 2 active steps (wait 1 and warm-up 1 are not kept)
    for phase in TRAIN_PHASES:
        found = [e for e in ranges if e["name"] == phase]
        assert len(found) == 2, phase  # once per optimizer step at accum 1
        for event in found:
            assert any(
                s["ts"] <= event["ts"] and event["ts"] + event["dur"] <= s["ts"] + s["dur"]
                for s in steps
            ), f"{phase} outside every ProfilerStep range"
    sampling = load(trace_files(profiled / "traces" / SAMPLE.name)[0])
    names = [e["name"] for e in sampling["traceEvents"] if e.get("cat") == "user_annotation"]
    assert names.count("denoise_step") == 2


def test_phase_shares_add_up_to_the_step_time(profiled):
    by_sampler = {r["sampler"]: r for r in rows(profiled)}
    train = by_sampler["none"]
    assert train["status"] == "ok" and int(train["profiled_steps"]) == 2
    shares = [float(train[f"phase_{p}_pct"]) for p in TRAIN_PHASES]
    assert all(s >= 0 for s in shares)
    # The ranges cover Trainer.step: what falls outside (model.train(), zero_grad, the sync) is
    # within 10%; the stacks' Python tracer makes model.train() a few percent of a tiny step.
    assert 90.0 <= sum(shares) <= 100.0 + 1e-6
    assert sum(shares) + float(train["other_pct"]) == pytest.approx(100.0)
    # The same shares, recomputed from the trace the row came from.
    durs, step_us = _ranges(train)
    assert float(train["step_ms"]) == pytest.approx(step_us / 2 / 1000, rel=1e-6)
    for p in TRAIN_PHASES:
        assert float(train[f"phase_{p}_pct"]) == pytest.approx(100 * durs[p] / step_us, rel=1e-6)
    sample = by_sampler["ddim"]
    assert sample["phase_forward_pct"] == ""  # training phases are empty for sampling
    # The denoise_step range is inside the profiled step and holds its work (the model's
    # forward); what is outside is the profiler's own bookkeeping, a few percent of a tiny step
    # whose share moves with the machine, so the share is held to its trace, not to a timing.
    durs, step_us = _ranges(sample)
    share = float(sample["phase_denoise_step_pct"])
    assert share == pytest.approx(100 * durs["denoise_step"] / step_us, rel=1e-6)
    assert 50.0 < share <= 100.0 + 1e-6


def _ranges(row: dict) -> tuple[dict[str, float], float]:
    """Each user range's total duration in the row's trace, and the profiled steps' (us)."""
    trace = load(trace_files(Path(row["trace_dir"]))[0])
    durs: dict[str, float] = {}
    step_us = 0.0
    for e in trace["traceEvents"]:
        if e.get("cat") == "user_annotation" and e.get("ph") == "X":
            if e["name"].startswith("ProfilerStep#"):
                step_us += e["dur"]
            durs[e["name"]] = durs.get(e["name"], 0.0) + e["dur"]
    return durs, step_us


def test_summary_files_and_peak_memory(profiled):
    for row in rows(profiled):
        assert 0 < float(row["peak_memory_mib"]) < 1024
        assert row["peak_alloc_mib"] == ""  # a CUDA figure is never reported from a CPU
        with open(Path(row["trace_dir"]) / operators.OPERATORS_FILE, newline="") as f:
            ops = list(csv.DictReader(f))
        names = [op["name"] for op in ops]
        assert not any(n.startswith("ProfilerStep") or n in profile_pass.PHASES for n in names)
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
    convolutions = [
        e
        for e in trace["traceEvents"]
        if e.get("cat") == "cpu_op" and e["name"] == "aten::convolution"
    ]
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
        # base64 image data may spell "http" by chance; the page's own text must not
        text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]*", "data:", page)
        assert "http" not in text and "<script" not in text
        assert f"{float(row['step_ms']):.2f} ms per step" in page
        for heading in (
            "Phase breakdown",
            "Top operators by self CPU time",
            "Memory over the profiled steps",
        ):
            assert heading in page
    assert profile_summary.SUMMARY_FILE in (profiled / "profile.md").read_text()


def test_no_stack_leaves_stacks_out(tmp_path):
    done = run_cli(*BASE, "--no-stack", "--wait", "0", "--steps", "1", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = rows(tmp_path)
    trace = load(trace_files(Path(row["trace_dir"]))[0])
    assert not trace.get("with_stack")
    assert not any(
        e.get("cat") == "python_function" or "Call stack" in (e.get("args") or {})
        for e in trace["traceEvents"]
    )
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


@pytest.fixture(scope="module")
def tensorboard(profiled, tmp_path_factory) -> str:
    """TensorBoard on loopback serving the module's traces, once the plugin has parsed them; its
    base URL."""
    pytest.importorskip("torch_tb_profiler")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("tensorboard") / "tensorboard.log"
    log = open(log_path, "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(profiled / "traces"),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 120  # the plugin parses traces in the background
        runs = None
        while time.monotonic() < deadline:
            assert server.poll() is None, log_path.read_text()[-2000:]
            try:
                runs = get_json(base, "runs")
                if TRAIN.name in runs["runs"] and not runs["loading"]:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(1)
        assert runs is not None and TRAIN.name in runs["runs"], runs
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def span_query(base: str, run: str = TRAIN.name) -> dict:
    spans = get_json(base, "spans", run=run, worker=run)
    assert len(spans) == 1
    return {"run": run, "worker": run, "span": spans[0]}


def test_tensorboard_plugin_serves_the_run(tensorboard):
    base, run = tensorboard, TRAIN.name
    assert SAMPLE.name in get_json(base, "runs")["runs"]
    views = get_json(base, "views", run=run)
    for view in ("Overview", "Operator", "Trace", "Memory", "Module"):  # Module: from the stacks
        assert view in views, views
    workers = get_json(base, "workers", run=run, view="Overview")
    assert workers == [TRAIN.name]
    query = span_query(base)

    overview = get_json(base, "overview", **query)
    assert overview["steps"]["rows"], overview.keys()  # one row per profiled step
    assert {"title": "Device Type", "value": "CPU"} in overview["environments"]
    table = get_json(base, "operation/table", group_by="Operation", **query)
    rows = table["data"]["rows"] if isinstance(table["data"], dict) else table["data"]
    assert any("convolution" in r["name"] for r in rows)
    assert all(r["has_call_stack"] for r in rows if "convolution" in r["name"])
    memory = get_json(base, "memory", **query)
    assert memory["rows"], memory.keys()
    assert "CPU" in json.dumps(memory["rows"])
    modules = json.dumps(get_json(base, "module", **query))
    assert "UNet" in modules and "AttentionBlock" in modules


# ----- the plugin's page and summary.html in headless Chromium -----------------------------------

# The plugin's page draws no view before Google Charts (www.gstatic.com) has loaded: offline, only
# its pickers and a spinner. This stand-in lets the views draw everything else; each chart records
# its type and row count and prints them where it would have drawn.
GOOGLE_CHARTS_STAND_IN = """(() => {
  class DataTable {
    constructor() { this.rows = []; }
    addColumn() {}
    addRows(rows) { this.rows.push(...rows); }
    addRow(row) { this.rows.push(row); }
    setProperty() {}
    getNumberOfRows() { return this.rows.length; }
    getValue(row, column) { return this.rows[row][column]; }
  }
  const drawn = window.standInCharts = [];
  const chart = (type) => class {
    constructor(element) { this.element = element; }
    draw(data) {
      drawn.push({type, rows: data.rows.length});
      this.element.textContent = `[stand-in for a Google Charts ${type}: ${data.rows.length} rows]`;
    }
    getSelection() { return []; }
    setSelection() {}
    clearChart() {}
  };
  const arrayToDataTable = (array) => Object.assign(new DataTable(), {rows: array.slice(1)});
  const known = {DataTable, arrayToDataTable, events: {addListener() {}}};
  window.google = {charts: {load: () => Promise.resolve()},
                   visualization: new Proxy(known, {get: (t, name) => t[name] || chart(name)})};
})();"""
# A folder (docs/) to keep the screenshots of docs/profile.md in: those named profile-*.png.
SCREENSHOTS = os.environ.get("PROFILE_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser():
    if headless.CHROMIUM is None:
        pytest.skip("needs Chromium (Debian: apt-get install chromium); .ci/run installs it")
    chromium = headless.Browser(width=1600, height=1000)
    yield chromium
    chromium.close()


def screenshot(browser, path: Path, width: int | None = None) -> Path:
    """A screenshot that shows something: more than a page's background and a few glyphs. With
    a width, the whole page that wide."""
    browser.screenshot(path, width=width)
    assert headless.colours(path) > 30, f"{path.name} is (nearly) blank"
    if SCREENSHOTS and path.name.startswith("profile-"):
        shutil.copy(path, Path(SCREENSHOTS) / path.name)
    return path


def plugin_page(browser, base: str, stand_in: bool) -> None:
    browser.new_tab()
    browser.open(
        f"{base}/data/plugin/pytorch_profiler/index.html",
        before=GOOGLE_CHARTS_STAND_IN if stand_in else None,
    )
    browser.wait_for("document.body.innerText.includes('Workers')")
    choose(browser, "Runs", TRAIN.name)
    # The page then asks for the run's views and workers and picks the first of each.
    browser.wait_for(
        f"{picker_js('Views')}.textContent === 'Overview' && "
        f"{picker_js('Workers')}.textContent === {json.dumps(TRAIN.name)}"
    )


def picker_js(picker: str) -> str:
    """JavaScript for the select element of one of the plugin's pickers."""
    return f"""[...document.querySelectorAll('li')]
        .find(e => e.textContent === {json.dumps(picker)}).nextElementSibling
        .querySelector('[aria-haspopup=listbox]')"""


def choose(browser, picker: str, value: str) -> None:
    """Picks value in one of the plugin's pickers (Runs, Views, Workers) as a click would; on a
    change, the stand-in's record of charts starts afresh."""
    select = picker_js(picker)
    if browser.evaluate(f"{select}.textContent === {json.dumps(value)}"):
        return
    browser.evaluate("window.standInCharts && window.standInCharts.splice(0)")
    browser.evaluate(f"""{select}
        .dispatchEvent(new MouseEvent('mousedown', {{bubbles: true, button: 0}}))""")
    browser.wait_for(f"""(() => {{
        const item = document.querySelector(`[role=listbox] li[data-value=${{CSS.escape(
            {json.dumps(value)})}}]`);
        if (!item) return false;
        item.click();
        return true; }})()""")
    browser.wait_for(f"{select}.textContent === {json.dumps(value)}")


def main_text(browser) -> str:
    return browser.evaluate("document.querySelector('main').innerText")


def charts(browser, kind: str) -> list[int]:
    """The row counts of the charts of this kind the view handed the stand-in, once one of them
    had rows."""
    browser.wait_for(f"window.standInCharts.some(c => c.type === '{kind}' && c.rows > 0)")
    return [c["rows"] for c in browser.evaluate("window.standInCharts") if c["type"] == kind]


def test_plugin_page_offline_shows_its_pickers_and_a_spinner(browser, tensorboard, tmp_path):
    plugin_page(browser, tensorboard, stand_in=False)
    pickers = browser.evaluate("document.body.innerText")
    assert "Runs" in pickers and "Views" in pickers and "Overview" in pickers
    assert TRAIN.name in pickers
    # Google Charts did not load, so the page never leaves its spinner, in any view.
    assert browser.evaluate("typeof google") == "undefined"
    for view in ("Overview", "Operator", "Memory"):
        choose(browser, "Views", view)
        assert browser.evaluate("!!document.querySelector('main [role=progressbar]')"), view
        assert main_text(browser).strip() == "", view
    choose(browser, "Views", "Overview")
    screenshot(browser, tmp_path / "profile-overview.png")


def test_plugin_overview_with_charts_stood_in(browser, tensorboard, tmp_path):
    plugin_page(browser, tensorboard, stand_in=True)
    choose(browser, "Views", "Overview")
    browser.wait_for("document.querySelector('main').innerText.includes('Device Type')")
    text = main_text(browser)
    assert "Configuration" in text and "Step Time Breakdown" in text and "CPU" in text
    assert charts(browser, "SteppedAreaChart")[-1] == 2  # one row per profiled step
    screenshot(browser, tmp_path / "overview-stand-in.png")


def test_plugin_operator_view_table_and_call_stacks(browser, tensorboard, tmp_path):
    plugin_page(browser, tensorboard, stand_in=True)
    choose(browser, "Views", "Operator")
    browser.wait_for(
        "document.querySelector('main').innerText.includes('aten::mkldnn_convolution')"
    )
    text = main_text(browser)
    assert "Operator View" in text and "Host Self Duration (us)" in text
    assert charts(browser, "PieChart")[-2:] == [10, 10]  # self and total time of the top 10
    # The operator's call stacks, then the frames of the first, as the two buttons show them.
    browser.evaluate("""[...document.querySelectorAll('main tr')]
        .find(r => r.cells[0] && r.cells[0].textContent === 'aten::mkldnn_convolution')
        .querySelector('button:not([disabled])').click()""")
    browser.wait_for("""(() => {
        const button = [...document.querySelectorAll('main button')]
            .find(b => b.textContent === 'View call frames');
        if (!button) return false;
        button.click();
        button.closest('tr').scrollIntoView();
        return true; })()""")
    frames = browser.wait_for("""(() => { const text = document.querySelector('main').innerText;
        return text.includes('ddpm/unet.py') && text; })()""")
    assert "nn.Module: UNet_0" in frames and "ddpm/train.py" in frames
    screenshot(browser, tmp_path / "profile-operator.png")


def test_plugin_trace_view_gets_the_trace(browser, tensorboard, tmp_path):
    plugin_page(browser, tensorboard, stand_in=True)
    choose(browser, "Views", "Trace")
    frame = browser.wait_for("document.querySelector('main iframe').src")
    assert frame.endswith("/trace_embedding.html")
    # The page fetched the run's trace for its viewer: the same file the plugin serves here.
    browser.wait_for(
        "performance.getEntriesByType('resource')"
        ".some(e => e.name.includes('/pytorch_profiler/trace?'))"
    )
    trace = get_json(tensorboard, "trace", **span_query(tensorboard))
    names = {e.get("name") for e in trace["traceEvents"]}
    assert "ProfilerStep#3" in names and set(TRAIN_PHASES) <= names
    screenshot(browser, tmp_path / "profile-trace.png")


def test_plugin_memory_view_curve_and_events(browser, tensorboard, profiled, tmp_path):
    plugin_page(browser, tensorboard, stand_in=True)
    choose(browser, "Views", "Memory")
    browser.wait_for("document.querySelector('main').innerText.includes('aten::')")
    text = main_text(browser)
    assert "Memory View" in text and "CPU" in text and "Allocation Time (ms)" in text
    # The curve the view would draw is the harness's: its peak is the row's peak_memory_mib.
    curve = get_json(tensorboard, "memory_curve", **span_query(tensorboard))["rows"]["CPU"]
    assert charts(browser, "LineChart")[-1] == len(curve) and len(curve) > 10
    (train,) = [r for r in rows(profiled) if r["sampler"] == "none"]
    assert max(point[1] for point in curve) == pytest.approx(float(train["peak_memory_mib"]))
    screenshot(browser, tmp_path / "profile-memory.png")


def test_plugin_module_view(browser, tensorboard, tmp_path):
    plugin_page(browser, tensorboard, stand_in=True)
    choose(browser, "Views", "Module")
    browser.wait_for("document.querySelector('main').innerText.includes('UNet_0')")
    text = main_text(browser)
    assert "Module View" in text and "AttentionBlock_0" in text and "ResBlock_0" in text
    assert charts(browser, "Timeline")[-1] > 100  # one bar per module call
    screenshot(browser, tmp_path / "profile-module.png")


@pytest.mark.parametrize("spec", [TRAIN, SAMPLE], ids=["train", "sample"])
def test_summary_page_in_the_browser(browser, profiled, tmp_path, spec):
    page = profiled / "traces" / spec.name / profile_summary.SUMMARY_FILE
    browser.new_tab()
    browser.open(page.as_uri())
    browser.wait_for(
        "document.readyState === 'complete' && document.images.length === 2 && "
        "[...document.images].every(i => i.complete && i.naturalWidth > 300)"
    )
    text = browser.evaluate("document.body.innerText")
    for heading in (
        "Phase breakdown",
        "Top operators by self CPU time",
        "Memory over the profiled steps",
    ):
        assert heading in text
    phases = TRAIN_PHASES if spec is TRAIN else SAMPLE_PHASES
    assert all(p in text for p in phases)
    with open(page.parent / operators.OPERATORS_FILE, newline="") as f:
        assert next(csv.DictReader(f))["name"] in text
    assert browser.evaluate("performance.getEntriesByType('resource').length") == 0
    width = browser.evaluate("Math.ceil(document.body.getBoundingClientRect().right) + 30")
    name = "profile-summary.png" if spec is TRAIN else "summary-sample.png"
    screenshot(browser, tmp_path / name, width=width)


# ----- the sampling workload is the shipped loop -------------------------------------------------


def test_sampling_workload_is_the_shared_loop(monkeypatch):
    """Each profiled sampling step is one step of ddpm.sample.sample_progressive (whose range is
    the denoise_step the table reads): a DDIM-50 run, advanced one step per call."""
    import ddpm.sample

    calls = spy_on(monkeypatch, ddpm.sample.sample_progressive)
    step, grad_mode = profile_pass.step_function(SAMPLE, torch.device("cpu"))
    with (
        grad_mode(),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof,
    ):
        for _ in range(3):
            step()
    assert len(calls) == 1 and len(calls[0].yielded) == 3
    sampler = calls[0].args[1]
    assert isinstance(sampler, ddpm.sample.DDIMSampler)
    assert sampler.timesteps[:3] == [980, 960, 940]  # floor(i 1000 / 50), i = 49, 48, 47
    assert [e.name for e in prof.events()].count("denoise_step") == 3


# ----- options and bad input --------------------------------------------------------------------


def test_specs_from_the_target_axis():
    parser = profile_command.build_profile_parser()
    args = parser.parse_args(
        [*BASE, "--accum", "1,2", "--target", "train,sample", "--wait", "0", "--top", "3"]
    )
    specs = profile_command.make_specs(args)
    options = profile_pass.options(
        RunContext(Path("."), "r", profile_command.profile_options(args))
    )
    # Accumulation changes training only: one sampling spec for both accum values.
    assert [(s.accum, s.sampler, s.sampling_steps) for s in specs] == [
        (1, "none", 0),
        (1, "ddim", 50),
        (2, "none", 0),
    ]
    assert len({s.name for s in specs}) == 3
    assert options["wait"] == 0 and options["top"] == 3 and options["with_stack"]
    no_stack = profile_command.profile_options(parser.parse_args([*BASE, "--no-stack"]))
    assert not no_stack["with_stack"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "infer"], "--target 'infer' is not allowed"),
        (["--wait", "-1"], "--wait -1 is not allowed"),
        (["--repeat", "0"], "--repeat 0 is not allowed"),
        (["--top", "0"], "--top 0 is not allowed"),
        (["--steps", "0"], "--steps 0 is not allowed"),
        (["--find-max-batch"], "--find-max-batch"),
        (["--memory-snapshot"], "--memory-snapshot records the CUDA caching allocator"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, message, capsys):
    status, stderr, stdout = exit_of(
        profile_command.main, [*BASE, "--out", str(tmp_path / "out"), *args], capsys
    )
    assert status == 2
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert stdout == ""
    assert not (tmp_path / "out" / "profile.csv").exists()


def test_bad_input_from_the_real_command_line(tmp_path):
    """One of the cases above as `python -m bench.profile`: the process's own exit and stderr."""
    done = run_cli(*BASE, "--out", str(tmp_path / "out"), "--top", "0", timeout=120)
    assert done.returncode == 2
    assert "--top 0 is not allowed" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "profile.csv").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_memory_snapshot_and_device_times(tmp_path):
    done = run_cli(
        "--preset",
        "tiny",
        "--device",
        "cuda",
        "--batch",
        "2",
        "--memory-snapshot",
        "--out",
        str(tmp_path),
    )
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
    with open(Path(row["trace_dir"]) / operators.OPERATORS_FILE, newline="") as f:
        assert any(float(op["self_device_ms"]) > 0 for op in csv.DictReader(f))
