"""--impl guided-diffusion samples with its own loops over its respaced diffusion, given classes
for a class-conditional model; bench.sampling's refusals are one line."""

from __future__ import annotations

import pytest
import torch

from bench import sampling
from bench.models import guided_sampling
from bench.models.guided_unet import GuidedUNet
from tests.helpers.guided import TINY, guided_spec, needs_guided, tiny_file

pytestmark = needs_guided


@pytest.mark.parametrize("sampler, steps, respacing", [("ddpm", 10, "10"), ("ddim", 5, "ddim5")])
def test_a_run_is_its_loop_over_the_respaced_steps(tmp_path, sampler, steps, respacing):
    spec = guided_spec(tiny_file(tmp_path), batch=2, sampler=sampler, sampling_steps=steps)
    model = GuidedUNet(spec)
    diffusion = guided_sampling.sampling_diffusion(model, spec)
    expected = guided_sampling.script_util().create_gaussian_diffusion(
        steps=50,
        learn_sigma=True,
        noise_schedule="cosine",
        timestep_respacing=respacing,
    )
    assert diffusion.timestep_map == expected.timestep_map and len(diffusion.timestep_map) == steps
    calls = []
    model.unet.register_forward_hook(lambda *_: calls.append(1))
    run = list(guided_sampling.progressive(model, spec, torch.Generator(), "cpu", [3, 9]))
    assert len(run) == len(calls) == steps  # one network call per denoising step
    assert run[-1]["sample"].shape == (2, 3, 16, 16)


def test_classes_are_random_or_indices():
    g = torch.Generator().manual_seed(0)
    assert guided_sampling.labels([3, 9], 5, g).tolist() == [3, 9, 3, 9, 3]
    drawn = guided_sampling.labels("random", 4, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, guided_sampling.labels("random", 4, torch.Generator().manual_seed(0)))
    assert guided_sampling.parse_classes("207,360") == [207, 360]
    with pytest.raises(ValueError, match="--classes '1000'"):
        guided_sampling.parse_classes("1000")


def test_a_class_conditional_model_is_not_sampled_without_classes(tmp_path):
    spec = guided_spec(tiny_file(tmp_path), batch=1)
    with pytest.raises(ValueError, match="given classes"):
        next(guided_sampling.progressive(GuidedUNet(spec), spec, torch.Generator(), "cpu"))


def run_sampling(tmp_path, capsys, *args) -> tuple[int, str]:
    out = tmp_path / "r"
    with pytest.raises(SystemExit) as exit_:
        sampling.main(["--impl", "guided-diffusion", "--batch", "1", *args, "--out", str(out)])
    assert not out.exists()
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "text, args, words",
    [
        (TINY, [], ["is class-conditional (--class_cond True)", "--classes random"]),
        (TINY.replace("True --diff", "False --diff"), ["--classes", "random"], ["not class-"]),
        (TINY, ["--classes", "1,x"], ["--classes '1,x' is not allowed"]),
        (TINY, ["--classes", "1", "--sampler", "ddim", "--sampling-steps", "30"], ["ddim30"]),
        (TINY, ["--classes", "1", "--precision", "bf16"], ["--precision bf16"]),
    ],
)
def test_bad_sampling_input_is_one_line(tmp_path, capsys, text, args, words):
    path = tiny_file(tmp_path, text)
    status, err = run_sampling(tmp_path, capsys, "--model-config", path, *args)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0]


def test_bench_sampling_times_its_loop(tmp_path):
    rows = sampling.main(
        [
            "--impl",
            "guided-diffusion",
            "--model-config",
            tiny_file(tmp_path),
            "--classes",
            "random",
            "--batch",
            "1",
            "--sampler",
            "ddim",
            "--sampling-steps",
            "5",
            "--measure-steps",
            "2",
            "--warmup",
            "1",
            "--inline",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    (row,) = rows
    assert row["status"] == "ok", row.get("error")
    assert (row["image_size"], row["sampling_steps"]) == (16, 5)
    assert row["projected_full_run_s"] == pytest.approx(row["step_s"] * 5)
