"""How a spec runs: in this process (inline, for tests and debugging), in a fresh interpreter
(the default: clean allocator peaks, and a crash or hang is contained), as its ranks under
torchrun (a spec across ranks), or, for a prediction alone on the CPU, in this process within its
timeout (run_predicted: no interpreter to start, no torch to import again). The sweep
(bench.sweep.runner) calls run_inline, run_predicted or run_isolated per spec; each returns
{"status", "error", "figures"}."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.core import Harness, RunContext
from bench.spec import BenchSpec
from bench.sweep.worker import MESSAGES_FILE, PARENT_ENV, rank_result, run_spec


def run_inline(harness: Harness, spec: BenchSpec, context: RunContext) -> dict:
    """The spec in this process: no isolation, so for tests and debugging (--inline). What the
    model's code prints goes to stderr, as a worker's does not reach stdout either."""
    with contextlib.redirect_stdout(sys.stderr):
        return run_spec(harness, spec, context)


class _Timeout(BaseException):
    """The timeout of a spec run in this process: not an Exception, so that no handler of the
    spec's own takes it for the spec's failure."""


_interrupted = False  # a spec in this process was stopped mid-way: its state is not trusted


def predicts_here(spec: BenchSpec) -> bool:
    """Whether the spec runs in this process (run_predicted): a prediction alone on the CPU
    touches no device memory and starts nothing, so a fresh interpreter would only import torch
    again. A user's factory (--impl package.module:callable) is code that may crash or hang
    beyond a timeout's reach: it keeps its own process, as does any spec on a CUDA device (the
    prediction measures the card's context there) and every spec after one stopped here."""
    return (
        spec.predict_only
        and spec.device == "cpu"
        and ":" not in spec.impl
        and not _interrupted
        and threading.current_thread() is threading.main_thread()  # where SIGALRM is handled
    )


def run_predicted(harness: Harness, spec: BenchSpec, context: RunContext, timeout_s: float) -> dict:
    """The spec in this process, stopped at `timeout_s` (SIGALRM) with a timeout row, as
    run_isolated would; a failure is its row (run_spec)."""
    global _interrupted

    def expire(_signum, _frame):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return run_spec(harness, spec, context)
    except _Timeout:
        _interrupted = True
        return {"status": "timeout", "error": f"no result after {timeout_s:g} s", "figures": {}}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _relay(messages: Path, shown: int, say: Callable[[str], None]) -> int:
    """Show the lines the worker said since the last call; returns how many are shown."""
    if not messages.exists():
        return shown
    lines = messages.read_text(errors="replace").splitlines()
    for line in lines[shown:]:
        say(line)
    return len(lines)


def _wait(
    child: subprocess.Popen, timeout_s: float, messages: Path, say: Callable[[str], None]
) -> None:
    """Wait for the worker, passing on what it says as it says it; TimeoutExpired at the end
    of the timeout."""
    deadline = time.monotonic() + timeout_s
    shown = 0
    while True:
        try:
            child.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
            return
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                raise
        finally:
            shown = _relay(messages, shown, say)


@dataclass(frozen=True)
class Launch:
    """How torchrun starts a spec's ranks: all on this machine (standalone), or spread over
    `nnodes` machines that meet at `rdzv_endpoint`, each running the same command."""

    nnodes: int = 1
    rdzv_endpoint: str | None = None

    def local_ranks(self, ranks: int) -> int:
        return ranks // self.nnodes

    def torchrun_args(self, ranks: int) -> list[str]:
        where = (
            ["--standalone"]
            if self.rdzv_endpoint is None
            else [
                "--nnodes",
                str(self.nnodes),
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                self.rdzv_endpoint,
            ]
        )
        return [*where, "--nproc-per-node", str(self.local_ranks(ranks))]


def launches_ranks(spec: BenchSpec) -> bool:
    """A spec across ranks starts them, unless it is only predicted (one process does that)."""
    return spec.parallel != "none" and not spec.predict_only


def worker_command(
    harness: Harness, spec: BenchSpec, context: RunContext, result_path: str, launch: Launch
) -> list[str]:
    """The worker's command line: one process, or the spec's ranks under torchrun."""
    worker = [
        "-m",
        "bench.sweep.worker",
        harness.module,
        json.dumps(spec.to_dict()),
        str(context.out),
        context.run_id,
        json.dumps(context.options),
        result_path,
    ]
    if not launches_ranks(spec):
        return [sys.executable, *worker]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *launch.torchrun_args(spec.ranks),
        *worker,
    ]


def run_isolated(
    harness: Harness,
    spec: BenchSpec,
    context: RunContext,
    timeout_s: float,
    say: Callable[[str], None] = print,
    launch: Launch | None = None,
) -> dict:
    """A fresh interpreter per spec (one per rank): clean allocator peaks, and a crash or hang
    is contained."""
    launch = launch or Launch()
    with tempfile.TemporaryDirectory(prefix="ddpm-bench-") as tmp:
        result_path = os.path.join(tmp, "result.json")
        log_path = os.path.join(tmp, "log.txt")
        child = None
        timed_out = False
        with open(log_path, "w") as log:
            try:  # started inside the try: a signal during the start still kills the worker
                # A process group of its own: a stop takes the worker's children (torch.compile's
                # compile workers) with it; PARENT_ENV lets the worker end when the sweep does.
                child = subprocess.Popen(
                    worker_command(harness, spec, context, result_path, launch),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env={**os.environ, PARENT_ENV: str(os.getpid())},
                )
                _wait(child, timeout_s, Path(tmp) / MESSAGES_FILE, say)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                if child is not None:
                    with contextlib.suppress(ProcessLookupError):  # the group has ended
                        os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
        # A result written is the spec's answer, however long its process took to end after.
        if timed_out and not _written(result_path, spec, launch):
            return {"status": "timeout", "error": f"no result after {timeout_s:g} s", "figures": {}}
        log = Path(log_path).read_text(errors="replace")
        if launches_ranks(spec):
            return combine_ranks(result_path, launch.local_ranks(spec.ranks), child.returncode, log)
        lines = [ln for ln in log.splitlines() if ln.strip()]
        last = lines[-1][:300] if lines else "no output"
        if os.path.exists(result_path):
            with open(result_path) as f:
                return json.load(f)
        return {
            "status": "error",
            "error": f"worker exited {child.returncode}: {last}",
            "figures": {},
        }


def _written(result_path: str, spec: BenchSpec, launch: Launch) -> bool:
    """Every result the spec's processes write is on disk (one per rank this node started)."""
    if not launches_ranks(spec):
        return os.path.exists(result_path)
    ranks = range(launch.local_ranks(spec.ranks))
    return all(os.path.exists(rank_result(result_path, r)) for r in ranks)


def combine_ranks(result_path: str, ranks: int, returncode: int, log: str) -> dict:
    """One row from the results of the `ranks` ranks this node started (files by local rank,
    each naming its global rank): a failing rank's own status, named by its global rank; else
    rank 0's figures (its step waits for every rank in the collectives; on another node, that
    node's first rank's) with each memory figure the largest over the ranks, the card that must
    fit."""
    results = {}  # by global rank, which the ranks' errors and torchrun's report name
    for local_rank in range(ranks):
        path = rank_result(result_path, local_rank)
        if os.path.exists(path):
            with open(path) as f:
                result = json.load(f)
            results[result.pop("rank", local_rank)] = result
    failed = [(rank, r) for rank, r in sorted(results.items()) if r["status"] != "ok"]
    # A rank whose peer died fails too, and may write its error first: when the rank torchrun
    # names as the root cause left no result, or every error is only a lost peer, that rank is
    # the one to blame.
    cause = root_cause(log)
    if cause and (
        cause[0] not in results or (failed and all(_peer_lost(r["error"]) for _, r in failed))
    ):
        return {"status": "error", "figures": {}, "error": first_failure(log, returncode)}
    if failed:  # a rank's own failure before one that only lost its peer
        rank, result = min(failed, key=lambda f: (_peer_lost(f[1]["error"]), f[0]))
        return {**result, "error": f"rank {rank}: {result['error']}"}
    if len(results) < ranks:
        return {"status": "error", "figures": {}, "error": first_failure(log, returncode)}
    first = results[min(results)]  # rank 0's, or this node's first rank's
    figures = dict(first["figures"])
    for name, value in figures.items():
        if name.endswith("_mib") and isinstance(value, (int, float)):
            figures[name] = max(
                r["figures"][name] for r in results.values() if r["figures"].get(name) is not None
            )
    ok = {"status": "ok", "error": None, "figures": figures}
    return {**ok, "params": first["params"]} if "params" in first else ok


# How gloo and NCCL report a peer that is gone: a consequence, not the cause.
PEER_LOST = re.compile(
    r"closed by peer|Connection reset|Broken pipe|NCCL communicator was aborted"
    r"|remote process exited|Socket Timeout",
    re.IGNORECASE,
)


def _peer_lost(error: str | None) -> bool:
    return bool(error and PEER_LOST.search(error))


def root_cause(log: str) -> tuple[int, int] | None:
    """The rank torchrun's failure report names first (its root cause) and its exit code."""
    cause = log.partition("Root Cause")[2]
    rank = re.search(r"^\s*rank\s*:\s*(\d+)", cause, re.MULTILINE)
    code = re.search(r"^\s*exitcode\s*:\s*(-?\d+)", cause, re.MULTILINE)
    return (int(rank.group(1)), int(code.group(1))) if rank and code else None


def first_failure(log: str, returncode: int) -> str:
    """The rank torchrun's failure report names first (its root cause), and how it ended."""
    cause = root_cause(log)
    if cause is None:
        return f"a rank ended without a result (torchrun exited {returncode})"
    rank, exit_code = cause
    how = f"killed by signal {-exit_code}" if exit_code < 0 else f"exit status {exit_code}"
    return f"rank {rank} ended without a result ({how})"
