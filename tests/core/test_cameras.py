import math

import pytest
import torch

from dreamengine.core.cameras import CameraSampler, cameras_from_spherical, direction_labels, wrap_azimuth


def test_position_follows_spherical_convention():
    cams = cameras_from_spherical(torch.tensor([0.0, 90.0, 30.0]), torch.tensor([0.0, 0.0, 90.0]),
                                  torch.tensor([2.0, 3.0, 1.0]), torch.tensor([40.0, 40.0, 40.0]))
    expected = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0],
                             [0.0, math.cos(math.radians(30)), math.sin(math.radians(30))]])
    assert torch.allclose(cams.position, expected, atol=1e-6)


def test_c2w_is_a_rotation_looking_at_origin_with_z_up():
    cams = CameraSampler().sample(16, torch.Generator().manual_seed(0))
    rot = cams.c2w[:, :3, :3]
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3).expand(16, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(16), atol=1e-5)
    # OpenGL: the camera looks along its -Z axis, towards the origin.
    forward = -rot[:, :, 2]
    to_origin = -cams.position / cams.position.norm(dim=-1, keepdim=True)
    assert torch.allclose(forward, to_origin, atol=1e-5)
    # camera up has a non-negative world Z component (no upside-down views)
    assert (rot[:, 2, 1] >= -1e-6).all()


def test_center_ray_hits_origin_and_corner_rays_span_fov():
    cams = cameras_from_spherical(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([2.5]),
                                  torch.tensor([40.0]))
    origins, dirs = cams.rays(64, 64)
    assert dirs.shape == (1, 64, 64, 3)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(1, 64, 64), atol=1e-6)
    # the four central pixels' rays pass within half a pixel of the origin
    center = dirs[0, 31:33, 31:33].mean(dim=(0, 1))
    closest = origins[0, 0, 0] + center * 2.5
    assert closest.norm() < 2.5 * math.tan(math.radians(20)) / 32
    # the angle between top-row and bottom-row center rays is (almost) the vertical fov
    top, bottom = dirs[0, 0, 32], dirs[0, 63, 32]
    angle = math.degrees(math.acos(float((top * bottom).sum())))
    assert abs(angle - 40.0 * 63 / 64) < 0.5
    # row 0 is the top of the image: its rays point more upwards (world +Z) than the bottom row's
    assert top[2] > bottom[2]


def test_sampler_ranges_and_orbit():
    sampler = CameraSampler((0.0, 30.0), (-90.0, 90.0), (2.0, 3.0), (30.0, 50.0))
    cams = sampler.sample(500, torch.Generator().manual_seed(1))
    assert cams.elevation.min() >= 0 and cams.elevation.max() <= 30
    assert cams.azimuth.min() >= -90 and cams.azimuth.max() <= 90
    assert cams.distance.min() >= 2 and cams.distance.max() <= 3
    assert torch.allclose(cams.position.norm(dim=-1), cams.distance, atol=1e-5)
    orbit = sampler.orbit(4, elevation_deg=10.0)
    assert orbit.azimuth.tolist() == [0.0, 90.0, 180.0, -90.0]
    with pytest.raises(ValueError, match="elevation_range"):
        CameraSampler((30.0, 0.0))


def test_wrap_azimuth_and_direction_labels():
    assert wrap_azimuth(torch.tensor([-180.0, 190.0, 360.0, -200.0])).tolist() == [180.0, -170.0, 0.0, 160.0]
    cams = cameras_from_spherical(torch.tensor([0.0, 0.0, 0.0, 0.0, 70.0]),
                                  torch.tensor([10.0, -60.0, 170.0, 100.0, 0.0]), torch.tensor(2.5),
                                  torch.tensor(40.0))
    assert direction_labels(cams) == ["front", "side", "back", "side", "overhead"]


def test_single_views_draw_exactly_what_the_plain_sampler_drew():
    """views_per_group = 1 keeps the generator's draw order (elevation, azimuth, distance, fovy)."""
    sampler = CameraSampler((0.0, 30.0), (-90.0, 90.0), (2.0, 3.0), (30.0, 50.0), views_per_group=1)
    cams = sampler.sample(6, torch.Generator().manual_seed(4))
    u = torch.rand(24, generator=torch.Generator().manual_seed(4)).reshape(4, 6)
    expected = cameras_from_spherical(30.0 * u[0], -90.0 + 180.0 * u[1], 2.0 + u[2], 30.0 + 20.0 * u[3])
    assert torch.equal(cams.c2w, expected.c2w) and torch.equal(cams.fovy, expected.fovy)


def test_groups_share_elevation_distance_and_fov_with_azimuths_a_quarter_turn_apart():
    sampler = CameraSampler((0.0, 30.0), (-180.0, 180.0), (2.0, 3.0), (15.0, 60.0), views_per_group=4)
    cams = sampler.sample(12, torch.Generator().manual_seed(0))
    for group in range(3):
        views = slice(4 * group, 4 * group + 4)
        for values in (cams.elevation[views], cams.distance[views], cams.fovy[views]):
            assert torch.allclose(values, values[0].expand(4))
        first = float(cams.azimuth[4 * group])
        assert -180.0 <= first < -90.0  # MVDream-threestudio: a = low + U * span / n
        turned = wrap_azimuth(first + torch.tensor([0.0, 90.0, 180.0, 270.0]))
        assert torch.allclose(cams.azimuth[views], turned, atol=1e-4)
    assert len({round(float(e), 4) for e in cams.elevation}) == 3  # one draw per group
    with pytest.raises(ValueError, match="multiple of camera.views_per_group"):
        sampler.sample(6)


def test_relative_distance_divides_by_the_half_fov_tangent():
    sampler = CameraSampler((0.0, 0.0), (0.0, 0.0), (0.8, 1.0), (15.0, 60.0), relative_distance=True)
    cams = sampler.sample(64, torch.Generator().manual_seed(2))
    relative = cams.distance * torch.tan(cams.fovy / 2)
    assert relative.min() >= 0.8 - 1e-5 and relative.max() <= 1.0 + 1e-5
    assert cams.distance.max() > 3.0  # narrow fields of view stand far back
    orbit = sampler.orbit(2)
    assert torch.allclose(orbit.distance, torch.full((2,), 0.9 / math.tan(math.radians(37.5) / 2)))


def test_camera_config_checks_groups_and_gives_the_framing():
    from dreamengine.config import CameraConfig
    from dreamengine.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of camera.views_per_group"):
        CameraConfig(batch_size=6, views_per_group=4)
    config = CameraConfig(distance_range=[0.8, 1.0], fovy_range=[15.0, 60.0], relative_distance=True)
    assert config.framing() == pytest.approx((0.9 / math.tan(math.radians(37.5) / 2), 37.5))
    assert CameraConfig().framing() == (2.5, 40.0)
