"""The UNet: parameter counts against the DDPM paper and a closed form, shapes, attention placement,
the timestep embedding against its formula, and gradient checkpointing against plain backprop."""

import math

import pytest
import torch

import ddpm.unet
from ddpm.config import PRESETS, UNetConfig
from ddpm.unet import AttentionBlock, UNet, timestep_embedding

CIFAR = PRESETS["ddpm-cifar10"]
TINY = PRESETS["tiny"]
MNIST = PRESETS["ddpm-mnist"]
# A 64x64 model with DDPM's CelebA-HQ/LSUN-style multipliers, attention at two resolutions and
# several heads; base 64 keeps the CPU forward cheap.
BIG64 = UNetConfig(
    image_size=64,
    in_channels=3,
    base_channels=64,
    channel_mults=(1, 2, 2, 2),
    attention_resolutions=(16, 8),
    num_heads=4,
)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- parameter counts


def conv(k, i, o):
    return k * k * i * o + o


def group_norm(c):
    return 2 * c


def linear(i, o):
    return i * o + o


def attention(c):
    # GroupNorm, then q, k, v and output projections, each C x C plus a bias.
    return 4 * (c * c + c) + 2 * c


def resblock(i, o, temb=512):
    shortcut = conv(1, i, o) if i != o else 0
    first = group_norm(i) + conv(3, i, o) + linear(temb, o)  # norm1, conv1, time projection
    return first + group_norm(o) + conv(3, o, o) + shortcut  # norm2, conv2, 1x1 shortcut


def cifar_closed_form(with_attention=True):
    """The CIFAR-10 UNet written out level by level from Ho et al.'s Appendix B (ch 128,
    mults 1,2,2,2, two res blocks, attention at 16x16), not from the code."""
    a = attention if with_attention else (lambda c: 0)
    total = linear(128, 512) + linear(512, 512)  # timestep MLP 128 -> 512 -> 512
    total += conv(3, 3, 128)  # conv_in
    # Down. Skips pushed: conv_in, every res block, every downsample.
    total += 2 * resblock(128, 128) + conv(3, 128, 128)  # 32x32, then stride-2 conv
    total += resblock(128, 256) + resblock(256, 256) + 2 * a(256) + conv(3, 256, 256)  # 16x16
    total += 2 * resblock(256, 256) + conv(3, 256, 256)  # 8x8
    total += 2 * resblock(256, 256)  # 4x4
    # Middle: res, attention, res at 4x4.
    total += 2 * resblock(256, 256) + a(256)
    # Up: three blocks per level, each concatenating one skip (skip channels, top of stack first:
    # 4x4: 256 256 256 | 8x8: 256 256 256 | 16x16: 256 256 128 | 32x32: 128 128 128).
    total += 3 * resblock(512, 256) + conv(3, 256, 256)  # 4x4, then nearest + conv
    total += 3 * resblock(512, 256) + conv(3, 256, 256)  # 8x8
    total += 2 * resblock(512, 256) + resblock(384, 256) + 3 * a(256) + conv(3, 256, 256)  # 16
    total += resblock(384, 128) + 2 * resblock(256, 128)  # 32x32
    total += group_norm(128) + conv(3, 128, 3)  # out
    return total


def test_cifar_parameter_count_matches_the_paper():
    # Ho et al. 2020 (and their released TF model): 35.7M parameters.
    assert n_params(UNet(CIFAR)) == 35_746_307
    assert n_params(UNet(CIFAR.replace(attention_resolutions=()))) == 34_164_227


def test_cifar_parameter_count_matches_the_closed_form():
    assert cifar_closed_form() == 35_746_307
    assert cifar_closed_form(with_attention=False) == 34_164_227
    # Six attention blocks at 256 channels are the whole difference.
    assert 35_746_307 - 34_164_227 == 6 * attention(256)


def diffusers_ddpm_256_params(ch: int) -> int:
    """Parameters of diffusers' UNet2DModel in the layout of google/ddpm-celebahq-256 (its
    config.json: block_out_channels 128, 128, 256, 256, 512, 512, two layers per block, attention
    in the fifth down block, the 16x16 level of a 256 px input, and so in the second up block),
    at base width ch: an implementation written apart from ours, built on the meta device."""
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        model = diffusers.UNet2DModel(
            sample_size=256,
            in_channels=3,
            out_channels=3,
            layers_per_block=2,
            block_out_channels=tuple(ch * m for m in (1, 1, 2, 2, 4, 4)),
            down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
            attention_head_dim=None,
        )
    return n_params(model)


@pytest.mark.parametrize(
    "preset, ch, count", [("ddpm-256", 128, 113_673_219), ("ddpm-256-large", 192, 255_677_955)]
)
def test_256px_parameter_counts_match_diffusers_layout(preset, ch, count):
    # ddpm-256: the released unet2d16b2c112244 ("114M"); ddpm-256-large: the paper's "approximately
    # 256 million parameters by increasing filter count" at ch 192.
    with torch.device("meta"):
        ours = n_params(UNet(PRESETS[preset]))
    assert ours == diffusers_ddpm_256_params(ch) == count


def test_block_parameter_formulas():
    assert n_params(ddpm.unet.ResBlock(128, 256, 512, 0.1, 32)) == resblock(128, 256)
    assert n_params(ddpm.unet.ResBlock(256, 256, 512, 0.1, 32)) == resblock(256, 256)
    assert n_params(AttentionBlock(256, 1, 32)) == attention(256)
    # Heads split channels; they add no parameters.
    assert n_params(AttentionBlock(256, 4, 32)) == attention(256)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "config, batch",
    [(TINY, 3), (CIFAR, 1), (MNIST, 2), (BIG64, 1), (TINY.replace(attention_resolutions=()), 2)],
    ids=["tiny", "cifar", "mnist", "64x64", "tiny-no-attn"],
)
def test_output_shape_equals_input_shape(config, batch):
    torch.manual_seed(0)
    model = UNet(config).eval()
    x = torch.randn(batch, config.in_channels, config.image_size, config.image_size)
    t = torch.randint(0, 1000, (batch,))
    with torch.no_grad():
        out = model(x, t)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()


def test_output_depends_on_timestep():
    torch.manual_seed(0)
    model = UNet(TINY).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        a = model(x, torch.tensor([3, 3]))
        b = model(x, torch.tensor([3, 700]))
    assert torch.equal(a[0], b[0])  # images are independent: no batch coupling
    assert not torch.allclose(a[1], b[1])


def test_images_in_a_batch_are_independent():
    # GroupNorm and attention act per image: a batch is the same as one image at a time.
    torch.manual_seed(0)
    model = UNet(TINY).eval()
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([0, 10, 500, 999])
    with torch.no_grad():
        batched = model(x, t)
        single = torch.cat([model(x[i : i + 1], t[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- attention placement


def attention_sides(config):
    """Side length of the feature map each AttentionBlock sees in one forward pass."""
    model = UNet(config).eval()
    sides = []
    hooks = [
        m.register_forward_pre_hook(lambda m, args: sides.append(args[0].shape[-1]))
        for m in model.modules()
        if isinstance(m, AttentionBlock)
    ]
    x = torch.zeros(1, config.in_channels, config.image_size, config.image_size)
    with torch.no_grad():
        model(x, torch.zeros(1, dtype=torch.long))
    for h in hooks:
        h.remove()
    return sorted(sides)


def count_attention(model):
    return sum(isinstance(m, AttentionBlock) for m in model.modules())


def test_no_attention_anywhere_when_empty():
    for config in (CIFAR, TINY, BIG64):
        assert count_attention(UNet(config.replace(attention_resolutions=()))) == 0


def test_cifar_attention_placement():
    # 2 down blocks + 3 up blocks at 16x16, plus the middle block at 4x4.
    assert count_attention(UNet(CIFAR)) == 6
    assert attention_sides(CIFAR) == [4] + [16] * 5


def test_attention_placement_other_configs():
    # tiny: one res block per level -> 1 down + 2 up at 8x8, middle at 8x8 (the lowest level).
    assert attention_sides(TINY) == [8] * 4
    # 64x64 with attention at 16 and 8: (2 down + 3 up) at each, middle at 8x8.
    assert attention_sides(BIG64) == [8] * 6 + [16] * 5
    heads = {m.num_heads for m in UNet(BIG64).modules() if isinstance(m, AttentionBlock)}
    assert heads == {4}


def test_multi_head_attention_matches_a_hand_written_one():
    torch.manual_seed(0)
    block = AttentionBlock(16, 4, 8).eval()
    x = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        out = block(x)
        b, c, h, w = x.shape
        tokens = torch.nn.functional.group_norm(x, 8, block.norm.weight, block.norm.bias)
        tokens = tokens.flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = (tokens @ block.qkv.weight.T + block.qkv.bias).split(c, dim=-1)
        heads = []
        for i in range(4):
            s = slice(4 * i, 4 * i + 4)
            weights = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(4), dim=-1)
            heads.append(weights @ v[..., s])
        att = torch.cat(heads, dim=-1) @ block.proj.weight.T + block.proj.bias
        expected = x + att.transpose(1, 2).reshape(b, c, h, w)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- timestep embedding


def test_timestep_embedding_matches_the_sinusoid_formula():
    dim, half = 32, 16
    ts = [0, 1, 17, 250, 999]
    emb = timestep_embedding(torch.tensor(ts), dim)
    assert emb.shape == (len(ts), dim) and emb.dtype == torch.float32
    for row, t in zip(emb.tolist(), ts):
        # DDPM's get_timestep_embedding: w_k = exp(-ln(10000) k / (half - 1)), sin then cos.
        freqs = [math.exp(-math.log(10000) * k / (half - 1)) for k in range(half)]
        expected = [math.sin(t * f) for f in freqs] + [math.cos(t * f) for f in freqs]
        # float32 arguments up to 999 carry ~1e-4 absolute rounding.
        assert row == pytest.approx(expected, abs=5e-4)
    # Lowest frequency is exactly 1/10000 and the highest 1: t=0 gives sin 0, cos 1.
    assert emb[0, :half].abs().max() == 0 and torch.all(emb[0, half:] == 1)


def test_time_embedding_narrower_than_four_is_refused():
    # half - 1 frequency intervals: a width of 2 would divide by zero and give NaN outputs.
    with pytest.raises(ValueError, match="time_embed_dim=2"):
        TINY.replace(time_embed_dim=2)
    model = UNet(TINY.replace(time_embed_dim=4)).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 16, 16), torch.tensor([5]))
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------- gradient checkpointing


def forward_backward(model, x, t, weight, seed):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # same dropout masks for both models
    out = model(x, t)
    (out * weight).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(monkeypatch):
    config = TINY.replace(dropout=0.3)
    torch.manual_seed(0)
    plain = UNet(config).train()
    ckpt = UNet(config.replace(gradient_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 16, 16, generator=g)
    t = torch.randint(0, 1000, (3,), generator=g)
    weight = torch.randn(3, 1, 16, 16, generator=g)

    # Count recomputed stages, so the comparison cannot pass because the flag does nothing.
    calls = []
    real = ddpm.unet.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ddpm.unet, "checkpoint", counting)

    out_plain, grads_plain = forward_backward(plain, x, t, weight, seed=7)
    assert not calls
    out_ckpt, grads_ckpt = forward_backward(ckpt, x, t, weight, seed=7)
    assert len(calls) == len(ckpt.down) + 1 + len(ckpt.up)  # every stage, middle included

    torch.testing.assert_close(out_ckpt, out_plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_ckpt, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    # Negative control: dropout really is active, so matching masks (RNG state restored for the
    # recomputation) is what made the gradients agree.
    out_other, grads_other = forward_backward(plain, x, t, weight, seed=8)
    assert not torch.allclose(out_other, out_plain, rtol=1e-3, atol=1e-4)

    # Not in eval mode nor without grad: nothing to recompute there.
    calls.clear()
    ckpt.eval()
    with torch.no_grad():
        ckpt(x, t)
    ckpt.train()
    with torch.no_grad():
        ckpt(x, t)
    assert not calls


@pytest.mark.parametrize("size", [4, 8, 16])
def test_phased_upsample_equals_upsample_then_conv(size):
    """The phase decomposition is the same function as nearest x2 + 3x3 conv, gradients too."""
    torch.manual_seed(0)
    up = ddpm.unet.Upsample(32).double()
    x = torch.randn(2, 32, size, size + 2, dtype=torch.float64, requires_grad=True)
    upsampled = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
    want = torch.nn.functional.conv2d(upsampled, up.conv.weight, up.conv.bias, padding=1)
    got = ddpm.unet.phased_upsample_conv(x, up.conv.weight, up.conv.bias)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    probe = torch.randn_like(want)
    grads_want = torch.autograd.grad((want * probe).sum(), [x, up.conv.weight, up.conv.bias])
    grads_got = torch.autograd.grad((got * probe).sum(), [x, up.conv.weight, up.conv.bias])
    for g, w in zip(grads_got, grads_want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-11)


def test_unet_with_phased_upsampling_matches_the_textbook_form(monkeypatch):
    """The default (phased) UNet agrees with the direct form in fp32: outputs and gradients."""
    calls = []
    real = ddpm.unet.phased_upsample_conv
    monkeypatch.setattr(ddpm.unet, "phased_upsample_conv", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    config = PRESETS["tiny"].replace(image_size=32, attention_resolutions=(16,))
    model = UNet(config)
    x, t = torch.randn(2, config.in_channels, 32, 32), torch.tensor([3, 700])
    outputs, grads = [], []
    for phased in (True, False):
        for m in model.modules():
            if isinstance(m, ddpm.unet.Upsample):
                m.phased = phased
        model.zero_grad()
        out = model(x, t)
        out.square().mean().backward()
        outputs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert len(calls) == 1  # tiny at 32px upsamples 16 -> 32 once, by phases
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
