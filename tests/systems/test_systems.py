"""Systems: packaged stage lists, the driver, resuming in the middle of a stage, the library API."""

from __future__ import annotations

import json
import math
import random
import signal
import time
from pathlib import Path

import pytest
import torch

import dreamengine
from dreamengine.config import load_config
from dreamengine.errors import ConfigError
from dreamengine.systems import load_system, packaged_systems, split_stage_overrides
from dreamengine.systems.driver import plan_stages
from tests.cli_helpers import TINY, only_run_dir, popen_cli, run_cli, run_cli_in_process

# every stage tiny: small renders and bank, few steps, no previews
SHORT = [*TINY, "trainer.max_steps=4", "trainer.checkpoint_every=2"]
TOY_SYSTEMS = sorted(name for name in packaged_systems() if name.endswith("-toy"))


def short_overrides(system: str) -> list[str]:
    """SHORT, and fewer Gaussians in the stages that have Gaussian scenes."""
    spec = load_system(system)
    overrides = list(SHORT)
    for stage in spec.stages:
        if any(item.startswith("scene.name=gaussians") for item in stage.overrides) or "gaussian" in stage.config:
            overrides.append(f"{stage.name}:scene.num_points=400")
    return overrides


def needs_image(system: str) -> bool:
    """Whether a system's first stage is guided by an image-conditioned teacher (it needs --image)."""
    return plan_stages(load_system(system), "a snowman", [], Path("unused"))[0].teacher.name.endswith("image")


def test_every_packaged_system_resolves(tmp_path: Path) -> None:
    names = packaged_systems()
    for paper in ("dreamfusion", "gaussiandreamer", "luciddreamer", "placiddreamer", "tv3dg", "mvdream"):
        assert paper in names and f"{paper}-toy" in names, paper
    multi_view = {"mvdream": "mvdream", "mvdream-toy": "toyworld-multiview"}
    for name in names:
        spec = load_system(name)
        assert spec.description and spec.paper and spec.stages, name
        configs = plan_stages(spec, "a red cube", [], tmp_path / name)
        assert len(configs) == len(spec.stages)
        if name in multi_view:
            teachers = {multi_view[name]}
        else:
            teachers = ({"toyworld", "toyworld-image"} if name.endswith("-toy")
                        else {"stable-diffusion", "zero123"})
        assert all(cfg.teacher.name in teachers for cfg in configs), name


def test_papers_defaults_reach_the_stage_configs(tmp_path: Path) -> None:
    lucid = plan_stages(load_system("luciddreamer"), "a fox", [], tmp_path)[0]
    assert (lucid.scene.name, lucid.guidance.name, lucid.guidance.guidance_scale) == ("gaussians", "ism", 7.5)
    assert (lucid.guidance.grad_scale, lucid.guidance.xs_delta_t, lucid.camera.batch_size) == (0.1, 200, 4)
    assert (lucid.camera.height, lucid.camera.elevation_range, lucid.densify.refine_start) == (512, [-15.0, 45.0], 100)
    assert lucid.prompt_processor.view_interpolation and lucid.guidance.grad_injection == "sum"
    placid = plan_stages(load_system("placiddreamer"), "a fox", [], tmp_path)[0]
    assert (placid.guidance.name, placid.guidance.classifier_ratio) == ("bsd", 15.0)
    dreamer = plan_stages(load_system("gaussiandreamer"), "a fox", [], tmp_path)[0]
    assert (dreamer.guidance.guidance_scale, dreamer.trainer.max_steps, dreamer.camera.batch_size) == (100.0, 1200, 4)
    assert dreamer.guidance.grad_clip == [0, 1.5, 2.0, 1000]
    mvdream = plan_stages(load_system("mvdream"), "a fox", [], tmp_path)[0]  # MVDream-threestudio's mvdream-sd21.yaml
    guidance, camera = mvdream.guidance, mvdream.camera
    assert (mvdream.teacher.name, mvdream.teacher.checkpoint_file) == ("mvdream", "sd-v2.1-base-4view.pt")
    assert (guidance.name, guidance.guidance_scale, guidance.recon_loss, guidance.recon_std_rescale) == \
        ("mvdream-sds", 50.0, True, 0.5)
    assert (guidance.min_step_percent, guidance.max_step_percent) == ([0, 0.98, 0.02, 8000], [0, 0.98, 0.5, 8000])
    assert (camera.views_per_group, camera.batch_size, camera.height, camera.relative_distance) == (4, 8, 64, True)
    assert (camera.phases[0].start, camera.phases[0].batch_size, camera.phases[0].height) == (5000, 4, 256)
    assert (camera.elevation_range, camera.fovy_range, camera.distance_range) == ([0, 30], [15, 60], [0.8, 1.0])
    assert not mvdream.prompt_processor.view_dependent and mvdream.render.num_samples == 512
    assert mvdream.prompt_processor.negative_prompt.startswith("ugly, bad anatomy, blurry")


def test_stage_overrides_and_previous_stage_init(tmp_path: Path) -> None:
    spec = load_system("gaussiandreamer-toy")
    per_stage = split_stage_overrides(spec, ["seed=3", "gaussians:trainer.max_steps=7"])
    assert per_stage == {"prior": ["seed=3"], "gaussians": ["seed=3", "trainer.max_steps=7"]}
    prior, gaussians = plan_stages(spec, "a red cube", ["seed=3", "gaussians:trainer.max_steps=7"], tmp_path)
    assert prior.seed == gaussians.seed == 3 and gaussians.trainer.max_steps == 7
    assert (gaussians.scene.init, gaussians.scene.init_path) == ("nerf", str(tmp_path / "stages" / "01-prior"))
    with pytest.raises(ConfigError, match="names stage 'gausians'.*Did you mean 'gaussians'"):
        split_stage_overrides(spec, ["gausians:seed=1"])


def test_unknown_system_and_bad_system_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Did you mean 'dreamfusion-toy'"):
        load_system("dreamfusion-tyo")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages:\n  - name: a\n    config: quickstart\n    init: previous\n")
    with pytest.raises(ConfigError, match="first stage has no previous stage"):
        load_system(str(bad))
    bad.write_text("name: x\nstagse: []\n")
    with pytest.raises(ConfigError, match="Did you mean 'stages'"):
        load_system(str(bad))
    bad.write_text("name: x\nstages:\n  - name: a\n    config: quickstart\n    overrides: {trainer: {max_stesp: 3}}\n")
    with pytest.raises(ConfigError, match="stage 'a' of system x.*max_stesp"):
        plan_stages(load_system(str(bad)), "a red cube", [], tmp_path)


def test_cli_lists_systems_and_reports_bad_input(tmp_path: Path) -> None:
    listed = run_cli_in_process(["systems"], tmp_path)
    assert listed.returncode == 0
    for name in packaged_systems():
        assert name in listed.stdout
    assert "Poole et al." in listed.stdout and "stages: prior -> gaussians" in listed.stdout
    wrong = run_cli_in_process(["generate", "a red cube", "--system", "placidreamer-toy"], tmp_path)
    assert wrong.returncode == 2 and "Did you mean 'placiddreamer-toy'" in wrong.stderr
    assert "Traceback" not in wrong.stderr and not (tmp_path / "runs").exists()
    both = run_cli_in_process(["generate", "a red cube", "--system", "tv3dg-toy", "--config", "quickstart"], tmp_path)
    assert both.returncode == 2 and "not allowed with" in both.stderr


@pytest.mark.slow
@pytest.mark.parametrize("system", TOY_SYSTEMS)
def test_toy_system_runs_end_to_end_in_short(tmp_path: Path, system: str) -> None:
    events = []
    image = None
    if needs_image(system):  # image-to-3D systems: a toy render of the snowman is the reference image
        from tests.test_image_to_3d import toy_render_png

        image = toy_render_png(tmp_path / "snowman.png", "a snowman", 0.0, 0.0)
    asset = dreamengine.generate("a snowman", image=image, system=system, overrides=short_overrides(system),
                                 output_dir=tmp_path / "runs", callbacks=[events.append])
    spec = load_system(system)
    assert asset.glb is not None and asset.glb.stat().st_size > 0
    assert asset.metrics is not None and 0.0 <= asset.metrics["mask_iou"] <= 1.0
    assert [s["stage"] for s in asset.metrics["stages"]] == [stage.name for stage in spec.stages]
    assert [(e.stage, e.step) for e in events] == [(stage.name, step) for stage in spec.stages for step in range(1, 5)]
    for index, stage in enumerate(spec.stages):
        folder = asset.run_dir / "stages" / f"{index + 1:02d}-{stage.name}"
        assert (folder / "done.json").is_file() and (folder / "ckpt" / "last.pt").is_file()
    if any("gaussian" in stage.config for stage in spec.stages[-1:]):
        assert asset.splat is not None


def test_mvdream_toy_runs_end_to_end_in_groups_of_four_views(tmp_path: Path) -> None:
    """A short mvdream-toy run: 4 views per step from the multi-view toy teacher, evaluated with a Janus score."""
    seen = []
    asset = dreamengine.generate("a penguin", system="mvdream-toy", output_dir=tmp_path / "runs",
                                 overrides=[*SHORT, "export.formats=[]", "report.turntable=false"],
                                 callbacks=[seen.append])
    assert [event.step for event in seen] == [1, 2, 3, 4]
    assert asset.metrics is not None and 0.0 <= asset.metrics["mask_iou"] <= 1.0
    assert 0.0 <= asset.metrics["janus_score"] <= 1.0
    stage = asset.run_dir / "stages" / "01-nerf"
    cfg = load_config(stage / "config.yaml")
    assert (cfg.teacher.name, cfg.guidance.name, cfg.camera.views_per_group, cfg.camera.batch_size) == \
        ("toyworld-multiview", "mvdream-sds", 4, 4)
    log = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and all(math.isfinite(record["grad_norm"]) for record in log)


def test_callbacks_get_preview_images(tmp_path: Path) -> None:
    seen = []
    dreamengine.generate("a red cube", config="quickstart", output_dir=tmp_path / "runs",
                         overrides=[*TINY, "trainer.max_steps=2", "trainer.preview_every=2", "export.formats=[]"],
                         callbacks=[lambda event: seen.append((event.step, event.preview_image()))])
    assert seen[0][1] is None
    step, image = seen[1]
    assert step == 2 and image.ndim == 3 and image.shape[2] == 3 and image.dtype.name == "uint8"


def wait_for_stage_step(run_dir: Path, stage: str, step: int, process, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    log = run_dir / "stages" / stage / "metrics.jsonl"
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()
        if log.is_file() and any(json.loads(line)["step"] >= step for line in log.read_text().splitlines()
                                 if line.strip().endswith("}")):
            return
        time.sleep(0.1)
    raise AssertionError(f"stage {stage} did not reach step {step} in {timeout} s")


TWO_STAGES = """\
name: two-stage-test
description: NeRF then Gaussians from it
paper: none
stages:
  - name: coarse
    config: quickstart
  - name: fine
    config: gaussian-toy
    init: previous
    overrides:
      scene: {num_points: 400}
      densify: {refine_start: 4, refine_every: 4, grow_grad2d: 0.0}
"""


@pytest.mark.slow
def test_sigkill_in_either_stage_then_resume_is_bit_identical(tmp_path: Path) -> None:
    """A deterministic 2-stage run SIGKILLed at a random step of stage 1, resumed, SIGKILLed again at a random
    step of stage 2, resumed: its final scene equals an uninterrupted run's, bit for bit."""
    system = tmp_path / "two-stage.yaml"
    system.write_text(TWO_STAGES)
    # no mesh files: the test compares checkpoints (stage 2's Gaussians start from stage 1's density and its
    # surface level, which gaussians_from_nerf_run fits itself, not from the exported mesh)
    settings = [*TINY, "deterministic=true", "trainer.max_steps=12", "trainer.checkpoint_every=3",
                "trainer.log_every=1", "export.formats=[]", "report.turntable=false"]
    draw = random.Random(20261128)
    kill_steps = {"01-coarse": draw.randint(2, 11), "02-fine": draw.randint(2, 11)}
    (tmp_path / "killed").mkdir()
    process = popen_cli(["generate", "a red cube", "--system", str(system), *settings], tmp_path / "killed")
    for stage, step in kill_steps.items():
        while not (tmp_path / "killed" / "runs").is_dir() or not list((tmp_path / "killed" / "runs").iterdir()):
            time.sleep(0.1)
        run_dir = only_run_dir(tmp_path / "killed")
        wait_for_stage_step(run_dir, stage, step, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        assert not (run_dir / "stages" / stage / "done.json").exists()
        if stage == "01-coarse":  # resume in the background, to kill it again in stage 2
            process = popen_cli(["resume", str(run_dir)], tmp_path / "killed")
    resumed = run_cli(["resume", str(run_dir)], tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert "stage 2/2: fine" in resumed.stdout and "stage 1/2" not in resumed.stdout  # stage 1 not recomputed

    (tmp_path / "straight").mkdir()
    straight = run_cli(["generate", "a red cube", "--system", str(system), *settings], tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    straight_dir = only_run_dir(tmp_path / "straight")
    for stage in kill_steps:
        final = torch.load(run_dir / "stages" / stage / "ckpt" / "last.pt", weights_only=True)
        expected = torch.load(straight_dir / "stages" / stage / "ckpt" / "last.pt", weights_only=True)
        assert final["step"] == expected["step"] == 12
        for key, value in expected["scenes"][0].items():
            assert torch.equal(value, final["scenes"][0][key]), (stage, key)
    log = (run_dir / "stages" / "02-fine" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == list(range(1, 13))  # replayed steps logged once
