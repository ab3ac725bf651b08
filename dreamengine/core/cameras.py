"""Cameras and camera sampling.

Convention (the one threestudio uses, so configs and intuition carry over):

* World space is **Z-up**, right-handed. The object sits at the origin.
* A camera at ``elevation`` e (degrees above the XY plane), ``azimuth`` a (degrees, counter-clockwise
  from +X seen from above) and ``distance`` d sits at ``d * (cos e cos a, cos e sin a, sin e)`` and looks
  at the origin. Azimuth 0 looks at the object's **front** (the face pointing to +X).
* ``c2w`` is an OpenGL camera-to-world matrix: camera +X is right, +Y is up, the camera looks along -Z.
* ``fovy`` is the vertical field of view in radians; pixels are square.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class Cameras:
    """A batch of B pinhole cameras looking at the origin."""

    c2w: Tensor  # [B, 4, 4] OpenGL camera-to-world
    fovy: Tensor  # [B] vertical field of view, radians
    elevation: Tensor  # [B] degrees
    azimuth: Tensor  # [B] degrees, wrapped to (-180, 180]
    distance: Tensor  # [B]

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def position(self) -> Tensor:
        """Camera centers in world space, [B, 3]."""
        return self.c2w[:, :3, 3]

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(*(getattr(self, f).to(device) for f in ("c2w", "fovy", "elevation", "azimuth", "distance")))

    def __getitem__(self, index: int | slice | Tensor) -> Cameras:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Cameras(self.c2w[index], self.fovy[index], self.elevation[index], self.azimuth[index],
                       self.distance[index])

    def focal(self, height: int) -> Tensor:
        """Focal length in pixels for an image ``height`` pixels tall, [B]."""
        return 0.5 * height / torch.tan(0.5 * self.fovy)

    def rays(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """World-space rays through pixel centers.

        Returns:
            origins: [B, H, W, 3]
            directions: [B, H, W, 3], unit length. Row 0 is the top of the image.
        """
        device, dtype = self.c2w.device, self.c2w.dtype
        j = torch.arange(width, device=device, dtype=dtype) + 0.5
        i = torch.arange(height, device=device, dtype=dtype) + 0.5
        ii, jj = torch.meshgrid(i, j, indexing="ij")  # [H, W]
        focal = self.focal(height).view(-1, 1, 1)
        x = (jj - 0.5 * width) / focal  # [B, H, W]
        y = -(ii - 0.5 * height) / focal
        z = -torch.ones_like(x)
        dirs_cam = torch.stack([x, y, z], dim=-1)  # [B, H, W, 3]
        rot = self.c2w[:, :3, :3]  # [B, 3, 3]
        dirs = torch.einsum("bij,bhwj->bhwi", rot, dirs_cam)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        origins = self.position.view(-1, 1, 1, 3).expand_as(dirs)
        return origins, dirs


def wrap_azimuth(azimuth_deg: Tensor) -> Tensor:
    """Wrap degrees to (-180, 180]."""
    wrapped = torch.remainder(azimuth_deg + 180.0, 360.0) - 180.0
    return torch.where(wrapped == -180.0, torch.full_like(wrapped, 180.0), wrapped)


def look_at_origin(position: Tensor) -> Tensor:
    """OpenGL camera-to-world matrices for cameras at ``position`` [B, 3] looking at the origin, Z up.

    Returns [B, 4, 4]. A camera straight above or below the origin uses +Y as its up hint.
    """
    forward = -position / position.norm(dim=-1, keepdim=True)  # [B, 3]
    up_hint = torch.zeros_like(position)
    up_hint[:, 2] = 1.0
    degenerate = forward[:, :2].norm(dim=-1) < 1e-6
    up_hint[degenerate] = torch.tensor([0.0, 1.0, 0.0], dtype=position.dtype, device=position.device)
    right = torch.linalg.cross(forward, up_hint)
    right = right / right.norm(dim=-1, keepdim=True)
    up = torch.linalg.cross(right, forward)
    c2w = torch.zeros(position.shape[0], 4, 4, dtype=position.dtype, device=position.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = position
    c2w[:, 3, 3] = 1.0
    return c2w


def cameras_from_spherical(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor,
                           fovy_deg: Tensor) -> Cameras:
    """Build cameras from spherical coordinates (all [B] tensors, angles in degrees)."""
    elevation_deg, azimuth_deg, distance, fovy_deg = torch.broadcast_tensors(
        *(torch.as_tensor(v, dtype=torch.float32) for v in (elevation_deg, azimuth_deg, distance, fovy_deg))
    )
    azimuth_deg = wrap_azimuth(azimuth_deg)
    elev, azi = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    position = torch.stack(
        [distance * torch.cos(elev) * torch.cos(azi), distance * torch.cos(elev) * torch.sin(azi),
         distance * torch.sin(elev)], dim=-1)
    return Cameras(look_at_origin(position), torch.deg2rad(fovy_deg), elevation_deg.clone(), azimuth_deg,
                   distance.clone())


class CameraSampler:
    """Random views on a spherical shell around the object, and fixed orbits for previews.

    Ranges are ``(low, high)`` in degrees (angles) or scene units (distance). Elevation is sampled
    uniformly in angle; azimuth uniformly in ``azimuth_range``.

    With ``views_per_group = n > 1`` (a multi-view teacher: MVDream's n = 4) the cameras come in groups of n
    consecutive views that share one elevation, distance and field of view, with azimuths ``a + k span / n``
    (k = 0..n-1, span = the width of ``azimuth_range``, ``a`` uniform in the first 1/n of the range), as
    MVDream-threestudio's ``RandomMultiviewCameraIterableDataset.collate`` draws them: for the full circle,
    ``a, a + 90, a + 180, a + 270``. With n = 1 the draws are the plain sampler's, in the same order.

    With ``relative_distance`` the distances are relative to the field of view (threestudio's
    ``relative_radius``): a camera stands at ``d / tan(fovy / 2)``, so the object fills the same part of the
    image at any field of view.
    """

    def __init__(self, elevation_range: tuple[float, float] = (-10.0, 60.0),
                 azimuth_range: tuple[float, float] = (-180.0, 180.0),
                 distance_range: tuple[float, float] = (2.5, 2.5),
                 fovy_range: tuple[float, float] = (40.0, 40.0), views_per_group: int = 1,
                 relative_distance: bool = False) -> None:
        for name, (low, high) in (("elevation_range", elevation_range), ("azimuth_range", azimuth_range),
                                  ("distance_range", distance_range), ("fovy_range", fovy_range)):
            if low > high:
                raise ValueError(f"camera.{name} must be (low, high) with low <= high, got ({low}, {high})")
        if int(views_per_group) < 1:
            raise ValueError(f"camera.views_per_group must be >= 1, got {views_per_group}")
        self.elevation_range = elevation_range
        self.azimuth_range = azimuth_range
        self.distance_range = distance_range
        self.fovy_range = fovy_range
        self.views_per_group = int(views_per_group)
        self.relative_distance = bool(relative_distance)

    @classmethod
    def from_config(cls, camera: Any) -> CameraSampler:
        """The sampler of a run's ``camera`` settings (a :class:`~dreamengine.config.CameraConfig`)."""
        return cls(tuple(camera.elevation_range), tuple(camera.azimuth_range), tuple(camera.distance_range),
                   tuple(camera.fovy_range), int(getattr(camera, "views_per_group", 1)),
                   bool(getattr(camera, "relative_distance", False)))

    def absolute_distance(self, distance: Tensor, fovy_deg: Tensor) -> Tensor:
        """Scene-unit distances: ``distance`` itself, or ``distance / tan(fovy / 2)`` with relative distances."""
        if not self.relative_distance:
            return distance
        return distance / torch.tan(torch.deg2rad(torch.as_tensor(fovy_deg, dtype=torch.float32)) / 2.0)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Cameras:
        """Draw ``batch_size`` random cameras (CPU tensors; move them with ``.to``); with ``views_per_group``
        n > 1, ``batch_size`` must be a multiple of n and each run of n consecutive cameras is one group."""
        views = self.views_per_group
        if batch_size % views:
            raise ValueError(f"camera.batch_size ({batch_size}) must be a multiple of camera.views_per_group "
                             f"({views}): a multi-view teacher scores whole groups of {views} views")
        groups = batch_size // views

        def uniform(bounds: tuple[float, float]) -> Tensor:
            u = torch.rand(groups, generator=generator)
            return (bounds[0] + (bounds[1] - bounds[0]) * u).repeat_interleave(views)

        elevation = uniform(self.elevation_range)
        if views == 1:
            azimuth = uniform(self.azimuth_range)
        else:  # (u + k) / n of the range: one draw per group, the views evenly spread over the whole range
            low, high = self.azimuth_range
            steps = torch.rand(groups, 1, generator=generator) + torch.arange(views, dtype=torch.float32)
            azimuth = low + (high - low) * steps.reshape(-1) / views
        distance, fovy = uniform(self.distance_range), uniform(self.fovy_range)
        return cameras_from_spherical(elevation, azimuth, self.absolute_distance(distance, fovy), fovy)

    def orbit(self, num_views: int, elevation_deg: float = 15.0, start_azimuth_deg: float = 0.0) -> Cameras:
        """``num_views`` cameras evenly spaced in azimuth at a fixed elevation, mid distance and fov."""
        azimuth = start_azimuth_deg + torch.arange(num_views, dtype=torch.float32) * (360.0 / num_views)
        fovy = 0.5 * (self.fovy_range[0] + self.fovy_range[1])
        distance = float(self.absolute_distance(torch.tensor(0.5 * sum(self.distance_range)), torch.tensor(fovy)))
        return cameras_from_spherical(torch.full((num_views,), elevation_deg), azimuth,
                                      torch.full((num_views,), distance), torch.full((num_views,), fovy))


def direction_labels(cameras: Cameras, front_threshold: float = 45.0, back_threshold: float = 45.0,
                     overhead_threshold: float = 60.0) -> list[str]:
    """View-direction label per camera: 'front', 'side', 'back' or 'overhead' (guidance-math.md §6).

    Later rules override earlier ones: side by default; front if |azimuth| < front_threshold; back if
    |azimuth| > 180 - back_threshold; overhead if elevation > overhead_threshold.
    """
    labels = []
    for elevation, azimuth in zip(cameras.elevation.tolist(), wrap_azimuth(cameras.azimuth).tolist(),
                                  strict=True):
        label = "side"
        if abs(azimuth) < front_threshold:
            label = "front"
        if abs(azimuth) > 180.0 - back_threshold:
            label = "back"
        if elevation > overhead_threshold:
            label = "overhead"
        labels.append(label)
    return labels
