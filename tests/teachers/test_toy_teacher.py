"""ToyWorldTeacher: the exact posterior-mean denoiser, its prompt priors, encode/decode and bank cache."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from dreamengine.core.cameras import direction_labels
from dreamengine.errors import ConfigError, PromptError
from dreamengine.teachers import toyworld as toy_teacher
from dreamengine.teachers.toyworld import ToyWorldTeacher
from dreamengine.toyworld import all_objects, render_toy

OBJECTS = ("a red cube", "a blue sphere", "a snowman", "a car")
# Stable Diffusion's schedule, written out independently of the teacher's code.
ALPHAS64 = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)
SMALL = {"resolution": 8, "elevations": (0.0, 30.0, 75.0), "azimuth_step": 90.0, "objects": OBJECTS}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> ToyWorldTeacher:
    return ToyWorldTeacher(**SMALL, cache_dir=str(tmp_path_factory.mktemp("cache")))


def _brute_force_x0(teacher: ToyWorldTeacher, z_t: torch.Tensor, t: torch.Tensor,
                    prior: torch.Tensor) -> torch.Tensor:
    """Posterior mean by an explicit loop over bank entries, float64, without the expanded square."""
    bank = teacher.bank_images().double().reshape(teacher.bank.shape[0], -1)
    out = []
    for b in range(z_t.shape[0]):
        a = ALPHAS64[t[b]]
        z = z_t[b].double().reshape(-1)
        logits = []
        for i in range(bank.shape[0]):
            log_prior = math.log(prior[b, i]) if prior[b, i] > 0 else -math.inf
            logits.append(log_prior - float(((z - a.sqrt() * bank[i]) ** 2).sum()) / (2 * (1 - a)))
        weights = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
        out.append((weights[:, None] * bank).sum(0))
    return torch.stack(out).view_as(z_t)


def test_schedule_is_stable_diffusion_scaled_linear(teacher):
    assert teacher.num_train_timesteps == 1000 and teacher.alphas_cumprod.shape == (1000,)
    product, expected = 1.0, []
    for i in range(1000):
        beta = (math.sqrt(0.00085) + i * (math.sqrt(0.012) - math.sqrt(0.00085)) / 999) ** 2
        product *= 1.0 - beta
        expected.append(product)
    torch.testing.assert_close(teacher.alphas_cumprod.double(), torch.tensor(expected, dtype=torch.float64))
    assert float(teacher.alphas_cumprod[0]) == pytest.approx(1 - 0.00085)


@pytest.mark.parametrize("step", [1, 10, 250, 500, 990])
def test_denoiser_equals_brute_force(teacher, step):
    gen = torch.Generator().manual_seed(step)
    prior = teacher.embed(["", "a red cube", "a snowman, side view", "a car"]).double()
    prior[3, :5] = 0.0  # an arbitrary prior with zeros
    prior[3] = prior[3] / prior[3].sum()
    t = torch.full((4,), step, dtype=torch.long)
    a = ALPHAS64[step]
    bank = teacher.bank_images().double()
    x = bank[torch.tensor([0, 13, 30, 45])]  # a noised bank image per row, plus pure noise in row 2
    z_t = a.sqrt() * x + (1 - a).sqrt() * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    z_t[2] = torch.randn(x.shape[1:], generator=gen, dtype=torch.float64)
    expected = _brute_force_x0(teacher, z_t, t, prior)
    x0 = teacher.denoise(z_t, t, prior)
    torch.testing.assert_close(x0, expected, atol=1e-7, rtol=0)
    eps = teacher.predict_noise(z_t, t, prior)
    torch.testing.assert_close(eps, (z_t - a.sqrt() * expected) / (1 - a).sqrt(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("step", [1, 3, 5])
def test_small_t_recovers_the_noised_bank_image(teacher, step):
    """At small t the posterior collapses on the bank image that was noised (the nearest one), for every
    entry that is not a near-duplicate of another (squared distance > 1; noise std is ~0.07 at t=5)."""
    bank = teacher.bank_images()
    flat = bank.reshape(bank.shape[0], -1)
    gaps = torch.cdist(flat, flat).fill_diagonal_(math.inf).min(dim=1).values ** 2
    index = torch.nonzero(gaps > 1.0).squeeze(1)
    assert len(index) >= 10  # symmetric shapes have near-duplicate views; the snowman and car do not
    a = ALPHAS64[step].float()
    noise = torch.randn(bank[index].shape, generator=torch.Generator().manual_seed(0))
    z_t = a.sqrt() * bank[index] + (1 - a).sqrt() * noise
    x0 = teacher.denoise(z_t, torch.full((len(index),), step), teacher.embed([""]))
    torch.testing.assert_close(x0, bank[index], atol=1e-5, rtol=0)
    nearest = torch.cdist(z_t.reshape(len(index), -1) / a.sqrt(), flat).argmin(dim=1)
    assert torch.equal(nearest, index)


def test_eps_round_trip_with_a_single_image_bank(tmp_path):
    single = ToyWorldTeacher(resolution=8, elevations=(15.0,), azimuth_step=360.0, objects=("a mug",),
                             cache_dir=str(tmp_path))
    assert single.bank.shape[0] == 1
    x = single.bank_images().double()
    eps = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([0, 400, 999])
    a = ALPHAS64[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * x + (1 - a).sqrt() * eps
    torch.testing.assert_close(single.predict_noise(z_t, t, single.embed(["a mug"])), eps, atol=1e-9, rtol=0)
    torch.testing.assert_close(single.denoise(z_t, t, single.embed(["a mug"])), x.expand(3, -1, -1, -1))


def test_embed_priors(teacher):
    priors = teacher.embed(["", "  ", "a red cube", "A Snowman, front view", "front view of a snowman",
                            "overhead view of a red cube", "side view"])
    n = teacher.bank.shape[0]
    assert priors.shape == (7, n) and bool((priors >= 0).all())
    torch.testing.assert_close(priors.sum(1), torch.ones(7))
    torch.testing.assert_close(priors[0], torch.full((n,), 1.0 / n))
    torch.testing.assert_close(priors[1], priors[0])
    objects = [teacher.objects[i].name for i in teacher.bank_object.tolist()]
    labels = teacher.bank_labels

    def support(row):
        return [bool(v) for v in (priors[row] > 0).tolist()]

    assert support(2) == [o == "a red cube" for o in objects]
    assert support(3) == [o == "a snowman" and v == "front" for o, v in zip(objects, labels, strict=True)]
    assert support(4) == support(3)
    assert support(5) == [o == "a red cube" and v == "overhead" for o, v in zip(objects, labels, strict=True)]
    assert support(6) == [v == "side" for v in labels]
    for row in range(2, 7):  # uniform on the support
        values = priors[row][priors[row] > 0]
        torch.testing.assert_close(values, torch.full_like(values, 1.0 / len(values)))
    assert sum(support(5)) == 4  # elevation 75 is the only overhead elevation, 4 azimuths


def test_labels_follow_direction_labels(teacher):
    assert teacher.bank_labels[: len(teacher.cameras)] == direction_labels(teacher.cameras)
    assert set(teacher.bank_labels) == {"front", "side", "back", "overhead"}


def test_view_prior_falls_back_to_all_entries_of_the_object(tmp_path):
    low = ToyWorldTeacher(resolution=4, elevations=(0.0,), azimuth_step=90.0,
                          objects=("a red cube", "a duck"), cache_dir=str(tmp_path))
    prior = low.embed(["a duck, overhead view"])[0]
    torch.testing.assert_close(prior, (low.bank_object == 1).float() / 4)


def test_view_prompt_selects_that_view_in_the_denoiser(teacher):
    """At small t, a noised front view of the car denoised under 'a car, back view' lands on a back view."""
    front = [i for i, (o, v) in enumerate(zip(teacher.bank_object.tolist(), teacher.bank_labels, strict=True))
             if teacher.objects[o].name == "a car" and v == "front"]
    z_t = teacher.alphas_cumprod[2].sqrt() * teacher.bank_images()[front[:1]]
    for prompt, label in (("a car, back view", "back"), ("side view of a car", "side")):
        prior = teacher.embed([prompt])
        x0 = teacher.denoise(z_t, torch.tensor([2]), prior).reshape(1, -1).double()
        nearest = int(((teacher.bank - x0) ** 2).sum(1).argmin())
        assert teacher.bank_labels[nearest] == label and prior[0, nearest] > 0


def test_unknown_word_and_objects_outside_the_world(teacher):
    with pytest.raises(PromptError, match="'cubbe'.*did you mean 'cube'.*purple.*torus.*penguin"):
        teacher.embed(["a red cubbe"])
    with pytest.raises(PromptError, match="leaves out"):
        teacher.embed(["a green torus"])
    with pytest.raises(ConfigError, match="unknown object 'a red cubbe'"):
        ToyWorldTeacher(resolution=4, objects=("a red cubbe",))


def test_encode_decode_and_gradient(teacher):
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(teacher.decode(teacher.encode(rgb)), rgb)
    large = torch.rand(2, 3, 32, 32, requires_grad=True)
    z = teacher.encode(large)
    assert z.shape == (2, 3, 8, 8)
    torch.testing.assert_close(z, 2 * torch.nn.functional.avg_pool2d(large, 4) - 1)
    z.sum().backward()
    torch.testing.assert_close(large.grad, torch.full_like(large, 2.0 / 16))
    assert teacher.encode(torch.rand(1, 3, 4, 4)).shape == (1, 3, 8, 8)
    assert float(teacher.decode(torch.tensor([-3.0, 3.0])).min()) == 0.0


def test_encoded_render_equals_bank_entry(teacher):
    """encode() of a render made like the bank's (2x supersampled) reproduces the bank entry exactly."""
    view = 5
    obj = all_objects()[[o.name for o in all_objects()].index("a snowman")]
    render = render_toy(obj, teacher.cameras[view], 16, 16)["rgb"].permute(0, 3, 1, 2)
    entry = 2 * len(teacher.cameras) + view
    expected = teacher.bank_images()[entry:entry + 1]
    torch.testing.assert_close(teacher.encode(render), expected, atol=1e-6, rtol=0)


def test_predict_noise_is_gradient_free_and_broadcasts_prior(teacher):
    z_t = torch.randn(3, 3, 8, 8, requires_grad=True)
    t = torch.tensor([5, 500, 900])
    eps = teacher.predict_noise(z_t, t, teacher.embed(["a car"]))
    assert not eps.requires_grad and eps.shape == z_t.shape and eps.dtype == z_t.dtype
    torch.testing.assert_close(eps, teacher.predict_noise(z_t, t, teacher.embed(["a car"] * 3)))
    with pytest.raises(ValueError, match="embeddings must be"):
        teacher.predict_noise(z_t, t, teacher.embed(["a car", "a car"]))


def test_bank_cache_reused_and_corrupt_file_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setattr(toy_teacher, "CACHE_MIN_BUILD_SECONDS", 0.0)
    settings = {"resolution": 4, "elevations": (10.0,), "azimuth_step": 120.0, "objects": ("a duck", "a mug")}
    first = ToyWorldTeacher(**settings, cache_dir=str(tmp_path))
    assert first.build_seconds is not None and first.cache_path.exists()
    second = ToyWorldTeacher(**settings, cache_dir=str(tmp_path))
    assert second.build_seconds is None and torch.equal(second.bank, first.bank)
    other = ToyWorldTeacher(**{**settings, "azimuth_step": 90.0}, cache_dir=str(tmp_path))
    assert other.cache_path != first.cache_path and other.build_seconds is not None
    first.cache_path.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable"):
        rebuilt = ToyWorldTeacher(**settings, cache_dir=str(tmp_path))
    assert rebuilt.build_seconds is not None and torch.equal(rebuilt.bank, first.bank)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ToyWorldTeacher(**settings, cache_dir=str(tmp_path)).build_seconds is None  # rewritten
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMENGINE_CACHE", str(tmp_path))
    small = ToyWorldTeacher(resolution=4, elevations=(0.0,), azimuth_step=180.0, objects=("a red cube",))
    assert small.cache_path.parent == tmp_path / "toyworld"
