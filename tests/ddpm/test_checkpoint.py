"""Checkpoints: save -> load -> continue is bit-for-bit the uninterrupted run, saving is atomic, and
every unusable file is a CheckpointError naming the file and the problem."""

import dataclasses
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ddpm.checkpoint
from ddpm.checkpoint import CheckpointError, load_checkpoint
from ddpm.config import PRESETS, TrainConfig
from ddpm.schedule import NoiseSchedule
from ddpm.train import Trainer
from ddpm.unet import UNet

# Dropout on, so resuming must also restore torch's global RNG (the dropout masks).
CONFIG = PRESETS["tiny"].replace(dropout=0.1)


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.linear(1000)


def batches(n):
    g = torch.Generator().manual_seed(42)
    return [torch.rand(4, 1, 16, 16, generator=g) * 2 - 1 for _ in range(n)]


def trainer_for(schedule, precision, init_seed=0, config=CONFIG):
    torch.manual_seed(init_seed)
    model = UNet(config)
    train = TrainConfig(
        batch_size=2, accum_steps=2, precision=precision, lr=1e-3, lr_warmup_steps=3, seed=7
    )
    return Trainer(model, schedule, train, device="cpu")


def assert_state_equal(a, b):
    """Exact equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_state_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_state_equal(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_resume_equals_uninterrupted_training(tmp_path, schedule, precision):
    data = batches(4)

    a = trainer_for(schedule, precision)
    torch.manual_seed(123)  # dropout masks come from torch's global generator
    losses_a = [a.step(x) for x in data]

    b = trainer_for(schedule, precision)
    torch.manual_seed(123)
    for x in data[:2]:
        b.step(x)
    path = tmp_path / "ckpt.pt"
    b.save(path)

    # A brand-new trainer with other initial weights and another global RNG state.
    c = trainer_for(schedule, precision, init_seed=99)
    assert not torch.equal(next(c.model.parameters()), next(a.model.parameters()))
    torch.manual_seed(999)
    c.load(path)
    assert c.step_count == 2
    losses_c = [c.step(x) for x in data[2:]]

    for sa, sc in zip(losses_a[2:], losses_c):
        assert torch.equal(sa.loss, sc.loss) and torch.equal(sa.grad_norm, sc.grad_norm)
        assert sa.lr == sc.lr and sa.skipped == sc.skipped and sa.loss_scale == sc.loss_scale
    assert_state_equal(c.model.state_dict(), a.model.state_dict())
    assert_state_equal(c.ema.state_dict(), a.ema.state_dict())
    assert_state_equal(c.optimizer.state_dict(), a.optimizer.state_dict())
    assert_state_equal(c.scaler.state_dict(), a.scaler.state_dict())
    assert c.step_count == a.step_count == 4 and c.skipped_steps == a.skipped_steps
    assert c.ema.num_updates == a.ema.num_updates
    assert torch.equal(c.generator.get_state(), a.generator.get_state())
    if precision == "fp16":
        assert c.scaler.is_enabled() and c.scaler.get_scale() == a.scaler.get_scale()


def test_resume_without_global_rng_restore_would_differ(tmp_path, schedule):
    """Negative control for the test above: with dropout on, a different global RNG state during
    the continued steps changes the weights, so the exact equality there is not vacuous."""
    data = batches(3)
    a = trainer_for(schedule, "fp32")
    torch.manual_seed(123)
    for x in data:
        a.step(x)
    b = trainer_for(schedule, "fp32")
    torch.manual_seed(123)
    for x in data[:2]:
        b.step(x)
    torch.manual_seed(5)  # what a resume that forgot the RNG state would run with
    b.step(data[2])
    assert not torch.equal(
        torch.cat([p.flatten() for p in a.model.parameters()]),
        torch.cat([p.flatten() for p in b.model.parameters()]),
    )


def test_checkpoint_contents(tmp_path, schedule):
    t = trainer_for(schedule, "fp32")
    t.step(batches(1)[0])
    path = tmp_path / "c.pt"
    t.save(path)
    data = load_checkpoint(path)
    assert data["format"] == ddpm.checkpoint.FORMAT
    assert data["step"] == 1
    assert data["unet_config"]["dropout"] == 0.1
    assert data["train_config"]["batch_size"] == 2
    assert torch.equal(
        data["schedule"]["betas"], torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    )


# --------------------------------------------------------------------------- atomic save


def test_save_leaves_no_temp_files_and_overwrites(tmp_path, schedule):
    t = trainer_for(schedule, "fp32")
    path = tmp_path / "run" / "last.pt"  # the folder is created
    t.save(path)
    t.step(batches(1)[0])
    t.save(path)
    assert os.listdir(path.parent) == ["last.pt"]
    assert load_checkpoint(path)["step"] == 1


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, schedule, monkeypatch):
    t = trainer_for(schedule, "fp32")
    path = tmp_path / "last.pt"
    t.save(path)
    before = path.read_bytes()
    t.step(batches(1)[0])

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")  # some bytes reach the disk, then the disk fills up
        raise OSError("No space left on device")

    monkeypatch.setattr(ddpm.checkpoint.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        t.save(path)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]
    assert load_checkpoint(path)["step"] == 0


KILLED_MID_SAVE = """
import os, signal, sys
import torch
from ddpm.checkpoint import save_checkpoint

def killed(obj, f, *args, **kwargs):
    f.write(b"PK\\x03\\x04 half a zip")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9: no handler, no cleanup

torch.save = killed
save_checkpoint(sys.argv[1], {"step": 1})
"""


def test_a_save_killed_outright_leaves_a_temporary_that_is_found_and_removed(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"the previous checkpoint")
    # Files that look alike but are not a save's temporary of last.pt: all stay.
    others = [
        ".last.pt.tmp",
        ".other.pt.abcd1234.tmp",
        ".last.pt.abcd1234.tmp.keep",
        "last.pt.abcd1234.tmp",
        ".last.pt.ABCD1234.tmp",
        "notes.tmp",
    ]
    for name in others:
        (tmp_path / name).write_text("keep")
    (tmp_path / ".last.pt.dir_1234.tmp").mkdir()  # a folder is not a file a save wrote
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # this checkout
    for _ in range(2):
        killed = subprocess.run(
            [sys.executable, "-c", KILLED_MID_SAVE, str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    stale = ddpm.checkpoint.stale_temporaries(path)
    assert len(stale) == 2 and all(p.read_bytes() == b"PK\x03\x04 half a zip" for p in stale)
    assert all(re.fullmatch(r"\.last\.pt\.[a-z0-9_]+\.tmp", p.name) for p in stale)

    assert ddpm.checkpoint.remove_stale_temporaries(path) == stale
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*others, ".last.pt.dir_1234.tmp", "last.pt"]
    )
    assert path.read_bytes() == b"the previous checkpoint"
    assert ddpm.checkpoint.remove_stale_temporaries(path) == []
    assert ddpm.checkpoint.stale_temporaries(tmp_path / "absent" / "last.pt") == []


# --------------------------------------------------------------------------- unusable files


def expect_error(trainer, path, *patterns):
    with pytest.raises(CheckpointError) as info:
        trainer.load(path)
    message = str(info.value)
    assert str(path) in message
    for pattern in patterns:
        assert re.search(pattern, message), message
    assert isinstance(info.value, ValueError)  # the CLIs' one-line error path catches these


def test_missing_file(tmp_path, schedule):
    expect_error(trainer_for(schedule, "fp32"), tmp_path / "nope.pt", "does not exist")


def test_truncated_file(tmp_path, schedule):
    t = trainer_for(schedule, "fp32")
    good = tmp_path / "good.pt"
    t.save(good)
    blob = good.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(blob[: len(blob) // 2])
    expect_error(t, bad, "corrupt or truncated")


def test_garbage_bytes(tmp_path, schedule):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(bytes(range(256)) * 40)
    expect_error(trainer_for(schedule, "fp32"), bad, "corrupt or truncated")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    assert "weights_only" not in str(info.value)  # never the advice to load it unsafely


def test_empty_file(tmp_path, schedule):
    bad = tmp_path / "empty.pt"
    bad.write_bytes(b"")
    expect_error(trainer_for(schedule, "fp32"), bad, "corrupt or truncated")


def test_a_torch_file_of_another_format(tmp_path, schedule):
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": 1}, foreign)
    expect_error(trainer_for(schedule, "fp32"), foreign, "not a ddpm-bench checkpoint")
    bare = tmp_path / "weights.pt"
    torch.save(UNet(CONFIG).state_dict(), bare)  # a bare state dict is not a checkpoint either
    expect_error(trainer_for(schedule, "fp32"), bare, "not a ddpm-bench checkpoint")


def test_checkpoint_with_missing_keys(tmp_path, schedule):
    t = trainer_for(schedule, "fp32")
    path = tmp_path / "partial.pt"
    state = {"format": ddpm.checkpoint.FORMAT, **t.state_dict()}
    del state["optimizer"], state["rng"]
    torch.save(state, path)
    expect_error(t, path, "lacks optimizer, rng")


def test_checkpoint_of_another_model_names_the_field(tmp_path, schedule):
    other = trainer_for(schedule, "fp32", config=CONFIG.replace(base_channels=32))
    path = tmp_path / "wide.pt"
    other.save(path)
    t = trainer_for(schedule, "fp32")
    before = [p.detach().clone() for p in t.model.parameters()]
    expect_error(t, path, "another model", r"base_channels 32 vs 16")
    # Nothing was half-loaded.
    assert all(torch.equal(p, q) for p, q in zip(t.model.parameters(), before))
    assert t.step_count == 0


class _RunsCode:
    def __reduce__(self):  # what a malicious pickle does: call a function while loading
        return (print, ("this ran while loading",))


def test_a_file_that_would_run_code_is_refused_without_suggesting_to_run_it(tmp_path, schedule):
    path = tmp_path / "evil.pt"
    torch.save({"format": ddpm.checkpoint.FORMAT, "payload": _RunsCode()}, path)
    expect_error(
        trainer_for(schedule, "fp32"), path, "not a plain checkpoint", "holds print", "refused"
    )
    with pytest.raises(CheckpointError) as info:
        ddpm.checkpoint.load_checkpoint(path)
    assert "weights_only" not in str(info.value)  # never the advice to load it unsafely


def test_decoding_rebuilds_the_schedule_configs_and_ema_weights(tmp_path, schedule):
    from ddpm.checkpoint import (
        ema_from,
        load_weights,
        schedule_from,
        train_config_from,
        unet_config_from,
    )

    trainer = trainer_for(schedule, "fp32")
    for x0 in batches(2):
        trainer.step(x0)  # batch 2 x accum 2 = 4 images
    trainer.save(tmp_path / "last.pt")
    data = load_checkpoint(tmp_path / "last.pt")

    assert torch.equal(schedule_from(data).betas, schedule.betas)
    assert unet_config_from(data) == CONFIG and train_config_from(data) == trainer.config
    ema = ema_from(data, UNet(CONFIG))
    assert ema.decay == trainer.ema.decay and ema.num_updates == trainer.ema.num_updates == 2
    torch.manual_seed(1)
    model = UNet(CONFIG)
    load_weights(model, data)
    # The EMA weights, not the raw ones: after two steps at warm-up decay they differ.
    for mine, shadow in zip(model.parameters(), trainer.ema.params, strict=True):
        assert torch.equal(mine, shadow)
    assert any(
        not torch.equal(s, r)
        for s, r in zip(trainer.ema.params, trainer.model.parameters(), strict=True)
    )


def test_a_checkpoint_from_before_the_rename_keeps_its_learning_rate_warm_up():
    """TrainConfig.warmup_steps became lr_warmup_steps: an older file's value is kept."""
    stored = dataclasses.asdict(TrainConfig(batch_size=2, lr_warmup_steps=7))
    stored["warmup_steps"] = stored.pop("lr_warmup_steps")
    assert ddpm.checkpoint.train_config_from({"train_config": stored}).lr_warmup_steps == 7
