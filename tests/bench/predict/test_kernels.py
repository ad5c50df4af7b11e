"""What the kernel recorder sees a step launch, against independent counts: torch's own
FlopCounterMode on the eager model (every implementation, the denoising step in inference mode
included), the layer shapes by hand, and the launch rules of CUDA's multi_tensor_apply."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.cards import CARDS
from bench.models.workload import build_model
from bench.predict.kernels import Kernel, KernelRecorder, multi_tensor_launches
from bench.predict.runtime import denoising_step_kernels, train_step_kernels
from bench.spec import BenchSpec
from tests.helpers.guided import guided_spec, needs_guided, tiny_file

CARD = CARDS["rtx3070"]


def recorded(fn, *shapes, dtype=torch.float32, capability=(8, 6), grad=False) -> list[Kernel]:
    recorder = KernelRecorder(capability)
    with FakeTensorMode():
        tensors = [torch.empty(s, dtype=dtype, requires_grad=grad) for s in shapes]
        with recorder:
            recorder.on = True
            fn(*tensors)
    return [k for k in recorder.kernels if k.kind != "host"]


def test_a_convolution_is_its_gemm_and_its_bias_add():
    # N=8, Cin=64 -> Cout=32, 16x16, 3x3, padding 1: M = 8*16*16, N = 32, K = 64*9.
    conv, bias = recorded(
        lambda x, w, b: F.conv2d(x, w, b, padding=1), (8, 64, 16, 16), (32, 64, 3, 3), (32,)
    )
    assert (conv.kind, conv.gemm) == ("conv", (1, 2048, 32, 576))
    assert conv.flops == 2 * 8 * 16 * 16 * 32 * 64 * 9
    assert conv.bytes == 4 * (8 * 64 * 256 + 32 * 64 * 9 + 8 * 32 * 256)
    # cuDNN takes no bias: one more pass reads and writes the output, and reads the bias.
    assert (bias.kind, bias.bytes, bias.beyond_aten) == (
        "memory",
        4 * (2 * 8 * 32 * 256 + 32),
        True,
    )


def test_a_half_convolution_on_tensor_cores_transposes_its_nchw_operands():
    kernels = recorded(
        lambda x, w: F.conv2d(x, w, padding=1), (8, 64, 16, 16), (32, 64, 3, 3), dtype=torch.half
    )
    assert [k.op for k in kernels] == ["convolution", "convolution_nhwc_transposes"]
    assert kernels[1].bytes == 2 * 2 * (8 * 64 * 256 + 8 * 32 * 256)  # in and out, read + write
    # Pascal has no tensor cores: no transposes; channels-last needs none.
    pascal = recorded(
        lambda x, w: F.conv2d(x, w, padding=1),
        (8, 64, 16, 16),
        (32, 64, 3, 3),
        dtype=torch.half,
        capability=(6, 1),
    )
    assert [k.op for k in pascal] == ["convolution"]
    nhwc = recorded(
        lambda x, w: F.conv2d(x.to(memory_format=torch.channels_last), w, padding=1),
        (8, 64, 16, 16),
        (32, 64, 3, 3),
        dtype=torch.half,
    )
    assert "convolution_nhwc_transposes" not in [k.op for k in nhwc]


def test_a_convolution_backward_is_two_gemms_and_a_bias_sum_with_flopcounters_flops():
    def step(x, w, b):
        y = F.conv2d(x, w, b, padding=1)
        y.backward(torch.ones_like(y))  # a whole output gradient (sum's would be broadcast)

    kernels = recorded(step, (4, 16, 8, 8), (32, 16, 3, 3), (32,), grad=True)
    by_op = {k.op: k for k in kernels}
    data, weight = by_op["convolution_backward_data"], by_op["convolution_backward_weight"]
    assert data.gemm == (1, 4 * 64, 16, 32 * 9)  # M = input pixels, N = Cin, K = Cout x taps
    assert weight.gemm == (1, 32, 16 * 9, 4 * 64)  # M = Cout, N = Cin x taps, K = output pixels
    assert by_op["convolution_backward_bias"].bytes == 4 * (4 * 32 * 64 + 32)
    with FakeTensorMode():
        x, w, b = (
            torch.empty(s, requires_grad=True) for s in ((4, 16, 8, 8), (32, 16, 3, 3), (32,))
        )
        with FlopCounterMode(display=False) as counter:
            y = F.conv2d(x, w, b, padding=1)
            y.backward(torch.ones_like(y))
    assert sum(k.flops for k in kernels) == counter.get_total_flops()


def test_a_matmul_by_hand():
    (k,) = recorded(torch.mm, (64, 128), (128, 256))
    assert (k.kind, k.gemm, k.flops) == ("matmul", (1, 64, 256, 128), 2 * 64 * 128 * 256)
    assert k.bytes == 4 * (64 * 128 + 128 * 256 + 64 * 256)


def test_an_elementwise_op_reads_and_writes_once_and_views_cost_only_dispatch():
    recorder = KernelRecorder()
    with FakeTensorMode():
        a, b = torch.empty(1000), torch.empty(1)
        with recorder:
            recorder.on = True
            a.view(10, 100).t()
            a + b.expand(1000)
    # view, t and expand launch nothing: the host only dispatches them.
    assert [(k.op, k.kind, k.host_ops) for k in recorder.kernels] == [
        ("view", "host", 1),
        ("t", "host", 1),
        ("expand", "host", 1),
        ("add", "memory", 1),
    ]
    add = recorder.kernels[-1]
    assert (add.flops, add.bytes) == (0, 4 * (1000 + 1 + 1000))


def test_group_norm_reads_its_input_once_more_for_its_statistics():
    kernels = recorded(lambda x: F.group_norm(x, 4), (2, 8, 4, 4))
    assert [k.op for k in kernels] == ["native_group_norm_moments", "native_group_norm"]
    assert kernels[0].bytes == 4 * 2 * 8 * 16


@pytest.mark.parametrize(
    ("sizes", "depth", "launches"),
    [
        ([10] * 200, 1, 2),  # 110 tensors fill a pack at depth 1: 110 + 90
        ([10] * 200, 4, 6),  # 36 at depth 4: 5 full packs and 20
        ([320 * 65_536 + 1], 1, 2),  # 321 chunks: 320 blocks fill a launch, one is left
        ([65_536] * 3, 2, 1),
        ([0, 5, 0], 1, 1),  # empty tensors are skipped
    ],
)
def test_multi_tensor_apply_launches_by_its_rules(sizes, depth, launches):
    assert multi_tensor_launches(sizes, depth) == launches


def test_item_on_a_fake_tensor_is_a_synchronisation_answered_zero():
    recorder = KernelRecorder()
    with FakeTensorMode():
        x = torch.empty(3)
        with recorder:
            recorder.on = True
            value = x.sum().item()
    assert value == 0
    assert [k.kind for k in recorder.kernels if k.kind != "host"] == ["memory", "sync"]


def test_a_collective_is_recorded_with_its_message():
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=4)
    try:
        recorder = KernelRecorder()
        with FakeTensorMode():
            t = torch.empty(1000)
            with recorder:
                recorder.on = True
                dist.all_reduce(t)
    finally:
        dist.destroy_process_group()
    (k,) = [k for k in recorder.kernels if k.kind == "collective"]
    assert (k.op, k.bytes, k.waits) == ("all_reduce", 4000, True)


FACTORY = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 16, 3, padding=1)
            self.norm = nn.GroupNorm(4, 16)
            self.qkv = nn.Linear(16, 48)
            self.b = nn.Conv2d(16, 3, 3, padding=1)

        def forward(self, x, t):
            h = F.silu(self.norm(self.a(x)))
            tokens = h.flatten(2).transpose(1, 2)
            q, k, v = (z.unsqueeze(1) for z in self.qkv(tokens).chunk(3, dim=-1))
            out = F.scaled_dot_product_attention(q, k, v).squeeze(1)
            return self.b(h + out.transpose(1, 2).reshape(h.shape))

    def make():
        return Net()
    """
)


@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "timed_nets.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "timed_nets:make"


def eager_forward_flops(spec: BenchSpec) -> int:
    """FlopCounterMode on the eager model's training forward, attention by the math backend
    (matmuls FlopCounterMode counts itself)."""
    c = spec.unet_config()
    with FakeTensorMode(), sdpa_kernel(SDPBackend.MATH):
        model = build_model(spec, compiled=False)
        x = torch.empty(spec.batch, c.in_channels, c.image_size, c.image_size)
        with FlopCounterMode(display=False) as counter:
            model(x, torch.zeros(spec.batch, dtype=torch.long))
    return counter.get_total_flops()


SPECS = {
    "ddpm": {"preset": "ddpm-cifar10", "channels": "32", "image_size": 16},
    "diffusers": {"preset": "ddpm-cifar10", "image_size": 8, "attention": "none"},
    "lucidrains": {"preset": "ddpm-cifar10", "image_size": 16, "attention": "none"},
    "factory": {"preset": "ddpm-cifar10", "image_size": 8, "attention": "none"},
}


@pytest.mark.parametrize("impl", SPECS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_denoising_step_counts_the_forward_flops(impl, precision, factory, request):
    """Inference mode hands conv2d, linear, group_norm and SDPA over undecomposed: each must
    still be counted, so a denoising step holds one forward's FLOPs."""
    if impl == "lucidrains":
        pytest.importorskip("denoising_diffusion_pytorch")
    if impl == "diffusers":
        pytest.importorskip("diffusers")
    name = factory if impl == "factory" else impl
    spec = BenchSpec(
        impl=name, batch=2, sampler="ddim", sampling_steps=2, precision=precision, **SPECS[impl]
    )
    traced = sum(k.flops for k in denoising_step_kernels(spec, CARD))
    assert traced > 0 and traced == eager_forward_flops(spec)


@needs_guided
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_guided_diffusions_denoising_step_counts_its_forward_flops(precision, tmp_path):
    """guided-diffusion's own sampling loop (class labels, learned sigma, its attention) in its
    own fp16 scheme: one forward's FLOPs too."""
    spec = guided_spec(
        tiny_file(tmp_path), batch=2, sampler="ddim", sampling_steps=2, precision=precision
    )
    traced = sum(k.flops for k in denoising_step_kernels(spec, CARD))
    assert traced > 0 and traced == eager_forward_flops(spec)


def test_the_training_step_counts_forward_and_backward_flops():
    """Without attention (whose CUDA backward recomputes the scores, which the math backend's
    backward does not): every convolution and linear forward and backward, as FlopCounterMode
    counts them on the eager model."""
    spec = BenchSpec(preset="ddpm-cifar10", channels="32", image_size=16, attention="none", batch=2)
    traced = sum(k.flops for k in train_step_kernels(spec, CARD))
    c = spec.unet_config()
    with FakeTensorMode(), sdpa_kernel(SDPBackend.MATH):
        model = build_model(spec, compiled=False)
        x = torch.empty(2, c.in_channels, c.image_size, c.image_size)
        with FlopCounterMode(display=False) as counter:
            model(x, torch.zeros(2, dtype=torch.long)).square().mean().backward()
    assert traced == counter.get_total_flops()
    assert math.isclose(traced, 3 * eager_forward_flops(spec), rel_tol=0.05)
