"""Fixtures every test module may use, and the --heavy option."""

import pytest

from tests.helpers.cuda_standin import fake_cuda  # noqa: F401  (the strict torch.cuda/pynvml stand-in)


def pytest_addoption(parser):
    parser.addoption(
        "--heavy",
        action="store_true",
        help="also run the tests marked heavy (a minute or more each on a 2-core CPU)",
    )


def pytest_collection_modifyitems(config, items):
    """Heavy tests (the prediction against real tensors at 256 px) stay out of the default run,
    which must finish in ~15 minutes on 2 cores: `pytest --heavy` runs them."""
    if config.getoption("--heavy"):
        return
    skip = pytest.mark.skip(reason="heavy: run with --heavy")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)
