"""The pytest-benchmark suite: a bare `--benchmark-save` (an automatic name) and a named one
both save JSON that `pytest-benchmark compare` reads, with our machine info and extra_info
inside; the edit that lets the NAME go is checked against pytest-benchmark's real option, and its
guard against a changed one."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import pytest_benchmark.plugin
from _pytest.config.argparsing import Argument, Parser

from bench.suite import save

ROOT = Path(__file__).resolve().parents[3]
SMALL = [
    "--bench-batch",
    "2",
    "--bench-precision",
    "fp32",
    "--bench-rounds",
    "1",
    "-q",
    "-p",
    "no:cacheprovider",
]


def run_suite(
    storage: Path, *args: str, before: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """`pytest [before] bench [small specs] [args]`, saving under `storage`."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *before,
            "bench",
            *SMALL,
            f"--benchmark-storage=file://{storage}",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def expected_commit() -> str:
    """This tree's short commit, asked of git independently ("nogit" outside a git tree)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "nogit"


def test_bare_and_named_saves_are_read_by_compare(tmp_path):
    # The command as documented, the bare option last; then NAME followed by the path.
    bare = run_suite(tmp_path, "--benchmark-save")
    assert bare.returncode == 0, bare.stdout[-3000:] + bare.stderr[-2000:]
    named = run_suite(tmp_path, before=("--benchmark-save", "base"))
    assert named.returncode == 0, named.stdout[-3000:] + named.stderr[-2000:]

    saved = sorted(tmp_path.rglob("*.json"))
    assert len(saved) == 2
    automatic = re.fullmatch(r"0001_(\w+)-(\d{8}T\d{6}Z)(-dirty)?\.json", saved[0].name)
    assert automatic, saved[0].name
    assert automatic[1] == expected_commit()
    stamp = datetime.strptime(automatic[2], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - stamp).total_seconds()) < 600
    assert saved[1].name == "0002_base.json"  # "base" is the NAME, "bench" the path
    for path in saved:
        data = json.loads(path.read_text())
        benches = {b["name"].split("[")[0]: b for b in data["benchmarks"]}
        assert set(benches) == {"test_train_step", "test_ddim_step"}
        assert all(b["extra_info"]["images_per_step"] == 2 for b in benches.values())
        assert 0 < benches["test_train_step"]["extra_info"]["mfu"] < 1
        assert benches["test_ddim_step"]["extra_info"]["images_per_s_full_run"] > 0
        info = data["machine_info"]["ddpm_bench"]
        assert info["torch"] and info["cpu"] and "cudnn" in info and "driver" in info

    # The console script users type, from the same environment as this interpreter.
    cli = str(Path(sys.executable).parent / "pytest-benchmark")
    compare = subprocess.run(
        [cli, "--storage", f"file://{tmp_path}", "compare", "0001", "0002"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert compare.returncode == 0, compare.stderr[-2000:]
    assert compare.stdout.count("test_train_step") >= 2  # one line per saved run
    assert compare.stdout.count("test_ddim_step") >= 2


def test_disabled_suite_runs_each_benchmark_once(tmp_path):
    run = run_suite(tmp_path, "--benchmark-disable")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "2 passed" in run.stdout
    assert not list(tmp_path.rglob("*.json"))  # nothing saved without --benchmark-save


def test_the_suite_runs_lucidrains_and_refuses_an_unusable_factory_in_one_line(tmp_path):
    (tmp_path / "unet.json").write_text('{"dim": 8, "dim_mults": [1, 2]}')
    args = ["--bench-impl", "lucidrains", "--bench-model-config", str(tmp_path / "unet.json")]
    run = run_suite(tmp_path, "--benchmark-disable", *args)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "2 passed" in run.stdout
    bad = run_suite(tmp_path, "--benchmark-disable", "--bench-impl", "no_such_module_xyz:make")
    assert bad.returncode != 0
    assert "module 'no_such_module_xyz' does not import" in bad.stdout + bad.stderr


def test_the_levers_are_axes_of_the_training_step(tmp_path):
    """Each lever value is its own training benchmark, trained as the harnesses train it: the
    SGD state is half AdamW's (one momentum against two moments), and a host EMA leaves the
    card, so the step's predicted memory orders them; the DDIM step runs once."""
    run = run_suite(
        tmp_path,
        "--benchmark-save",
        "levers",
        "--bench-optimizer",
        "adamw,sgd",
        "--bench-ema",
        "device,cpu",
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    (saved,) = tmp_path.rglob("*.json")
    benches = {b["name"]: b["extra_info"] for b in json.loads(saved.read_text())["benchmarks"]}
    step = "test_train_step[b2x1-fp32{}]"
    memory = {
        (opt, ema): benches[step.format(f"-optimizer-{opt}" * (opt != "adamw") + lever)][
            "predicted_alloc_mib"
        ]
        for opt in ("adamw", "sgd")
        for ema, lever in (("device", ""), ("cpu", "-ema-cpu"))
    }
    assert set(benches) == {
        step.format(s) for s in ("", "-optimizer-sgd", "-ema-cpu", "-optimizer-sgd-ema-cpu")
    } | {"test_ddim_step[b2x1-fp32]"}
    for ema in ("device", "cpu"):
        assert memory["sgd", ema] < memory["adamw", ema]
    for opt in ("adamw", "sgd"):
        assert memory[opt, "cpu"] < memory[opt, "device"]


@pytest.mark.skipif(
    importlib.util.find_spec("guided_diffusion") is None, reason="guided-diffusion missing"
)
def test_the_suite_runs_guided_diffusion_in_its_fp16_scheme(tmp_path):
    from tests.helpers.guided import tiny_file

    config = tiny_file(tmp_path)
    args = ["--bench-impl", "guided-diffusion", "--bench-model-config", config]
    run = run_suite(tmp_path, "--benchmark-disable", *args, "--bench-precision", "fp16")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "2 passed" in run.stdout  # a training step and a denoising step
    bad = run_suite(tmp_path, "--benchmark-disable", *args, "--bench-precision", "bf16")
    assert bad.returncode != 0
    said = bad.stdout + bad.stderr
    assert "--bench-precision bf16: guided-diffusion trains in fp32 or in its own fp16" in said


@pytest.mark.parametrize(
    "args, says",
    [
        (["--bench-impl", "nosuch"], "--bench-impl 'nosuch' is not allowed"),
        (["--bench-rounds", "0"], "--bench-rounds 0 is not allowed: it must be >= 1"),
        (["--bench-rounds", "-1"], "--bench-rounds -1 is not allowed"),
        (["--bench-batch", "0"], "--bench-batch 0 is not allowed"),
        (["--bench-optimizer", "nosuch"], "--bench-optimizer 'nosuch' is not allowed"),
        (["--bench-ema", "gpu"], "--bench-ema 'gpu' is not allowed"),
    ],
)
def test_a_bad_option_is_one_line_before_any_test_runs(tmp_path, args, says):
    """Checked when pytest configures, before collection: not a collection error per test
    file naming the harnesses' option, nor every test failing on a stack."""
    run = run_suite(tmp_path, "--benchmark-disable", *args)
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout[-2000:]
    assert lines == [f"ERROR: {lines[0].removeprefix('ERROR: ')}"] and says in lines[0], lines


@pytest.mark.parametrize(
    "code, status, says",
    [
        ("raise KeyboardInterrupt", 130, "Interrupted while the suite's models were checked"),
        ("import sys; sys.exit(0)", 4, "ERROR: --bench-impl user_code:make: its code called"),
    ],
)
def test_user_code_ending_the_check_is_one_line_not_an_internal_error(tmp_path, code, status, says):
    """The factory's code runs in a process of its own while pytest starts: a KeyboardInterrupt
    it raises is one line and 130 (an INTERNALERROR before), an exit one usage-error line."""
    (tmp_path / "user_code.py").write_text(f"def make():\n    {code}\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", *SMALL, "--benchmark-disable"]
        + ["--bench-impl", "user_code:make"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])},
    )
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert run.returncode == status and len(lines) == 1 and says in lines[0], lines


def benchmark_parser() -> Parser:
    """A pytest parser holding pytest-benchmark's real options, edited as `pytest bench` is."""
    parser = Parser(_ispytest=True)
    pytest_benchmark.plugin.pytest_addoption(parser)
    save.allow_bare_save(parser)
    return parser


@pytest.mark.parametrize(
    "args, name, paths",
    [
        (["bench", "--benchmark-save"], save.AUTOMATIC, ["bench"]),
        (["bench", "--benchmark-save", "--benchmark-disable"], save.AUTOMATIC, ["bench"]),
        (["bench", "--benchmark-save", "baseline"], "baseline", ["bench"]),
        (["--benchmark-save", "baseline", "bench"], "baseline", ["bench"]),
        (["bench", "--benchmark-save=base"], "base", ["bench"]),
        (["bench"], None, ["bench"]),
    ],
)
def test_save_takes_its_name_optionally(args, name, paths):
    ns = benchmark_parser().parse(args)
    assert ns.benchmark_save is name or ns.benchmark_save == name
    assert ns.file_or_dir == paths


def test_a_given_name_is_still_checked_by_pytest_benchmark():
    with pytest.raises(pytest.UsageError, match="Must not contain"):
        benchmark_parser().parse(["--benchmark-save=a/b"])


def test_the_guard_names_a_missing_option():
    with pytest.raises(pytest.UsageError, match="has no single --benchmark-save"):
        save.allow_bare_save(Parser(_ispytest=True))


def test_the_guard_names_an_option_that_changed():
    parser = Parser(_ispytest=True)
    parser.getgroup("benchmark").addoption("--benchmark-save", nargs="+")
    with pytest.raises(pytest.UsageError, match="no longer takes exactly one NAME"):
        save.allow_bare_save(parser)


def test_the_guard_names_an_edit_that_did_not_take(monkeypatch):
    # As if pytest built argparse from a copy of each option: the edit changes nothing.
    attrs = Argument.attrs
    monkeypatch.setattr(Argument, "attrs", lambda self: dict(attrs(self)))
    parser = Parser(_ispytest=True)
    pytest_benchmark.plugin.pytest_addoption(parser)
    with pytest.raises(pytest.UsageError, match="a bare --benchmark-save still does not parse"):
        save.allow_bare_save(parser)


NOW = datetime(2026, 12, 2, 23, 5, 9, tzinfo=timezone.utc)


def test_the_automatic_name_outside_git_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert save.automatic_name(tmp_path, NOW) == "nogit-20261202T230509Z"
    assert "not in a git tree" in capsys.readouterr().err


def test_the_automatic_name_is_the_commit_and_time_and_dirt(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))

    def git(*args):
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "f").write_text("1")
    git("add", "f")
    git("commit", "-q", "-m", "one")
    short = git("rev-parse", "--short", "HEAD")
    (tmp_path / "untracked").write_text("not dirt")
    assert save.automatic_name(tmp_path, NOW) == f"{short}-20261202T230509Z"
    (tmp_path / "f").write_text("2")
    assert save.automatic_name(tmp_path, NOW) == f"{short}-20261202T230509Z-dirty"
