"""Prompt processing: direction prompts, Perp-Neg weights and combination, the on-disk embedding cache."""

import math
import os
import warnings

import numpy as np
import pytest
import torch

from dreamengine.config.guidance import SDSConfig
from dreamengine.config.prompts import PromptConfig
from dreamengine.core.cameras import cameras_from_spherical
from dreamengine.errors import ConfigError
from dreamengine.guidance.perp_neg import perp_neg_guidance, perpendicular_component
from dreamengine.guidance.sds import SDSGuidance
from dreamengine.prompts import DIRECTIONS, EmbeddingCache, PromptProcessor, direction_prompts, perp_neg_weights
from dreamengine.teachers.toyworld import ToyWorldTeacher
from tests.stub_teacher import StubTeacher


class CountingTeacher(StubTeacher):
    """StubTeacher with an ``embedding_key`` (so embeddings are cached) that counts ``embed`` calls."""

    def __init__(self, key: str = "stub-model@main") -> None:
        super().__init__()
        self.embedding_key = key
        self.calls: list[list[str]] = []

    def embed(self, prompts):
        self.calls.append(list(prompts))
        return torch.stack([torch.arange(6, dtype=torch.float32) * len(p) + math.pi for p in prompts]).view(-1, 3, 2)


class TwoDimStubTeacher(StubTeacher):
    """eps = 0.5 z_t + e0 ramp_x + e1 ramp_y + 0.01 t / T with a 2-d embedding, so the branches' eps
    differences point in different directions and Perp-Neg's projections are not trivial."""

    def embed(self, prompts):
        return torch.tensor([[len(p) / 100.0, p.count("e") / 10.0] for p in prompts])

    def predict_noise(self, z_t, t, embeddings, cameras=None):
        ramp = torch.linspace(-1.0, 1.0, z_t.shape[-1])
        ramp_x, ramp_y = ramp.view(1, 1, 1, -1), ramp.view(1, 1, -1, 1)
        return (0.5 * z_t + embeddings[:, 0].view(-1, 1, 1, 1) * ramp_x + embeddings[:, 1].view(-1, 1, 1, 1) * ramp_y
                + 0.01 * t.float().view(-1, 1, 1, 1) / 1000.0)


@pytest.fixture(scope="module")
def toy_teacher():
    return ToyWorldTeacher(resolution=8, elevations=(0.0, 30.0, 70.0), azimuth_step=45.0,
                           objects=("a red cube", "a blue sphere"))


def cams(azimuths, elevation=10.0):
    count = len(azimuths)
    return cameras_from_spherical(torch.full((count,), float(elevation)), torch.tensor(azimuths, dtype=torch.float32),
                                  torch.full((count,), 2.5), torch.full((count,), 40.0))


# ---------------------------------------------------------------------------------------- direction prompts
def test_suffix_prefix_styles_and_per_direction_overrides():
    assert direction_prompts("a cat", PromptConfig()) == [
        "a cat, front view", "a cat, side view", "a cat, back view", "a cat, overhead view"]
    assert direction_prompts("a cat", PromptConfig(view_prompt_style="prefix")) == [
        "front view of a cat", "side view of a cat", "backside view of a cat", "overhead view of a cat"]
    assert direction_prompts("a cat", PromptConfig(prompt_back="the tail of a cat")) == [
        "a cat, front view", "a cat, side view", "the tail of a cat", "a cat, overhead view"]
    with pytest.raises(ConfigError, match="view_prompt_style"):
        PromptConfig(view_prompt_style="middle")
    with pytest.raises(ConfigError, match="perp_neg"):
        PromptConfig(perp_neg=True, view_dependent=False)


def test_prefix_style_selects_the_same_toy_entries_as_suffix(toy_teacher):
    suffix = PromptProcessor(toy_teacher, "a red cube", PromptConfig())
    prefix = PromptProcessor(toy_teacher, "a red cube", PromptConfig(view_prompt_style="prefix"))
    batch = prefix(cams([0.0, 90.0, 180.0]))
    assert batch.texts == ["front view of a red cube", "side view of a red cube", "backside view of a red cube"]
    assert torch.equal(prefix.cond_embeddings, suffix.cond_embeddings)


# ---------------------------------------------------------------------------------------- Perp-Neg weights
def reference_perp_neg(azimuth: float, f_fs=(4, 0.5, -2.426), f_sf=(4, 0.5, -2.426), f_sb=(1, 0.5, -0.606),
                       f_fsb=(1, 0.5, 0.967)):
    """guidance-math.md §6 for one view, with scalars: (positive mix {direction: coef}, [(neg, weight)] * 2)."""
    def f(coefficients, r):
        a, b, c = coefficients
        return a * math.exp(-b * r) + c

    azi = abs((azimuth + 180.0) % 360.0 - 180.0)
    if azi < 90:
        r = 1 - azi / 90
        return {"front": r, "side": 1 - r}, [("front", -f(f_fs, r)), ("side", -f(f_sf, 1 - r))]
    r = 2 - azi / 90
    return {"side": r, "back": 1 - r}, [("side", -f(f_sb, r)), ("front", -f(f_fsb, r))]


@pytest.mark.parametrize("azimuth", [0.0, 30.0, -60.0, 90.0, 135.0, 180.0, -150.0, 270.0])
def test_perp_neg_weights_match_the_formula(azimuth):
    pos_mix, neg_index, weights = perp_neg_weights(torch.tensor([azimuth]), torch.tensor([False]), PromptConfig())
    expected_mix, expected_neg = reference_perp_neg(azimuth)
    for d, direction in enumerate(DIRECTIONS):
        assert pos_mix[0, d].item() == pytest.approx(expected_mix.get(direction, 0.0), abs=1e-12)
    assert [DIRECTIONS[i] for i in neg_index[0].tolist()] == [name for name, _ in expected_neg]
    assert weights[0].tolist() == pytest.approx([w for _, w in expected_neg], abs=1e-12)


def test_perp_neg_default_weights_at_pure_views():
    """Pure front: no push from front, -(4 - 2.426) from side; pure back: -(1 - 0.606) side, -(1 + 0.967) front."""
    _, _, weights = perp_neg_weights(torch.tensor([0.0, 180.0]), torch.tensor([False, False]), PromptConfig())
    assert weights[0].tolist() == pytest.approx([-(4 * math.exp(-0.5) - 2.426), -(4 - 2.426)])
    assert weights[1].tolist() == pytest.approx([-(1 - 0.606), -(1 + 0.967)])
    pos_mix, _, weights = perp_neg_weights(torch.tensor([40.0]), torch.tensor([True]), PromptConfig())
    assert pos_mix[0].tolist() == [0.0, 0.0, 0.0, 1.0] and weights[0].tolist() == [0.0, 0.0]


def test_perp_neg_prompt_batch_with_toy_view_prompts(toy_teacher):
    cfg = PromptConfig(perp_neg=True, negative_prompt="a blue sphere")
    processor = PromptProcessor(toy_teacher, "a red cube", cfg)
    batch = processor(cams([30.0, 140.0]))
    front, side, back = (toy_teacher.embed([f"a red cube, {d} view"]) for d in ("front", "side", "back"))
    r0, r1 = 1 - 30 / 90, 2 - 140 / 90
    assert torch.allclose(batch.cond[0], (r0 * front + (1 - r0) * side)[0], atol=1e-7)
    assert torch.allclose(batch.cond[1], (r1 * side + (1 - r1) * back)[0], atol=1e-7)
    assert torch.equal(batch.neg[0], torch.cat([front, side])) and torch.equal(batch.neg[1], torch.cat([side, front]))
    assert torch.equal(batch.uncond, toy_teacher.embed(["a blue sphere"] * 2))
    assert batch.neg_weights.shape == (2, 2)
    assert batch.texts == ["a red cube, front view", "a red cube, back view"]


# ---------------------------------------------------------------------------------------- Perp-Neg combination
@pytest.mark.parametrize("azimuth,front,side,back", [(0.0, 1, 0, 0), (45.0, 0.5, 0.5, 0), (-60.0, 1 / 3, 2 / 3, 0),
                                                      (90.0, 0, 1, 0), (135.0, 0, 0.5, 0.5), (-150.0, 0, 1 / 3, 2 / 3),
                                                      (180.0, 0, 0, 1), (300.0, 1 / 3, 2 / 3, 0)])
def test_view_interpolation_mixes_front_side_back_by_azimuth(azimuth, front, side, back):
    """LucidDreamer train.py: r = 1 - |azi|/90 -> r front + (1-r) side; behind, r = 2 - |azi|/90 -> r side +
    (1-r) back; overhead is never used, even at high elevation."""
    teacher = CountingTeacher()
    cfg = PromptConfig(view_interpolation=True, cache_embeddings=False)
    batch = PromptProcessor(teacher, "a cat", cfg)(cams([azimuth], elevation=80.0))
    table = {d: teacher.embed([text])[0] for d, text in zip(DIRECTIONS, direction_prompts("a cat", cfg), strict=True)}
    expected = front * table["front"] + side * table["side"] + back * table["back"]
    assert torch.allclose(batch.cond[0], expected, atol=1e-5) and batch.neg is None
    with pytest.raises(ConfigError, match="view_interpolation"):
        PromptConfig(view_interpolation=True, view_dependent=False)


def test_perp_neg_combination_equals_the_formula():
    gen = torch.Generator().manual_seed(0)
    eps_pos, eps_u = torch.randn(3, 4, 5, 5, generator=gen), torch.randn(3, 4, 5, 5, generator=gen)
    eps_neg, weights = torch.randn(3, 2, 4, 5, 5, generator=gen), -torch.rand(3, 2, generator=gen)
    scale = 7.5
    out = perp_neg_guidance(eps_pos, eps_u, eps_neg, weights, scale)
    for b in range(3):  # per sample, with flat numpy vectors
        u, p = eps_u[b].double().numpy().ravel(), eps_pos[b].double().numpy().ravel()
        e_pos = p - u
        total = e_pos.copy()
        for k in range(2):
            e_k = eps_neg[b, k].double().numpy().ravel() - u
            total += weights[b, k].item() * (e_k - np.dot(e_k, e_pos) / np.dot(e_pos, e_pos) * e_pos)
        np.testing.assert_allclose(out[b].numpy().ravel(), u + scale * total, rtol=1e-4, atol=1e-4)
    perp = perpendicular_component(eps_neg[:, 0], eps_pos)
    assert torch.allclose((perp * eps_pos).sum(dim=(1, 2, 3)), torch.zeros(3), atol=1e-3)


def test_sds_perp_neg_branch_gradient_equals_formula():
    """SDS with Perp-Neg prompts: g = (1 - abar)(eps^ - eps), eps^ from the convention-B Perp-Neg formula."""
    teacher = TwoDimStubTeacher()
    cfg = SDSConfig(guidance_scale=5.0)
    guidance = SDSGuidance(cfg, teacher, max_steps=10)
    processor = PromptProcessor(teacher, "a cat", PromptConfig(perp_neg=True, negative_prompt="blurry"))
    cameras = cams([20.0, 120.0])
    batch = processor(cameras)
    rgb = torch.rand(2, 4, 4, 3, requires_grad=True)
    guidance(rgb, batch, cameras, 0, torch.Generator().manual_seed(3)).loss.backward()

    gen = torch.Generator().manual_seed(3)
    z = 2.0 * rgb.detach().permute(0, 3, 1, 2) - 1.0
    t = torch.randint(20, 981, (2,), generator=gen)
    noise = torch.randn(z.shape, generator=gen)
    abar = teacher.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = abar.sqrt() * z + (1 - abar).sqrt() * noise

    def stub_eps(embedding):  # TwoDimStubTeacher's eps, written out
        ramp = torch.linspace(-1.0, 1.0, 4)
        return 0.5 * z_t + embedding[:, 0].view(-1, 1, 1, 1) * ramp.view(1, 1, 1, 4) + \
            embedding[:, 1].view(-1, 1, 1, 1) * ramp.view(1, 1, 4, 1) + (0.01 * t / 1000).view(-1, 1, 1, 1)

    eps_u, eps_pos = stub_eps(batch.uncond), stub_eps(batch.cond)
    e_pos = eps_pos - eps_u
    total = e_pos.clone()
    for k in range(2):
        e_k = stub_eps(batch.neg[:, k]) - eps_u
        coef = (e_k * e_pos).sum(dim=(1, 2, 3), keepdim=True) / (e_pos * e_pos).sum(dim=(1, 2, 3), keepdim=True)
        total = total + batch.neg_weights[:, k].view(-1, 1, 1, 1) * (e_k - coef * e_pos)
    assert (total - e_pos).abs().max() > 1e-3  # the negatives' perpendicular parts matter here
    g = (1 - abar) * (eps_u + cfg.guidance_scale * total - noise)
    assert torch.allclose(rgb.grad, (2.0 * g / 2).permute(0, 2, 3, 1), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------- embedding cache
def test_cache_returns_identical_tensors_and_skips_the_teacher(tmp_path):
    teacher = CountingTeacher()
    cfg = PromptConfig(cache_dir=str(tmp_path))
    first = PromptProcessor(teacher, "a cat", cfg)
    assert len(teacher.calls) == 1 and len(teacher.calls[0]) == 6  # 4 directions + negative + plain, one call
    second = PromptProcessor(teacher, "a cat", cfg)
    assert len(teacher.calls) == 1  # all six from disk
    assert torch.equal(first.cond_embeddings, second.cond_embeddings)
    assert torch.equal(second.cond_embeddings, teacher.embed(first.texts))
    assert torch.equal(first.uncond_embedding, second.uncond_embedding)
    assert torch.equal(first.plain_embedding, second.plain_embedding)
    assert torch.equal(second.plain_embedding, teacher.embed(["a cat"]))
    assert len(list(tmp_path.glob("text-*.safetensors"))) == 6
    assert not list(tmp_path.glob(".text-*"))  # no temporary files left behind


def test_cache_is_keyed_by_model_and_prompt(tmp_path):
    one, other = CountingTeacher("model-a@main"), CountingTeacher("model-b@main")
    EmbeddingCache(tmp_path, one.embedding_key).embed(one, ["a cat", "a dog"])
    EmbeddingCache(tmp_path, other.embedding_key).embed(other, ["a cat"])
    assert other.calls == [["a cat"]]  # another model's file is not reused
    EmbeddingCache(tmp_path, one.embedding_key).embed(one, ["a dog", "a cow"])
    assert one.calls == [["a cat", "a dog"], ["a cow"]]
    assert len(list(tmp_path.glob("text-*.safetensors"))) == 4


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other-prompt"])
def test_cache_survives_a_corrupt_file(tmp_path, damage):
    teacher = CountingTeacher()
    cache = EmbeddingCache(tmp_path, teacher.embedding_key)
    good = cache.embed(teacher, ["a cat"])
    path = cache.path("a cat")
    if damage == "garbage":
        path.write_bytes(b"\x00not a safetensors file" * 3)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    else:  # a valid file holding another prompt's embedding
        cache.embed(teacher, ["a dog"])
        os.replace(cache.path("a dog"), path)
    with pytest.warns(UserWarning, match="unreadable"):
        again = cache.embed(teacher, ["a cat"])
    assert torch.equal(again, good) and len(teacher.calls) == 3 - (damage != "other-prompt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(cache.embed(teacher, ["a cat"]), good)  # the file was rewritten


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    teacher = CountingTeacher()
    cache = EmbeddingCache(tmp_path, teacher.embedding_key)
    good = cache.embed(teacher, ["a cat"])
    before = cache.path("a cat").read_bytes()

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dreamengine.prompts.os.replace", failing_replace)
    with pytest.warns(UserWarning, match="could not write"):
        cache.save("a cat", good[0] * 2)
    assert cache.path("a cat").read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.path("a cat").name]  # no temporary file left
