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


def test_janus_score_tells_a_consistent_object_from_a_janus_one():
    import torch

    from dreamengine.core.cameras import cameras_from_spherical
    from dreamengine.core.render import RenderOut
    from dreamengine.evaluate import janus_score
    from dreamengine.toyworld import render_toy

    cfg = load_config("quickstart", ["eval.resolution=32"], prompt="a penguin")
    penguin = parse_prompt(cfg.prompt)

    def truthful(cameras, h, w):
        gt = render_toy(penguin, cameras, h, w)
        return RenderOut(gt["rgb"], gt["mask"], gt["depth"], None, None)

    def janus(cameras, h, w):  # shows the front wherever it is looked at from
        front = cameras_from_spherical(cameras.elevation, cameras.azimuth - 180.0, cameras.distance,
                                       torch.rad2deg(cameras.fovy))
        gt = render_toy(penguin, front, h, w)
        return RenderOut(gt["rgb"], gt["mask"], gt["depth"], None, None)

    assert janus_score(penguin, cfg, truthful) == 0.0
    assert janus_score(penguin, cfg, janus) == 1.0


def test_mean_saturation():
    import torch

    from dreamengine.evaluate import mean_saturation

    rgb = torch.tensor([[[[1.0, 0.0, 0.0], [0.5, 0.5, 0.5]]]])  # pure red, grey
    assert mean_saturation(rgb, torch.ones(1, 1, 2, 1, dtype=torch.bool)) == pytest.approx(0.5)
    assert mean_saturation(rgb, torch.tensor([[[[True], [False]]]])) == pytest.approx(1.0)
