"""`pytest bench` loads this file first (a conftest beside the paths it is given), before it
reads its options: the benchmark suite's plugin, in bench/suite/plugin.py, is registered here so
its options exist by then. The benchmarks are bench/suite/test_*.py."""

from bench.suite.plugin import (  # noqa: F401  (pytest finds hooks by name in a conftest)
    pytest_addoption,
    pytest_benchmark_update_machine_info,
    pytest_configure,
    pytest_generate_tests,
    pytest_unconfigure,
)
