import numpy as np
import pytest
import trimesh

from dreamengine.config import load_config
from dreamengine.evaluate import held_out_cameras, mesh_metrics, true_mesh
from dreamengine.toyworld import parse_prompt


def test_true_mesh_scores_perfectly_and_a_scaled_one_as_expected():
    sphere = parse_prompt("a green sphere")
    truth = true_mesh(sphere)
    perfect = mesh_metrics(truth, sphere)
    assert perfect["volumetric_iou"] > 0.99 and perfect["chamfer"] < 0.005
    radius = float(np.linalg.norm(truth.vertices, axis=1).mean())
    bigger = truth.copy().apply_scale(1.1)
    scored = mesh_metrics(bigger, sphere)
    assert scored["volumetric_iou"] == pytest.approx(1 / 1.1**3, abs=0.02)
    assert scored["chamfer"] == pytest.approx(0.1 * radius, rel=0.1)


def test_mesh_far_away_scores_zero():
    cube = parse_prompt("a red cube")
    far = trimesh.creation.box(extents=(0.2, 0.2, 0.2)).apply_translation((0.7, 0.7, 0.7))
    assert mesh_metrics(far, cube)["volumetric_iou"] == 0.0


def test_held_out_cameras_avoid_the_bank_azimuths():
    cfg = load_config("quickstart")
    cameras = held_out_cameras(cfg)
    step = cfg.teacher.azimuth_step
    offsets = np.mod(cameras.azimuth.numpy(), step)
    assert np.allclose(offsets, step / 2)
