"""ddpm.cli.pipes: a write to a pipe whose reader is gone raises nothing, the stream then goes
to os.devnull, the block runs to its end, and the exit status is 141 only when stdout was cut
and the command did not fail for a reason of its own."""

from __future__ import annotations

import io
import os
import sys

import pytest

from ddpm.cli.pipes import EXIT_CLOSED_PIPE, GuardedStream, quiet_closed_pipes


@pytest.fixture
def closed_pipe():
    """A text stream on the write end of a pipe whose read end is already closed."""
    read, write = os.pipe()
    os.close(read)
    stream = io.TextIOWrapper(io.FileIO(write, "w"), write_through=True)
    yield stream
    stream.close()


def same_file(fd: int, path: str) -> bool:
    a, b = os.fstat(fd), os.stat(path)
    return (a.st_dev, a.st_ino, a.st_rdev) == (b.st_dev, b.st_ino, b.st_rdev)


def test_the_closed_pipe_itself_raises(closed_pipe):
    # What the guard is for: unguarded, the write fails (Python ignores SIGPIPE).
    with pytest.raises(BrokenPipeError):
        closed_pipe.write("answer\n")


def test_a_write_to_a_closed_pipe_raises_nothing_and_goes_to_devnull(closed_pipe):
    guarded = GuardedStream(closed_pipe)
    assert guarded.write("answer\n") == len("answer\n")
    assert guarded.closed_pipe
    assert same_file(closed_pipe.fileno(), os.devnull)
    guarded.write("more\n")
    guarded.flush()
    closed_pipe.write("the stream's own writes now go to devnull too\n")
    closed_pipe.flush()


def test_an_open_stream_is_written_and_left_as_it_is():
    text = io.StringIO()
    guarded = GuardedStream(text)
    print("answer", file=guarded)
    assert text.getvalue() == "answer\n" and not guarded.closed_pipe
    assert guarded.isatty() is False  # the rest is the stream's own


def test_the_block_runs_to_its_end_then_exits_141(closed_pipe, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "stdout", closed_pipe)
    with pytest.raises(SystemExit) as info, quiet_closed_pipes():
        print("the answer, which nobody reads")
        (tmp_path / "result.txt").write_text("written after the failed print")
    assert info.value.code == EXIT_CLOSED_PIPE == 141
    assert (tmp_path / "result.txt").read_text() == "written after the failed print"
    assert sys.stdout is closed_pipe  # restored


def test_a_failure_of_its_own_keeps_its_status(closed_pipe, monkeypatch):
    monkeypatch.setattr(sys, "stdout", closed_pipe)
    with pytest.raises(SystemExit) as info, quiet_closed_pipes():
        print("nobody reads this")
        sys.exit(2)
    assert info.value.code == 2
    with pytest.raises(KeyboardInterrupt), quiet_closed_pipes():
        raise KeyboardInterrupt


def test_a_closed_stderr_alone_costs_no_status(closed_pipe, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", closed_pipe)
    with quiet_closed_pipes():
        print("progress nobody reads", file=sys.stderr)
        print("the answer")
    assert capsys.readouterr().out == "the answer\n"


def test_nothing_changes_when_the_pipes_stay_open(capsys):
    with pytest.raises(SystemExit) as info, quiet_closed_pipes():
        print("--help's text")
        sys.exit(0)
    assert info.value.code == 0 and capsys.readouterr().out == "--help's text\n"
    with quiet_closed_pipes():
        print("answer")
        with quiet_closed_pipes():  # nested: a no-op, the outer one decides
            assert isinstance(sys.stdout, GuardedStream)
            print("inner")
    assert capsys.readouterr().out == "answer\ninner\n"
