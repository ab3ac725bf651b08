"""Ground-truth renderer of toy-world objects: SDF sphere tracing with world-fixed lighting.

Shading depends only on the surface point (albedo, normal, ambient light and two directional lights fixed
in the world), never on the camera, so a NeRF albedo field can reproduce these images exactly:
``rgb = albedo * (AMBIENT + sum_k strength_k * max(0, normal . direction_k))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamengine.core.cameras import Cameras
from dreamengine.toyworld.objects import Solid, ToyObject


def _unit(v: tuple[float, float, float]) -> tuple[float, float, float]:
    n = math.sqrt(sum(c * c for c in v))
    return (v[0] / n, v[1] / n, v[2] / n)


AMBIENT = 0.3
# (unit vector towards the light, strength). Key light from the front (+X), the viewer's left at azimuth 0
# (-Y) and above; a weaker fill light from the back right, so back views are not flat ambient.
LIGHTS: tuple[tuple[tuple[float, float, float], float], ...] = (
    (_unit((0.55, -0.35, 0.75)), 0.6),
    (_unit((-0.6, 0.5, 0.4)), 0.25),
)
BOUND_RADIUS = 0.8  # rays are traced inside this sphere only; objects fit in radius 0.75
HIT_EPSILON = 1e-4  # a ray hits when the SDF falls below this
MAX_STEPS = 160
NORMAL_STEP = 1e-3  # central-difference step for normals
LATE_HIT_EPSILON = 2e-3  # rays still marching after MAX_STEPS (grazing edges) hit if this close


def trace(obj: ToyObject, origins: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
    """Sphere-trace rays against ``obj``.

    Args:
        origins: [R, 3]; directions: [R, 3] unit vectors.
    Returns:
        hit: bool [R]; t: [R] distance along the ray to the surface (meaningful where hit).
    """
    b = (origins * directions).sum(-1)
    c = (origins * origins).sum(-1) - BOUND_RADIUS**2
    disc = b * b - c
    root = disc.clamp(min=0.0).sqrt()
    t_far = -b + root
    t = (-b - root).clamp(min=0.0)
    hit = torch.zeros_like(b, dtype=torch.bool)
    active = torch.nonzero((disc > 0) & (t_far > 0)).squeeze(1)  # indices of rays still marching
    for _ in range(MAX_STEPS):
        if active.numel() == 0:
            break
        t_active = t[active]
        distance = obj.sdf(origins[active] + t_active[:, None] * directions[active])
        converged = distance < HIT_EPSILON
        hit[active[converged]] = True
        t_next = t_active + distance
        t[active] = torch.where(converged, t_active, t_next)
        active = active[~converged & (t_next <= t_far[active])]
    if active.numel() > 0:
        distance = obj.sdf(origins[active] + t[active, None] * directions[active])
        hit[active] = distance < LATE_HIT_EPSILON
    return hit, t


def surface_normals(obj: ToyObject, points: Tensor) -> Tensor:
    """Unit normals [N, 3] at points [N, 3] by central differences of the SDF."""
    offsets = torch.cat([torch.eye(3), -torch.eye(3)]).to(points) * NORMAL_STEP  # [6, 3]
    samples = obj.sdf((points[None] + offsets[:, None]).reshape(-1, 3)).reshape(6, -1)  # [6, N]
    gradient = (samples[:3] - samples[3:]).T  # [N, 3]
    return F.normalize(gradient, dim=-1)


def surface_light(obj: ToyObject, points: Tensor) -> Tensor:
    """Light [N, 1] falling on surface points [N, 3]: ambient plus the directional lights on the normal."""
    normals = surface_normals(obj, points)
    light = torch.full_like(points[:, :1], AMBIENT)  # [N, 1]
    for direction, strength in LIGHTS:
        light = light + strength * (normals @ points.new_tensor(direction)).clamp(min=0.0)[:, None]
    return light


def shade_points(obj: ToyObject, points: Tensor) -> Tensor:
    """Lit color [N, 3] in [0, 1] of surface points [N, 3]; independent of the viewer."""
    return (obj.color(points) * surface_light(obj, points)).clamp(0.0, 1.0)


@torch.no_grad()
def render_toy(obj: ToyObject, cameras: Cameras, height: int, width: int,
               background: tuple[float, float, float] = (1.0, 1.0, 1.0),
               supersample: int = 1, shaded: bool = True) -> dict[str, Tensor]:
    """Render ``obj`` from each camera.

    ``shaded=False`` gives the flat albedo instead of the lit color (lighting-free images, handy for
    comparing what different views show).

    With ``supersample`` k the image is traced at (k*height, k*width) and box-filtered down, so edges are
    antialiased and the mask is fractional there; depth is then the mean depth of the sub-pixels that hit.

    Returns:
        rgb: [B, H, W, 3] in [0, 1], composited over ``background``.
        mask: [B, H, W, 1] float in [0, 1].
        depth: [B, H, W, 1] distance along the ray to the surface, 0 where empty.
    """
    return render_toys([obj], cameras, height, width, background, supersample, shaded)[0]


@torch.no_grad()
def render_toys(objects: Sequence[ToyObject], cameras: Cameras, height: int, width: int,
                background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                supersample: int = 1, shaded: bool = True) -> list[dict[str, Tensor]]:
    """:func:`render_toy` of each object, in order. Objects that differ only in their one solid color (the plain
    shapes: "a red cube", "a blue cube", ...) share one trace and one lighting pass, which leaves every image as
    its own render would have it, bit for bit, at a fraction of the cost (the toy teachers' banks)."""
    k = int(supersample)
    if k < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    groups: dict[object, list[int]] = {}
    for index, obj in enumerate(objects):
        groups.setdefault(_geometry_key(obj, index), []).append(index)
    rendered: dict[int, dict[str, Tensor]] = {}
    for indices in groups.values():
        group = [objects[index] for index in indices]
        for index, out in zip(indices, _render_same_geometry(group, cameras, height, width, background, k, shaded),
                              strict=True):
            rendered[index] = out
    return [rendered[index] for index in range(len(objects))]


def _geometry_key(obj: ToyObject, index: int) -> object:
    """Objects with equal keys have the same surface and a solid color each: one trace serves them all. Anything
    else that answers ``sdf`` and ``color`` (the evaluation's two-faced objects) is traced on its own."""
    parts = obj.parts if isinstance(obj, ToyObject) else ()
    if len(parts) == 1 and isinstance(parts[0].color, Solid):
        return ("solid", parts[0].sdf)
    return ("own", index)


def _render_same_geometry(objects: list[ToyObject], cameras: Cameras, height: int, width: int,
                          background: tuple[float, float, float], k: int, shaded: bool) -> list[dict[str, Tensor]]:
    """Render objects sharing one surface (``objects[0]``'s SDF): trace and light once, color each."""
    num, h, w = len(cameras), k * height, k * width
    origins, directions = cameras.rays(h, w)  # [B, h, w, 3]
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    geometry = objects[0]
    hit, t = trace(geometry, origins, directions)
    points = origins[hit] + t[hit, None] * directions[hit]
    light = surface_light(geometry, points) if shaded and points.shape[0] > 0 else None
    mask = _pooled(hit.to(origins.dtype).reshape(num, h, w, 1), k)  # the group's shared mask and depth
    depth_sum = _pooled(torch.where(hit, t, torch.zeros_like(t)).reshape(num, h, w, 1), k)
    depth = depth_sum if k == 1 else torch.where(mask > 0, depth_sum / mask.clamp(min=1e-12),
                                                 torch.zeros_like(depth_sum))
    outputs = []
    for obj in objects:
        rgb = origins.new_tensor(background).repeat(origins.shape[0], 1)  # [R, 3]
        if points.shape[0] > 0:
            rgb[hit] = (obj.color(points) * light).clamp(0.0, 1.0) if light is not None else obj.color(points)
        outputs.append({"rgb": _pooled(rgb.reshape(num, h, w, 3), k), "mask": mask, "depth": depth})
    return outputs


def _pooled(images: Tensor, k: int) -> Tensor:
    """[B, h, w, C] traced at k x the size -> box-filtered to [B, h/k, w/k, C] (itself for k = 1)."""
    if k == 1:
        return images
    return F.avg_pool2d(images.permute(0, 3, 1, 2), k).permute(0, 2, 3, 1)
