"""ToyImageTeacher: the exact image-conditioned posterior against an explicit loop over (object, view, view')."""

from __future__ import annotations

import math

import pytest
import torch

from dreamengine.core.cameras import cameras_from_spherical
from dreamengine.teachers.toy_image import ToyImageTeacher
from dreamengine.toyworld import all_objects, render_toy

OBJECTS = ("a red cube", "a blue sphere", "a car", "a mug")
SMALL = {"resolution": 8, "elevations": (0.0, 30.0), "azimuth_step": 90.0, "objects": OBJECTS}
ALPHAS64 = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> ToyImageTeacher:
    return ToyImageTeacher(**SMALL, reference_sigma=0.3, camera_sigma_deg=20.0,
                           cache_dir=str(tmp_path_factory.mktemp("cache")))


def _render(name: str, elevation: float, azimuth: float, size: int = 16) -> torch.Tensor:
    obj = next(o for o in all_objects() if o.name == name)
    cams = cameras_from_spherical(torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([2.5]),
                                  torch.tensor([40.0]))
    return render_toy(obj, cams, size, size, supersample=2)["rgb"][0].permute(2, 0, 1)  # [3, H, W]


def _wrap(angle: float) -> float:
    return (angle + 180.0) % 360.0 - 180.0


def _brute_force_x0(teacher: ToyImageTeacher, x_ref: torch.Tensor, ref_camera: tuple[float, float],
                    z_t: torch.Tensor, t: torch.Tensor, conditioned: list[bool],
                    targets: list[tuple[float, float]]) -> torch.Tensor:
    """Posterior mean of the target view from an explicit loop over every (object, view, view') triple."""
    bank = teacher.bank_images().double().reshape(teacher.bank.shape[0], -1)
    views = teacher.num_views
    elevations, azimuths = teacher.view_elevation.tolist(), teacher.view_azimuth.tolist()
    ref = x_ref.double().reshape(-1) * 2.0 - 1.0  # the teacher's pixel space
    out = []
    for b in range(z_t.shape[0]):
        a = ALPHAS64[t[b]]
        z = z_t[b].double().reshape(-1)
        d_el = targets[b][0] - ref_camera[0]
        d_az = _wrap(targets[b][1] - ref_camera[1])
        logits, images = [], []
        for o in range(len(OBJECTS)):
            for v in range(views):
                for w in range(views):
                    target = bank[o * views + w]
                    log_joint = -float(((z - a.sqrt() * target) ** 2).sum()) / (2 * (1 - a))
                    if conditioned[b]:
                        log_joint += -float(((ref - bank[o * views + v]) ** 2).sum()) / (2 * 0.3**2)
                        off_el = elevations[w] - elevations[v] - d_el
                        off_az = _wrap(azimuths[w] - azimuths[v] - d_az)
                        log_joint += -(off_el**2 + off_az**2) / (2 * 20.0**2)
                    logits.append(log_joint)
                    images.append(target)
        weights = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
        out.append((weights[:, None] * torch.stack(images)).sum(0))
    return torch.stack(out).view_as(z_t)


@pytest.mark.parametrize("step", [5, 300, 700, 980])
def test_posterior_mean_equals_brute_force(teacher, step):
    gen = torch.Generator().manual_seed(step)
    x_ref = _render("a car", 30.0, 90.0, size=8)  # on the grid, at the teacher's resolution
    x_ref = (x_ref + 0.05 * torch.randn(x_ref.shape, generator=gen)).clamp(0, 1)  # and a bit off the bank
    teacher.set_reference(x_ref, elevation=30.0, azimuth=90.0, distance=2.5)
    targets = [(0.0, 0.0), (30.0, -100.0), (10.0, 45.0), (0.0, 180.0)]  # on and off the grid
    cameras = cameras_from_spherical(torch.tensor([e for e, _ in targets]), torch.tensor([a for _, a in targets]),
                                     torch.tensor(2.5), torch.tensor(40.0))
    z_t = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    t = torch.full((4,), step)
    embeddings = teacher.embed(["a car", "x", "", "anything"])
    x0 = teacher.denoise(z_t, t, embeddings, cameras)
    expected = _brute_force_x0(teacher, x_ref, (30.0, 90.0), z_t, t, [True, True, False, True], targets)
    torch.testing.assert_close(x0.double(), expected, rtol=1e-6, atol=1e-7)  # float32 inputs
    eps = teacher.predict_noise(z_t, t, embeddings, cameras).double()
    a = ALPHAS64[step]
    torch.testing.assert_close(eps, (z_t - a.sqrt() * expected) / (1 - a).sqrt(), rtol=1e-5, atol=1e-5)


def test_low_noise_recovers_the_object_from_the_relative_view(tmp_path):
    """With a sharp model and an exact reference, x0_hat at a small t from pure noise is the object's view at
    reference + d: the reference picks the object, the camera picks the view."""
    sharp = ToyImageTeacher(**SMALL, reference_sigma=0.05, camera_sigma_deg=5.0, cache_dir=str(tmp_path))
    sharp.set_reference(_render("a car", 0.0, 90.0, size=8), elevation=0.0, azimuth=0.0, distance=2.5)
    cameras = cameras_from_spherical(torch.tensor([30.0]), torch.tensor([-90.0]), torch.tensor(2.5),
                                     torch.tensor(40.0))
    x0 = sharp.denoise(torch.zeros(1, 3, 8, 8), torch.tensor([999]), sharp.embed(["go"]), cameras)
    views = sharp.num_views
    # the true target: the car from elevation 30, azimuth 90 - 90 = 0
    index = OBJECTS.index("a car") * views + [
        i for i in range(views)
        if float(sharp.view_elevation[i]) == 30.0 and abs(_wrap(float(sharp.view_azimuth[i]))) < 1e-6][0]
    torch.testing.assert_close(x0[0].double(), sharp.bank_images()[index].double(), atol=1e-4, rtol=0)


def test_unconditional_branch_ignores_reference_and_cameras(teacher):
    z_t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 500])
    teacher.set_reference(_render("a red cube", 0.0, 0.0, size=8), 0.0, 0.0, 2.5)
    first = teacher.predict_noise(z_t, t, teacher.embed(["", ""]))  # no cameras needed
    teacher.set_reference(_render("a mug", 30.0, 180.0, size=8), 30.0, 0.0, 2.5)
    second = teacher.predict_noise(z_t, t, teacher.embed(["", ""]))
    torch.testing.assert_close(first, second)


def test_identify_finds_object_and_view(teacher):
    match = teacher.identify(_render("a mug", 30.0, 180.0, size=24))
    assert match.object == "a mug" and match.elevation == 30.0 and abs(_wrap(match.azimuth - 180.0)) < 1e-6
    assert match.probability > 0.99 and match.rms < 0.05


def test_conditioned_rows_need_cameras_and_a_reference(tmp_path):
    fresh = ToyImageTeacher(**SMALL, cache_dir=str(tmp_path))
    z_t, t = torch.zeros(1, 3, 8, 8), torch.tensor([10])
    cameras = cameras_from_spherical(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor(2.5), torch.tensor(40.0))
    with pytest.raises(Exception, match="reference image"):
        fresh.predict_noise(z_t, t, fresh.embed(["x"]), cameras)
    fresh.set_reference(_render("a red cube", 0.0, 0.0, size=8), 0.0, 0.0, 2.5)
    with pytest.raises(ValueError, match="cameras"):
        fresh.predict_noise(z_t, t, fresh.embed(["x"]))
    assert math.isfinite(float(fresh.predict_noise(z_t, t, fresh.embed(["x"]), cameras).sum()))


def test_ddim_sampling_from_the_exact_toy_teacher_lands_on_the_prompts_object(tmp_path):
    from dreamengine.teachers.sampling import ddim_sample
    from dreamengine.teachers.toyworld import ToyWorldTeacher

    text = ToyWorldTeacher(**SMALL, cache_dir=str(tmp_path))
    bank = text.bank_images().reshape(len(text.bank), -1)
    for seed in range(3):
        z = ddim_sample(text, text.embed(["a car"]), text.embed([""]), (1, 3, 8, 8), num_steps=50,
                        generator=torch.Generator().manual_seed(seed))
        distances = ((bank - z.reshape(1, -1)) ** 2).mean(dim=1).sqrt()
        nearest = int(distances.argmin())
        assert float(distances[nearest]) < 0.02  # an (almost exact) bank image ...
        assert int(text.bank_object[nearest]) == OBJECTS.index("a car")  # ... of the prompt's object
