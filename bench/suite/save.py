"""A bare `--benchmark-save` (no NAME) saves under an automatic name: `<commit>-<UTC time>`.

pytest-benchmark's `--benchmark-save` takes exactly one NAME, and pytest parses the command line
(after the installed plugins register, before any conftest loads) without letting a hook rewrite
the arguments first, so a conftest comes too late: this module is early-loaded by the `-p` in
pyproject.toml's addopts, and edits pytest-benchmark's option the moment pytest-benchmark's
plugin registers (its options exist from then on), before that parse.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

OPTION = "--benchmark-save"
PYTEST_BENCHMARK = "pytest_benchmark.plugin"


class _Automatic:
    """The value a bare --benchmark-save parses to, until pytest_configure names it. Not a str,
    so argparse does not run pytest-benchmark's NAME check on it."""

    def __repr__(self) -> str:
        return "<automatic name>"


AUTOMATIC = _Automatic()


def allow_bare_save(parser) -> None:
    """Make pytest-benchmark's `--benchmark-save NAME` take its NAME optionally (`nargs="?"`),
    a bare one parsing to AUTOMATIC; `--benchmark-save NAME` and `--benchmark-save=NAME` keep
    their meaning, NAME included when a path follows it.

    It reaches into what neither pytest nor pytest-benchmark promises: pytest's option groups
    (`parser.getgroup("benchmark").options`, each option's `attrs()` being the live mapping that
    argparse reads: the argparse action's `__dict__` in pytest 9, the `add_argument` keywords in
    pytest 8) and pytest-benchmark's option taking one NAME. So it checks each of those, and
    then parses a bare `--benchmark-save` to prove the edit took; any difference raises a
    UsageError saying what changed, rather than leaving the documented command to fail with
    argparse's "expected one argument"."""

    def changed(what: str) -> pytest.UsageError:
        return pytest.UsageError(
            f"bench.suite.save: {what}; pytest or pytest-benchmark changed shape, so a bare "
            f"{OPTION} cannot be given an automatic name (give it a NAME, or update "
            "allow_bare_save in bench/suite/save.py)"
        )

    try:
        options = parser.getgroup("benchmark").options
        found = [o for o in options if OPTION in o.names()]
        attrs = found[0].attrs() if len(found) == 1 else None
    except (AttributeError, TypeError) as exc:
        raise changed(f"pytest's option groups are not as expected ({exc})") from None
    if attrs is None:
        raise changed(f"pytest-benchmark's 'benchmark' option group has no single {OPTION}")
    if (
        attrs.get("nargs") is not None
        or attrs.get("const") is not None
        or attrs.get("action", "store") != "store"
    ):
        raise changed(f"{OPTION} no longer takes exactly one NAME")
    attrs["nargs"] = "?"
    attrs["const"] = AUTOMATIC
    attrs["help"] = (
        f"{attrs.get('help') or ''} Without NAME (ddpm-bench): an automatic name, "
        "<commit>-<UTC time>[-dirty]."
    ).strip()
    try:
        probe = parser.parse_known_args([OPTION]).benchmark_save
    except (pytest.UsageError, AttributeError) as exc:
        raise changed(f"a bare {OPTION} still does not parse ({exc})") from None
    if probe is not AUTOMATIC:
        raise changed(f"a bare {OPTION} parses to {probe!r}")


def automatic_name(root: Path, now: datetime | None = None) -> str:
    """`<short commit>-<YYYYmmddTHHMMSSZ>`, `-dirty` when tracked files differ from the commit;
    `nogit-<time>` outside a git tree (said on stderr). The UTC time keeps names sortable."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        print(
            f"{OPTION}: {root} is not in a git tree with a commit; saving as nogit-{stamp}",
            file=sys.stderr,
        )
        return f"nogit-{stamp}"
    return f"{commit}-{stamp}" + ("-dirty" if dirty else "")


def pytest_plugin_registered(plugin, manager):
    """pytest-benchmark's options exist once its plugin registers; pytest parses them next. A
    historic hook: this sees pytest-benchmark's registration whichever of the two loads first."""
    if getattr(plugin, "__name__", None) == PYTEST_BENCHMARK:
        config = manager.get_plugin("pytestconfig")
        try:
            parser = config._parser
        except AttributeError:
            raise pytest.UsageError(
                "bench.suite.save: pytest's config has no parser; pytest "
                "changed shape (update bench/suite/save.py)"
            ) from None
        allow_bare_save(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Name a bare save before pytest-benchmark's own pytest_configure reads the option."""
    if getattr(config.option, "benchmark_save", None) is AUTOMATIC:
        config.option.benchmark_save = automatic_name(config.rootpath)
