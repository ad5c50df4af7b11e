"""Starting a test's worker script on 2 gloo ranks under torchrun, the way users start ranks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Ranks import torch and run a few tiny steps: seconds on a busy 2-core CPU. A rank waiting
# forever in a collective fails the test after this long instead of stalling CI.
LAUNCH_TIMEOUT_S = 300


def launch(script: str | Path, ranks: int, *args: str) -> str:
    """torchrun with `ranks` ranks running `script`; its output. On a timeout the launcher and
    its ranks (its own process group) are killed, and the test fails with their output."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(ranks),
        str(script),
        *args,
    ]
    proc = subprocess.Popen(
        command,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{ranks} ranks did not finish in {LAUNCH_TIMEOUT_S} s:\n{output[-4000:]}")
    assert proc.returncode == 0, output[-4000:]
    return output
