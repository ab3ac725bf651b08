"""The training loop in-process: resume equivalence, NaN handling, checkpoints, regularizers."""

import json
from pathlib import Path

import pytest
import torch

from dreamengine.checkpoint import load_checkpoint, save_checkpoint
from dreamengine.config import load_config
from dreamengine.core.protocols import GuidanceOut
from dreamengine.errors import CheckpointError, TrainingError
from dreamengine.trainer import Trainer
from tests.cli_helpers import TINY


class GuidanceSpy:
    """A run's guidance with hooks: ``before(rgb, prompts, cameras, step)`` sees each call's inputs and
    ``after(out)`` may replace its output. Checkpoints hold the real guidance's state."""

    def __init__(self, real, before=None, after=None) -> None:
        self.real, self.before, self.after = real, before, after

    def __call__(self, rgb, prompts, cameras, step, generator=None) -> GuidanceOut:
        if self.before is not None:
            self.before(rgb, prompts, cameras, step)
        out = self.real(rgb, prompts, cameras, step, generator)
        return self.after(out) if self.after is not None else out

    def state_dict(self):
        return self.real.state_dict()

    def load_state_dict(self, state) -> None:
        self.real.load_state_dict(state)


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
    calls = {"n": 0}

    def nan_after_two(out: GuidanceOut) -> GuidanceOut:
        calls["n"] += 1
        return GuidanceOut(out.loss * float("nan") if calls["n"] > 2 else out.loss, out.terms)

    trainer.guidance = GuidanceSpy(trainer.guidance, after=nan_after_two)
    with pytest.raises(TrainingError, match="NaN/Inf for 3 steps"):
        trainer.fit()
    after_two = scene_parameters(trainer)
    assert trainer.step == 5
    state = load_checkpoint(trainer.checkpoint_path)
    assert state["step"] == 5
    for key, value in state["scenes"][0].items():  # the skipped steps did not touch the parameters
        assert torch.equal(value, after_two[key])
    assert "step skipped" in (trainer.run_dir / "metrics.jsonl").read_text()


def test_checkpoint_atomic_write_and_safe_load(tmp_path: Path):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint({"step": 3, "scenes": [{"w": torch.ones(2)}]}, path)
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


GAUSSIAN_TINY = ["camera.height=24", "camera.width=24", "teacher.resolution=16", "teacher.elevations=[0,30,60]",
                 "teacher.azimuth_step=30", "trainer.preview_every=0", "trainer.log_every=1", "deterministic=true",
                 "scene.num_points=300", "densify.refine_start=3", "densify.refine_every=3", "densify.grow_grad2d=0",
                 "densify.max_gaussians=450"]


def gaussian_trainer(run_dir: Path, *overrides: str) -> Trainer:
    cfg = load_config("gaussian-toy", [*GAUSSIAN_TINY, *overrides], prompt="a red cube")
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, run_dir)


def test_gaussian_scene_trains_densifies_and_resumes_exactly(tmp_path: Path):
    """Densification changes N mid-run; a resumed run (N restored, Adam moments and densify statistics with it)
    must still end bit-identical to an uninterrupted one."""
    straight = gaussian_trainer(tmp_path / "a", "trainer.max_steps=8")
    straight.fit()
    assert straight.scene.num_gaussians == 450  # grew (every candidate cloned or split) up to the cap
    first = gaussian_trainer(tmp_path / "b", "trainer.max_steps=4")
    first.fit()
    assert 300 < first.scene.num_gaussians <= 450
    second = gaussian_trainer(tmp_path / "b", "trainer.max_steps=8")
    assert second.scene.num_gaussians == 300
    second.load()
    assert second.scene.num_gaussians == first.scene.num_gaussians
    second.fit()
    for key, value in straight.scene.state_dict().items():
        assert torch.equal(value, second.scene.state_dict()[key]), key
    lines = (straight.run_dir / "metrics.jsonl").read_text().splitlines()
    assert '"num_gaussians": 450.0' in lines[-1]


def test_gaussian_scene_refuses_shading_it_cannot_do(tmp_path: Path):
    from dreamengine.errors import ConfigError

    with pytest.raises(ConfigError, match="render.shading=albedo"):
        gaussian_trainer(tmp_path, "render.shading=diffuse")


def test_two_particles_train_two_scenes(tmp_path: Path):
    trainer = tiny_trainer(tmp_path / "p", "trainer.max_steps=3", "trainer.n_particles=2")
    assert len(trainer.scenes) == 2 and len(trainer.renderers) == 2
    before = [scene_parameters_of(s) for s in trainer.scenes]
    seen_batches = []
    trainer.guidance = GuidanceSpy(trainer.guidance, before=lambda rgb, prompts, cameras, step: seen_batches.append(
        (rgb.shape[0], len(cameras), prompts.cond.shape[0])))
    trainer.fit()
    assert seen_batches == [(2, 2, 2)] * 3  # batch_size 1 x 2 particles in one guidance call
    after = [scene_parameters_of(s) for s in trainer.scenes]
    for b, a in zip(before, after, strict=True):  # both particles moved ...
        assert any(not torch.equal(b[k], a[k]) for k in b)
    assert any(not torch.equal(after[0][k], after[1][k]) for k in after[0])  # ... and differently
    # a checkpoint restores both; the wrong particle count is refused with a clear message
    restored = tiny_trainer(tmp_path / "p", "trainer.max_steps=3", "trainer.n_particles=2")
    restored.load()
    for scene, expected in zip(restored.scenes, after, strict=True):
        for key, value in scene.state_dict().items():
            assert torch.equal(value, expected[key]), key
    with pytest.raises(CheckpointError, match="particle"):
        tiny_trainer(tmp_path / "p", "trainer.max_steps=3").load()


def scene_parameters_of(scene: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in scene.state_dict().items()}


def test_camera_phases_change_the_render_size_at_their_step(tmp_path: Path):
    trainer = tiny_trainer(tmp_path, "trainer.max_steps=4",
                           "camera.phases=[{start: 2, height: 16, width: 20, batch_size: 2}]")
    shapes = []
    trainer.guidance = GuidanceSpy(trainer.guidance,
                                   before=lambda rgb, prompts, cameras, step: shapes.append((step, tuple(rgb.shape))))
    trainer.fit()
    assert shapes == [(0, (1, 24, 24, 3)), (1, (1, 24, 24, 3)), (2, (2, 16, 20, 3)), (3, (2, 16, 20, 3))]


def test_a_gradient_that_is_all_nan_is_a_failed_step_not_a_zero_one(tmp_path: Path):
    """The guidance zeroes NaN entries of its gradient (nan_to_num); when all of them were NaN the step failed:
    after max_bad_steps such steps the run stops with a clear error instead of exporting an untrained scene."""
    trainer = tiny_trainer(tmp_path, "trainer.max_steps=20", "trainer.max_bad_steps=3")
    teacher = trainer.guidance.teacher
    teacher.predict_noise = lambda z_t, *args, **kwargs: torch.full_like(z_t, float("nan"))
    before = scene_parameters(trainer)
    with pytest.raises(TrainingError, match="NaN/Inf for 3 steps"):
        trainer.fit()
    assert trainer.step == 3
    for key, value in scene_parameters(trainer).items():
        if key != "blob_weight":  # the blob's fade follows the step count, failed steps included
            assert torch.equal(value, before[key])
    logged = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(record["grad_nonfinite"] == 1.0 for record in logged)


def test_optimizer_choice_adamw_with_weight_decay(tmp_path):
    """optim.name=adamw builds torch's AdamW with the configured decoupled weight decay (ProlificDreamer and
    ScaleDreamer); the default stays Adam without decay; an unknown name is a ConfigError."""
    from dreamengine.errors import ConfigError

    cfg = load_config("asd-toy", [*TINY, "optim.name=adamw", "optim.weight_decay=0.02"], prompt="a red cube")
    optimizer = Trainer(cfg, tmp_path / "w").optimizer
    assert type(optimizer) is torch.optim.AdamW and all(g["weight_decay"] == 0.02 for g in optimizer.param_groups)
    plain = Trainer(load_config("asd-toy", TINY, prompt="a red cube"), tmp_path / "p").optimizer
    assert type(plain) is torch.optim.Adam and all(g["weight_decay"] == 0.0 for g in plain.param_groups)
    with pytest.raises(ConfigError, match="optim.name"):
        load_config("asd-toy", ["optim.name=sgd"], prompt="a red cube")


def test_random_background_augmentation(tmp_path):
    """render.random_background_prob (threestudio's random_aug): with probability p a step's views each see one
    random solid color; p = 0 draws nothing from the run's generator (runs stay bit-identical)."""
    from dreamengine.core.background import RandomColorBackground

    trainer = Trainer(load_config("csd-toy", [*TINY, "render.random_background_prob=1.0"], prompt="a red cube"),
                      tmp_path / "aug")
    state = trainer.generator.get_state()
    backgrounds = trainer.training_backgrounds(2, 1)
    gen = torch.Generator()
    gen.set_state(state)
    assert float(torch.rand((), generator=gen)) < 1.0
    colors = torch.rand(1, 2, 3, generator=gen)
    assert isinstance(backgrounds[0], RandomColorBackground)
    out = backgrounds[0](torch.randn(2, 4, 5, 3))
    assert torch.equal(out, colors[0].view(2, 1, 1, 3).expand(2, 4, 5, 3))
    assert "skipped" not in trainer.train_step()
    plain = Trainer(load_config("csd-toy", TINY, prompt="a red cube"), tmp_path / "plain")
    before = plain.generator.get_state()
    assert plain.training_backgrounds(2, 1) == [plain.background] and torch.equal(plain.generator.get_state(), before)


@pytest.mark.parametrize("reduction,factor", [("mean", 2.0), ("sum", 1.0)])
def test_particles_scale_only_a_mean_reduced_guidance_loss(tmp_path, reduction, factor):
    """With 2 particles a ``mean`` loss (g / B over the P x B batch) is doubled so each particle gets its own g / B;
    a ``sum`` loss (SpecifyGradient's g per sample) is not."""
    trainer = tiny_trainer(tmp_path, "trainer.max_steps=1", "trainer.n_particles=2", "loss.lambda_sparsity=0",
                           "loss.lambda_opaque=0", "loss.lambda_orient=0")
    seen = []

    def replace(out):
        seen.append(float(out.loss.detach()))
        return GuidanceOut(loss=out.loss, terms=out.terms, reduction=reduction)

    trainer.guidance = GuidanceSpy(trainer.guidance, after=replace)
    terms = trainer.train_step()
    assert terms["loss"] == pytest.approx(factor * seen[0], rel=1e-6)


def test_a_short_run_renders_its_results_with_a_refreshed_grid_and_continues_from_the_unrefreshed_one(tmp_path):
    """A run shorter than the occupancy grid's update period never refreshed it (every cell occupied: the renders
    after training evaluated every sample). run_stage refreshes it for those renders only: the checkpoint keeps
    the training grid, so a continued run trains as the uninterrupted one."""
    from dreamengine.pipeline import run_stage

    short = tiny_trainer(tmp_path / "a", "trainer.max_steps=3", "report.turntable=false")
    run_stage(short, export=False)
    assert short.renderer.occupancy.refreshed and not short.renderer.occupancy.occupied.all()
    resumed = tiny_trainer(tmp_path / "a", "trainer.max_steps=20")
    resumed.load()
    assert resumed.step == 3 and not resumed.renderer.occupancy.refreshed
    resumed.fit()
    straight = tiny_trainer(tmp_path / "b", "trainer.max_steps=20")
    straight.fit()
    for key, value in scene_parameters(straight).items():
        assert torch.equal(value, resumed.scene.state_dict()[key]), key


def test_progressive_band_and_albedo_warmup_follow_the_steps_and_resume_exactly(tmp_path: Path):
    """scene.progressive_* and render.albedo_warmup_steps through fit(): the band and the shading change at their
    steps, and a run resumed in the middle ends where the uninterrupted one does."""
    options = ("scene.progressive_start_level=2", "scene.progressive_start_step=2", "scene.progressive_update_steps=2",
               "render.albedo_warmup_steps=3", "render.shading=diffuse")
    straight = tiny_trainer(tmp_path / "a", "trainer.max_steps=6", *options)
    seen = []
    straight.guidance = GuidanceSpy(straight.guidance, before=lambda rgb, prompts, cameras, step: seen.append(
        (step, int(straight.scene.active_levels), straight.renderer.warmup.shading)))
    straight.fit()
    assert seen == [(0, 2, "albedo"), (1, 2, "albedo"), (2, 2, "albedo"), (3, 2, "diffuse"), (4, 3, "diffuse"),
                    (5, 3, "diffuse")]
    tiny_trainer(tmp_path / "b", "trainer.max_steps=3", *options).fit()
    second = tiny_trainer(tmp_path / "b", "trainer.max_steps=6", *options)
    second.load()
    assert (int(second.scene.active_levels), second.renderer.warmup.shading) == (2, "diffuse")
    second.fit()
    for key, value in scene_parameters(straight).items():
        assert torch.equal(value, second.scene.state_dict()[key]), key


def test_all_finite_is_the_elementwise_check_including_sums_that_overflow():
    from dreamengine.trainer import all_finite

    values = torch.randn(1000, 2)
    assert all_finite(values)
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = values.clone()
        broken[537, 1] = bad
        assert not all_finite(broken)
    huge = torch.full((8, 2), 3e38)  # every value finite, their float32 sum is not
    assert not bool(torch.isfinite(huge.sum())) and all_finite(huge)
    assert all_finite(torch.zeros(0))
