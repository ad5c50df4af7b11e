"""`pytest bench` loads this file first (a conftest beside the paths it is given), before it
reads its options: the benchmark suite's plugin, in bench/suite/plugin.py, is registered here so
its options exist by then. The benchmarks are bench/suite/test_*.py. (bench/suite/save.py, which
lets a bare --benchmark-save name itself, is not here: it must load earlier still, by the `-p`
in pyproject.toml's addopts.)"""

from bench.suite.plugin import (  # noqa: F401  (pytest finds hooks by name in a conftest)
    pytest_addoption,
    pytest_benchmark_update_machine_info,
    pytest_configure,
    pytest_generate_tests,
    pytest_unconfigure,
)
