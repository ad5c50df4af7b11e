"""Fixtures every test module may use, the --heavy option, and the session's trace cache."""

import os
import shutil
import tempfile

import pytest
import torch

from bench.predict.cache import CACHE_ENV
from tests.helpers.cuda_standin import fake_cuda  # noqa: F401  (the strict torch.cuda/pynvml stand-in)


@pytest.fixture(scope="module")
def one_thread():
    """For modules that count bytes (`pytestmark = pytest.mark.usefixtures("one_thread")`): the
    counts do not depend on threads, and on a small shared CPU intra-op threads spin against
    other jobs, so one thread keeps those tests in seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_addoption(parser):
    parser.addoption(
        "--heavy",
        action="store_true",
        help="also run the tests marked heavy (a minute or more each on a 2-core CPU)",
    )


def pytest_configure(config):
    """Traces are cached for this session alone (bench.predict.cache), in a folder the commands
    the tests start inherit: never the user's cache, whose entries a test would take for traces
    of its own. Set before collection, as modules copy the environment when imported."""
    config.trace_cache = os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="ddpm-bench-traces-")
    share_the_cores()


def share_the_cores():
    """Under `pytest -n N` (pytest-xdist) each of the N workers takes its share of the cores for
    torch's intra-op threads: N workers each spinning every core's thread would contend. The
    commands a test starts run as a user's would, not as xdist workers, so the worker's
    variables are not passed on to them (pytest-benchmark turns itself off in an xdist worker,
    and tests/bench/suite/test_suite.py's `pytest bench` saves benchmarks)."""
    workers = int(os.environ.pop("PYTEST_XDIST_WORKER_COUNT", "0"))
    os.environ.pop("PYTEST_XDIST_WORKER", None)
    os.environ.pop("PYTEST_XDIST_TESTRUNUID", None)
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "trace_cache", ""), ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Heavy tests (the prediction against real tensors at 256 px) stay out of the default run,
    which must finish in ~15 minutes on 2 cores: `pytest --heavy` runs them."""
    if config.getoption("--heavy"):
        return
    skip = pytest.mark.skip(reason="heavy: run with --heavy")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)
