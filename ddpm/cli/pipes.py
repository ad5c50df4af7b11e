"""A reader that goes away (`python -m ... | head -1`) ends a command quietly and costs it nothing.

Every command writes its answer on stdout and its progress and warnings on stderr. When the
reader of either closes its end early, a write raises BrokenPipeError (Python ignores SIGPIPE).
Inside `quiet_closed_pipes()` that error never reaches the command: the stream is pointed at
os.devnull, as the Python documentation's note on SIGPIPE recommends (so the interpreter's last
flush is silent as well), and the command goes on to the end, writing every file it would have
written. It then exits with status 141, 128 + SIGPIPE: what a shell reports for a program the
closed pipe stopped, so `set -o pipefail` still tells that the output was cut short, while the
files are whole. A command that fails for its own reasons keeps its own status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

EXIT_CLOSED_PIPE = 128 + signal.SIGPIPE


class GuardedStream:
    """A text stream whose writes never raise BrokenPipeError: the first one sends the stream's
    file descriptor to os.devnull, and later writes are dropped. Everything else (isatty,
    fileno, encoding) is the stream's own."""

    def __init__(self, stream):
        self.stream = stream
        self.closed_pipe = False

    def write(self, text: str) -> int:
        if not self.closed_pipe:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self._to_devnull()
        return len(text)

    def flush(self) -> None:
        if not self.closed_pipe:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._to_devnull()

    def _to_devnull(self) -> None:
        self.closed_pipe = True
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # an in-memory stream has no descriptor
            return
        # Bytes still in the stream's buffer then go to devnull at exit, not to the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def quiet_closed_pipes():
    """Run a command's main with stdout and stderr guarded; exit 141 at the end if its answer
    (stdout) met a closed pipe. Nested (one command run by another, as bench.gpucheck runs
    bench.memory), the outer one decides."""
    if isinstance(sys.stdout, GuardedStream) or isinstance(sys.stderr, GuardedStream):
        yield
        return
    saved = sys.stdout, sys.stderr
    out, err = GuardedStream(sys.stdout), GuardedStream(sys.stderr)
    sys.stdout, sys.stderr = out, err
    finished = None  # SystemExit(0) or (None), e.g. after --help
    try:
        yield
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
        finished = exc
    finally:
        # Flushed here, under the guard: a pipe's buffer is often written only now.
        out.flush()
        err.flush()
        sys.stdout, sys.stderr = saved
    if out.closed_pipe:
        raise SystemExit(EXIT_CLOSED_PIPE)
    if finished is not None:
        raise finished
