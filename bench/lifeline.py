"""The one lifeline of every child process that must die with its parent: a spec's worker (its
parent the sweep, or torchrun under it), a rank's prediction process, and the check of a user's
model (bench.sweep.check).

A child killed outright leaves nothing to stop it: a sweep killed with SIGKILL cannot stop its
worker, torchrun killed at a timeout cannot stop its ranks (each in a session of its own), and a
rank killed cannot stop its prediction pool. So the child holds on itself: a watcher thread
waits on the processes it depends on and ends the child the moment one has exited, after a last
act of its own (the worker removes the sweep's temporary folder). It waits on pidfds, which
Linux makes readable the moment a process exits (a zombie included), and on getppid(), which
changes when the parent exits and its children pass to another process; without pidfds it
polls."""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable, Iterable

POLL_S = 0.5  # the longest wait between two looks (the pidfds wake the watcher at once)


def hold(pids: Iterable[int] = (), last: Callable[[set[int]], None] | None = None) -> None:
    """From now on, end this process (os._exit(1)) once its parent or any of `pids` has exited.
    `last`, if given, runs first with the watched processes (its parent among them) that have
    exited."""
    parent = os.getppid()
    watched = {parent, *pids}
    threading.Thread(target=_watch, args=(parent, watched, last), daemon=True).start()


def _watch(parent: int, pids: set[int], last: Callable[[set[int]], None] | None) -> None:
    fds = {pid: _pidfd(pid) for pid in pids}
    while os.getppid() == parent and not any(_exited(p, fd) for p, fd in fds.items()):
        select.select([fd for fd in fds.values() if fd is not None], [], [], POLL_S)
    if last is not None:
        last({p for p, fd in fds.items() if _exited(p, fd)})
    os._exit(1)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (not Linux, or the process is already gone)
        return None


def _exited(pid: int, pidfd: int | None) -> bool:
    if pidfd is not None:  # readable once the whole process has exited
        return bool(select.select([pidfd], [], [], 0)[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
