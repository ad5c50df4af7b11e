"""Ctrl-C and SIGTERM alike: cleanup runs, and the exit status is the one a shell reports for a
process that signal killed (130, 143)."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable
from typing import NoReturn


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C raises KeyboardInterrupt: `finally` blocks run (no temporary
    file is left behind) and one `except KeyboardInterrupt` handles both."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signal.Signals(signum)


def stopping_signal(exc: KeyboardInterrupt) -> signal.Signals:
    """The signal behind an interrupt; the exit status a shell expects is 128 + its number."""
    return getattr(exc, "signum", signal.SIGINT)


def _raise_interrupted(signum, frame) -> NoReturn:
    raise Interrupted(signum)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside the block SIGTERM raises Interrupted; the previous handler is restored after."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def exit_on_interrupt(message: Callable[[str], str]):
    """Ctrl-C or SIGTERM inside the block: cleanup runs, then message(signal name) as one line on
    stderr and exit status 130 or 143, as a shell reports a process those signals killed."""
    try:
        with sigterm_as_interrupt():
            yield
    except KeyboardInterrupt as exc:
        sig = stopping_signal(exc)
        print(" ".join(message(sig.name).split()), file=sys.stderr)
        sys.exit(128 + sig)
