"""The exact multi-view toy teacher: its joint posterior against a brute-force computation, the dependence
between the views of a group, camera conditioning, and the single-view teacher as its one-view marginal."""

from __future__ import annotations

import math

import pytest
import torch

from dreamengine.core.cameras import cameras_from_spherical
from dreamengine.errors import ConfigError, PromptError
from dreamengine.teachers.toyworld import ToyWorldTeacher
from dreamengine.teachers.toyworld_multiview import ToyWorldMultiViewTeacher

WORLD = dict(resolution=8, objects=("a snowman", "a red cube"), elevations=(0.0, 30.0), azimuth_step=90.0)


@pytest.fixture(scope="module")
def teacher() -> ToyWorldMultiViewTeacher:
    return ToyWorldMultiViewTeacher(camera_width=20.0, **WORLD)


def group_cameras(first_azimuths: list[float], elevation: float = 10.0):
    """One group of 4 views per first azimuth: a, a + 90, a + 180, a + 270."""
    azimuth = torch.tensor([a + 90.0 * k for a in first_azimuths for k in range(4)])
    return cameras_from_spherical(torch.full_like(azimuth, elevation), azimuth, torch.tensor(2.5), torch.tensor(40.0))


def direction(elevation: float, azimuth: float) -> torch.Tensor:
    e, a = math.radians(elevation), math.radians(azimuth)
    return torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)], dtype=torch.float64)


def brute_force_eps(teacher, z_t, t, prior, cameras, width_deg):
    """The joint posterior mean by a loop over every set (object, elevation, first azimuth), |z|^2 included."""
    views = ToyWorldTeacher(**WORLD)
    images = views.bank_images().double().reshape(2, 2, 4, -1)  # [object, elevation, azimuth, D]
    alpha = teacher._alphas64[t]
    z = z_t.double().reshape(len(t), -1)
    eps = torch.empty_like(z)
    for group in range(len(t) // 4):
        rows = slice(4 * group, 4 * group + 4)
        log_w, members = [], []
        for obj in range(2):
            for e_index, elevation in enumerate((0.0, 30.0)):
                for first in range(4):
                    x = torch.stack([images[obj, e_index, (first + k) % 4] for k in range(4)])  # [4, D]
                    a = alpha[rows, None]
                    likelihood = -(((z[rows] - a.sqrt() * x) ** 2).sum(1) / (2 * (1 - alpha[rows]))).sum()
                    angles = []
                    for k in range(4):
                        requested = cameras.position[4 * group + k].double()
                        requested = requested / requested.norm()
                        cosine = (requested * direction(elevation, 90.0 * ((first + k) % 4))).sum().clamp(-1, 1)
                        angles.append(float(torch.arccos(cosine)))
                    kernel = -sum(angle**2 for angle in angles) / 4 / (2 * math.radians(width_deg) ** 2)
                    set_index = obj * 8 + e_index * 4 + first
                    log_prior = math.log(prior[set_index]) if prior[set_index] > 0 else -math.inf
                    log_w.append(log_prior + kernel + likelihood)
                    members.append(x)
        w = torch.softmax(torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in log_w]), 0)
        x0 = (w[:, None, None] * torch.stack(members)).sum(0)  # [4, D]
        a = alpha[rows, None]
        eps[rows] = (z[rows] - a.sqrt() * x0) / (1 - a).sqrt()
    return eps.float().view_as(z_t)


def test_sets_are_views_a_quarter_turn_apart_of_one_object_and_elevation(teacher):
    assert teacher.num_sets == 2 * 2 * 4 and teacher.views_per_group == 4
    bank = ToyWorldTeacher(**WORLD)
    images = bank.bank_images()
    for index in (0, 5, 13):
        obj, rest = divmod(index, 8)
        elevation, first = divmod(rest, 4)
        expected = torch.stack([images[obj * 8 + elevation * 4 + (first + k) % 4] for k in range(4)])
        assert torch.equal(teacher.set_images_of(index), expected)


def test_joint_posterior_equals_brute_force_with_per_view_timesteps(teacher):
    generator = torch.Generator().manual_seed(0)
    cameras = group_cameras([20.0, -130.0])
    x = torch.rand(8, 3, 8, 8, generator=generator) * 2 - 1
    t = torch.tensor([300, 300, 300, 300, 50, 600, 900, 999])  # any noise level per view
    z_t = teacher._alphas64[t].sqrt().float().view(-1, 1, 1, 1) * x + torch.randn(8, 3, 8, 8, generator=generator)
    prior = teacher.embed(["a snowman"])[0].double()
    eps = teacher.predict_noise(z_t, t, teacher.embed(["a snowman"]), cameras)
    expected = brute_force_eps(teacher, z_t, t, prior, cameras, 20.0)
    assert torch.allclose(eps, expected, atol=1e-5, rtol=1e-4)


def test_each_views_prediction_depends_on_the_other_views_of_its_group_only(teacher):
    generator = torch.Generator().manual_seed(1)
    cameras = group_cameras([0.0, 45.0])
    t = torch.full((8,), 900)  # noisy enough that several sets share the posterior
    x = teacher.set_images_of(0).repeat(2, 1, 1, 1)
    z_t = teacher._alphas64[t].sqrt().float().view(-1, 1, 1, 1) * x + torch.randn(8, 3, 8, 8, generator=generator)
    prior = teacher.embed([""])
    eps = teacher.predict_noise(z_t, t, prior, cameras)
    perturbed = z_t.clone()
    perturbed[2] += torch.randn(3, 8, 8, generator=generator)  # view 2 of the first group
    eps_perturbed = teacher.predict_noise(perturbed, t, prior, cameras)
    assert (eps_perturbed[1] - eps[1]).abs().max() > 1e-3  # view 1 of the same group follows
    assert torch.equal(eps_perturbed[4:], eps[4:])  # the other group does not
    alone = teacher.predict_noise(z_t, t, prior)  # without cameras every view is denoised alone
    alone_perturbed = teacher.predict_noise(perturbed, t, prior)
    assert torch.equal(alone_perturbed[1], alone[1])


def test_cameras_pick_the_views_and_turning_them_turns_the_prediction():
    teacher = ToyWorldMultiViewTeacher(camera_width=5.0, **WORLD)
    prior = teacher.embed(["a snowman"])
    z_t = torch.zeros(4, 3, 8, 8)  # no information in the images: the prior and the cameras decide
    t = torch.full((4,), 999)
    front_first = teacher.denoise(z_t, t, prior, group_cameras([0.0], elevation=0.0))
    side_first = teacher.denoise(z_t, t, prior, group_cameras([90.0], elevation=0.0))
    truth = ToyWorldTeacher(**WORLD).bank_images()[:4]  # the snowman at elevation 0, azimuths 0, 90, 180, 270
    assert torch.allclose(front_first, truth, atol=1e-3)
    assert torch.allclose(side_first, truth.roll(-1, dims=0), atol=1e-3)
    assert not torch.allclose(front_first[0], front_first[2], atol=0.1)  # the front is not the back


def test_one_view_at_a_time_is_the_single_view_teachers_posterior(teacher):
    single = ToyWorldTeacher(**WORLD)
    generator = torch.Generator().manual_seed(3)
    z_t = torch.randn(3, 3, 8, 8, generator=generator)
    t = torch.tensor([20, 400, 950])
    for prompt in ("a snowman", ""):
        ours = teacher.predict_noise(z_t, t, teacher.embed([prompt]))
        theirs = single.predict_noise(z_t, t, single.embed([prompt]))
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_prompts_select_sets_and_bad_input_is_refused(teacher):
    snowman, everything, with_view = teacher.embed(["a snowman", "", "a snowman, back view"])
    assert torch.equal(snowman, with_view)  # the cameras, not view phrases, say which view is which
    assert torch.allclose(snowman[:8].sum(), torch.tensor(1.0)) and float(snowman[8:].sum()) == 0.0
    assert torch.allclose(everything, torch.full((16,), 1 / 16))
    with pytest.raises(PromptError, match="unknown word"):
        teacher.embed(["a snowmna"])
    z_t, t = torch.zeros(6, 3, 8, 8), torch.full((6,), 10)
    with pytest.raises(ValueError, match="whole groups of 4 views.*views_per_group=4"):
        teacher.predict_noise(z_t, t, teacher.embed(["a snowman"]), group_cameras([0.0, 0.0])[:6])
    mixed = torch.cat([teacher.embed(["a snowman"]).expand(2, -1), teacher.embed([""]).expand(2, -1)])
    with pytest.raises(ValueError, match="share one prompt"):
        teacher.predict_noise(torch.zeros(4, 3, 8, 8), torch.full((4,), 10), mixed, group_cameras([0.0]))
    with pytest.raises(ConfigError, match="must divide 360"):
        ToyWorldMultiViewTeacher(**{**WORLD, "azimuth_step": 60.0})
