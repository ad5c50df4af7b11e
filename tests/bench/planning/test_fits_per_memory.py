"""A plan never recommends what bench.memory --predict-only says does not fit: for a small model
of each implementation, on cards of three compute capabilities, with a budget that leaves some
options out, every option the plan ranks as fitting fits per bench.memory at the same settings,
and every option it leaves out does not, at the same predicted memory."""

from __future__ import annotations

import json

import pytest

from bench import memory as memory_command
from bench import plan
from bench.models import lucidrains_unet
from bench.tables.results import read_rows
from tests.helpers.guided import needs_guided, tiny_file

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

OURS = ["--preset", "tiny", "--image-size", "16", "--attention", "8"]
needs_lucidrains = pytest.mark.skipif(
    not lucidrains_unet.installed(), reason="denoising-diffusion-pytorch missing"
)


def lucidrains(folder) -> list[str]:
    path = folder / "unet.json"
    path.write_text(json.dumps({"dim": 8, "dim_mults": [1, 2]}))
    return ["--impl", "lucidrains", "--model-config", str(path), "--image-size", "16"]


CHECKPOINTING = ("checkpointing", "off", "on")  # a lever and its two values
DIFFUSERS = ["--preset", "ddpm-cifar10", "--image-size", "8", "--attention", "none"]
# Each case costs a minute of CPU (a dozen traces): ours runs by default, the others --heavy.
MODELS = [
    pytest.param(lambda folder: OURS, "t4", CHECKPOINTING, id="ours on a T4"),
    pytest.param(
        lambda folder: [*DIFFUSERS, "--impl", "diffusers"],
        "rtx3070",
        CHECKPOINTING,
        marks=pytest.mark.heavy,
        id="diffusers, 3070",
    ),
    pytest.param(
        lucidrains,
        "rtx4090",
        ("precision", "fp32", "bf16"),  # its Unet takes no checkpointing here
        marks=[needs_lucidrains, pytest.mark.heavy],
        id="lucidrains, 4090",
    ),
    pytest.param(
        lambda folder: ["--impl", "guided-diffusion", "--model-config", tiny_file(folder)],
        "rtx3060",
        CHECKPOINTING,
        marks=[needs_guided, pytest.mark.heavy],
        id="guided-diffusion, 3060",
    ),
]
EFFECTIVE = 4
SPLITS = [(4, 1), (2, 2), (1, 4)]


@pytest.mark.parametrize("make_model, card, lever", MODELS)
def test_the_plan_recommends_only_what_bench_memory_says_fits(
    tmp_path, capsys, make_model, card, lever
):
    model = make_model(tmp_path)
    name, *values = lever

    def memory(folder: str, *budget: str) -> dict:
        for batch, accum in SPLITS:
            memory_command.main(
                [*model, "--card", card, "--batch", str(batch), "--accum", str(accum)]
                + [f"--{name}", ",".join(values), *budget, "--predict-only"]
                + ["--out", str(tmp_path / folder)]
            )
        rows = read_rows(tmp_path / folder / "memory.csv")
        return {(r["batch"], r["accum"], r[name]): r for r in rows}

    memories = sorted(r["predicted_cuda_mib"] for r in memory("all").values())
    budget = ["--budget", f"{(memories[0] + memories[-1]) / 2}MiB"]  # leaves some out
    said = memory("memory", *budget)
    rows = plan.main(
        [*model, "--card", card, "--effective-batch", str(EFFECTIVE), *budget]
        + ["--levers", f"split,{name}={'+'.join(values)}", "--out", str(tmp_path / "plan")]
    )
    capsys.readouterr()
    assert len(said) == len(rows) == 2 * len(SPLITS)
    fitting = [r for r in rows if r["fits"]]
    assert fitting and len(fitting) < len(rows)
    for row in rows:
        memory_row = said[(row["batch"], row["accum"], row[name])]
        assert row["fits"] == memory_row["fits"], row
        assert row["predicted_cuda_mib"] == pytest.approx(
            memory_row["predicted_cuda_mib"], abs=0.01
        )
        assert (row["rank"] is not None) == row["fits"]  # only what fits is ranked
