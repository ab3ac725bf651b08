"""Toy world: SDFs, the analytic renderer, prompt vocabulary and ground-truth metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dreamengine.core.cameras import Cameras, cameras_from_spherical, look_at_origin
from dreamengine.errors import PromptError
from dreamengine.toyworld import (
    all_objects,
    mask_iou,
    parse_prompt,
    psnr,
    render_toy,
    sample_points_in_bound,
    split_view,
    vocabulary,
    volumetric_iou,
)
from dreamengine.toyworld import render as toy_render
from dreamengine.toyworld.objects import SHAPES, Box, Cone, Cylinder, Sphere, Torus
from dreamengine.toyworld.vocabulary import EMPTY_MESSAGE


def _cameras(elevation: list[float], azimuth: list[float], distance: float = 2.5,
             fovy: float = 40.0) -> Cameras:
    n = len(elevation)
    return cameras_from_spherical(torch.tensor(elevation), torch.tensor(azimuth), torch.full((n,), distance),
                                  torch.full((n,), fovy))


# --- SDFs --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("sdf", "point", "expected"), [
    (Sphere((0.0, 0.0, 0.0), 0.6), (0.6, 0.0, 0.0), 0.0),
    (Sphere((0.0, 0.0, 0.0), 0.6), (0.0, 0.0, 0.0), -0.6),
    (Sphere((0.1, 0.0, 0.0), 0.6), (0.1, 1.0, 0.0), 0.4),
    (Box((0.0, 0.0, 0.0), (0.4, 0.4, 0.4)), (0.4, 0.1, -0.2), 0.0),
    (Box((0.0, 0.0, 0.0), (0.4, 0.4, 0.4)), (0.5, 0.0, 0.0), 0.1),
    (Box((0.0, 0.0, 0.0), (0.4, 0.4, 0.4)), (0.5, 0.5, 0.0), math.sqrt(0.02)),  # nearest point: an edge
    (Box((0.0, 0.0, 0.0), (0.4, 0.4, 0.4)), (0.1, 0.0, 0.0), -0.3),
    (Cylinder((0.0, 0.0, 0.0), 0.42, 0.45), (0.42, 0.0, 0.0), 0.0),
    (Cylinder((0.0, 0.0, 0.0), 0.42, 0.45), (0.0, 0.0, 0.55), 0.1),
    (Cylinder((0.0, 0.0, 0.0), 0.42, 0.45), (0.0, 0.0, 0.0), -0.42),
    (Cylinder((0.0, 0.0, 0.0), 0.42, 0.45, axis="x"), (0.6, 0.0, 0.0), 0.15),
    (Cone((0.0, 0.0, 0.0), 0.5, 1.0), (0.0, 0.0, 0.5), 0.0),  # apex
    (Cone((0.0, 0.0, 0.0), 0.5, 1.0), (0.0, 0.0, 0.6), 0.1),
    (Cone((0.0, 0.0, 0.0), 0.5, 1.0), (0.0, 0.0, -0.7), 0.2),  # below the base center
    # center: nearest is the slant side, distance |(-0.5, 0.5) x (-0.5, 1)| / |(-0.5, 1)| = 0.25 / sqrt(1.25)
    (Cone((0.0, 0.0, 0.0), 0.5, 1.0), (0.0, 0.0, 0.0), -0.25 / math.sqrt(1.25)),
    (Cone((0.0, 0.0, 0.0), 0.5, 1.0, axis="x", direction=-1), (-0.6, 0.0, 0.0), 0.1),  # apex along -X
    (Torus((0.0, 0.0, 0.0), 0.45, 0.2), (0.65, 0.0, 0.0), 0.0),
    (Torus((0.0, 0.0, 0.0), 0.45, 0.2), (0.0, 0.45, 0.0), -0.2),
    (Torus((0.0, 0.0, 0.0), 0.45, 0.2), (0.0, 0.0, 0.0), 0.25),  # the hole is outside
    (Torus((0.0, 0.0, 0.0), 0.45, 0.2), (0.45, 0.0, 0.2), 0.0),  # top of the tube: lying flat
])
def test_primitive_sdf_values(sdf, point, expected):
    assert float(sdf(torch.tensor([point]))[0]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_shape_sdfs_are_distances(shape):
    """Exact SDFs have a unit gradient almost everywhere (the eikonal equation)."""
    sdf = SHAPES[shape]()
    points = sample_points_in_bound(2000, 1.0, torch.Generator().manual_seed(0)).requires_grad_(True)
    (grad,) = torch.autograd.grad(sdf(points).sum(), points)
    norms = grad.norm(dim=-1)
    assert float((norms - 1.0).abs().median()) < 1e-4
    assert float(((norms - 1.0).abs() < 1e-3).float().mean()) > 0.97  # kinks (medial axis) have measure 0


def test_every_object_fits_in_radius_075_and_is_solid():
    shell = sample_points_in_bound(20000, 1.0, torch.Generator().manual_seed(1))
    shell = shell / shell.norm(dim=-1, keepdim=True) * (0.75 + 0.05 * torch.rand(20000, 1))
    for obj in all_objects():
        assert bool((obj.sdf(shell) > 0).all()), f"{obj.name} pokes out of radius 0.75"
        assert bool(obj.inside(torch.zeros(1, 3)).item()) or obj.noun == "torus", obj.name
        colors = obj.color(sample_points_in_bound(500, 0.75))
        assert colors.shape == (500, 3) and bool(((colors >= 0) & (colors <= 1)).all())


# --- renderer ----------------------------------------------------------------------------------------

def test_sphere_silhouette_matches_projected_disk():
    obj, radius, distance, size = parse_prompt("a red sphere"), 0.6, 2.5, 64
    cameras = _cameras([20.0], [30.0], distance)
    mask = render_toy(obj, cameras, size, size)["mask"][0, ..., 0]
    focal = float(cameras.focal(size)[0])
    disk_radius = focal * math.tan(math.asin(radius / distance))  # pixels
    centers = torch.arange(size) + 0.5 - size / 2
    rho = (centers[:, None] ** 2 + centers[None, :] ** 2).sqrt()  # pixel-center distance to image center
    far_from_edge = (rho - disk_radius).abs() > 1.0
    assert torch.equal((mask > 0.5)[far_from_edge], (rho < disk_radius)[far_from_edge])
    assert float(mask.sum()) == pytest.approx(math.pi * disk_radius**2, abs=2 * math.pi * disk_radius)


def test_sphere_depth_is_ray_sphere_intersection():
    obj, radius = parse_prompt("a blue sphere"), 0.6
    cameras = _cameras([-10.0, 45.0], [0.0, 200.0])
    out = render_toy(obj, cameras, 48, 48)
    origins, directions = cameras.rays(48, 48)
    b = (origins * directions).sum(-1)
    disc = b**2 - ((origins**2).sum(-1) - radius**2)
    expected = -b - disc.clamp(min=0).sqrt()
    hit = out["mask"][..., 0] > 0.5
    assert torch.equal(hit, disc > 0) or int((hit != (disc > 0)).sum()) <= 4  # grazing pixels at most
    both = hit & (disc > 0)
    error = (out["depth"][..., 0][both] - expected[both]).abs()
    assert float(error.max()) < 2e-3 and float(error.median()) < 2e-4
    assert bool((out["depth"][~hit] == 0).all())


def test_supersampling_is_box_filter_of_fine_render():
    obj, cameras = parse_prompt("a green torus"), _cameras([30.0], [10.0])
    coarse = render_toy(obj, cameras, 16, 16, supersample=2, background=(0.2, 0.3, 0.4))
    fine = render_toy(obj, cameras, 32, 32, background=(0.2, 0.3, 0.4))

    def pool(x):
        return F.avg_pool2d(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)

    torch.testing.assert_close(coarse["rgb"], pool(fine["rgb"]))
    torch.testing.assert_close(coarse["mask"], pool(fine["mask"]))
    assert bool(((coarse["mask"] > 0) & (coarse["mask"] < 1)).any())  # fractional antialiased edge
    covered = coarse["mask"] > 0  # depth: mean over the sub-pixels that hit
    torch.testing.assert_close(coarse["depth"][covered], (pool(fine["depth"]) / pool(fine["mask"]))[covered])
    assert bool((coarse["depth"][~covered] == 0).all())
    empty = fine["mask"] == 0
    torch.testing.assert_close(fine["rgb"][empty.expand_as(fine["rgb"])].view(-1, 3),
                               torch.tensor([[0.2, 0.3, 0.4]]).expand(int(empty.sum()), 3))


@pytest.mark.parametrize("shaded", [True, False])
def test_render_toys_shares_one_trace_per_shape_and_gives_each_render_bit_for_bit(shaded):
    names = ["a red cube", "a snowman", "a blue cube", "a pink torus", "a yellow cube", "a red torus"]
    objects = [parse_prompt(name) for name in names]
    cameras, background = _cameras([-15.0, 40.0], [0.0, 110.0]), (0.2, 0.3, 0.4)
    traced = []
    original_trace = toy_render.trace

    def counting_trace(obj, origins, directions):
        traced.append(obj.name)
        return original_trace(obj, origins, directions)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(toy_render, "trace", counting_trace)
        renders = toy_render.render_toys(objects, cameras, 12, 12, background=background, supersample=2,
                                         shaded=shaded)
    assert sorted(traced) == ["a pink torus", "a red cube", "a snowman"]  # cubes share one trace, tori another
    for obj, out in zip(objects, renders, strict=True):  # each against the renderer's primitives, one by one
        origins, directions = (x.reshape(-1, 3) for x in cameras.rays(24, 24))
        hit, t = toy_render.trace(obj, origins, directions)
        points = origins[hit] + t[hit, None] * directions[hit]
        rgb = torch.tensor(background).repeat(origins.shape[0], 1)
        rgb[hit] = toy_render.shade_points(obj, points) if shaded else obj.color(points)
        pooled = F.avg_pool2d(rgb.view(2, 24, 24, 3).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        mask = F.avg_pool2d(hit.float().view(2, 1, 24, 24), 2).permute(0, 2, 3, 1)
        assert torch.equal(out["rgb"], pooled), obj.name
        assert torch.equal(out["mask"], mask), obj.name


def _camera_looking_at(target: torch.Tensor, position: torch.Tensor) -> Cameras:
    c2w = look_at_origin((position - target)[None])
    c2w[0, :3, 3] = position
    return Cameras(c2w, torch.tensor([math.radians(30.0)]), torch.zeros(1), torch.zeros(1), torch.ones(1))


def test_shading_is_view_independent():
    """The same surface point seen from two cameras has the same color, the lit-albedo formula's."""
    obj, radius = parse_prompt("a purple sphere"), 0.6
    normal = F.normalize(torch.tensor([0.8, 0.3, 0.5]), dim=0)
    point = radius * normal
    views = [F.normalize(normal + torch.tensor(v), dim=0) for v in ([0.4, -0.5, 0.1], [-0.3, 0.6, 0.2])]
    colors = []
    for view in views:
        cameras = _camera_looking_at(point, point + 2.0 * view)
        out = render_toy(obj, cameras, 33, 33)  # odd size: the center pixel's ray passes through ``point``
        assert float(out["depth"][0, 16, 16, 0]) == pytest.approx(2.0, abs=1e-3)
        colors.append(out["rgb"][0, 16, 16])
    light = toy_render.AMBIENT + sum(strength * max(0.0, float(normal @ torch.tensor(direction)))
                                     for direction, strength in toy_render.LIGHTS)
    expected = torch.tensor((0.55, 0.20, 0.80)) * light
    torch.testing.assert_close(colors[0], colors[1], atol=1e-4, rtol=0)
    torch.testing.assert_close(colors[0], expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize("obj", [o for o in all_objects() if o.asymmetric], ids=lambda o: o.name)
def test_asymmetric_objects_front_side_back_differ(obj):
    cameras = _cameras([15.0] * 3, [0.0, 90.0, 180.0])
    front, side, back = render_toy(obj, cameras, 32, 32, supersample=2, shaded=False)["rgb"]
    mirrored_back = back.flip(1)  # a mirror-image back is still not the front (Janus check)

    def differ(a, b):
        return float((a - b).abs().mean())

    for a, b in ((front, side), (front, back), (front, mirrored_back), (side, back), (side, mirrored_back)):
        assert differ(a, b) > 0.01
    sphere_front, _, sphere_back = render_toy(parse_prompt("a red cone"), cameras, 32, 32, supersample=2,
                                              shaded=False)["rgb"]
    assert differ(sphere_front, sphere_back) < 1e-3  # the measure is not large by itself


def test_render_shapes_and_ranges():
    out = render_toy(parse_prompt("a house"), _cameras([0.0, 30.0], [45.0, -120.0]), 12, 20, supersample=2)
    assert out["rgb"].shape == (2, 12, 20, 3) and out["mask"].shape == (2, 12, 20, 1)
    assert out["depth"].shape == (2, 12, 20, 1)
    assert float(out["rgb"].min()) >= 0 and float(out["rgb"].max()) <= 1
    assert float(out["mask"].min()) >= 0 and float(out["mask"].max()) <= 1
    hit = out["depth"][out["mask"] > 0]
    assert float(hit.min()) > 2.5 - 0.8 and float(hit.max()) < 2.5 + 0.8


# --- vocabulary --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("prompt", "name"), [
    ("a red cube", "a red cube"),
    ("red cube", "a red cube"),
    ("A blue torus", "a blue torus"),
    ("the Orange CONE.", "an orange cone"),
    ("an orange cone", "an orange cone"),
    ("  a snowman!! ", "a snowman"),
    ("a pink ball", "a pink sphere"),
    ("a cyan donut", "a cyan torus"),
    ("a mug, back view", "a mug"),
    ("side view of a green cylinder", "a green cylinder"),
])
def test_parse_prompt(prompt, name):
    assert parse_prompt(prompt).name == name


@pytest.mark.parametrize(("prompt", "expected"), [
    ("a red cube, front view", ("a red cube", "front")),
    ("a red cube, side view", ("a red cube", "side")),
    ("a red cube, back view", ("a red cube", "back")),
    ("a red cube, overhead view", ("a red cube", "overhead")),
    ("A Red Cube, Overhead View.", ("A Red Cube", "overhead")),
    ("front view of a snowman", ("a snowman", "front")),
    ("side view of a snowman", ("a snowman", "side")),
    ("backside view of a snowman", ("a snowman", "back")),
    ("overhead view of a snowman", ("a snowman", "overhead")),
    ("a red cube", ("a red cube", None)),
    ("", ("", None)),
])
def test_split_view(prompt, expected):
    assert split_view(prompt) == expected


def test_all_objects_fixed_order_and_round_trip():
    objects = all_objects()
    names = [o.name for o in objects]
    assert names == [o.name for o in all_objects()]
    assert len(names) == len(set(names)) == 8 * 5 + sum(o.asymmetric for o in objects)
    assert sum(o.asymmetric for o in objects) >= 5
    assert all(parse_prompt(name).name == name for name in names)


@pytest.mark.parametrize("prompt", ["", "   ", "\n"])
def test_empty_prompt_message(prompt):
    with pytest.raises(PromptError) as info:
        parse_prompt(prompt)
    assert str(info.value) == EMPTY_MESSAGE


def test_unknown_word_names_it_suggests_and_lists_vocabulary():
    with pytest.raises(PromptError) as info:
        parse_prompt("a red cubee")
    message = str(info.value)
    assert "'cubee'" in message and "did you mean 'cube'" in message
    words = vocabulary()
    for word in [*words["colors"], *words["shapes"], *words["objects"]]:
        assert word in message


@pytest.mark.parametrize(("prompt", "fragment"), [
    ("a red", "no shape"),
    ("a cube", "needs a color"),
    ("a red snowman", "its own colors"),
    ("a red blue cube", "2 colors"),
    ("a red cube snowman", "2 things"),
    ("the", "names no object"),
    ("front view of", "names no object"),
])
def test_prompt_errors(prompt, fragment):
    with pytest.raises(PromptError, match=fragment):
        parse_prompt(prompt)


# --- metrics -----------------------------------------------------------------------------------------

def test_mask_iou_hand_computed():
    pred = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])[..., None]  # [2, 2, 2, 1]
    gt = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])[..., None]
    assert mask_iou(pred, gt) == pytest.approx((1 / 3 + 1.0) / 2)  # second image: both empty -> 1
    assert mask_iou(pred[:1, ..., 0], gt[:1, ..., 0]) == pytest.approx(1 / 3)
    half = torch.full((1, 2, 2), 0.5)
    assert mask_iou(half, torch.ones(1, 2, 2)) == 0.0  # 0.5 is not above the threshold
    assert mask_iou(half, torch.ones(1, 2, 2), threshold=0.4) == 1.0


def test_psnr_hand_computed():
    gt = torch.zeros(2, 4, 4, 3)
    pred = torch.cat([torch.full((1, 4, 4, 3), 0.1), torch.full((1, 4, 4, 3), 0.01)])
    assert psnr(pred, gt) == pytest.approx((20.0 + 40.0) / 2)
    assert psnr(gt, gt) == math.inf


def test_volumetric_iou_and_point_sampler():
    a = torch.tensor([True, True, False, False])
    b = torch.tensor([True, False, True, False])
    assert volumetric_iou(a, b) == pytest.approx(1 / 3)
    assert volumetric_iou(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)) == 1.0
    points = sample_points_in_bound(40000, 0.8, torch.Generator().manual_seed(3))
    again = sample_points_in_bound(40000, 0.8, torch.Generator().manual_seed(3))
    assert torch.equal(points, again) and points.shape == (40000, 3)
    radii = points.norm(dim=-1)
    assert float(radii.max()) <= 0.8
    assert float((radii < 0.4).float().mean()) == pytest.approx(1 / 8, abs=0.01)  # uniform in volume
    # Monte-Carlo volume of a sphere of radius 0.6 inside the ball of radius 0.8: (0.6 / 0.8)^3.
    sphere = parse_prompt("a red sphere")
    assert float(sphere.inside(points).float().mean()) == pytest.approx(0.75**3, abs=0.01)
    assert volumetric_iou(sphere.inside(points), sphere.inside(points)) == 1.0
