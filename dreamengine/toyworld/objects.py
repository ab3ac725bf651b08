"""The toy world: objects made of signed distance functions (SDFs) with a color per surface point.

Conventions: world Z-up, every object fits inside a sphere of radius 0.75 around the origin, and an
object's front faces +X (the camera at azimuth 0 sees it). Points are ``[N, 3]`` tensors; an SDF maps
them to ``[N]`` (negative inside, zero on the surface) and a color function to ``[N, 3]`` in [0, 1].

Everything here is a small frozen dataclass, so ``repr(obj)`` describes an object completely; the toy
teacher hashes it to notice when the world changed and its cached renders are stale.

Two kinds of objects:

* plain shapes (``sphere``, ``cube``, ``cylinder``, ``cone``, ``torus``) in 8 colors, e.g. "a red cube".
  They are symmetric under rotation about Z (the cube up to 90 degrees). The torus lies flat (hole axis
  along Z, a donut on a table): from the default elevations (-10 to 60 degrees) it reads as a ring
  from every azimuth, where a standing torus would collapse to a bar seen edge-on from the side.
* view-asymmetric objects (snowman, house, penguin, mug, car, duck) whose front, side and back views
  differ clearly, so multi-face ("Janus") failures are measurable.

A multi-part object is the union of its parts (SDF = min over parts); the color of a point is the color
of the part whose surface is nearest. Painted details (a door, a belly) are :class:`Decal` colors: a
second color inside a region given by another SDF.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Vec3 = tuple[float, float, float]

COLORS: dict[str, Vec3] = {
    "red": (0.85, 0.10, 0.10),
    "orange": (1.00, 0.50, 0.05),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.10, 0.65, 0.20),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.15, 0.30, 0.90),
    "purple": (0.55, 0.20, 0.80),
    "pink": (1.00, 0.45, 0.70),
}

# Colors of the details of the asymmetric objects (not prompt words).
_SNOW = (0.88, 0.90, 0.96)
_COAL = (0.08, 0.08, 0.10)
_BEAK = (1.00, 0.55, 0.05)
_BROWN = (0.45, 0.25, 0.10)
_GLASS = (0.55, 0.80, 0.95)


# ---------------------------------------------------------------------------------------------------
# Geometry helpers


def _offset(points: Tensor, center: Vec3) -> Tensor:
    return points - points.new_tensor(center)


def _axis_split(q: Tensor, axis: str) -> tuple[Tensor, Tensor]:
    """Split local points [N, 3] into (radial [N, 2], axial [N]) for a primitive aligned with ``axis``."""
    index = "xyz".index(axis)
    others = [i for i in range(3) if i != index]
    return q[:, others], q[:, index]


def _convex_polygon_sdf(p: Tensor, vertices: Sequence[tuple[float, float]]) -> Tensor:
    """Exact signed distance from 2D points [N, 2] to a convex polygon given counter-clockwise."""
    verts = p.new_tensor(vertices)  # [K, 2]
    a = verts  # edge starts
    b = torch.roll(verts, -1, dims=0)  # edge ends
    edge = b - a  # [K, 2]
    rel = p[:, None, :] - a[None]  # [N, K, 2]
    h = ((rel * edge).sum(-1) / (edge * edge).sum(-1)).clamp(0.0, 1.0)  # [N, K]
    dist = (rel - h[..., None] * edge).norm(dim=-1).min(dim=1).values  # [N]
    cross = edge[None, :, 0] * rel[..., 1] - edge[None, :, 1] * rel[..., 0]  # [N, K]
    inside = (cross >= 0).all(dim=1)
    return torch.where(inside, -dist, dist)


def _extrude(d2: Tensor, axial: Tensor, half_length: float) -> Tensor:
    """Exact SDF of a 2D shape with SDF ``d2`` [N] extruded to ``|axial| <= half_length``."""
    w = torch.stack([d2, axial.abs() - half_length], dim=-1)  # [N, 2]
    return w.max(dim=-1).values.clamp(max=0.0) + w.clamp(min=0.0).norm(dim=-1)


# ---------------------------------------------------------------------------------------------------
# Primitive SDFs: callables points [N, 3] -> signed distance [N]


@dataclass(frozen=True)
class Sphere:
    center: Vec3
    radius: float

    def __call__(self, points: Tensor) -> Tensor:
        return _offset(points, self.center).norm(dim=-1) - self.radius


@dataclass(frozen=True)
class Box:
    """Axis-aligned box with half extents ``half``; ``rounding`` rounds its edges (same outer size)."""

    center: Vec3
    half: Vec3
    rounding: float = 0.0

    def __call__(self, points: Tensor) -> Tensor:
        q = _offset(points, self.center).abs() - points.new_tensor(self.half) + self.rounding
        outside = q.clamp(min=0.0).norm(dim=-1)
        inside = q.max(dim=-1).values.clamp(max=0.0)
        return outside + inside - self.rounding


@dataclass(frozen=True)
class Ellipsoid:
    """Ellipsoid with semi-axes ``radii``. Not an exact distance: a lower bound, safe for sphere tracing
    (scaling space by 1/radii stretches distances by at most 1/min(radii))."""

    center: Vec3
    radii: Vec3

    def __call__(self, points: Tensor) -> Tensor:
        scaled = _offset(points, self.center) / points.new_tensor(self.radii)
        return (scaled.norm(dim=-1) - 1.0) * min(self.radii)


@dataclass(frozen=True)
class Cylinder:
    """Capped cylinder of ``radius`` along ``axis`` ('x', 'y' or 'z'), ``|axial| <= half_height``."""

    center: Vec3
    radius: float
    half_height: float
    axis: str = "z"

    def __call__(self, points: Tensor) -> Tensor:
        radial, axial = _axis_split(_offset(points, self.center), self.axis)
        return _extrude(radial.norm(dim=-1) - self.radius, axial, self.half_height)


@dataclass(frozen=True)
class Cone:
    """Solid cone along ``axis``: base disk of ``radius`` at ``center - height/2``, apex at
    ``center + height/2`` (``direction`` -1 flips it). Exact: a revolved isosceles triangle."""

    center: Vec3
    radius: float
    height: float
    axis: str = "z"
    direction: int = 1

    def __call__(self, points: Tensor) -> Tensor:
        radial, axial = _axis_split(_offset(points, self.center), self.axis)
        half = 0.5 * self.height
        triangle = [(-self.radius, -half), (self.radius, -half), (0.0, half)]  # counter-clockwise
        p2 = torch.stack([radial.norm(dim=-1), axial * self.direction], dim=-1)
        return _convex_polygon_sdf(p2, triangle)


@dataclass(frozen=True)
class Torus:
    """Torus around ``axis`` (the axis through its hole): ring radius ``major``, tube radius ``minor``."""

    center: Vec3
    major: float
    minor: float
    axis: str = "z"

    def __call__(self, points: Tensor) -> Tensor:
        radial, axial = _axis_split(_offset(points, self.center), self.axis)
        q = torch.stack([radial.norm(dim=-1) - self.major, axial], dim=-1)
        return q.norm(dim=-1) - self.minor


@dataclass(frozen=True)
class Prism:
    """A convex polygon in the XZ plane (counter-clockwise seen from +Y) extruded along Y."""

    polygon_xz: tuple[tuple[float, float], ...]
    half_length_y: float
    center_y: float = 0.0

    def __call__(self, points: Tensor) -> Tensor:
        d2 = _convex_polygon_sdf(points[:, [0, 2]], self.polygon_xz)
        return _extrude(d2, points[:, 1] - self.center_y, self.half_length_y)


@dataclass(frozen=True)
class Subtract:
    """``base`` with ``cut`` removed (a lower bound of the distance, fine for sphere tracing)."""

    base: Callable[[Tensor], Tensor]
    cut: Callable[[Tensor], Tensor]

    def __call__(self, points: Tensor) -> Tensor:
        return torch.maximum(self.base(points), -self.cut(points))


# ---------------------------------------------------------------------------------------------------
# Colors: callables points [N, 3] -> rgb [N, 3]


@dataclass(frozen=True)
class Solid:
    rgb: Vec3

    def __call__(self, points: Tensor) -> Tensor:
        return points.new_tensor(self.rgb).expand(points.shape[0], 3)


@dataclass(frozen=True)
class Decal:
    """``base`` color with ``regions`` (SDFs) painted ``paint``: a door on a wall, a belly on a body."""

    base: Vec3
    paint: Vec3
    regions: tuple[Callable[[Tensor], Tensor], ...]

    def __call__(self, points: Tensor) -> Tensor:
        painted = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
        for region in self.regions:
            painted |= region(points) < 0
        return torch.where(painted[:, None], points.new_tensor(self.paint), points.new_tensor(self.base))


@dataclass(frozen=True)
class Part:
    sdf: Callable[[Tensor], Tensor]
    color: Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------------------------------
# Objects


@dataclass(frozen=True)
class ToyObject:
    """One object of the toy world.

    ``name`` is its canonical prompt ("a red cube"); ``noun`` the word naming its shape or kind ("cube",
    "snowman"); ``color_name`` is set for the plain shapes only; ``asymmetric`` marks objects whose front,
    side and back views differ.
    """

    name: str
    noun: str
    parts: tuple[Part, ...]
    color_name: str | None = None
    asymmetric: bool = False

    def sdf(self, points: Tensor) -> Tensor:
        """Signed distance (a lower bound for some parts) at points [N, 3] -> [N]."""
        return self._part_distances(points).min(dim=1).values

    def color(self, points: Tensor) -> Tensor:
        """Albedo in [0, 1] at points [N, 3] (meant for surface points) -> [N, 3]."""
        if len(self.parts) == 1:
            return self.parts[0].color(points)
        nearest = self._part_distances(points).argmin(dim=1)  # [N]
        rgb = torch.zeros(points.shape[0], 3, dtype=points.dtype, device=points.device)
        for index, part in enumerate(self.parts):
            chosen = nearest == index
            if chosen.any():
                rgb[chosen] = part.color(points[chosen])
        return rgb

    def inside(self, points: Tensor) -> Tensor:
        """Occupancy at points [N, 3] -> bool [N] (sdf < 0), for volumetric IoU."""
        return self.sdf(points) < 0

    def _part_distances(self, points: Tensor) -> Tensor:
        return torch.stack([part.sdf(points) for part in self.parts], dim=1)  # [N, parts]


SHAPES: dict[str, Callable[[], Callable[[Tensor], Tensor]]] = {
    "sphere": lambda: Sphere((0.0, 0.0, 0.0), 0.6),
    "cube": lambda: Box((0.0, 0.0, 0.0), (0.4, 0.4, 0.4)),
    "cylinder": lambda: Cylinder((0.0, 0.0, 0.0), 0.42, 0.45),
    "cone": lambda: Cone((0.0, 0.0, 0.0), 0.5, 1.0),
    "torus": lambda: Torus((0.0, 0.0, 0.0), 0.45, 0.2, axis="z"),
}


def colored_shape(color: str, shape: str) -> ToyObject:
    """A plain shape ("sphere", "cube", ...) in one of :data:`COLORS`."""
    article = "an" if color[0] in "aeiou" else "a"
    return ToyObject(f"{article} {color} {shape}", shape, (Part(SHAPES[shape](), Solid(COLORS[color])),),
                     color_name=color)


def snowman() -> ToyObject:
    """Three snowballs; front: carrot nose, coal eyes and buttons; back: the red scarf's tail."""
    scarf = (0.85, 0.10, 0.10)
    parts = (
        Part(Sphere((0.0, 0.0, -0.42), 0.30), Solid(_SNOW)),
        Part(Sphere((0.0, 0.0, -0.02), 0.22), Solid(_SNOW)),
        Part(Sphere((0.0, 0.0, 0.32), 0.16), Solid(_SNOW)),
        Part(Cone((0.25, 0.0, 0.31), 0.06, 0.24, axis="x"), Solid(_BEAK)),
        Part(Sphere((0.13, 0.065, 0.37), 0.035), Solid(_COAL)),
        Part(Sphere((0.13, -0.065, 0.37), 0.035), Solid(_COAL)),
        Part(Sphere((0.20, 0.0, 0.05), 0.05), Solid(_COAL)),
        Part(Sphere((0.205, 0.0, -0.10), 0.05), Solid(_COAL)),
        Part(Sphere((0.28, 0.0, -0.30), 0.055), Solid(_COAL)),
        Part(Sphere((0.295, 0.0, -0.46), 0.055), Solid(_COAL)),
        Part(Torus((0.0, 0.0, 0.18), 0.15, 0.045), Solid(scarf)),
        Part(Box((-0.17, 0.0, 0.0), (0.04, 0.09, 0.18), rounding=0.02), Solid(scarf)),
        Part(Cylinder((0.0, 0.0, 0.50), 0.11, 0.08), Solid(_COAL)),
        Part(Cylinder((0.0, 0.0, 0.44), 0.18, 0.015), Solid(_COAL)),
    )
    return ToyObject("a snowman", "snowman", parts, asymmetric=True)


def house() -> ToyObject:
    """A gabled house; front: door and windows; back: chimney; sides: the gable triangle."""
    walls = (0.92, 0.76, 0.50)
    windows = Decal(walls, _GLASS, (Box((0.32, 0.24, -0.2), (0.03, 0.08, 0.07)),
                                    Box((0.32, -0.24, -0.2), (0.03, 0.08, 0.07))))
    parts = (
        Part(Box((0.0, 0.0, -0.22), (0.32, 0.40, 0.25)), windows),
        Part(Box((0.331, 0.0, -0.32), (0.012, 0.08, 0.15)), Solid(_BROWN)),
        Part(Prism(((-0.40, 0.03), (0.40, 0.03), (0.0, 0.40)), 0.45), Solid((0.70, 0.12, 0.10))),
        Part(Box((-0.20, 0.20, 0.28), (0.06, 0.06, 0.17)), Solid((0.40, 0.18, 0.15))),
    )
    return ToyObject("a house", "house", parts, asymmetric=True)


def penguin() -> ToyObject:
    """Black body; front: white belly, orange beak and feet; back: all black."""
    belly = Decal(_COAL, (0.96, 0.96, 0.96), (Ellipsoid((0.22, 0.0, -0.12), (0.2, 0.22, 0.36)),))
    parts = (
        Part(Ellipsoid((0.0, 0.0, -0.08), (0.30, 0.30, 0.48)), belly),
        Part(Sphere((0.0, 0.0, 0.42), 0.2), Decal(_COAL, (0.96, 0.96, 0.96),
                                                   (Sphere((0.19, 0.0, 0.40), 0.1),))),
        Part(Cone((0.27, 0.0, 0.40), 0.06, 0.18, axis="x"), Solid(_BEAK)),
        Part(Ellipsoid((0.15, 0.12, -0.55), (0.14, 0.08, 0.04)), Solid(_BEAK)),
        Part(Ellipsoid((0.15, -0.12, -0.55), (0.14, 0.08, 0.04)), Solid(_BEAK)),
        Part(Ellipsoid((-0.02, 0.29, -0.08), (0.09, 0.05, 0.30)), Solid(_COAL)),
        Part(Ellipsoid((-0.02, -0.29, -0.08), (0.09, 0.05, 0.30)), Solid(_COAL)),
    )
    return ToyObject("a penguin", "penguin", parts, asymmetric=True)


def mug() -> ToyObject:
    """A teal mug of coffee; yellow handle on its left side (+Y), a yellow disk painted on its front."""
    teal = (0.10, 0.55, 0.60)
    yellow = (0.95, 0.85, 0.10)
    body = Cylinder((0.0, 0.0, -0.05), 0.35, 0.40)
    logo = Decal(teal, yellow, (Cylinder((0.35, 0.0, -0.05), 0.16, 0.1, axis="x"),))
    parts = (
        Part(Subtract(body, Cylinder((0.0, 0.0, 0.06), 0.29, 0.40)), logo),
        Part(Cylinder((0.0, 0.0, 0.0), 0.30, 0.24), Solid((0.30, 0.15, 0.05))),
        Part(Subtract(Torus((0.0, 0.35, -0.05), 0.17, 0.05, axis="x"), body), Solid(yellow)),
    )
    return ToyObject("a mug", "mug", parts, asymmetric=True)


def car() -> ToyObject:
    """A blue car facing +X: headlights and windshield in front, red tail lights at the back, wheels on
    the sides, cabin set back."""
    blue = (0.15, 0.30, 0.90)
    lights = Decal(blue, (1.0, 0.9, 0.2), (Box((0.55, 0.16, -0.13), (0.05, 0.06, 0.04)),
                                             Box((0.55, -0.16, -0.13), (0.05, 0.06, 0.04))))
    tail = Decal(blue, (0.9, 0.05, 0.05), (Box((-0.55, 0.16, -0.13), (0.05, 0.06, 0.04)),
                                             Box((-0.55, -0.16, -0.13), (0.05, 0.06, 0.04))))
    windshield = Decal((0.90, 0.90, 0.92), (0.30, 0.45, 0.60), (Box((0.22, 0.0, 0.1), (0.1, 0.19, 0.1)),))
    parts = (
        Part(Box((0.275, 0.0, -0.15), (0.275, 0.25, 0.12), rounding=0.03), lights),
        Part(Box((-0.275, 0.0, -0.15), (0.275, 0.25, 0.12), rounding=0.03), tail),
        Part(Box((-0.08, 0.0, 0.1), (0.28, 0.22, 0.13), rounding=0.03), windshield),
    ) + tuple(
        Part(Cylinder((x, y, -0.27), 0.12, 0.05, axis="y"), Solid(_COAL))
        for x in (0.33, -0.33) for y in (0.25, -0.25)
    )
    return ToyObject("a car", "car", parts, asymmetric=True)


def duck() -> ToyObject:
    """A yellow duck: head and orange beak in front, amber wings on the sides and tail at the back."""
    yellow = (0.98, 0.82, 0.15)
    amber = (0.85, 0.50, 0.05)
    parts = (
        Part(Ellipsoid((-0.05, 0.0, -0.2), (0.45, 0.32, 0.30)), Solid(yellow)),
        Part(Sphere((0.25, 0.0, 0.22), 0.2), Solid(yellow)),
        Part(Ellipsoid((0.48, 0.0, 0.19), (0.15, 0.11, 0.05)), Solid(_BEAK)),
        Part(Sphere((0.38, 0.09, 0.30), 0.035), Solid(_COAL)),
        Part(Sphere((0.38, -0.09, 0.30), 0.035), Solid(_COAL)),
        Part(Ellipsoid((-0.12, 0.27, -0.12), (0.25, 0.08, 0.14)), Solid(amber)),
        Part(Ellipsoid((-0.12, -0.27, -0.12), (0.25, 0.08, 0.14)), Solid(amber)),
        Part(Cone((-0.5, 0.0, -0.02), 0.14, 0.3, axis="z"), Solid(amber)),
    )
    return ToyObject("a duck", "duck", parts, asymmetric=True)


ASYMMETRIC_OBJECTS: dict[str, Callable[[], ToyObject]] = {
    "snowman": snowman,
    "house": house,
    "penguin": penguin,
    "mug": mug,
    "car": car,
    "duck": duck,
}
