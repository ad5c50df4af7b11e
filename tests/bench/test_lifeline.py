"""bench.lifeline on real processes: a child holding on to its parent, or to another process,
ends when that process is killed outright, after its last act; and it lives while they live.
(tests/bench/sweep/test_runner.py and tests/bench/sweep/test_ranks.py hold the worker and the
prediction process to it inside a sweep.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from bench import lifeline

    other, marker = int(sys.argv[1]), Path(sys.argv[2])
    lifeline.hold((other,), lambda gone: marker.write_text(" ".join(map(str, sorted(gone)))))
    marker.with_suffix(".ready").write_text("")
    time.sleep(120)
""")
# The parent starts the child and waits; the test kills one or the other.
PARENT = textwrap.dedent("""
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
    print(child.pid, flush=True)
    child.wait()
""")


def wait_until(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("killed", ["parent", "other"])
def test_a_child_ends_with_what_it_holds_on_to_after_its_last_act(tmp_path, killed):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    marker = tmp_path / "last.txt"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(other.pid), str(marker)],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        child = int(parent.stdout.readline())
        assert wait_until(marker.with_suffix(".ready").exists), "the child never started"
        time.sleep(1.0)  # a few of the watcher's looks: nothing it holds on to has gone yet
        assert not gone(child) and not marker.exists()
        victim = parent if killed == "parent" else other
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        assert wait_until(lambda: gone(child)), "the child outlived what it held on to"
        assert marker.read_text() == str(victim.pid)  # the last act saw who had gone
    finally:
        for proc in (parent, other):
            proc.kill()
            proc.wait()
        if not gone(child):
            os.kill(child, signal.SIGKILL)
