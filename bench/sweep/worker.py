"""One spec in a fresh process:
`python -m bench.sweep.worker MODULE SPEC_JSON OUT RUN_ID OPTIONS_JSON RESULT_PATH`, where
MODULE is the module that defines the harness as HARNESS (bench.core.Harness.module).

The runner starts one per spec, so allocator peaks are clean and an OOM, crash or hang stays
this spec's row. The worker writes {"status", "error", "figures"} as JSON to RESULT_PATH."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

from bench import lifeline
from bench.core import Harness, RunContext
from bench.measure import cuda
from bench.measure.monitor import take_baseline
from bench.models.workload import parameters_built
from bench.spec import BenchSpec
from ddpm import parallel
from ddpm.errors import first_line

# Test-only: "error:SUBSTRING", "oom:...", "hang:...", "kill:..." (SIGKILL) for the specs whose id
# holds SUBSTRING (ids hold no ":"); "error:SUBSTRING:TEXT" ends the error's message with TEXT.
# With FAULT_RANK_ENV set, only that rank of a multi-rank spec fails.
FAULT_ENV = "DDPM_BENCH_INJECT_FAULT"
FAULT_RANK_ENV = "DDPM_BENCH_INJECT_FAULT_RANK"
PARENT_ENV = "DDPM_BENCH_PARENT_PID"  # the sweep that started this worker


def inject_fault(spec: BenchSpec) -> None:
    """Fail on purpose when a test asks for it: proves a failing spec becomes its own row."""
    kind, _, rest = os.environ.get(FAULT_ENV, "").partition(":")
    match, _, text = rest.partition(":")
    if not kind or match not in spec.spec_id:
        return
    if os.environ.get(FAULT_RANK_ENV, str(parallel.rank())) != str(parallel.rank()):
        return
    if kind == "error":
        raise RuntimeError(
            f"fault injected by {FAULT_ENV} for {spec.name}" + (f": {text}" if text else "")
        )
    if kind == "oom":
        raise torch.OutOfMemoryError(f"fault injected by {FAULT_ENV}: CUDA out of memory")
    if kind == "hang":
        time.sleep(3600)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)


MESSAGES_FILE = "messages.txt"


def run_spec(harness: Harness, spec: BenchSpec, context: RunContext) -> dict:
    """Measure one spec in this process; every failure becomes a status, never an exception.
    With it, the parameters of the model it built ("params"; None if it built none)."""
    parameters_built(forget=True)  # a model an earlier spec of this process built is not this one
    result = _measured(harness, spec, context)
    return {**result, "params": parameters_built()}


def _measured(harness: Harness, spec: BenchSpec, context: RunContext) -> dict:
    measure = harness.measure
    if spec.device.startswith("cuda"):
        take_baseline()  # before the harness starts CUDA in this process
    try:
        # Under torchrun, this rank joins the group (gloo, or NCCL on its own card) first.
        with parallel.session(spec.device) as device:
            inject_fault(spec)
            figures = measure(spec.replace(device=str(device)), context)
        return {"status": "ok", "error": None, "figures": figures}
    except SystemExit as exc:  # the model's code ending its process: this spec's failure too
        return {
            "status": "error",
            "error": f"SystemExit: the model's code called sys.exit({exc.code!r})",
            "figures": {},
        }
    except Exception as exc:  # one spec's failure is a result, not the end of the sweep
        reason = first_line(exc, limit=300)
        if cuda.is_oom(exc):  # cuBLAS, cuDNN and module loading report it as RuntimeError
            return {"status": "oom", "error": reason, "figures": {}}
        return {"status": "error", "error": f"{type(exc).__name__}: {reason}", "figures": {}}


def die_with_parent(folder: Path) -> None:
    """A sweep killed outright (SIGKILL) can neither stop its worker nor remove its temporary
    folder, and torchrun killed at a timeout cannot stop its ranks: this worker ends once its
    parent (the sweep, or torchrun under it) or the sweep is gone, and removes the folder with
    the sweep (bench.lifeline)."""
    sweep = int(os.environ.get(PARENT_ENV, 0))
    if sweep:  # else started by hand

        def last(gone: set[int]) -> None:
            if sweep in gone:
                shutil.rmtree(folder, ignore_errors=True)

        lifeline.hold((sweep,), last)


def main(argv: list[str]) -> None:
    module, spec_json, out, run_id, options_json, result_path = argv
    # The harness by the module that defines it, as `python -m` names code: the sweep engine
    # needs no list of harnesses.
    harness = importlib.import_module(module).HARNESS
    die_with_parent(Path(result_path).parent)
    spec = BenchSpec(**json.loads(spec_json))
    messages = Path(result_path).with_name(MESSAGES_FILE)
    if parallel.launched():  # one of the spec's ranks, under torchrun: a result file each
        # By the rank on this machine: the sweep reads the files of the ranks it started.
        local_rank = int(os.environ["LOCAL_RANK"])
        result_path = rank_result(result_path, local_rank)
        messages = messages if local_rank == 0 else None  # rank 0 speaks for all
    result = run_spec(
        harness, spec, RunContext(Path(out), run_id, json.loads(options_json), messages)
    )
    if parallel.launched():
        # The global rank, as torchrun's failure report names ranks: on a node whose node rank
        # is not 0, local rank r is global rank node_rank * nproc_per_node + r.
        result["rank"] = int(os.environ["RANK"])
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, default=float)
    os.replace(tmp, result_path)
    sys.stdout.flush()
    sys.stderr.flush()
    # At once: a thread the model's code started (a non-daemon one too) would keep a normal
    # exit waiting, and the sweep would take a finished spec for a hung one. A failed rank exits
    # 1: torchrun then stops the other ranks, which may wait in a collective.
    os._exit(1 if result["status"] != "ok" and parallel.launched() else 0)


def rank_result(result_path: str, rank: int) -> str:
    return f"{result_path}.rank{rank}"


if __name__ == "__main__":
    main(sys.argv[1:])
