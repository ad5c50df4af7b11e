"""One spec in a fresh process:
`python -m bench.worker HARNESS SPEC_JSON OUT RUN_ID OPTIONS_JSON RESULT_PATH`.

The runner starts one per spec, so allocator peaks are clean and an OOM, crash or hang stays
this spec's row. The worker writes {"status", "error", "figures"} as JSON to RESULT_PATH."""

from __future__ import annotations

import importlib
import json
import os
import select
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.measure import cuda
from bench.monitor import take_baseline
from bench.spec import BenchSpec
from ddpm.cli_common import first_line

FAULT_ENV = "DDPM_BENCH_INJECT_FAULT"  # test-only: "error:SUBSTRING", "oom:...", "hang:..."
PARENT_ENV = "DDPM_BENCH_PARENT_PID"  # the sweep that started this worker


def inject_fault(spec: BenchSpec) -> None:
    """Fail on purpose when a test asks for it: proves a failing spec becomes its own row."""
    kind, _, match = os.environ.get(FAULT_ENV, "").partition(":")
    if not kind or match not in spec.spec_id:
        return
    if kind == "error":
        raise RuntimeError(f"fault injected by {FAULT_ENV} for {spec.name}")
    if kind == "oom":
        raise torch.OutOfMemoryError(f"fault injected by {FAULT_ENV}: CUDA out of memory")
    if kind == "hang":
        time.sleep(3600)


MESSAGES_FILE = "messages.txt"


@dataclass(frozen=True)
class RunContext:
    """Where a harness may write files of its own (curves, traces: out/<harness>/<run_id>/...),
    and the harness's own options that are not spec axes (validated by its command line)."""

    out: Path
    run_id: str
    options: dict = field(default_factory=dict)
    # Where say() writes in a worker process; the sweep shows each line as it arrives.
    messages: Path | None = None

    def say(self, line: str) -> None:
        """A line for the user while the spec still runs (e.g. the predicted verdict)."""
        if self.messages is None:
            print(line, file=sys.stderr, flush=True)
            return
        with open(self.messages, "a") as f:
            f.write(line.replace("\n", " ") + "\n")


def run_spec(harness: str, spec: BenchSpec, context: RunContext) -> dict:
    """Measure one spec in this process; every failure becomes a status, never an exception."""
    module = importlib.import_module(f"bench.{harness}")
    if spec.device.startswith("cuda"):
        take_baseline()  # before the harness starts CUDA in this process
    try:
        inject_fault(spec)
        return {"status": "ok", "error": None, "figures": module.measure(spec, context)}
    except Exception as exc:  # one spec's failure is a result, not the end of the sweep
        reason = first_line(exc, limit=300)
        if cuda.is_oom(exc):  # cuBLAS, cuDNN and module loading report it as RuntimeError
            return {"status": "oom", "error": reason, "figures": {}}
        return {"status": "error", "error": f"{type(exc).__name__}: {reason}", "figures": {}}


def die_with_parent(folder: Path) -> None:
    """A sweep killed outright (SIGKILL) can neither stop its worker nor remove its temporary
    folder: a watcher thread does both once the sweep is gone."""
    parent = int(os.environ.get(PARENT_ENV, 0))
    if parent:  # else started by hand
        threading.Thread(target=_watch, args=(parent, folder), daemon=True).start()


def _watch(parent: int, folder: Path) -> None:
    try:  # readable once the whole sweep has exited (not one of its threads, as prctl's signal)
        pidfd = os.pidfd_open(parent)
    except (AttributeError, OSError):  # no pidfd (not Linux, or the sweep is already gone)
        pidfd = None
    # Our parent while it lives; an exited parent's children pass to another process.
    while os.getppid() == parent:
        if pidfd is None:
            time.sleep(0.5)
        else:
            select.select([pidfd], [], [])
    shutil.rmtree(folder, ignore_errors=True)
    os._exit(1)


def main(argv: list[str]) -> None:
    harness, spec_json, out, run_id, options_json, result_path = argv
    die_with_parent(Path(result_path).parent)
    spec = BenchSpec(**json.loads(spec_json))
    messages = Path(result_path).with_name(MESSAGES_FILE)
    result = run_spec(harness, spec,
                      RunContext(Path(out), run_id, json.loads(options_json), messages))
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, default=float)
    os.replace(tmp, result_path)


if __name__ == "__main__":
    main(sys.argv[1:])
