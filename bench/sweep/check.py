"""The models of a sweep's specs, checked before any spec runs, in a process of their own:
`python -m bench.sweep.check SPECS_JSON RESULT_PATH`.

A factory and a library's arguments are the user's code, run here for the first time: at import
or while building it may call sys.exit or os._exit, raise KeyboardInterrupt, start threads that
never end, hang, or print. In a fresh process none of that can end, stall or write into the
command that asked (a false exit 0 with nothing written, an answer on stdout mixed with the
factory's prints): the check's process writes its verdict to RESULT_PATH and ends at once, and
the command turns every other ending into one line naming --impl. Our own model (--impl ddpm)
runs no such code and is checked in the command's process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import lifeline
from bench.parsers import SpecError
from bench.spec import BenchSpec

# How long a check may take when no --timeout says (the sweep's own default per spec).
DEFAULT_TIMEOUT_S = 3600.0


def check_models(specs: list[BenchSpec], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """SpecError, one line, for the first spec whose model cannot run as it asks (the specs in
    order, each checked by bench.models.impl.problem); KeyboardInterrupt when the user's code
    raised it or the user interrupted the check. What the user's code prints goes to stderr."""
    impls = ", ".join(dict.fromkeys(s.impl for s in specs))
    with tempfile.TemporaryDirectory(prefix="ddpm-bench-check-") as tmp:
        result, log = Path(tmp) / "result.json", Path(tmp) / "log.txt"
        code = _run(specs, result, log, timeout_s, impls)
        _relay(log)
        if not result.exists():
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            raise SpecError(
                f"--impl {impls}: the process that builds and checks the model ended ({how}) "
                "before it finished: the model's code ends the process it runs in "
                "(os._exit?)."
            )
        verdict = json.loads(result.read_text())
    if verdict.get("interrupted"):
        raise KeyboardInterrupt
    if verdict.get("problem"):
        raise SpecError(verdict["problem"])


def _run(specs: list[BenchSpec], result: Path, log: Path, timeout_s: float, impls: str) -> int:
    """The check's process, to its end or its timeout; its exit status."""
    command = [
        sys.executable,
        "-m",
        "bench.sweep.check",
        json.dumps([s.to_dict() for s in specs]),
        str(result),
    ]
    # The factory imports from the path this process imports from.
    path = os.pathsep.join(p for p in sys.path if isinstance(p, str))
    child = None
    with open(log, "w") as out:
        try:
            # A session of its own: a Ctrl-C reaches this process alone, which ends the check's.
            child = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": path},
            )
            return child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise SpecError(
                f"--impl {impls}: building and checking the model took longer than --timeout "
                f"{timeout_s:g} s; it was stopped (does the factory or its model hang?)."
            ) from None
        finally:
            if child is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()


def _relay(log: Path) -> None:
    """What the check's process printed (the user's code, the libraries' warnings), on stderr:
    stdout holds the command's answer alone."""
    text = log.read_text(errors="replace")
    if text:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
        sys.stderr.flush()


def _verdict(specs: list[BenchSpec]) -> dict:
    """The first problem of the specs' models, or none; an exit or an interrupt the user's code
    raises is a verdict too."""
    from bench.models import impl
    from ddpm.errors import first_line

    spec = None
    try:
        for spec in specs:
            reason = impl.problem(spec)
            if reason:
                return {"problem": reason}
        return {"problem": None}
    except KeyboardInterrupt:
        return {"interrupted": True}
    except SystemExit as exc:
        return {
            "problem": f"--impl {spec.impl}: its code called sys.exit({exc.code!r}) while the "
            "model was built and checked."
        }
    except Exception as exc:  # raised outside the checks' own handling (a factory's import)
        return {"problem": f"--impl {spec.impl}: {type(exc).__name__}: {first_line(exc)}"}


def main(argv: list[str]) -> None:
    specs_json, result_path = argv
    # A session of its own, so a parent killed outright cannot stop it: it holds on to it.
    lifeline.hold()
    verdict = _verdict([BenchSpec(**s) for s in json.loads(specs_json)])
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(verdict, f)
    os.replace(tmp, result_path)
    sys.stdout.flush()
    sys.stderr.flush()
    # At once: threads the user's code started (non-daemon ones included) must not keep it.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
