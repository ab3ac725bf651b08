"""The DDIM step and inversion helpers (dreamengine/guidance/ddim.py) against their defining properties."""

import pytest
import torch

from dreamengine.guidance.base import add_noise
from dreamengine.guidance.ddim import ddim_invert, ddim_step, ddim_walk
from dreamengine.teachers.toyworld import ToyWorldTeacher
from tests.stub_teacher import StubTeacher


class RecordingTeacher(StubTeacher):
    """The stub teacher, recording the timesteps it is asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[int]] = []

    def predict_noise(self, z_t, t, embeddings, cameras=None):
        self.calls.append(t.tolist())
        return super().predict_noise(z_t, t, embeddings, cameras)


@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory):
    return ToyWorldTeacher(resolution=8, elevations=(0, 30), azimuth_step=90,
                           objects=("a red cube", "a blue sphere"), cache_dir=str(tmp_path_factory.mktemp("bank")))


def test_ddim_step_recovers_the_clean_sample_and_renoises_it():
    """If x_a = sqrt(abar_a) x0 + sqrt(1 - abar_a) eps, the step lands on sqrt(abar_b) x0 + sqrt(1 - abar_b) eps."""
    abar = StubTeacher().alphas_cumprod
    x0, eps = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t_a, t_b = torch.tensor([10, 500, 990]), torch.tensor([700, 20, 990])
    x_a = add_noise(x0, eps, t_a, abar)
    assert torch.allclose(ddim_step(x_a, eps, t_a, t_b, abar), add_noise(x0, eps, t_b, abar), atol=1e-5)


@pytest.mark.parametrize("t_a,t_b", [(0, 999), (999, 0), (120, 480), (480, 120), (300, 300)])
def test_ddim_step_there_and_back_with_fixed_eps_is_identity(t_a, t_b):
    abar = StubTeacher().alphas_cumprod.double()
    x, eps = torch.randn(2, 3, 5, 5, dtype=torch.float64), torch.randn(2, 3, 5, 5, dtype=torch.float64)
    a, b = torch.full((2,), t_a), torch.full((2,), t_b)
    there = ddim_step(x, eps, a, b, abar)
    assert torch.allclose(ddim_step(there, eps, b, a, abar), x, atol=1e-9)
    if t_a != t_b:
        assert not torch.allclose(there, x, atol=1e-3)


def test_ddim_walk_strides_both_directions():
    teacher = RecordingTeacher()
    x, emb = torch.randn(2, 3, 4, 4), teacher.embed(["a", "b"])
    ddim_walk(teacher, x, 0, 450, 200, emb)
    assert [c[0] for c in teacher.calls] == [0, 200, 400]
    teacher.calls.clear()
    ddim_walk(teacher, x, 450, 0, 200, emb)
    assert [c[0] for c in teacher.calls] == [450, 250, 50]
    teacher.calls.clear()
    assert torch.equal(ddim_walk(teacher, x, 300, 300, 50, emb), x) and teacher.calls == []


def test_ddim_walk_equals_manual_steps_with_stub_formula():
    teacher = StubTeacher()
    abar = teacher.alphas_cumprod
    x, emb = torch.randn(2, 3, 4, 4), teacher.embed(["a red cube", ""])
    expected = x.clone()
    for cur, nxt in [(0, 200), (200, 350)]:
        eps = 0.5 * expected + (emb.sum(-1) + 0.01 * cur / 1000).view(-1, 1, 1, 1)
        x0 = (expected - (1 - abar[cur]).sqrt() * eps) / abar[cur].sqrt()
        expected = abar[nxt].sqrt() * x0 + (1 - abar[nxt]).sqrt() * eps
    assert torch.allclose(ddim_walk(teacher, x, 0, 350, 200, emb), expected, atol=1e-5)


def test_ddim_invert_starts_from_noised_latent_at_max_of_zero_and_t_minus_strides():
    teacher = StubTeacher()
    z, noise, emb = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), teacher.embed(["x", "y"])
    # 700 - 2 * 200 = 300: noise to 300, then two steps 300 -> 500 -> 700
    start = add_noise(z, noise, torch.full((2,), 300), teacher.alphas_cumprod)
    inverted = ddim_invert(teacher, z, noise, 700, emb, 200, 2)
    assert torch.allclose(inverted, ddim_walk(teacher, start, 300, 700, 200, emb))
    # 5 strides of 200 reach below 0: start at 0 (LucidDreamer's case)
    start = add_noise(z, noise, torch.zeros(2, dtype=torch.long), teacher.alphas_cumprod)
    inverted = ddim_invert(teacher, z, noise, 700, emb, 200, 5)
    assert torch.allclose(inverted, ddim_walk(teacher, start, 0, 700, 200, emb))


def round_trip_error(teacher, x, t_to, stride, emb):
    noisy = ddim_walk(teacher, x, 0, t_to, stride, emb)
    back = ddim_walk(teacher, noisy, t_to, 0, stride, emb)
    assert float((noisy - x).abs().max()) > 0.2  # the inversion really moved the sample
    return float((back - x).abs().max())


def test_inversion_then_denoising_returns_start_with_stub_teacher():
    teacher = StubTeacher()
    x, emb = torch.randn(2, 3, 4, 4), teacher.embed(["a red cube", ""])
    coarse, fine = round_trip_error(teacher, x, 700, 20, emb), round_trip_error(teacher, x, 700, 5, emb)
    assert fine < 1e-2 and fine < coarse / 3  # first-order convergence of the discretised ODE


@pytest.mark.parametrize("prompt,entries", [("", [0, 9]), ("a red cube", [0, 5])])
def test_inversion_then_denoising_returns_start_with_exact_toy_teacher(toy_teacher, prompt, entries):
    """Bank images (clean, at t = 0) under a prior that contains them: the exact probability-flow ODE is
    invertible, so DDIM inversion then DDIM sampling returns them up to the discretisation error."""
    x = add_noise(toy_teacher.bank_images()[entries], torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long),
                  toy_teacher.alphas_cumprod)
    emb = toy_teacher.embed([prompt, prompt])
    coarse, fine = round_trip_error(toy_teacher, x, 600, 20, emb), round_trip_error(toy_teacher, x, 600, 5, emb)
    assert fine < 5e-3 and fine < coarse / 3  # values are in [-1, 1]
