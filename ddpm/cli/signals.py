"""Ctrl-C and SIGTERM alike: cleanup runs, and the exit status is the one a shell reports for a
process that signal killed (130, 143)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

# Long enough for the callback that swallowed an interrupt to return before it comes again.
REDELIVERY_DELAY_S = 0.01


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


def _redeliver(unraisable) -> None:
    """sys.unraisablehook inside sigterm_as_interrupt. A signal whose handler runs while Python
    is inside a weakref callback or a finalizer (torch's storages have them) raises where no
    caller can catch it: Python prints "Exception ignored" and goes on as if it never came. The
    signal is sent again from another thread a moment later (not raised here, where it would be
    ignored once more), so its handler runs in the interrupted code once the callback has
    returned; should it land in a callback again, it comes back here again."""
    exc = unraisable.exc_value
    if isinstance(exc, KeyboardInterrupt):
        again = threading.Timer(REDELIVERY_DELAY_S, os.kill, (os.getpid(), stopping_signal(exc)))
        again.daemon = True
        again.start()
    else:
        sys.__unraisablehook__(unraisable)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside the block SIGTERM raises Interrupted, and an interrupt raised where Python would
    ignore it comes again (_redeliver); the previous handler and hook are restored after."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    hook, sys.unraisablehook = sys.unraisablehook, _redeliver
    try:
        yield
    finally:
        sys.unraisablehook = hook
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
