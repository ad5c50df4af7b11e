"""FLOPs against an independent count from layer shapes, MFU bounds, and the throughput CLI."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch
from torch import nn

from bench import throughput as throughput_command
from bench.measure.flops import training_step_flops
from bench.spec import BenchSpec
from ddpm.unet import AttentionBlock, UNet, Upsample


def forward_flops_from_shapes(spec: BenchSpec) -> tuple[int, int, int]:
    """(forward FLOPs, those of layers whose input needs no gradient, those of attention's two
    products), from each layer's
    shapes alone: conv 2*Cin*Cout*k*k*Hout*Wout, linear 2*in*out per row, attention
    2 products of 2*N*N*C each (q k^T and the weighted sum of v)."""
    config = spec.unet_config()
    model = UNet(config)
    total, no_input_grad = 0, 0
    counts = {}

    def conv_hook(module, inputs, output):
        b, cout, h, w = output.shape
        k = module.kernel_size[0] * module.kernel_size[1]
        counts[module] = counts.get(module, 0) + 2 * b * module.in_channels * cout * k * h * w

    def linear_hook(module, inputs, output):
        rows = output.numel() // module.out_features
        counts[module] = counts.get(module, 0) + 2 * rows * module.in_features * module.out_features

    def attention_hook(module, inputs, output):
        b, c, h, w = inputs[0].shape
        counts[module] = counts.get(module, 0) + 2 * (2 * b * (h * w) ** 2 * c)

    for m in model.modules():
        if isinstance(m, Upsample):
            m.phased = False  # MFU counts the textbook upsampling (bench/measure/flops.py)
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear_hook)
        elif isinstance(m, AttentionBlock):
            m.register_forward_hook(attention_hook)
    x = torch.randn(spec.batch, config.in_channels, config.image_size, config.image_size)
    with torch.no_grad():
        model(x, torch.zeros(spec.batch, dtype=torch.long))
    total = sum(counts.values())
    # The first convolution and the first time-MLP layer see inputs that need no gradient.
    no_input_grad = counts[model.conv_in] + counts[model.time_mlp[0]]
    attention = sum(v for m, v in counts.items() if isinstance(m, AttentionBlock))
    return total, no_input_grad, attention


@pytest.mark.parametrize("attention", ["8", "none"])
def test_step_flops_match_an_independent_count(attention):
    spec = BenchSpec(preset="tiny", image_size=16, attention=attention, batch=3, accum=2)
    forward, no_input_grad, attention = forward_flops_from_shapes(spec)
    counted = training_step_flops(spec)
    # Backward costs two forwards (input and weight gradients), except for the input gradient
    # of layers fed by data; fused attention's backward also recomputes q k^T (5 products for
    # the forward's 2, i.e. 2.5 forwards). Per micro-batch, times accum.
    expected = 3 * forward - no_input_grad + attention / 2
    assert counted == pytest.approx(2 * expected, rel=1e-6)
    # The looser criterion, against the plain 3 x forward rule.
    assert counted == pytest.approx(2 * 3 * forward, rel=0.05)


def test_cifar_flops_scale_with_images():
    one = training_step_flops(BenchSpec(batch=1))
    assert training_step_flops(BenchSpec(batch=2, accum=3)) == 6 * one
    assert 30e9 < one < 45e9  # DDPM CIFAR-10: ~6 GMAC forward, so ~36 GFLOP per image per step


def test_throughput_cli_reports_mfu_between_0_and_1(tmp_path):
    out = tmp_path / "r"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.throughput",
            "--preset",
            "tiny",
            "--batch",
            "4",
            "--precision",
            "fp32",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (row,) = list(csv.DictReader((out / "throughput.csv").open()))
    assert row["status"] == "ok"
    step_s, gflop, peak, mfu = (
        float(row[k]) for k in ("step_s", "gflop_per_step", "peak_tflops", "mfu")
    )
    assert 0 < mfu < 1
    assert gflop * 1e9 == pytest.approx(
        training_step_flops(BenchSpec(preset="tiny", image_size=16, attention="8", batch=4)),
        rel=1e-9,
    )
    assert mfu == pytest.approx(gflop / step_s / 1000 / peak, rel=1e-9)
    assert row["compile_s"] == ""  # --compile off: no compile time to report
    assert "Peak " in (out / "throughput.md").read_text()  # the MFU denominator is stated


def test_a_damaged_peak_cache_is_refused_before_any_spec(tmp_path, capsys):
    from tests.helpers.cli_checks import check_one_line_error, snapshot

    (tmp_path / "peak_flops.json").write_text("{not json")
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as info:
        throughput_command.main(
            ["--preset", "tiny", "--device", "cpu", "--inline", "--out", str(tmp_path)]
        )
    captured = capsys.readouterr()
    check_one_line_error(
        "peak_flops.json is not a record of peak FLOP/s",
        info.value.code,
        captured.err,
        captured.out,
    )
    assert snapshot(tmp_path) == before


def scaling_row(img_per_s: float | None, status: str = "ok", **changes) -> dict:
    from bench.core import axes

    spec = BenchSpec(preset="tiny", image_size=16, attention="8", **changes)
    return {**{a: getattr(spec, a) for a in axes()}, "status": status, "img_per_s": img_per_s}


def test_scaling_efficiency_compares_each_rank_count_with_its_one_rank_twin(tmp_path):
    from bench.core import RunContext
    from bench.harnesses.throughput import HARNESS

    ddp = dict(parallel="ddp")
    rows = [
        # 1 rank: the median of 38, 40, 45 is 40; 2 ranks: the median of 60, 58, 70 is 60.
        *[scaling_row(v, ranks=1, repeat=r, **ddp) for r, v in enumerate([38, 40, 45], 1)],
        *[scaling_row(v, ranks=2, repeat=r, **ddp) for r, v in enumerate([60, 58, 70], 1)],
        scaling_row(96, ranks=4, **ddp),
        scaling_row(50, ranks=1, parallel="none"),
        # Batch 4 (per rank): its 1-rank twin failed, and batch 2's is no twin of it.
        scaling_row(90, ranks=2, batch=4, **ddp),
        scaling_row(None, "error", ranks=1, batch=4, **ddp),
        # No 1-rank fsdp row: no sentence.
        scaling_row(30, ranks=2, parallel="fsdp"),
    ]
    sentences = HARNESS.compare(rows, RunContext(tmp_path, "r"))
    # 60 / (2 x 40) = 0.75; 96 / (4 x 40) = 0.6; 40 / 50 = 0.8.
    assert sentences == [
        "Scaling ddp, batch 2: 60 img/s on 2 ranks vs 40 on 1 (medians of 3 and 3 runs): "
        "efficiency 60 / (2 x 40) = 75%.",
        "Scaling ddp, batch 2: 96 img/s on 4 ranks vs 40 on 1 (medians of 1 and 3 runs): "
        "efficiency 96 / (4 x 40) = 60%.",
        "ddp vs none on 1 rank, batch 2: 40 vs 50 img/s (medians of 3 and 1 runs): 80%.",
    ]


@pytest.mark.parametrize(
    "precision, says",
    [
        ("bf16", "bf16 is emulated on sm61"),
        ("fp16", "fp16 runs without tensor cores on sm61"),
    ],
)
def test_a_prediction_for_a_card_says_what_the_card_does_not_run(tmp_path, capsys, precision, says):
    """A GTX 1070 (sm61) runs no torch.compile (Triton needs 7.0), emulates bf16 and has no
    tensor cores: bench.throughput and bench.sampling say so beside their predictions, as
    bench.memory does (they predicted a time with no word of it)."""
    from bench import sampling, throughput

    common = ["--card", "gtx1070", "--compile", "default", "--precision", precision]
    common += ["--predict-only", "--preset", "tiny", "--batch", "2", "--device", "cpu"]
    common += ["--inline", "--out", str(tmp_path)]
    throughput.main(common)
    sampling.main([*common, "--sampler", "ddim", "--sampling-steps", "10"])
    out = capsys.readouterr().out
    for harness in ("throughput", "sampling"):
        verdicts = [line for line in (tmp_path / f"{harness}.md").read_text().splitlines()]
        (line,) = [v for v in verdicts if "PREDICTED" in v and "GTX 1070" in v]
        assert says in line and "torch.compile does not run on sm61" in line, harness
        assert line.removeprefix("- ") in out  # printed with the table too


@pytest.mark.parametrize("harness", ["throughput", "loss", "profile"])
def test_find_max_batch_is_refused_by_every_harness_but_memory(tmp_path, capsys, harness):
    """bench.throughput accepted it and ignored it (it measured batch 1 and searched nothing);
    the others refused it: all refuse it alike, in one line, naming bench.memory. (bench.sampling
    searches the largest sampling batch on a --card: tests/bench/harnesses/test_sampling.py.)"""
    import importlib

    from tests.helpers.cli_checks import check_one_line_error

    main = importlib.import_module(f"bench.{harness}").main
    with pytest.raises(SystemExit) as info:
        main(["--find-max-batch", "--preset", "tiny", "--device", "cpu", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    check_one_line_error("--find-max-batch", info.value.code, captured.err, captured.out)
    assert "bench.memory" in captured.err and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "text, says",
    [
        # 2.6e23 hours predicted before, while 1e30 was refused as "invalid int value".
        ("1" + "0" * 30, "--train-steps: 1000000000000000000000000000000 is not allowed"),
        ("1e30", "--train-steps: 1e30 is not allowed: give a whole number of steps from 1 to "),
        ("1000000001", "is not allowed: give a whole number of steps from 1 to 1,000,000,000"),
        ("0", "--train-steps: 0 is not allowed"),
        ("2.5", "--train-steps: 2.5 is not allowed"),
        ("nan", "--train-steps: nan is not allowed"),
        ("many", "--train-steps: 'many' is not a number"),
    ],
)
def test_train_steps_are_bounded_alike_however_written(tmp_path, capsys, text, says):
    from bench import throughput
    from tests.helpers.cli_checks import check_one_line_error

    with pytest.raises(SystemExit) as info:
        throughput.main(["--card", "rtx3070", "--predict-only", "--train-steps", text])
    captured = capsys.readouterr()
    check_one_line_error(says, info.value.code, captured.err, captured.out)


def test_train_steps_take_a_whole_number_written_either_way():
    from bench.throughput import MAX_TRAIN_STEPS, train_steps

    assert train_steps("8e5") == train_steps("800000") == 800_000
    assert train_steps(str(MAX_TRAIN_STEPS)) == MAX_TRAIN_STEPS


@pytest.mark.parametrize(
    "harness, given, says",
    [
        # bench.loss and bench.profile printed card=rtx3070 in every row and used it nowhere.
        ("loss", ["--card", "rtx3070"], "--card is not used by bench.loss: it predicts nothing"),
        ("loss", ["--budget", "4GiB"], "--budget is not used by bench.loss"),
        ("profile", ["--card", "rtx3070"], "--card is not used by bench.profile"),
        ("profile", ["--budget", "4GiB"], "--budget is not used by bench.profile"),
        ("profile", ["--cuda-context-mib", "300"], "--cuda-context-mib is not used by bench.pro"),
        # bench.sampling weighs a --card's predicted memory against it; without one, refused.
        ("sampling", ["--budget", "4GiB"], "--budget applies to the predicted memory on a --card"),
        ("throughput", ["--budget", "4GiB"], "--budget is not used by bench.throughput"),
    ],
)
def test_a_shared_option_a_harness_does_not_use_is_refused(tmp_path, capsys, harness, given, says):
    import importlib

    from tests.helpers.cli_checks import check_one_line_error

    main = importlib.import_module(f"bench.{harness}").main
    small = ["--preset", "tiny", "--batch", "2", "--steps", "1", "--device", "cpu", "--inline"]
    with pytest.raises(SystemExit) as info:
        main([*given, *small, "--out", str(tmp_path)])
    captured = capsys.readouterr()
    check_one_line_error(says, info.value.code, captured.err, captured.out)
    assert not list(tmp_path.iterdir())
