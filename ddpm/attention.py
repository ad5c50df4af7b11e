"""Which kernel torch's scaled_dot_product_attention may run: "auto" leaves the choice to its
dispatcher; "flash", "efficient" or "math" allows that backend alone (torch.nn.attention's
sdpa_kernel). A backend the device or dtype cannot run fails in the first attention call, as
torch's dispatcher fails it ("No available kernel"): math materialises the attention matrix, the
fused kernels do not, so the choice moves memory as well as time."""

from __future__ import annotations

import contextlib

from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
# What torch's CPU dispatcher has: its flash kernel (a CPU implementation) and math.
CPU_BACKENDS = ("auto", "flash", "math")


def sdpa_backend(name: str):
    """A context in which attention runs on backend `name` alone ("auto": torch's choice). The
    setting is global, not per thread, so a backward run by autograd's device thread (and a
    checkpointed block's recomputed forward) is under it too."""
    if name == "auto":
        return contextlib.nullcontext()
    return sdpa_kernel([BACKENDS[name]])
