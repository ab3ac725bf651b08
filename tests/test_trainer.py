"""The training loop in-process: resume equivalence, NaN handling, checkpoints, regularizers."""

from pathlib import Path

import pytest
import torch

from dreamengine.checkpoint import load_checkpoint, save_checkpoint
from dreamengine.config import load_config
from dreamengine.errors import CheckpointError, TrainingError
from dreamengine.guidance.base import GuidanceOut
from dreamengine.trainer import Trainer
from tests.cli_helpers import TINY


def tiny_trainer(tmp_path: Path, *overrides: str) -> Trainer:
    cfg = load_config("quickstart", [*TINY, "trainer.log_every=1", "deterministic=true", *overrides],
                      prompt="a red cube")
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, run_dir)


def scene_parameters(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.scene.state_dict().items()}


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path: Path):
    straight = tiny_trainer(tmp_path / "a", "trainer.max_steps=20", "render.occupancy_update_every=4")
    straight.fit()
    first = tiny_trainer(tmp_path / "b", "trainer.max_steps=9", "render.occupancy_update_every=4")
    first.fit()
    second = tiny_trainer(tmp_path / "b", "trainer.max_steps=20", "render.occupancy_update_every=4")
    second.load()
    assert second.step == 9
    second.fit()
    for key, value in scene_parameters(straight).items():
        assert torch.equal(value, second.scene.state_dict()[key]), key


def test_training_changes_parameters_and_logs(tmp_path: Path):
    trainer = tiny_trainer(tmp_path, "trainer.max_steps=3")
    before = scene_parameters(trainer)
    trainer.fit()
    assert any(not torch.equal(before[k], v) for k, v in trainer.scene.state_dict().items())
    lines = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and '"loss"' in lines[0]
    assert (trainer.run_dir / "timings.json").is_file()


def test_nan_steps_are_skipped_then_stop_with_clear_error(tmp_path: Path):
    trainer = tiny_trainer(tmp_path, "trainer.max_steps=50", "trainer.max_bad_steps=3")
    real_guidance = trainer.guidance
    calls = {"n": 0}

    def nan_after_two(rgb, prompts, cameras, step, generator=None):
        calls["n"] += 1
        out = real_guidance(rgb, prompts, cameras, step, generator)
        return GuidanceOut(out.loss * float("nan") if calls["n"] > 2 else out.loss, out.terms)

    trainer.guidance = nan_after_two
    with pytest.raises(TrainingError, match="NaN/Inf for 3 steps"):
        trainer.fit()
    after_two = scene_parameters(trainer)
    assert trainer.step == 5
    state = load_checkpoint(trainer.checkpoint_path)
    assert state["step"] == 5
    for key, value in state["scene"].items():  # the skipped steps did not touch the parameters
        assert torch.equal(value, after_two[key])
    assert "step skipped" in (trainer.run_dir / "metrics.jsonl").read_text()


def test_checkpoint_atomic_write_and_safe_load(tmp_path: Path):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint({"step": 3, "scene": {"w": torch.ones(2)}}, path)
    assert load_checkpoint(path)["step"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary files left
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_regularizers_and_orientation_requirement(tmp_path: Path):
    trainer = tiny_trainer(tmp_path, "trainer.max_steps=1", "loss.lambda_sparsity=0.5", "loss.lambda_opaque=0.1")
    terms = trainer.train_step()
    assert terms["sparsity"] > 0 and terms["opaque"] > 0
    with pytest.raises(TrainingError, match="lambda_orient"):
        tiny_trainer(tmp_path, "loss.lambda_orient=1.0").train_step()
    shaded = tiny_trainer(tmp_path, "loss.lambda_orient=1.0", "render.shading=diffuse")
    assert shaded.train_step()["orient"] >= 0
