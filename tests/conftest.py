"""Fixtures every test module may use."""

from tests.helpers.cuda_standin import fake_cuda  # noqa: F401  (the strict torch.cuda/pynvml stand-in)
