"""The refit (python -m bench.predict.calibrate) on made-up runs whose answers are known by hand:
the fitted efficiency, each run's leave-one-out error and the band; and the public runs it reads
are well formed."""

from __future__ import annotations

import dataclasses
import math

import pytest

from bench.cards import CARDS
from bench.models import guided_flags
from bench.models.impl import problem
from bench.models.workload import parameter_count
from bench.predict import calibrate
from bench.predict.kernels import Kernel
from bench.predict.public_runs import RECIPES, RUNS, PublicRun
from bench.predict.step_time import Constants, load_constants
from bench.spec import BenchSpec
from tests.helpers.guided import guided_spec, needs_guided

# No host, launch or memory time: a run's step is its GEMM at peak x efficiency.
BASE = Constants(
    compute_efficiency=1.0,
    memory_efficiency=1.0,
    link_efficiency=1.0,
    launch_s=0.0,
    host_train_s=0.0,
    host_inference_s=0.0,
    host_memory_gbs=1.0,
    band_low=1.0,
    band_high=1.0,
)
V100 = CARDS["v100-32gb"]
# M = 80 x 128 rows of 128x128 tiles, N = 128: one tile per SM, one wave: share 1.
GEMM = (1, 80 * 128, 128, 4096)
FLOPS = 2 * 80 * 128 * 128 * 4096


def run(key: str, efficiency: float, calibrate_: bool = True) -> PublicRun:
    """A run whose measured rate is what the model gives at `efficiency`."""
    seconds = FLOPS / (V100.fp32_tflops * 1e12 * efficiency)
    spec = BenchSpec(preset="tiny", card="v100-32gb", precision="fp32")
    return PublicRun(key, "made up", "made up", spec, 1 / seconds, "made up", (), calibrate_)


def traces(*runs: PublicRun) -> dict[str, list[Kernel]]:
    kernel = Kernel("mm", "matmul", FLOPS, 0, gemm=GEMM)
    return {r.key: [kernel] for r in runs}


def test_one_efficiency_is_found_again():
    runs = (run("a", 0.4), run("b", 0.4))
    result = calibrate.evaluate(runs, traces(*runs), BASE)
    assert result["constants"].compute_efficiency == pytest.approx(0.4, rel=1e-6)
    assert [r["loo_error_pct"] for r in result["rows"]] == pytest.approx([0, 0], abs=1e-4)


def test_leave_one_out_and_the_band_by_hand():
    """Squared log errors are least at the geometric mean of the runs' efficiencies; each run
    left out is predicted at the other's. A run outside the fit is predicted by the full fit."""
    runs = (run("a", 0.3), run("b", 0.5), run("c", 0.2, calibrate_=False))
    result = calibrate.evaluate(runs, traces(*runs), BASE)
    assert result["constants"].compute_efficiency == pytest.approx(math.sqrt(0.15), rel=1e-6)
    a, b, c = result["rows"]
    assert a["loo_error_pct"] == pytest.approx(100 * (0.5 / 0.3 - 1), rel=1e-5)  # +66.7%
    assert b["loo_error_pct"] == pytest.approx(100 * (0.3 / 0.5 - 1), rel=1e-5)  # -40%
    assert c["loo_error_pct"] == pytest.approx(100 * (math.sqrt(0.15) / 0.2 - 1), rel=1e-5)
    assert a["fit_error_pct"] == pytest.approx(100 * (math.sqrt(0.15) / 0.3 - 1), rel=1e-5)
    # Measured / predicted time of the runs in the fit: 0.3/0.5 (a) and 0.5/0.3 (b); c is out.
    assert calibrate.band(result["rows"]) == pytest.approx((0.6, 5 / 3), rel=1e-5)


def test_the_fit_stays_below_the_datasheet_peak():
    runs = (run("a", 1.5), run("b", 2.0))
    result = calibrate.evaluate(runs, traces(*runs), BASE)
    assert result["constants"].compute_efficiency <= 1.0


def test_the_constants_file_round_trips(tmp_path):
    c = dataclasses.replace(BASE, compute_efficiency=0.42, band_low=0.7)
    path = tmp_path / "constants.json"
    calibrate.write_constants(c, path)
    assert load_constants(path) == c
    assert "Jia et al. 2018" in path.read_text()  # every constant says where it comes from


def test_the_committed_constants_are_a_fit_with_a_band_around_one():
    c = load_constants()
    assert 0.05 <= c.compute_efficiency <= 1.0
    assert c.band_low < 1.0 < c.band_high


@pytest.mark.parametrize("public", RUNS, ids=lambda r: r.key)
def test_every_public_run_is_a_spec_the_suite_runs(public):
    if public.spec.impl == guided_flags.NAME and not guided_flags.installed():
        pytest.skip("guided-diffusion missing")
    assert public.spec.card in CARDS
    # run=False: the ADM models' forward (300-550M parameters) is not run here; their flags are
    # read and checked, and test_the_adm_runs_are_the_released_models builds them on fakes.
    assert problem(public.spec, run=False) is None
    assert all(name in RECIPES for name in public.recipe)
    assert public.measured_it_s > 0


# The ADM paper's Table 7 (per-V100 images/s, fp16, its "naive" code): the named config, the
# batch per V100, the images per second, and the parameters its hyperparameter table gives, in
# millions.
ADM_TABLE_7 = {
    "adm-64": ("adm-imagenet-64", 32, 37.0, 296),
    "adm-128": ("adm-imagenet-128", 4, 11.5, 422),
    "adm-256": ("adm-imagenet-256", 4, 4.4, 554),
    "adm-u-64-256": ("adm-upsampler-64-256", 4, 6.3, 312),
    "adm-u-128-512": ("adm-upsampler-128-512", 2, 1.9, 309),
}


@needs_guided
@pytest.mark.parametrize("key", sorted(ADM_TABLE_7))
def test_the_adm_runs_are_the_released_models(key):
    """Each row is the spec `--impl guided-diffusion --model-config NAME --precision fp16
    --batch N --card v100-32gb` makes (the image size and attention its flags'), its model has
    the paper's parameters (built on fake tensors), and it stays out of the fit."""
    config, batch, images_s, millions = ADM_TABLE_7[key]
    public = {r.key: r for r in RUNS}[key]
    cli = guided_spec(config, batch=batch, precision="fp16", card="v100-32gb")
    assert public.spec == cli
    assert round(parameter_count(public.spec) / 1e6) == millions
    assert public.measured_it_s * batch == pytest.approx(images_s)
    assert not public.calibrate and public.recipe == ()


def test_the_ablations_trace_only_the_runs_they_change(monkeypatch):
    """bf16 only for the fp16 runs that have it (guided-diffusion has none), our loop only for
    the runs that have a loop of their own: the others keep their first trace."""
    traced = []
    monkeypatch.setattr(
        calibrate, "train_step_kernels", lambda spec, card, recipe: traced.append(spec) or []
    )
    as_bf16 = calibrate.trace(RUNS, "test", bf16=True)
    assert sorted(as_bf16) == sorted(
        r.key for r in RUNS if r.spec.precision == "fp16" and r.spec.impl != guided_flags.NAME
    )
    assert all(spec.precision == "bf16" for spec in traced)
    ours = calibrate.trace(RUNS, "test", recipes=False)
    assert sorted(ours) == sorted(r.key for r in RUNS if r.recipe)
    assert any(r.spec.impl == guided_flags.NAME for r in RUNS)  # the rule has runs to apply to


def test_a_run_the_suite_cannot_build_is_one_line_before_any_trace(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(guided_flags, "installed", lambda: False)
    monkeypatch.setattr(calibrate, "train_step_kernels", lambda *a: pytest.fail("traced"))
    with pytest.raises(SystemExit) as exc:
        calibrate.main(["--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("public run adm-64: ") and "guided-diffusion" in err
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
