"""BSD, CSM, ISM, CSD, NFSD and ASD: gradients on the render against each method's formula (guidance-math.md),
recomputed here independently with the same random draws, plus their helpers, configs and a Trainer smoke run."""

from pathlib import Path

import pytest
import torch

from dreamengine.config import load_config
from dreamengine.config.guidance import (
    GUIDANCE_CONFIGS,
    ASDConfig,
    BSDConfig,
    CSDConfig,
    CSMConfig,
    ISMConfig,
    NFSDConfig,
)
from dreamengine.core.conditioning import PromptBatch
from dreamengine.errors import ConfigError
from dreamengine.guidance import GUIDANCES
from dreamengine.guidance.asd import ASDGuidance
from dreamengine.guidance.base import (
    lucid_timestep_range,
    offset_noise,
    percent_timestep_range,
    sample_shared_timestep,
    warmup_rate,
)
from dreamengine.guidance.bsd import BSDGuidance, pareto_weight
from dreamengine.guidance.csd import CSDGuidance
from dreamengine.guidance.csm import CSMGuidance
from dreamengine.guidance.ism import ISMGuidance
from dreamengine.guidance.nfsd import NFSDGuidance
from dreamengine.trainer import Trainer
from tests.cli_helpers import TINY
from tests.stub_teacher import StubTeacher

SEED = 7


class NonlinearStubTeacher(StubTeacher):
    """eps = 0.5 z_t + sum(embedding) tanh(z_t) + 0.01 (t / T) z_t^2: the conditional and unconditional
    branches differ where z_t is evaluated, so a wrong x_t changes CSM's and ISM's gradients."""

    def predict_noise(self, z_t, t, embeddings, cameras=None):
        return nonlinear_eps(z_t, t, embeddings)


def nonlinear_eps(x, t, emb):
    return 0.5 * x + emb.sum(-1).view(-1, 1, 1, 1) * torch.tanh(x) + 0.01 * (t.float() / 1000).view(-1, 1, 1, 1) * x**2


def linear_eps(x, t, emb):
    """tests/stub_teacher.StubTeacher's eps, restated."""
    return 0.5 * x + (emb.sum(-1) + 0.01 * t.float() / 1000).view(-1, 1, 1, 1)


TEACHERS = {"linear": (StubTeacher, linear_eps), "nonlinear": (NonlinearStubTeacher, nonlinear_eps)}


def per_sample(values, batch=None):
    values = torch.as_tensor(values)
    if values.dim() == 0:
        values = values.expand(batch)
    return values.view(-1, 1, 1, 1)


def ddim_move(x, eps, t_a, t_b, abar):
    """x at t_a -> t_b with fixed eps (guidance-math.md §3a), restated."""
    x0 = (x - (1 - abar[t_a]).sqrt() * eps) / abar[t_a].sqrt()
    return abar[t_b].sqrt() * x0 + (1 - abar[t_b]).sqrt() * eps


def run(guidance_cls, cfg, kind, step=0, batch=3):
    """Gradient on the render and the independent inputs the reference needs."""
    teacher_cls, eps_fn = TEACHERS[kind]
    teacher = teacher_cls()
    rgb = torch.rand(batch, 8, 8, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    cond = teacher.embed(["a red cube", "x", "yy", "zzz", "a", "bb"][:batch])
    uncond = teacher.embed(["blurry"] * batch)  # a real negative prompt, so e_u != e_0 = embed("")
    guidance = guidance_cls(cfg, teacher, 100)
    out = guidance(rgb, PromptBatch(cond, uncond, ["p"] * batch), None, step, torch.Generator().manual_seed(SEED))
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(v == v for v in out.terms.values())
    z = 2.0 * rgb.detach().permute(0, 3, 1, 2) - 1.0
    return rgb.grad, dict(teacher=teacher, eps=eps_fn, z=z, cond=cond, uncond=uncond, abar=teacher.alphas_cumprod,
                          null=teacher.embed([""] * batch), gen=torch.Generator().manual_seed(SEED), out=out)


def as_render_grad(g, reduction="mean"):
    """d loss / dz = g / B (``mean``) or g (``sum``) and z = 2 rgb - 1  =>  d loss / d rgb = 2 g / B (or 2 g),
    back to [B, H, W, 3]."""
    return (2.0 * g / (g.shape[0] if reduction == "mean" else 1)).permute(0, 2, 3, 1)


def lucid_draws(ctx, cfg, step, offset=0):
    """t ~ randint(20, 500 + int(480 r)) + steps_offset shared, then offset noise, as LucidDreamer draws them."""
    r = 1.0 - min(step / cfg.warmup_steps, 1.0)
    t = int(torch.randint(20, 500 + int(480 * r), (1,), generator=ctx["gen"])) + offset
    z = ctx["z"]
    noise = torch.randn(z.shape, generator=ctx["gen"])
    noise = noise + cfg.noise_offset * torch.randn(1, z.shape[1], 1, 1, generator=ctx["gen"])
    return t, noise, r


def inverted_pair(ctx, cfg, t, noise, r, floor=0):
    """ISM's x_s -> (e_s, x_t): inversion from ~floor (the steps offset) to s = t - delta, then one step s -> t."""
    eps, abar, z = ctx["eps"], ctx["abar"], ctx["z"]
    batch = z.shape[0]
    e_inv = ctx["teacher"].embed([cfg.inverse_prompt] * batch)
    delta = int(cfg.delta_t + r * (cfg.delta_t_start - cfg.delta_t))
    s = max(t - delta, floor)
    cur = max(s - cfg.xs_delta_t * cfg.xs_inv_steps, floor)
    x = abar[cur].sqrt() * z + (1 - abar[cur]).sqrt() * noise
    while cur < s:
        nxt = min(cur + cfg.xs_delta_t, s)
        x = ddim_move(x, eps(x, torch.full((batch,), cur), e_inv), cur, nxt, abar)
        cur = nxt
    e_s = eps(x, torch.full((batch,), s), e_inv)
    return e_s, ddim_move(x, e_s, s, t, abar)


# ----------------------------------------------------------------------------------------------- ISM
@pytest.mark.parametrize("kind", ["linear", "nonlinear"])
@pytest.mark.parametrize("step,annealing", [(0, True), (30, True), (250, False)])
def test_ism_gradient_equals_formula(kind, step, annealing):
    cfg = ISMConfig(guidance_scale=6.0, grad_scale=0.3, warmup_steps=100, annealing_intervals=annealing)
    grad, ctx = run(ISMGuidance, cfg, kind, step)
    t, noise, r = lucid_draws(ctx, cfg, step)
    e_s, x_t = inverted_pair(ctx, cfg, t, noise, r)
    tt = torch.full((3,), t)
    e_c, e_u = ctx["eps"](x_t, tt, ctx["cond"]), ctx["eps"](x_t, tt, ctx["uncond"])
    abar = ctx["abar"][t]
    g = cfg.grad_scale * ((1 - abar) / abar).sqrt() * (e_u + cfg.guidance_scale * (e_c - e_u) - e_s)  # convention B
    assert torch.allclose(grad, as_render_grad(g, "sum"), atol=1e-6, rtol=1e-4)
    assert ctx["out"].terms["t_mean"] == t and ctx["out"].reduction == "sum"


@pytest.mark.parametrize("guidance_cls,cfg_cls", [(ISMGuidance, ISMConfig), (BSDGuidance, BSDConfig),
                                                   (CSMGuidance, CSMConfig)])
def test_lucid_family_injects_g_not_g_over_batch(guidance_cls, cfg_cls):
    """SpecifyGradient (LucidDreamer, PlacidDreamer): at their batch of 4 each render gets g, 4x the MSE trick's g/B;
    ``grad_injection: mean`` keeps threestudio's g / B."""
    summed, _ = run(guidance_cls, cfg_cls(warmup_steps=100), "nonlinear", step=10, batch=4)
    mean, ctx = run(guidance_cls, cfg_cls(warmup_steps=100, grad_injection="mean"), "nonlinear", step=10, batch=4)
    assert ctx["out"].reduction == "mean"
    assert torch.allclose(summed, 4.0 * mean, atol=1e-7, rtol=1e-5) and float(summed.abs().max()) > 0


@pytest.mark.parametrize("floor,step", [(100, 60), (300, 90)])
def test_ism_inversion_floor_starts_the_inversion_higher(floor, step):
    """inversion_floor: start = max(s - stride n, floor); when s < floor the walk goes down from floor to s."""
    cfg = ISMConfig(warmup_steps=100, grad_scale=1.0, xs_delta_t=150, xs_inv_steps=2, inversion_floor=floor)
    grad, ctx = run(ISMGuidance, cfg, "nonlinear", step=step)
    t, noise, r = lucid_draws(ctx, cfg, step)
    eps, abar, z = ctx["eps"], ctx["abar"], ctx["z"]
    e_inv = ctx["teacher"].embed([""] * 3)
    s = max(t - int(cfg.delta_t + r * (cfg.delta_t_start - cfg.delta_t)), 0)
    cur = max(s - 300, floor)
    x = abar[cur].sqrt() * z + (1 - abar[cur]).sqrt() * noise
    while cur != s:
        nxt = min(cur + 150, s) if cur < s else max(cur - 150, s)
        x = ddim_move(x, eps(x, torch.full((3,), cur), e_inv), cur, nxt, abar)
        cur = nxt
    e_s = eps(x, torch.full((3,), s), e_inv)
    x_t = ddim_move(x, e_s, s, t, abar)
    tt = torch.full((3,), t)
    e_c, e_u = eps(x_t, tt, ctx["cond"]), eps(x_t, tt, ctx["uncond"])
    g = ((1 - abar[t]) / abar[t]).sqrt() * (e_u + cfg.guidance_scale * (e_c - e_u) - e_s)
    assert torch.allclose(grad, as_render_grad(g, "sum"), atol=1e-6, rtol=1e-4)


class OffsetStubTeacher(NonlinearStubTeacher):
    steps_offset = 1  # as Stable Diffusion's scheduler config


def test_ism_timesteps_follow_the_scheduler_steps_offset():
    """LucidDreamer draws an index i and uses timesteps[i] = i + steps_offset (SD: 1); the inversion starts at
    timesteps[0] = steps_offset."""
    cfg = ISMConfig(warmup_steps=100, grad_scale=1.0, xs_delta_t=150, xs_inv_steps=2)
    teacher = OffsetStubTeacher()
    rgb = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    cond, uncond = teacher.embed(["a red cube", "x"]), teacher.embed(["blurry"] * 2)
    out = ISMGuidance(cfg, teacher, 100)(rgb, PromptBatch(cond, uncond, ["p"] * 2), None, 60,
                                         torch.Generator().manual_seed(SEED))
    out.loss.backward()
    ctx = dict(eps=nonlinear_eps, z=2.0 * rgb.detach().permute(0, 3, 1, 2) - 1.0, abar=teacher.alphas_cumprod,
               teacher=teacher, gen=torch.Generator().manual_seed(SEED))
    t, noise, r = lucid_draws(ctx, cfg, 60, offset=1)
    e_s, x_t = inverted_pair(ctx, cfg, t, noise, r, floor=1)
    tt = torch.full((2,), t)
    e_c, e_u = nonlinear_eps(x_t, tt, cond), nonlinear_eps(x_t, tt, uncond)
    abar = ctx["abar"][t]
    g = ((1 - abar) / abar).sqrt() * (e_u + cfg.guidance_scale * (e_c - e_u) - e_s)
    assert out.terms["t_mean"] == t
    assert torch.allclose(rgb.grad, as_render_grad(g, "sum"), atol=1e-6, rtol=1e-4)
    assert lucid_timestep_range(0, 1500, 1000, steps_offset=1) == (21, 980)


# ----------------------------------------------------------------------------------------------- CSM
@pytest.mark.parametrize("kind", ["linear", "nonlinear"])
@pytest.mark.parametrize("weighting", ["ism", "sds", "uniform"])
def test_csm_gradient_equals_formula(kind, weighting):
    cfg = CSMConfig(guidance_scale=5.0, weighting=weighting, grad_scale=0.5, warmup_steps=100, xs_delta_t=150,
                    xs_inv_steps=3)
    grad, ctx = run(CSMGuidance, cfg, kind, step=20)
    t, noise, r = lucid_draws(ctx, cfg, 20)
    _, x_t = inverted_pair(ctx, cfg, t, noise, r)
    tt = torch.full((3,), t)
    e_c, e_u = ctx["eps"](x_t, tt, ctx["cond"]), ctx["eps"](x_t, tt, ctx["uncond"])
    abar = ctx["abar"][t]
    w = {"ism": ((1 - abar) / abar).sqrt(), "sds": 1 - abar, "uniform": torch.tensor(1.0)}[weighting]
    g = cfg.grad_scale * w * cfg.guidance_scale * (e_c - e_u)
    assert torch.allclose(grad, as_render_grad(g, "sum"), atol=1e-6, rtol=1e-4)


def test_csm_uses_the_inverted_point_not_fresh_noise():
    """With the nonlinear stub the classifier term depends on x_t: evaluating it at q(z, eps, t) differs."""
    cfg = CSMConfig(warmup_steps=100)
    grad, ctx = run(CSMGuidance, cfg, "nonlinear", step=20)
    t, noise, _ = lucid_draws(ctx, cfg, 20)
    abar, tt = ctx["abar"][t], torch.full((3,), t)
    x_fresh = abar.sqrt() * ctx["z"] + (1 - abar).sqrt() * noise
    e_c, e_u = ctx["eps"](x_fresh, tt, ctx["cond"]), ctx["eps"](x_fresh, tt, ctx["uncond"])
    g_fresh = cfg.grad_scale * ((1 - abar) / abar).sqrt() * cfg.guidance_scale * (e_c - e_u)
    assert not torch.allclose(grad, as_render_grad(g_fresh, "sum"), atol=1e-5, rtol=1e-3)


# ----------------------------------------------------------------------------------------------- BSD
@pytest.mark.parametrize("kind", ["linear", "nonlinear"])
@pytest.mark.parametrize("variant", ["standard", "auto"])
def test_bsd_gradient_equals_formula(kind, variant):
    cfg = BSDConfig(variant=variant, classifier_ratio=4.0, grad_scale=0.2, warmup_steps=100)
    grad, ctx = run(BSDGuidance, cfg, kind, step=40)
    t, noise, _ = lucid_draws(ctx, cfg, 40)
    abar, tt = ctx["abar"][t], torch.full((3,), t)
    z_t = abar.sqrt() * ctx["z"] + (1 - abar).sqrt() * noise
    e_c, e_u = ctx["eps"](z_t, tt, ctx["cond"]), ctx["eps"](z_t, tt, ctx["uncond"])
    if variant == "standard":
        c, d, w = cfg.classifier_ratio * (e_c - e_u), e_u, abar.sqrt()
    else:
        c, d = e_c - e_u, cfg.auto_smoothing_scale * (e_u - noise)
        w = torch.linalg.vector_norm(e_u - noise) * (1 - abar).sqrt() / cfg.auto_norm_divisor
    alpha = (((d - c) * d).sum(dim=(1, 2, 3)) / ((d - c) ** 2).sum(dim=(1, 2, 3))).clamp(0, 1).view(-1, 1, 1, 1)
    g = cfg.grad_scale * w * (alpha * c + (1 - alpha) * d)
    assert torch.allclose(grad, as_render_grad(g, "sum"), atol=1e-6, rtol=1e-4)


def bsd_case_directions(variant):
    """(c, d) pairs built as BSD builds them, from random eps predictions; plus clipped and degenerate cases."""
    gen = torch.Generator().manual_seed(3)
    e_c, e_u, noise = (torch.randn(6, 4, 5, 5, generator=gen) for _ in range(3))
    e_c[1] = e_u[1] * 0.9  # nearly aligned directions: alpha clipped at an end
    if variant == "standard":
        c, d = 15.0 * (e_c - e_u), e_u
    else:
        c, d = e_c - e_u, 1.25 * (e_u - noise)
    c[2], d[2] = d[2] * 2.0, d[2]  # c = 2 d: the best point is d (alpha = 0)
    c[3], d[3] = c[3], c[3] * 3.0  # d = 3 c: the best point is c (alpha = 1)
    c[4], d[4] = c[4], -c[4]  # opposite: alpha = 0.5 reaches 0
    return c, d


@pytest.mark.parametrize("variant", ["standard", "auto"])
def test_bsd_alpha_minimizes_combination_norm_against_dense_search(variant):
    c, d = bsd_case_directions(variant)
    alpha = pareto_weight(c, d)
    grid = torch.linspace(0, 1, 20001)
    for i in range(c.shape[0]):
        norms = torch.linalg.vector_norm(grid[:, None] * c[i].flatten() + (1 - grid[:, None]) * d[i].flatten(),
                                         dim=1)
        best = norms.min()
        found = torch.linalg.vector_norm(alpha[i] * c[i] + (1 - alpha[i]) * d[i])
        assert found <= best * (1 + 1e-5) + 1e-6, i
        assert abs(float(alpha[i]) - float(grid[norms.argmin()])) < 1e-3, i
    assert alpha[2] == 0 and alpha[3] == 1 and alpha[4] == pytest.approx(0.5)


def test_bsd_alpha_is_zero_when_directions_coincide():
    c = torch.randn(2, 3, 4, 4)
    assert torch.equal(pareto_weight(c, c.clone()), torch.zeros(2))


# ----------------------------------------------------------------------------------------------- CSD
def percent_draws(ctx, low, high):
    """threestudio: t per element, inclusive [low, high], then standard normal noise."""
    z = ctx["z"]
    t = torch.randint(low, high + 1, (z.shape[0],), generator=ctx["gen"])
    return t, torch.randn(z.shape, generator=ctx["gen"])


SDS_W = {"sds": lambda a: 1 - a, "uniform": lambda a: torch.ones_like(a), "fantasia3d": lambda a: a.sqrt() * (1 - a)}


@pytest.mark.parametrize("kind", ["linear", "nonlinear"])
@pytest.mark.parametrize("weighting,normalize,clip", [("uniform", False, None), ("sds", True, None),
                                                      ("fantasia3d", False, 0.01), ("uniform", True, 0.05)])
def test_csd_gradient_equals_formula(kind, weighting, normalize, clip):
    cfg = CSDConfig(guidance_scale=1.0, uncond_scale=[0, 0.0, -1.0, 100], null_scale=[0, -1.0, 0.0, 100],
                    noise_scale=0.3, weighting=weighting, grad_normalize=normalize, grad_clip=clip)
    grad, ctx = run(CSDGuidance, cfg, kind, step=40)
    t, noise = percent_draws(ctx, 20, 980)
    k_c, k_u, k_n, k_e = 1.0, -0.4, -0.6, 0.3  # the schedules at step 40
    abar = per_sample(ctx["abar"][t])
    z_t = abar.sqrt() * ctx["z"] + (1 - abar).sqrt() * noise
    e_c, e_neg, e_0 = (ctx["eps"](z_t, t, emb) for emb in (ctx["cond"], ctx["uncond"], ctx["null"]))
    g = SDS_W[weighting](abar) * (k_c * e_c + k_u * e_neg + k_n * e_0 + k_e * noise)
    if clip is not None:  # the source clamps first ...
        g = g.clamp(-clip, clip)
    if normalize:  # ... then divides by the norm of the whole batch tensor
        g = g / (torch.linalg.vector_norm(g) + 1e-8)
    assert torch.allclose(grad, as_render_grad(g), atol=1e-6, rtol=1e-4)


def test_csd_clamps_then_normalizes_over_the_whole_batch():
    """Reference order and norm: |g| = 1 over the batch, per-sample norms keep their ratio (not [1, 1, 1])."""
    cfg = CSDConfig(grad_normalize=True, grad_clip=0.05, weighting="sds")
    _, ctx = run(CSDGuidance, cfg, "nonlinear")
    g = ctx["out"]  # the loss value is 0.5 |g|^2 / B with the cleaned g
    assert float(g.loss.detach()) == pytest.approx(0.5 / 3, rel=1e-5)
    t, noise = percent_draws(ctx, 20, 980)
    abar = per_sample(ctx["abar"][t])
    z_t = abar.sqrt() * ctx["z"] + (1 - abar).sqrt() * noise
    raw = (1 - abar) * (ctx["eps"](z_t, t, ctx["cond"]) - ctx["eps"](z_t, t, ctx["null"]))
    clipped = raw.clamp(-0.05, 0.05)
    per = torch.linalg.vector_norm(clipped.flatten(1), dim=1)
    assert float(per.max() / per.min()) > 1.05  # the samples differ, so per-sample normalisation would differ


def perp_neg_inputs():
    """A two-view batch with two negative prompts each (Perp-Neg's inputs) on the 2-D stub teacher."""
    from tests.test_prompts import TwoDimStubTeacher

    teacher = TwoDimStubTeacher()
    rgb = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    cond, uncond = teacher.embed(["a cat, front", "a cat, side"]), teacher.embed(["ugly"] * 2)
    prompts = PromptBatch(cond, uncond, ["p"] * 2)
    prompts.neg = torch.stack([teacher.embed(["front eee", "side"]), teacher.embed(["side", "front view e"])])
    prompts.neg_weights = torch.tensor([[-1.5, -0.3], [-0.2, -2.0]])
    return teacher, rgb, prompts


def test_csd_perp_neg_adds_the_perpendicular_sum():
    """Perp-Neg on (source IF config): g += w k_p sum_i w_i perp(eps_neg_i - eps_u, eps_c - eps_u)."""
    teacher, rgb, prompts = perp_neg_inputs()
    batch, cond, uncond = rgb.shape[0], prompts.cond, prompts.uncond
    cfg = CSDConfig(perpneg_scale=[0, 0.0, 3.0, 100], weighting="sds")
    out = CSDGuidance(cfg, teacher, 100)(rgb, prompts, None, 50, torch.Generator().manual_seed(SEED))
    out.loss.backward()
    gen = torch.Generator().manual_seed(SEED)
    t = torch.randint(20, 981, (batch,), generator=gen)
    z = 2.0 * rgb.detach().permute(0, 3, 1, 2) - 1.0
    noise = torch.randn(z.shape, generator=gen)
    abar = per_sample(teacher.alphas_cumprod[t])
    z_t = abar.sqrt() * z + (1 - abar).sqrt() * noise
    eps = lambda emb: teacher.predict_noise(z_t, t, emb)  # noqa: E731
    e_c, e_u, e_0 = eps(cond), eps(uncond), eps(teacher.embed([""] * batch))
    e_pos = e_c - e_u
    perp = 0
    for k in range(2):
        e_k = eps(prompts.neg[:, k]) - e_u
        dot = (e_k * e_pos).sum(dim=(1, 2, 3), keepdim=True) / (e_pos * e_pos).sum(dim=(1, 2, 3), keepdim=True)
        perp = perp + per_sample(prompts.neg_weights[:, k]) * (e_k - dot * e_pos)
    g = (1 - abar) * (e_c - e_0 + 1.5 * perp)  # k_p = 1.5 at step 50
    assert torch.allclose(rgb.grad, as_render_grad(g), atol=1e-6, rtol=1e-4)
    assert float(perp.abs().max()) > 1e-3


def test_csd_default_is_pure_classifier_score():
    """Defaults (1, 0, -1, 0), uniform w: g = eps(e_c) - eps(e_0), no noise term, no CFG scale."""
    grad, ctx = run(CSDGuidance, CSDConfig(), "nonlinear")
    t, noise = percent_draws(ctx, 20, 980)
    abar = per_sample(ctx["abar"][t])
    z_t = abar.sqrt() * ctx["z"] + (1 - abar).sqrt() * noise
    g = ctx["eps"](z_t, t, ctx["cond"]) - ctx["eps"](z_t, t, ctx["null"])
    assert torch.allclose(grad, as_render_grad(g), atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- NFSD
@pytest.mark.parametrize("kind", ["linear", "nonlinear"])
@pytest.mark.parametrize("p_min,p_max", [(0.02, 0.15), (0.3, 0.98), (0.02, 0.4)])
def test_nfsd_gradient_equals_formula(kind, p_min, p_max):
    cfg = NFSDConfig(guidance_scale=6.0, min_step_percent=p_min, max_step_percent=p_max)
    grad, ctx = run(NFSDGuidance, cfg, kind, batch=6)
    t, noise = percent_draws(ctx, int(1000 * p_min + 1e-6), int(1000 * p_max + 1e-6))
    abar = per_sample(ctx["abar"][t])
    z_t = abar.sqrt() * ctx["z"] + (1 - abar).sqrt() * noise
    e_c, e_neg, e_0 = (ctx["eps"](z_t, t, emb) for emb in (ctx["cond"], ctx["uncond"], ctx["null"]))
    d_d = torch.where(per_sample(t < 200), e_0, e_0 - e_neg)
    g = (1 - abar) * (d_d + cfg.guidance_scale * (e_c - e_0))
    assert torch.allclose(grad, as_render_grad(g), atol=1e-6, rtol=1e-4)
    if p_min == 0.02 and p_max == 0.4:
        assert bool((t < 200).any()) and bool((t >= 200).any())  # both branches are exercised


# ----------------------------------------------------------------------------------------------- ASD
@pytest.mark.parametrize("kind", ["linear", "nonlinear"])
@pytest.mark.parametrize("plus_random,clip", [(True, None), (False, None), (True, 0.02)])
def test_asd_gradient_equals_formula(kind, plus_random, clip):
    cfg = ASDConfig(guidance_scale=6.0, plus_ratio=0.3, plus_random=plus_random, grad_clip=clip,
                    min_step_percent=[0, 0.5, 0.02, 200], max_step_percent=[0, 0.98, 0.5, 200])
    grad, ctx = run(ASDGuidance, cfg, kind, step=50, batch=5)
    low, high = int(1000 * (0.5 - 0.48 / 4) + 1e-6), int(1000 * (0.98 - 0.48 / 4) + 1e-6)  # 380, 860 at step 50
    t, noise = percent_draws(ctx, low, high)
    u = torch.rand(5, generator=ctx["gen"]) if plus_random else torch.ones(5)
    t2 = (t + (torch.minimum(cfg.plus_ratio * (t - low), 999 - t) * u).long()).clamp(1, 999)
    assert bool((t2 >= t).all()) and bool((t2 - t <= cfg.plus_ratio * (t - low)).all()) and bool((t2 > t).any())
    abar, abar2 = per_sample(ctx["abar"][t]), per_sample(ctx["abar"][t2])
    z_t = abar.sqrt() * ctx["z"] + (1 - abar).sqrt() * noise
    z_t2 = abar2.sqrt() * ctx["z"] + (1 - abar2).sqrt() * noise  # the same noise at the later step
    e_c, e_u = ctx["eps"](z_t, t, ctx["cond"]), ctx["eps"](z_t, t, ctx["uncond"])
    g = (1 - abar) * (e_u + cfg.guidance_scale * (e_c - e_u) - ctx["eps"](z_t2, t2, ctx["cond"]))
    if clip is not None:
        g = g.clamp(-clip, clip)
    assert torch.allclose(grad, as_render_grad(g), atol=1e-6, rtol=1e-4)


def test_asd_later_timesteps_spread_over_the_rest_at_late_t():
    """ScaleDreamer's effective get_t_plus clamps dt to 999 - t before U(0, 1): at t = 990 with a large dt bound,
    t2 is uniform-ish over [990, 999]; clamping after the multiplication would put most draws on 999."""
    from dreamengine.guidance.asd import later_timesteps

    t = torch.full((4000,), 990)
    u = torch.rand(4000, generator=torch.Generator().manual_seed(0))
    t2 = later_timesteps(t, 20, 0.5, u, 1000)  # bound 0.5 * 970 = 485 >> 9
    assert torch.equal(t2, t + (9 * u).long())
    assert float((t2 == 999).float().mean()) < 0.02 and set(t2.tolist()) == set(range(990, 999))
    assert torch.equal(later_timesteps(torch.tensor([100, 998]), 20, 0.1, None, 1000), torch.tensor([108, 999]))


def test_asd_perp_neg_scales_negative_weights_by_minus_guidance_perp_neg():
    teacher, rgb, prompts = perp_neg_inputs()
    batch, cond, uncond = rgb.shape[0], prompts.cond, prompts.uncond
    cfg = ASDConfig(guidance_scale=5.0, guidance_perp_neg=-0.5, plus_random=False, min_step_percent=0.02,
                    max_step_percent=0.98)
    out = ASDGuidance(cfg, teacher, 100)(rgb, prompts, None, 0, torch.Generator().manual_seed(SEED))
    out.loss.backward()
    gen = torch.Generator().manual_seed(SEED)
    t = torch.randint(20, 981, (batch,), generator=gen)
    z = 2.0 * rgb.detach().permute(0, 3, 1, 2) - 1.0
    noise = torch.randn(z.shape, generator=gen)
    t2 = (t + torch.minimum(0.1 * (t - 20), 999 - t).long()).clamp(1, 999)
    abar, abar2 = per_sample(teacher.alphas_cumprod[t]), per_sample(teacher.alphas_cumprod[t2])
    z_t, z_t2 = abar.sqrt() * z + (1 - abar).sqrt() * noise, abar2.sqrt() * z + (1 - abar2).sqrt() * noise
    e_c, e_u = teacher.predict_noise(z_t, t, cond), teacher.predict_noise(z_t, t, uncond)
    e_pos, perp = e_c - e_u, 0
    for k in range(2):
        e_k = teacher.predict_noise(z_t, t, prompts.neg[:, k]) - e_u
        dot = (e_k * e_pos).sum(dim=(1, 2, 3), keepdim=True) / (e_pos * e_pos).sum(dim=(1, 2, 3), keepdim=True)
        perp = perp + 0.5 * per_sample(prompts.neg_weights[:, k]) * (e_k - dot * e_pos)
    g = (1 - abar) * (e_u + 5.0 * (e_pos + perp) - teacher.predict_noise(z_t2, t2, cond))
    assert torch.allclose(rgb.grad, as_render_grad(g), atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------------------ timestep helpers
def test_lucid_timestep_range_anneals_upper_bound():
    assert warmup_rate(0, 1500) == 1.0 and warmup_rate(750, 1500) == 0.5 and warmup_rate(3000, 1500) == 0.0
    assert lucid_timestep_range(0, 1500, 1000) == (20, 979)  # randint(20, 980) is exclusive of 980
    assert lucid_timestep_range(750, 1500, 1000) == (20, 500 + 240 - 1)
    assert lucid_timestep_range(1500, 1500, 1000) == (20, 499)
    assert lucid_timestep_range(99999, 1500, 1000) == (20, 499)
    assert lucid_timestep_range(5, 0, 1000) == (20, 499)  # no warm-up


def test_percent_timestep_range_follows_schedules():
    assert percent_timestep_range(0.02, 0.98, 0, 1000) == (20, 980)
    assert percent_timestep_range([0, 0.5, 0.02, 100], [0, 0.98, 0.5, 100], 50, 1000) == (260, 740)
    assert percent_timestep_range(0.02, [5000, 0.98, 0.5, 5001], 6000, 1000) == (20, 500)
    assert percent_timestep_range(0.0, 1.0, 0, 1000) == (0, 999)


def test_shared_timestep_is_one_uniform_draw_per_batch():
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_shared_timestep(4, 20, 25, gen) for _ in range(600)])
    assert bool((draws == draws[:, :1]).all())
    assert set(draws[:, 0].tolist()) == set(range(20, 26))


def test_offset_noise_adds_one_shared_offset_per_channel():
    shape = torch.Size([3, 4, 5, 5])
    plain = offset_noise(shape, 0.0, torch.Generator().manual_seed(2), torch.float32)
    assert torch.equal(plain, torch.randn(shape, generator=torch.Generator().manual_seed(2)))
    offset = offset_noise(shape, 0.1, torch.Generator().manual_seed(2), torch.float32) - plain
    assert torch.allclose(offset, offset[:1, :, :1, :1].expand(shape))  # same for every sample and pixel
    assert float(offset.abs().max()) > 0


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("cfg_cls,kwargs,key", [
    (BSDConfig, {"variant": "balanced"}, "guidance.variant"),
    (BSDConfig, {"auto_norm_divisor": 0.0}, "guidance.auto_norm_divisor"),
    (BSDConfig, {"max_step_percent": 0.99}, "guidance.max_step_percent"),
    (ISMConfig, {"xs_inv_steps": 0}, "guidance.xs_inv_steps"),
    (ISMConfig, {"delta_t": -5}, "guidance.delta_t"),
    (ISMConfig, {"warmup_steps": -1}, "guidance.warmup_steps"),
    (CSMConfig, {"weighting": "sds2"}, "guidance.weighting"),
    (CSMConfig, {"noise_offset": -0.1}, "guidance.noise_offset"),
    (CSDConfig, {"null_scale": [1, 2]}, "guidance.null_scale"),
    (CSDConfig, {"weighting": "ism"}, "guidance.weighting"),
    (NFSDConfig, {"small_t_threshold": -1}, "guidance.small_t_threshold"),
    (NFSDConfig, {"grad_clip": "big"}, "guidance.grad_clip"),
    (ASDConfig, {"plus_ratio": -0.1}, "guidance.plus_ratio"),
    (ASDConfig, {"min_step_percent": [0.5, 0.02]}, "guidance.min_step_percent"),
])
def test_config_validation_names_the_key(cfg_cls, kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfg_cls(**kwargs)


def test_every_method_is_registered_with_its_config():
    for name in ("bsd", "csm", "ism", "csd", "nfsd", "asd"):
        assert GUIDANCE_CONFIGS[name]().name == name and name in GUIDANCES


def test_bad_guidance_value_in_config_file_is_a_config_error():
    with pytest.raises(ConfigError, match="guidance.variant"):
        load_config("bsd-toy", ["guidance.variant=bogus"], prompt="a red cube")


# ----------------------------------------------------------------------------------- Trainer smoke
@pytest.mark.parametrize("config,overrides", [("bsd-toy", []), ("bsd-toy", ["guidance.variant=auto"]),
                                              ("csm-toy", []), ("ism-toy", []), ("csd-toy", []), ("nfsd-toy", []),
                                              ("asd-toy", [])])
def test_method_trains_end_to_end(tmp_path: Path, config, overrides):
    cfg = load_config(config, [*TINY, "trainer.max_steps=3", "trainer.log_every=1", *overrides], prompt="a red cube")
    trainer = Trainer(cfg, tmp_path)
    before = {k: v.clone() for k, v in trainer.scene.state_dict().items()}
    terms = [trainer.train_step() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(step["loss"])) and "skipped" not in step for step in terms)
    assert any(not torch.equal(before[k], v) for k, v in trainer.scene.state_dict().items())


@pytest.mark.parametrize("name", ["bsd", "csm", "ism", "nfsd"])
def test_perp_neg_prompts_are_refused_not_ignored(name):
    teacher = StubTeacher()
    guidance = GUIDANCES[name](GUIDANCE_CONFIGS[name](), teacher, 100)
    batch = PromptBatch(teacher.embed(["a"]), teacher.embed([""]), ["a"])
    batch.neg = teacher.embed(["b", "c"])[None]  # [B, K, ...] as the Perp-Neg prompt processor sets it
    with pytest.raises(ConfigError, match="perp_neg=false"):
        guidance(torch.rand(1, 8, 8, 3), batch, None, 0, torch.Generator().manual_seed(0))
