"""guided-diffusion in tests: a tiny config's flag text (every block type its UNet has: scale-shift
norm, attention, learned sigma, class labels) and specs of it, settled as the command line
settles them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.models import guided_flags
from bench.models.impl import settle
from bench.spec import BenchSpec

needs_guided = pytest.mark.skipif(not guided_flags.installed(), reason="guided-diffusion missing")

TINY = (
    'MODEL_FLAGS="--image_size 16 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 '
    "--attention_resolutions 8 --num_heads 2 --learn_sigma True --class_cond True "
    '--diffusion_steps 50 --noise_schedule cosine"\n'
)


def tiny_file(folder: Path, text: str = TINY, name: str = "tiny.flags") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def guided_spec(config: str, **axes) -> BenchSpec:
    """The spec the command line makes of --impl guided-diffusion --model-config `config` and
    `axes` (image size and attention the file's unless given)."""
    spec = BenchSpec(impl=guided_flags.NAME, model_config=config, **axes)
    return settle(spec, "image_size" in axes, "attention" in axes)
