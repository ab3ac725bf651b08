import numpy as np
import pytest
import trimesh

from dreamengine.config import load_config
from dreamengine.evaluate import held_out_cameras, mesh_metrics, topology, true_mesh
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


@pytest.mark.parametrize("name", ["a snowman", "a house", "a penguin", "a mug", "a car", "a duck"])
def test_janus_score_finds_two_faced_objects_sharp_or_blurred_and_never_the_true_one(name):
    """Physical Janus objects (the front half copied onto the back, mirrored or turned) score high, lit like the
    truth; the true object scores 0, also blurred (a blurry render is not a two-faced one)."""
    import torch

    from dreamengine.core.render import RenderOut
    from dreamengine.evaluate import TwoFaced, janus_score
    from dreamengine.toyworld import render_toy

    cfg = load_config("quickstart", ["eval.resolution=32"], prompt=name)
    obj = parse_prompt(name)

    def renders(shown, blur: int = 0):
        def render(cameras, h, w):
            gt = render_toy(shown, cameras, h, w, supersample=2)
            rgb = gt["rgb"].permute(0, 3, 1, 2)
            if blur:  # a (2 blur + 1)^2 box blur, like an over-smoothed SDS render
                rgb = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(rgb, (blur,) * 4, mode="replicate"),
                                                     2 * blur + 1, stride=1)
            return RenderOut(rgb.permute(0, 2, 3, 1), gt["mask"], gt["depth"], None, None)
        return render

    assert janus_score(obj, cfg, renders(obj)) == 0.0
    assert janus_score(obj, cfg, renders(obj, blur=1)) == 0.0
    for mode in ("mirror", "turn"):
        assert janus_score(obj, cfg, renders(TwoFaced(obj, mode))) == 1.0, mode
    assert janus_score(obj, cfg, renders(TwoFaced(obj, "mirror"), blur=1)) >= 0.6


def test_mean_saturation():
    import torch

    from dreamengine.evaluate import mean_saturation

    rgb = torch.tensor([[[[1.0, 0.0, 0.0], [0.5, 0.5, 0.5]]]])  # pure red, grey
    assert mean_saturation(rgb, torch.ones(1, 1, 2, 1, dtype=torch.bool)) == pytest.approx(0.5)
    assert mean_saturation(rgb, torch.tensor([[[[True], [False]]]])) == pytest.approx(1.0)


def test_held_out_views_cover_undersides_sides_tops_and_the_top():
    cfg = load_config("quickstart", ["eval.num_views=4"])
    cameras = held_out_cameras(cfg)
    assert len(cameras) == 4 * 3 + 1
    assert sorted(set(cameras.elevation.tolist())) == [-10.0, 20.0, 50.0, 89.5]
    top = cameras.position[-1]
    assert float(top[2]) > 0.999 * float(top.norm())  # straight above, looking down
    no_top = held_out_cameras(load_config("quickstart", ["eval.num_views=4", "eval.overhead=false"]))
    assert len(no_top) == 12


def test_a_perfect_render_scores_perfectly_in_every_band():
    import torch

    from dreamengine.core.render import RenderOut
    from dreamengine.evaluate import evaluate_renders
    from dreamengine.toyworld import render_toy

    cfg = load_config("quickstart", ["eval.num_views=3", "eval.resolution=32"], prompt="a yellow torus")
    torus = parse_prompt(cfg.prompt)

    def truthful(cameras, h, w):
        gt = render_toy(torus, cameras, h, w, supersample=2)
        return RenderOut(gt["rgb"], gt["mask"], gt["depth"], None, None)

    def speckled(cameras, h, w):
        out = truthful(cameras, h, w)
        noise = 0.3 * (torch.rand(out.rgb.shape, generator=torch.Generator().manual_seed(0)) - 0.5)
        return RenderOut((out.rgb + noise * out.opacity).clamp(0, 1), out.opacity, out.depth, None, None)

    perfect = evaluate_renders(cfg, truthful)
    assert perfect["mask_iou"] == 1.0 and perfect["views"] == 10
    assert list(perfect["bands"]) == ["-10", "20", "50", "overhead"]
    assert all(band["mask_iou"] == 1.0 for band in perfect["bands"].values())
    assert perfect["texture_noise"] == pytest.approx(perfect["true_texture_noise"])
    noisy = evaluate_renders(cfg, speckled)
    assert noisy["texture_noise"] > 3 * noisy["true_texture_noise"]
    assert noisy["mask_iou"] == 1.0 and noisy["psnr"] < perfect["psnr"]


def test_mesh_topology_tells_a_torus_from_a_filled_one():
    torus = parse_prompt("a yellow torus")
    truth = mesh_metrics(true_mesh(torus), torus)
    assert truth["watertight"] and truth["pieces"] == 1 and truth["euler_characteristic"] == 0
    assert truth["true_euler_characteristic"] == 0
    lemon = trimesh.creation.icosphere(subdivisions=3, radius=0.6)  # the hole filled in: a sphere's topology
    filled = mesh_metrics(lemon, torus)
    assert filled["euler_characteristic"] == 2 and filled["true_euler_characteristic"] == 0
    open_box = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
    open_box.update_faces(np.arange(len(open_box.faces)) > 0)  # one triangle missing
    assert not mesh_metrics(open_box, parse_prompt("a red cube"))["watertight"]


@pytest.mark.parametrize("name", ["a duck", "a snowman", "a penguin", "a red torus"])
def test_true_meshes_read_as_one_closed_piece(name):
    """Marching cubes puts several vertices on a grid point where the SDF is exactly 0 (the duck's wings); welding
    them collapses triangles, which once made the duck's truth 13 open pieces with Euler characteristic 12."""
    shape = topology(true_mesh(parse_prompt(name)))
    assert shape["watertight"] and shape["pieces"] == 1, shape
    if name in ("a duck", "a snowman"):
        assert shape["euler_characteristic"] == 2
    if name == "a red torus":
        assert shape["euler_characteristic"] == 0


def test_topology_welds_uv_seams_of_a_textured_mesh():
    torus = parse_prompt("a yellow torus")
    truth = true_mesh(torus)
    # a UV-unwrapped mesh duplicates the vertices along its seams: split every face's corners apart
    split = trimesh.Trimesh(vertices=truth.vertices[truth.faces].reshape(-1, 3),
                            faces=np.arange(3 * len(truth.faces)).reshape(-1, 3), process=False)
    assert not split.is_watertight
    assert topology(split) == {"watertight": True, "pieces": 1, "euler_characteristic": 0}
