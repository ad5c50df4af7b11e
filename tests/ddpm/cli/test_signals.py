"""An interrupt is never lost, wherever the signal lands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

# SIGTERM or Ctrl-C whose handler runs inside a weakref callback (a finalizer here; torch's
# storages have them too): Python cannot raise it there, prints "Exception ignored" and would
# go on.
LANDS_IN_A_FINALIZER = textwrap.dedent(
    """
    import signal, sys, time, weakref
    from ddpm.cli.signals import exit_on_interrupt

    class Held:
        pass

    with exit_on_interrupt(lambda name: f"stopped by {name}"):
        held = Held()
        weakref.finalize(held, signal.raise_signal, signal.{name})
        del held
        for _ in range(200):
            time.sleep(0.01)
        print("went on")
    """
)


@pytest.mark.parametrize("name, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_inside_a_finalizer_still_stops_the_command(name, status):
    proc = subprocess.run(
        [sys.executable, "-c", LANDS_IN_A_FINALIZER.replace("{name}", name)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=60,
        # As from an interactive shell: a test runner's worker may ignore SIGINT, and a child
        # that starts with it ignored never raises KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.returncode == status, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == f"stopped by {name}\n"
