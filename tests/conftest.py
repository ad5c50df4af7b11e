"""Fixtures every test module may use."""

from tests.helpers.card_axis import card_axis  # noqa: F401  (the --card axis where BenchSpec lacks it)
from tests.helpers.cuda_standin import fake_cuda  # noqa: F401  (the strict torch.cuda/pynvml stand-in)
