"""``dreamengine generate --image`` end to end on a toy render, its API twin, and its input errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dreamengine.api import prepare
from dreamengine.core.cameras import cameras_from_spherical
from dreamengine.toyworld import all_objects, render_toy
from tests.cli_helpers import TINY, only_run_dir, run_cli, run_cli_in_process

FAST = [*TINY, "trainer.max_steps=6", "trainer.checkpoint_every=0", "export.resolution=32", "export.target_faces=2000",
        "export.texture_size=64"]


def toy_render_png(path: Path, name: str, elevation: float, azimuth: float, size: int = 40) -> Path:
    """A toy object rendered as an RGBA PNG (alpha = its mask), as a user would hand one over."""
    obj = next(o for o in all_objects() if o.name == name)
    cameras = cameras_from_spherical(torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([2.5]),
                                     torch.tensor([40.0]))
    out = render_toy(obj, cameras, size, size, supersample=2)
    rgba = torch.cat([out["rgb"][0], out["mask"][0]], dim=-1).numpy()
    Image.fromarray((rgba * 255.0 + 0.5).astype(np.uint8), "RGBA").save(path)
    return path


@pytest.mark.slow
def test_generate_image_of_a_toy_render_end_to_end(tmp_path: Path):
    image = toy_render_png(tmp_path / "ref.png", "a car", 30.0, 60.0)
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    result = run_cli(["generate", "--image", str(image), *FAST], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reference image:" in result.stdout
    run_dir = only_run_dir(tmp_path)
    # the input is never modified; the run keeps a byte-identical copy and reads only that
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before
    assert (run_dir / "input" / "ref.png").read_bytes() == image.read_bytes()
    system = yaml.safe_load((run_dir / "system.yaml").read_text())
    assert system["system"] == "zero123-toy"  # a toy render with no --system goes to the toy default
    stage_cfg = yaml.safe_load((run_dir / system["stages"][0]["dir"] / "config.yaml").read_text())
    assert stage_cfg["teacher"]["name"] == "toyworld-image"
    assert Path(stage_cfg["image"]["path"]) == (run_dir / "input" / "ref.png").resolve()
    # the toy teacher recognized the object and the view; the prompt defaults to the object's name
    assert stage_cfg["image"]["object"] == "a car" and stage_cfg["prompt"] == "a car"
    assert stage_cfg["image"]["elevation_deg"] == 30.0 and stage_cfg["image"]["azimuth_deg"] == 60.0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["object"] == "a car" and 0.0 <= metrics["mask_iou"] <= 1.0
    log_file = run_dir / system["stages"][0]["dir"] / "metrics.jsonl"
    log = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert all("ref_rgb" in record and "ref_mask" in record for record in log if "loss" in record)
    assert "input/ref.png" in (run_dir / "report.html").read_text()  # the report shows the input
    evaluated = run_cli_in_process(["eval", str(run_dir)], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads((run_dir / "stages" / "01-nerf" / "metrics.json").read_text())["object"] == "a car"


def test_api_prepare_with_an_image_records_the_object_and_view(tmp_path: Path):
    image = toy_render_png(tmp_path / "duck.png", "a duck", 30.0, -90.0)
    run = prepare(image=image, system="zero123-toy", overrides=[*FAST, "image.elevation_deg=5"],
                  run_dir=tmp_path / "run")
    cfg = run.trainer.cfg
    assert cfg.image.object == "a duck" and cfg.prompt == "a duck"
    assert cfg.image.elevation_deg == 5.0  # the user's setting wins over the detected view
    assert cfg.image.azimuth_deg == -90.0
    assert (tmp_path / "run" / "input" / "duck.png").is_file()
    assert run.trainer.reference is not None and run.trainer.reference.image.rgb.shape == (24, 24, 3)
    losses = run.trainer.reference_losses()
    assert set(losses) == {"ref_rgb", "ref_mask"} and all(bool(torch.isfinite(v)) for v in losses.values())


def test_generate_image_errors_stop_before_any_work(tmp_path: Path):
    (tmp_path / "corrupt.png").write_bytes(b"not an image at all")
    result = run_cli_in_process(["generate", "--image", "corrupt.png"], tmp_path)
    assert result.returncode == 2 and "corrupt or not an image" in result.stderr and "Traceback" not in result.stderr
    result = run_cli_in_process(["generate", "--image", "missing.png", "trainer.max_steps=3"], tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = run_cli_in_process(["generate"], tmp_path)
    assert result.returncode == 2 and "--image" in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_magic123_adds_the_text_teachers_sds(tmp_path: Path):
    image = toy_render_png(tmp_path / "cube.png", "a red cube", 15.0, 0.0)
    run = prepare("a red cube", image=image, system="magic123-toy", overrides=FAST, run_dir=tmp_path / "run")
    trainer = run.trainer
    assert trainer.text_prior is not None and trainer.text_prior.prompts.prompt == "a red cube"
    terms = trainer.train_step()
    assert terms["text_prior_loss"] > 0 and "ref_rgb" in terms
    off = prepare("a red cube", image=image, system="magic123-toy", overrides=[*FAST, "text_prior.weight=0"],
                  run_dir=tmp_path / "off")
    assert off.trainer.text_prior is None


def test_vp3d_samples_its_visual_prompt_and_keeps_it_in_the_run(tmp_path: Path):
    run = prepare("a red cube", system="vp3d-toy", overrides=FAST, run_dir=tmp_path / "run")
    cfg = run.trainer.cfg
    sampled = tmp_path / "run" / "input" / "visual-prompt.png"
    assert sampled.is_file() and Path(cfg.image.path) == sampled.resolve()
    assert cfg.image.object == "a red cube"  # the toy teacher's sample shows the prompt's object
    assert run.trainer.text_prior is not None and run.trainer.reference is not None
