"""dreamengine doctor on this CPU machine, the peak-memory estimate (monotone, anchored to the published figures
it was calibrated on, its suggestions really fit), and the out-of-memory path exercised by injecting the error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dreamengine.cli import main
from dreamengine.config import load_config
from dreamengine.errors import OutOfMemory
from dreamengine.memory import estimate_config, fits, knobs, suggest
from dreamengine.trainer import Trainer
from tests.cli_helpers import TINY
from tests.test_trainer import tiny_trainer

CONFIGS = ["quickstart", "gaussian-toy", "refine-toy", "dreamfusion-sd", "vsd-sd", "dreamfusion-if", "mvdream-sd",
           "gaussiandreamer-sd"]


def test_doctor_on_a_cpu_machine_reports_no_gpu_and_a_working_cpu_path(capsys: pytest.CaptureFixture):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["doctor", "--config", "quickstart"]) == 0
    out = capsys.readouterr().out
    assert "no CUDA GPU visible" in out
    assert any(line.startswith("ok") and "CPU path" in line for line in out.splitlines())
    assert "no GPU to compare with" in out
    assert main(["doctor", "--config", "vsd-sd", "--gpu-memory", "8"]) == 1  # does not fit: says what would
    out = capsys.readouterr().out
    assert "does NOT fit in 8.0 GiB" in out and "teacher.cpu_offload=true" in out


@pytest.mark.parametrize("name", CONFIGS)
def test_estimate_grows_with_resolution_and_batch(name: str):
    previous = None
    for side in (32, 64, 128, 256, 512):
        total = estimate_config(load_config(name, [f"camera.height={side}", f"camera.width={side}",
                                                   "camera.phases=[]"]))["total"]
        assert previous is None or total > previous, (name, side)
        previous = total
    previous = None
    group = load_config(name).camera.views_per_group
    for batch in (group, 2 * group, 4 * group, 8 * group):
        total = estimate_config(load_config(name, [f"camera.batch_size={batch}", "camera.phases=[]"]))["total"]
        assert previous is None or total > previous, (name, batch)
        previous = total


def test_estimate_matches_the_published_figures_it_was_calibrated_on():
    # threestudio: DreamFusion-SD about 12 GB, ProlificDreamer (NeRF stage at 512 px) about 27 GB
    assert 12 * 0.7 < estimate_config(load_config("dreamfusion-sd"))["total"] < 12 * 1.3
    assert 27 * 0.7 < estimate_config(load_config("vsd-sd"))["total"] < 27 * 1.3
    assert estimate_config(load_config("dreamfusion-sd", ["teacher.cpu_offload=true"]))["teacher"] < \
        estimate_config(load_config("dreamfusion-sd"))["teacher"]


@pytest.mark.parametrize(("name", "gib"), [("dreamfusion-sd", 8.0), ("gaussiandreamer-sd", 16.0),
                                           ("dreamfusion-sd", 6.0), ("mvdream-sd", 16.0)])
def test_suggested_settings_fit_when_applied_to_the_config(name: str, gib: float):
    cfg = load_config(name, ["camera.batch_size=8"])
    assert not fits(estimate_config(cfg)["total"], gib)
    overrides, after = suggest(knobs(cfg), gib)
    assert overrides and fits(after, gib)
    changed = load_config(name, ["camera.batch_size=8", *overrides])  # valid: multi-view batches stay groups
    assert estimate_config(changed)["total"] == pytest.approx(after)


def inject_oom(monkeypatch: pytest.MonkeyPatch, at_calls: set[int]) -> list[tuple[int, int, int]]:
    """Make Trainer.train_step raise CUDA's out-of-memory error on the given calls (1-based); returns the render
    sizes each call saw."""
    real = Trainer.train_step
    seen: list[tuple[int, int, int]] = []

    def train_step(self: Trainer) -> dict[str, float]:
        seen.append(self.cfg.camera.size_at(self.step))
        if len(seen) in at_calls:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return seen


def test_out_of_memory_checkpoints_says_what_to_lower_and_exits_nonzero(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture):
    inject_oom(monkeypatch, {3})
    trainer = tiny_trainer(tmp_path / "a", "trainer.max_steps=5")
    with pytest.raises(OutOfMemory, match=r"(?s)checkpointed at step 2.*trainer.on_oom=shrink.*dreamengine resume"):
        trainer.fit()
    assert torch.load(trainer.checkpoint_path, weights_only=True)["step"] == 2
    # through the command line: the message, no traceback, a non-zero exit code
    inject_oom(monkeypatch, {3})
    code = main(["generate", "a red cube", *TINY, "trainer.max_steps=5", f"output_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2 and "CUDA ran out of memory at step 3" in err and "Traceback" not in err


def test_on_oom_shrink_lowers_the_batch_then_the_resolution_and_goes_on(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    seen = inject_oom(monkeypatch, {2, 4})
    trainer = tiny_trainer(tmp_path, "trainer.max_steps=4", "trainer.on_oom=shrink", "camera.batch_size=2")
    (trainer.run_dir / "config.yaml").write_text("placeholder")
    trainer.fit()
    assert trainer.step == 4
    assert seen == [(24, 24, 2), (24, 24, 2), (24, 24, 1), (24, 24, 1), (18, 18, 1), (18, 18, 1)]
    assert [s["to"][0] for s in trainer.oom_shrinks] == [[24, 24, 1], [18, 18, 1]]
    log = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum("oom_shrink" in record for record in log) == 2
    assert load_config(trainer.run_dir / "config.yaml").camera.height == 18  # a resume keeps the smaller renders
