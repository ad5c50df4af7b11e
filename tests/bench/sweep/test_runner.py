"""`python -m bench.memory` as a user runs it: a subprocess per sweep, its exit status, stderr,
result files (CSV, Markdown, JSON), a failing / OOM / hanging spec, SIGTERM and SIGINT, --resume,
and --inline. Every sweep uses the tiny preset, one measured step and no warm-up."""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

from bench import memory as memory_command
from bench.core import column_dtypes, spec_columns
from bench.figure import Figure
from bench.harnesses import memory as memory_harness
from bench.report import main as report_main
from bench.spec import BenchSpec
from bench.sweep.runner import spec_row
from bench.sweep.worker import FAULT_ENV
from bench.tables.results import ResultsTable, read_csv, read_rows

# Many subprocesses share a small CPU (and other jobs): one thread each, or OpenMP threads spin
# against each other and a one-second step takes ten.
ENV = {k: v for k, v in os.environ.items() if k != FAULT_ENV} | {"OMP_NUM_THREADS": "1"}
BASE = ["--preset", "tiny", "--device", "cpu", "--accum", "1", "--warmup", "0", "--steps", "1"]
COLUMNS = ResultsTable(Path("."), "memory", memory_harness.HARNESS.figure_columns).columns
HAS_GPU = torch.cuda.is_available()
MEMORY = memory_harness.HARNESS
# Figures a CPU run cannot give: empty, never 0.
CUDA_ONLY = [f.name for f in MEMORY.figures if f.cuda]
# At the peak (early in the first backward) few or no gradients exist yet.
NON_NEGATIVE = ["tracked_gradients_mib", "tracked_temporaries_mib"]
# Every other number of a CPU run is above 0: times, sizes, the card's sm, tiny's headroom.
POSITIVE = [
    f.name for f in MEMORY.figures if f.kind is float and not f.cuda and f.name not in NON_NEGATIVE
]


def command(*args, out: Path) -> list[str]:
    return [sys.executable, "-m", "bench.memory", *BASE, *map(str, args), "--out", str(out)]


def _default_sigint():
    # A shell's background job inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler; a user's terminal delivers it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args, out: Path, fault: str | None = None) -> subprocess.Popen:
    env = ENV if fault is None else ENV | {FAULT_ENV: fault}
    return subprocess.Popen(
        command(*args, out=out),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def kill_tree(proc: subprocess.Popen) -> None:
    """Clean up after a failed test: the sweep and the workers it started, by pid."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for p in [*children]:
        p.kill()
    proc.kill()
    proc.communicate()


def rows_of(out: Path) -> list[dict]:
    path = out / "memory.csv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def header_of(out: Path) -> list[str]:
    with (out / "memory.csv").open(newline="") as f:
        return next(csv.reader(f))


def md_rows(out: Path) -> list[str]:
    """The data rows of the Markdown table (after its header and separator lines)."""
    table = [ln for ln in (out / "memory.md").read_text().splitlines() if ln.startswith("|")]
    return table[2:]


def wait_for(condition, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"sweep exited {proc.returncode} before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            kill_tree(proc)
            pytest.fail(f"no {what} after {timeout:.0f} s")
        time.sleep(0.2)


def workers(proc: subprocess.Popen) -> list[psutil.Process]:
    found = []
    for p in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "bench.sweep.worker" in p.cmdline():
                found.append(p)
        except psutil.Error:
            pass
    return found


def sleeping(pid: int) -> bool:
    """The process's main thread sits in time.sleep (the injected hang)."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text().strip() == "hrtimer_nanosleep"
    except OSError:
        return False


def gone(p: psutil.Process) -> bool:
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def interrupt(
    proc: subprocess.Popen, sig: signal.Signals
) -> tuple[subprocess.CompletedProcess, list[psutil.Process]]:
    """Signal the sweep (not its process group) while its worker hangs; it must end by itself."""
    children = workers(proc)
    assert children, "no worker running"
    proc.send_signal(sig)
    result = finish(proc, timeout=30)
    for _ in range(50):  # a killed child is reaped by its parent before the parent exits
        if all(gone(p) for p in children):
            break
        time.sleep(0.1)
    left = [p for p in children if not gone(p)]
    for p in left:
        p.kill()
    return result, left


# ----- bad input: one line, exit 2, nothing touched ------------------------------------------

BAD = {
    "batch": (["--batch", "0"], "0"),
    "accum": (["--accum", "-1"], "-1"),
    "precision": (["--precision", "fp8"], "fp8"),
    "attention": (["--attention", "12"], "12"),  # tiny at 16px visits 16 and 8
    "budget": (["--budget", "8XB"], "8XB"),
    "device": (["--device", "cuda"], "cuda"),
    "preset": (["--preset", "nope"], "nope"),
    "compile": (["--compile", "fast"], "fast"),
    "steps": (["--steps", "0"], "0"),
    "image-size": (["--image-size", "15"], "15"),  # tiny halves once: multiple of 2
    "out": (None, "file"),  # --out under a regular file
}
# Checked in-process only (each subprocess is an interpreter start and `import torch`).
MORE_BAD = {
    "batch-word": (["--batch", "1,two"], "two"),
    "warmup": (["--warmup", "-1"], "-1"),
    "timeout": (["--timeout", "0"], "0"),
    "context": (["--cuda-context-mib", "-5"], "-5"),
    "checkpointing": (["--checkpointing", "yes"], "yes"),
    "attention-word": (["--attention", "mid"], "mid"),
    "image-size-word": (["--image-size", "big"], "big"),
    "unknown-option": (["--bogus", "1"], "--bogus"),
    "timeout-nan": (["--timeout", "nan"], "--timeout nan"),
    "context-nan": (["--cuda-context-mib", "nan"], "--cuda-context-mib nan"),
    "budget-400-digits": (["--budget", "9" * 400 + "GiB"], "9" * 400),
    "budget-in-bits": (["--budget", "8Gb"], "'8Gb' is in bits"),
    "attention-twice": (["--attention", "8+8"], "'8+8' names 8 twice"),
    "batch-twice": (["--batch", "2,1,2"], "'2,1,2' names 2 twice"),
    "seed-negative": (["--seed", "-1"], "-1"),
}
EXISTING = b"run_id,spec_id\nkept,by-an-earlier-run\n"
GPU_SKIP = pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(root.rglob("*"))
    }


def bad_setup(root: Path, args: list[str] | None) -> tuple[Path, list[str]]:
    """A results folder that already holds a CSV; for the `out` case, a file where a folder
    should be."""
    if args is None:
        (root / "file").write_bytes(EXISTING)
        return root / "file" / "out", []
    out = root / "results"
    out.mkdir()
    (out / "memory.csv").write_bytes(EXISTING)
    return out, args


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Every bad-input case at once (each is an interpreter start and a parse)."""
    runs = {}
    for case, (args, _) in BAD.items():
        if case == "device" and HAS_GPU:
            continue
        root = tmp_path_factory.mktemp(f"bad-{case}")
        out, args = bad_setup(root, args)
        runs[case] = (root, snapshot(root), start(*args, out=out))
    return {
        case: (root, before, finish(proc, timeout=300))
        for case, (root, before, proc) in runs.items()
    }


def check_bad(returncode: int, stderr: str, value: str) -> None:
    assert returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), stderr
    assert value in lines[0], lines[0]


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=GPU_SKIP) if c == "device" else c for c in BAD]
)
def test_bad_input_is_one_line_exit_2_nothing_written(bad_runs, case):
    root, before, result = bad_runs[case]
    check_bad(result.returncode, result.stderr, BAD[case][1])
    assert result.stdout == ""
    assert snapshot(root) == before  # the old CSV byte for byte, and no new file or folder


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=GPU_SKIP) if c == "device" else c for c in {**BAD, **MORE_BAD}]
)
def test_bad_input_in_process(tmp_path, capsys, case):
    args, value = {**BAD, **MORE_BAD}[case]
    out, args = bad_setup(tmp_path, args)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as info:
        memory_command.main([*BASE, *args, "--out", str(out)])
    check_bad(info.value.code, capsys.readouterr().err, value)
    assert snapshot(tmp_path) == before


def test_empty_out_is_refused_not_the_current_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for main in (memory_command.main, report_main):
        with pytest.raises(SystemExit) as info:
            main([*BASE, "--out", ""] if main is memory_command.main else ["--out", ""])
        check_bad(info.value.code, capsys.readouterr().err, "--out '' is empty")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["binary csv", "latin-1 csv", "csv is a folder", "md is a folder"])
def test_unusable_results_files_are_one_line_exit_2_untouched(tmp_path, capsys, case):
    out = tmp_path / "results"
    out.mkdir()
    if case == "binary csv":
        (out / "memory.csv").write_bytes(b"\x00\x01\xff\xfe binary\n")
    elif case == "latin-1 csv":
        (out / "memory.csv").write_bytes(",".join(COLUMNS).encode() + b"\nr\xe9sum\xe9\n")
    else:
        (out / ("memory.csv" if case == "csv is a folder" else "memory.md")).mkdir()
    says = str(out / ("memory.md" if case == "md is a folder" else "memory.csv"))
    before = snapshot(tmp_path)
    for extra in ([], ["--resume"]):
        with pytest.raises(SystemExit) as info:
            memory_command.main([*BASE, "--batch", "1", "--inline", *extra, "--out", str(out)])
        check_bad(info.value.code, capsys.readouterr().err, says)
    assert snapshot(tmp_path) == before


def test_csv_with_other_columns_is_refused_untouched(tmp_path, capsys):
    out, _ = bad_setup(tmp_path, [])  # a memory.csv whose header this version does not write
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as info:
        memory_command.main([*BASE, "--batch", "1", "--inline", "--out", str(out)])
    check_bad(info.value.code, capsys.readouterr().err, str(out / "memory.csv"))
    assert snapshot(tmp_path) == before


# ----- failing, OOM and hanging specs --------------------------------------------------------


@pytest.fixture(scope="module")
def fault_sweeps(tmp_path_factory):
    """Three sweeps side by side, each with one spec failing on purpose."""
    root = tmp_path_factory.mktemp("faults")
    sweeps = {
        "error": (["--batch", "1,2,3"], "error:-b2x1-"),
        "oom": (["--batch", "2"], "oom:-b2x1-"),
        "hang": (["--batch", "2,1", "--timeout", "5"], "hang:-b2x1-"),
    }
    procs = {
        name: start(*args, out=root / name, fault=fault) for name, (args, fault) in sweeps.items()
    }
    return {name: (root / name, finish(proc)) for name, proc in procs.items()}


def test_error_in_one_spec_is_its_row(fault_sweeps):
    out, result = fault_sweeps["error"]
    assert result.returncode == 0, result.stderr
    rows = rows_of(out)
    assert [r["batch"] for r in rows] == ["1", "2", "3"]
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert FAULT_ENV in rows[1]["error"] and "RuntimeError" in rows[1]["error"]
    assert rows[0]["error"] == rows[2]["error"] == ""
    # A failed spec has no figures, not zeros.
    assert all(rows[1][c] == "" for c in memory_harness.HARNESS.figure_columns)
    assert len({r["run_id"] for r in rows}) == 1
    assert len(md_rows(out)) == 3


def test_oom_in_one_spec_is_an_oom_row(fault_sweeps):
    out, result = fault_sweeps["oom"]
    assert result.returncode == 0, result.stderr
    (row,) = rows_of(out)
    assert row["status"] == "oom" and "out of memory" in row["error"]


def test_hanging_spec_times_out_and_the_sweep_goes_on(fault_sweeps):
    out, result = fault_sweeps["hang"]
    assert result.returncode == 0, result.stderr
    rows = rows_of(out)
    assert [r["batch"] for r in rows] == ["2", "1"]
    assert rows[0]["status"] == "timeout" and "5 s" in rows[0]["error"]
    # The next spec ran. On a busy CPU 5 s may not be enough for it either: then it timed out
    # too, which still shows the sweep went on after the hang.
    assert rows[1]["status"] in ("ok", "timeout"), rows[1]


# ----- result files ---------------------------------------------------------------------------


def check_columns_and_dtypes(out: Path) -> pd.DataFrame:
    assert header_of(out) == COLUMNS
    df = read_csv(out / "memory.csv", MEMORY.kinds())
    assert list(df.columns) == COLUMNS
    for column, dtype in column_dtypes().items():
        assert df[column].dtype == pd.api.types.pandas_dtype(dtype), column
    # The figures with a unit (sizes, times, shares) are float64 even where a row leaves them
    # empty; a count such as target_sm reads back as the integers it holds.
    quantities = [f.name for f in MEMORY.figures if f.kind is float and f.unit]
    assert {"step_s", "img_per_s", "headroom_mib", *CUDA_ONLY} <= set(quantities)
    for column in quantities:
        assert df[column].dtype == "float64", column
    return df


def check_cpu_figures(df: pd.DataFrame) -> None:
    ok = df[df["status"] == "ok"]
    assert len(ok) > 0
    for column in CUDA_ONLY:
        assert ok[column].isna().all(), column
    for column in POSITIVE:
        assert (ok[column] > 0).all(), (column, ok[column].tolist())
    for column in NON_NEGATIVE:
        assert (ok[column] >= 0).all(), (column, ok[column].tolist())
    assert (ok["params"] == 177_873).all()
    assert (ok["effective_batch"] == ok["batch"] * ok["accum"]).all()
    # The fit's arithmetic is tests/bench/predict/test_fit.py's: here, what tiny on the default
    # card gives (it fits an 8 GB card's CUDA capacity with room to spare).
    assert (ok["predicted_reserved_mib"] >= ok["predicted_alloc_mib"]).all()
    assert ok["fits"].all() and (ok["predicted_cuda_mib"] < ok["budget_mib"]).all()
    assert (ok["budget_mib"] == 7.79 * 1024).all()  # an 8 GB card's CUDA capacity
    assert (ok["target_sm"] == 86).all()


def test_csv_columns_dtypes_and_cpu_figures(fault_sweeps):
    out, _ = fault_sweeps["error"]
    df = check_columns_and_dtypes(out)
    check_cpu_figures(df)
    assert df["status"].tolist() == ["ok", "error", "ok"]
    assert df["error"].isna().tolist() == [True, False, True]


def test_fits_is_boolean_even_with_a_failed_row(fault_sweeps):
    out, _ = fault_sweeps["error"]
    assert pd.api.types.is_bool_dtype(read_csv(out / "memory.csv", MEMORY.kinds())["fits"])


def test_markdown_and_json_report(fault_sweeps):
    out, _ = fault_sweeps["error"]
    md = (out / "memory.md").read_text()
    assert "Command: `python -m bench.memory " in md
    assert "--batch 1,2,3" in md and "--preset tiny" in md
    assert "Environment: torch " + torch.__version__ in md
    sidecar = json.loads((out / "memory.json").read_text())
    assert sidecar["harness"] == "memory"
    (run_id,) = sidecar["runs"]  # one record per run, keyed by run id
    assert "--batch 1,2,3" in sidecar["runs"][run_id]["command"]
    env = sidecar["runs"][run_id]["environment"]
    assert env["torch"] == torch.__version__
    assert env["device"] == "cpu" and env["cpu_count"] >= 1 and env["python"]
    rows = read_rows(out / "memory.csv")
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert {r["run_id"] for r in rows} == {run_id}


# ----- interruption and --resume ------------------------------------------------------------


@pytest.fixture(scope="module")
def sigterm_then_resume(tmp_path_factory):
    """Three specs, the last hangs; SIGTERM once two rows are on disk; then --resume."""
    out = tmp_path_factory.mktemp("sigterm") / "results"
    proc = start("--batch", "1,2,3", "--timeout", "600", out=out, fault="hang:-b3x1-")
    wait_for(lambda: len(rows_of(out)) == 2, proc, 400, "two rows")
    wait_for(lambda: any(sleeping(p.pid) for p in workers(proc)), proc, 60, "hanging worker")
    kept_csv = (out / "memory.csv").read_bytes()
    began = time.monotonic()
    interrupted, left = interrupt(proc, signal.SIGTERM)
    seconds = time.monotonic() - began
    after_interrupt = {"csv": (out / "memory.csv").read_bytes(), "md_rows": md_rows(out)}
    # The same command with --resume, so its rows join the interrupted run's section.
    resumed = finish(start("--batch", "1,2,3", "--timeout", "600", "--resume", out=out))
    return {
        "out": out,
        "interrupted": interrupted,
        "left": left,
        "seconds": seconds,
        "kept_csv": kept_csv,
        "after_interrupt": after_interrupt,
        "resumed": resumed,
    }


def test_sigterm_keeps_finished_rows_and_exits_143(sigterm_then_resume):
    run = sigterm_then_resume
    result = run["interrupted"]
    assert result.returncode == 143, result.stderr
    assert run["seconds"] < 30
    assert "Traceback" not in result.stderr
    assert "SIGTERM" in result.stderr and "--resume" in result.stderr
    assert run["left"] == [], "a worker outlived the sweep"
    assert run["after_interrupt"]["csv"] == run["kept_csv"]  # nothing half-written after it
    lines = run["kept_csv"].decode().splitlines()
    assert lines[0].split(",") == COLUMNS and len(lines) == 3
    assert len(run["after_interrupt"]["md_rows"]) == 2  # the report of what finished


def test_resume_runs_only_the_rest(sigterm_then_resume):
    run = sigterm_then_resume
    result = run["resumed"]
    assert result.returncode == 0, result.stderr
    assert "--resume: 2 spec(s) already in" in result.stderr
    rows = rows_of(run["out"])
    assert len(rows) == 3 and len({r["spec_id"] for r in rows}) == 3
    assert [r["batch"] for r in rows] == ["1", "2", "3"]
    assert all(r["status"] == "ok" for r in rows)
    assert rows[0]["run_id"] == rows[1]["run_id"] != rows[2]["run_id"]
    assert (run["out"] / "memory.csv").read_bytes().startswith(run["kept_csv"])
    # The resumed run joins its command's section: every spec, each from the run that ran it.
    assert len(md_rows(run["out"])) == 3
    md = (run["out"] / "memory.md").read_text()
    (heading,) = [line for line in md.splitlines() if line.startswith("## Command: ")]
    assert "--resume" not in heading
    assert f"`{rows[0]['run_id']}` (2 rows)" in md
    assert f"`{rows[2]['run_id']}` (1 row; `--resume`)" in md
    # The interrupted run's record was written when it started.
    runs = json.loads((run["out"] / "memory.json").read_text())["runs"]
    assert list(runs) == [rows[0]["run_id"], rows[2]["run_id"]]
    first, resumed = (runs[rows[i]["run_id"]]["command"] for i in (0, 2))
    assert "--resume" in resumed and resumed.replace(" --resume", "") == first


def test_resume_with_nothing_left_runs_nothing(sigterm_then_resume, capsys):
    out = sigterm_then_resume["out"]
    before = {p: (out / p).read_bytes() for p in ("memory.csv", "memory.md", "memory.json")}
    memory_command.main([*BASE, "--batch", "1,3", "--resume", "--out", str(out)])
    assert "2 spec(s) already in" in capsys.readouterr().err
    assert {p: (out / p).read_bytes() for p in before} == before


def test_all_ok_csv_has_documented_dtypes(sigterm_then_resume):
    df = check_columns_and_dtypes(sigterm_then_resume["out"])
    assert pd.api.types.is_bool_dtype(df["fits"]) and df["fits"].all()
    check_cpu_figures(df)
    assert df["error"].isna().all()


def test_sigint_stops_the_sweep_and_its_worker(tmp_path):
    out = tmp_path / "results"
    proc = start("--batch", "1", "--timeout", "600", out=out, fault="hang:-b1x1-")
    wait_for(lambda: any(sleeping(p.pid) for p in workers(proc)), proc, 120, "hanging worker")
    result, left = interrupt(proc, signal.SIGINT)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and "Interrupted" in result.stderr
    assert left == [], "a worker outlived the sweep"
    assert rows_of(out) == [] and not (out / "memory.md").exists()


def interrupted_in_process(out: Path, interrupt_at: int) -> tuple[int, str]:
    """An inline sweep of three specs of a harness whose spec number interrupt_at (1-based) is
    stopped by Ctrl-C: the exit status and what the sweep said."""
    from rich.console import Console

    from bench.core import Harness
    from bench.sweep.runner import run_sweep

    calls = []

    def measure(spec, context):
        calls.append(spec.batch)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return {"value": float(spec.batch)}

    harness = Harness(name="fake", measure=measure, figures=[Figure("value", "", shown=True)])
    said = io.StringIO()
    specs = [BenchSpec(preset="tiny", image_size=16, batch=b, device="cpu") for b in (1, 2, 3)]
    with pytest.raises(SystemExit) as info:
        run_sweep(
            harness,
            specs,
            out,
            "python -m bench.fake",
            inline=True,
            console=Console(file=said, width=300),
        )
    assert calls == [1, 2, 3][:interrupt_at]
    return info.value.code, said.getvalue()


def test_an_interrupt_before_the_first_row_names_no_file(tmp_path):
    out = tmp_path / "results"
    status, said = interrupted_in_process(out, interrupt_at=1)
    assert status == 130
    assert not (out / "fake.csv").exists()
    (line,) = [s for s in said.splitlines() if s.startswith("Interrupted")]
    assert line == (
        "Interrupted (SIGINT) before any spec finished: no row written; run the command again."
    )
    assert "fake.csv" not in said


def test_an_interrupt_after_a_row_says_where_it_is(tmp_path):
    out = tmp_path / "results"
    status, said = interrupted_in_process(out, interrupt_at=2)
    assert status == 130
    assert [r["value"] for r in read_rows(out / "fake.csv")] == [1.0]
    (line,) = [s for s in said.splitlines() if s.startswith("Interrupted")]
    assert line == (
        f"Interrupted (SIGINT): 1 finished row(s) kept in {out / 'fake.csv'}; run "
        "again with --resume for the rest."
    )


def test_a_figure_the_harness_does_not_declare_is_an_error_not_a_lost_column(tmp_path):
    """One declaration per figure: a measure that returns a figure its harness does not declare
    stops the sweep naming it, instead of the row silently dropping it."""
    from rich.console import Console

    from bench.core import Harness
    from bench.sweep.runner import run_sweep

    def measure(spec, context):
        return {"value": 1.0, "valeu": 2.0}

    harness = Harness(name="fake", measure=measure, figures=[Figure("value", "", shown=True)])
    with pytest.raises(RuntimeError, match="fake's measure returned valeu, which the figures of"):
        run_sweep(
            harness,
            [BenchSpec(preset="tiny", image_size=16, device="cpu")],
            tmp_path,
            "python -m bench.fake",
            inline=True,
            console=Console(file=io.StringIO()),
            answer=Console(file=io.StringIO()),
        )
    assert not (tmp_path / "fake.csv").exists()


# ----- --inline --------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_inline_runs_in_process_with_the_same_columns(
    tmp_path, fault_sweeps, one_thread, monkeypatch
):
    monkeypatch.delenv(FAULT_ENV, raising=False)
    out = tmp_path / "results"
    memory_command.main([*BASE, "--batch", "2", "--inline", "--out", str(out)])
    assert header_of(out) == header_of(fault_sweeps["error"][0]) == COLUMNS
    df = check_columns_and_dtypes(out)
    assert df["status"].tolist() == ["ok"]
    check_cpu_figures(df)
    (record,) = json.loads((out / "memory.json").read_text())["runs"].values()
    assert "--inline" in record["command"]


def test_inline_fault_is_a_row_too(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "oom:-b2x1-")
    out = tmp_path / "results"
    memory_command.main([*BASE, "--batch", "2", "--inline", "--out", str(out)])
    (row,) = rows_of(out)
    assert row["status"] == "oom" and FAULT_ENV in row["error"]


def handler_installed(pid: int, sig: signal.Signals) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def test_inline_sigterm_stops_the_sweep(tmp_path):
    out = tmp_path / "results"
    proc = start("--batch", "1", "--inline", out=out, fault="hang:-b1x1-")
    wait_for(
        lambda: handler_installed(proc.pid, signal.SIGTERM) and sleeping(proc.pid),
        proc,
        120,
        "inline hang",
    )
    proc.send_signal(signal.SIGTERM)
    result = finish(proc, timeout=30)
    assert result.returncode == 143, result.stderr
    assert "Traceback" not in result.stderr and "Interrupted (SIGTERM)" in result.stderr
    assert [r["status"] for r in rows_of(out)] == []


def test_no_nan_written_as_zero_in_csv(fault_sweeps):
    """The raw text: a CPU run leaves CUDA figures empty, it never writes 0 or nan."""
    out, _ = fault_sweeps["error"]
    for row in rows_of(out):
        if row["status"] == "ok":
            assert all(row[c] == "" for c in CUDA_ONLY)
            assert all(row[c] not in ("", "0", "0.0", "nan") for c in POSITIVE)
            assert row["fits"] in ("True", "False")
            assert not math.isnan(float(row["tracked_peak_mib"]))
    assert set(spec_columns()) <= set(header_of(out))


# ----- a damaged or shared results folder ------------------------------------------------------


def test_resume_onto_a_cut_off_row_is_refused_untouched(tmp_path, capsys, one_thread, monkeypatch):
    from bench import report

    monkeypatch.delenv(FAULT_ENV, raising=False)
    out = tmp_path / "results"
    memory_command.main([*BASE, "--batch", "1", "--inline", "--out", str(out)])
    csv_path = out / "memory.csv"
    csv_path.write_bytes(csv_path.read_bytes()[:-40])  # the end of row 1 never reached the disk
    capsys.readouterr()
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as info:
        memory_command.main([*BASE, "--batch", "1,2", "--inline", "--resume", "--out", str(out)])
    check_bad(info.value.code, capsys.readouterr().err, f"{csv_path} line 2 is cut off")
    with pytest.raises(SystemExit) as info:
        report.main(["--out", str(out), "--no-plots"])
    check_bad(info.value.code, capsys.readouterr().err, f"{csv_path} line 2 is cut off")
    assert snapshot(tmp_path) == before


def test_results_folder_failing_mid_sweep_keeps_the_row_on_stdout(
    tmp_path, capsys, one_thread, monkeypatch
):
    monkeypatch.delenv(FAULT_ENV, raising=False)
    out = tmp_path / "results"
    real_fsync, calls = os.fsync, []

    def disk_full_at_second_row(fd):
        calls.append(fd)
        if len(calls) == 2:  # the second row's bytes are written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_at_second_row)
    with pytest.raises(SystemExit) as info:
        memory_command.main([*BASE, "--batch", "1,2", "--inline", "--out", str(out)])
    captured = capsys.readouterr()
    assert info.value.code == 2 and "Traceback" not in captured.err
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(out / "memory.csv") in last, last
    assert os.strerror(errno.ENOSPC) in last
    (row,) = rows_of(out)  # the first row whole; nothing of the second
    assert row["batch"] == "1"
    assert (out / "memory.csv").read_bytes().endswith(b"\n")
    (unsaved,) = csv.DictReader(io.StringIO(captured.out))
    assert list(unsaved) == COLUMNS
    assert unsaved["batch"] == "2" and unsaved["status"] == "ok"


def waits_for_lock(pid: int, path: Path) -> bool:
    """The process is queued for an flock on `path` (a "->" line of /proc/locks)."""
    inode = path.stat().st_ino
    return any(
        line.split()[1] == "->" and f" {pid} " in line and f":{inode} " in line
        for line in Path("/proc/locks").read_text().splitlines()
    )


def test_two_sweeps_on_one_folder_take_turns(tmp_path):
    out = tmp_path / "results"
    table = ResultsTable(out, "memory", memory_harness.HARNESS.figure_columns)
    rival = {
        **spec_row(BenchSpec(preset="tiny", image_size=16, batch=7), "rival"),
        "status": "error",
        "error": "written by another sweep",
    }
    lock = out / ".memory.lock"
    out.mkdir()
    with lock.open("a") as held:  # another sweep on the same folder, between its writes
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = start("--batch", "1", "--inline", out=out)
        wait_for(lambda: waits_for_lock(proc.pid, lock), proc, 120, "a wait for the lock")
        table.json_path.write_text(json.dumps({"harness": "memory", "runs": {"rival": {}}}))
        with table.csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerow(rival)
    result = finish(proc)
    assert result.returncode == 0, result.stderr
    assert header_of(out) == COLUMNS
    assert [r["run_id"] for r in rows_of(out)][0] == "rival"  # one header, both rows
    assert [r["batch"] for r in rows_of(out)] == ["7", "1"]
    runs = json.loads(table.json_path.read_text())["runs"]
    assert list(runs)[0] == "rival" and len(runs) == 2  # both run records


def test_killed_sweep_takes_its_worker_and_temporary_folder_along(tmp_path):
    proc = start("--batch", "1", "--timeout", "600", out=tmp_path / "results", fault="hang:-b1x1-")
    wait_for(lambda: any(sleeping(p.pid) for p in workers(proc)), proc, 120, "hanging worker")
    (worker,) = workers(proc)
    folder = Path(worker.cmdline()[-1]).parent  # the sweep's temporary folder (RESULT_PATH's)
    assert folder.is_dir()
    proc.kill()  # SIGKILL: the sweep itself can clean up nothing
    proc.communicate()
    for _ in range(300):
        if gone(worker):
            break
        time.sleep(0.1)
    survived = not gone(worker)
    if survived:
        worker.kill()
        shutil.rmtree(folder, ignore_errors=True)
    assert not survived, "the worker outlived its sweep"
    assert not folder.exists()


def test_what_a_worker_says_is_shown_while_it_still_runs(tmp_path):
    """The predicted verdict reaches the terminal before the long measured passes end."""
    from bench.sweep.launch import _wait

    messages = tmp_path / "messages.txt"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import time
        with open({str(messages)!r}, "a") as f:
            f.write("Predicted: fits\\n")
        time.sleep(3)
        with open({str(messages)!r}, "a") as f:
            f.write("done\\n")
        """),
        ]
    )
    said = []
    _wait(child, 60, messages, lambda line: said.append((line, child.poll())))
    assert said == [("Predicted: fits", None), ("done", 0)]


# ----- a worker ends with its result ----------------------------------------------------------


def test_a_spec_whose_model_starts_a_thread_ends_with_its_result(tmp_path, monkeypatch):
    """A factory whose model starts a non-daemon thread: the worker's normal exit waited for
    it, and a finished prediction became a timeout row (an hour per spec by default)."""
    (tmp_path / "spinning.py").write_text(
        textwrap.dedent(
            """
            import threading, time
            from torch import nn

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = nn.Conv2d(3, 3, 3, padding=1)
                    threading.Thread(target=time.sleep, args=(3600,)).start()  # not a daemon

                def forward(self, x, t):
                    return self.conv(x)

            def make():
                return Net()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    root = Path(__file__).resolve().parents[3]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), str(tmp_path)]))
    args = ["--impl", "spinning:make", "--preset", "ddpm-cifar10", "--image-size", "8"]
    args += ["--attention", "none", "--batch", "2", "--accum", "1", "--predict-only"]
    (row,) = memory_command.main([*args, "--timeout", "120", "--out", str(tmp_path / "out")])
    assert row["status"] == "ok", row["error"]


def test_a_written_result_is_never_a_timeout(tmp_path, monkeypatch):
    """The deadline passes after the worker wrote its result (its process slow to end): the
    row is the result, not a timeout."""
    from bench.core import RunContext
    from bench.sweep import launch

    def late(child, timeout_s, messages, say):
        child.wait()  # the result is written; the deadline is taken to pass only now
        raise subprocess.TimeoutExpired("worker", timeout_s)

    monkeypatch.setattr(launch, "_wait", late)
    spec = BenchSpec(preset="tiny", image_size=16, attention="8", accum=1, predict_only=True)
    context = RunContext(tmp_path, "run", {})
    result = launch.run_isolated(memory_harness.HARNESS, spec, context, timeout_s=1.0)
    assert result["status"] == "ok" and result["figures"]["fits"], result
