"""A pytest plugin (entry point `pytest11`) that lets users type a bare
`pytest bench --benchmark-save`: pytest-benchmark 5 insists on a NAME, so the option is given
an optional value whose default is an automatic name (UTC time and git commit).

It touches one argparse action through pytest's parser; tests/test_bench_suite.py checks that a
bare save and a named save both write JSON that `pytest-benchmark compare` reads."""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone

_parser = None


def automatic_name() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{stamp}_{commit}" if commit else stamp


def _allow_bare_save() -> None:
    if _parser is None:
        return
    for action in _parser.optparser._actions:  # pytest's argparse parser (private attribute)
        if "--benchmark-save" in action.option_strings and action.nargs is None:
            action.nargs = "?"
            action.const = automatic_name()


def pytest_addoption(parser) -> None:
    global _parser
    _parser = parser
    _allow_bare_save()  # pytest-benchmark registered before us


def pytest_plugin_registered(plugin, manager) -> None:
    _allow_bare_save()  # pytest-benchmark registered after us
