import pytest
import torch

from dreamengine.config.guidance import SDSConfig
from dreamengine.config.prompts import PromptConfig
from dreamengine.core.cameras import CameraSampler
from dreamengine.core.conditioning import PromptBatch
from dreamengine.guidance.base import gradient_to_loss
from dreamengine.guidance.sds import SDSGuidance
from dreamengine.prompts import PromptProcessor
from tests.stub_teacher import StubTeacher


def expected_sds_grad(teacher, rgb, cond, uncond, seed, cfg, step=0):
    """The formula of guidance-math.md §1, computed independently with the same random draws."""
    gen = torch.Generator().manual_seed(seed)
    z = 2.0 * rgb.permute(0, 3, 1, 2) - 1.0
    low, high = int(1000 * cfg.min_step_percent), int(1000 * cfg.max_step_percent)
    t = torch.randint(low, high + 1, (z.shape[0],), generator=gen)
    eps = torch.randn(z.shape, generator=gen)
    abar = teacher.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = abar.sqrt() * z + (1 - abar).sqrt() * eps
    e_c = 0.5 * z_t + (cond.sum(-1) + 0.01 * t / 1000).view(-1, 1, 1, 1)
    e_u = 0.5 * z_t + (uncond.sum(-1) + 0.01 * t / 1000).view(-1, 1, 1, 1)
    e_hat = e_c + cfg.guidance_scale * (e_c - e_u)
    w = {"sds": 1 - abar, "uniform": torch.ones_like(abar), "fantasia3d": abar.sqrt() * (1 - abar)}[cfg.weighting]
    g = w * (e_hat - eps)
    if cfg.grad_clip is not None:
        g = g.clamp(-cfg.grad_clip, cfg.grad_clip)
    # z = 2 rgb - 1 and d loss / d z = g / B  =>  d loss / d rgb = 2 g / B
    return (2.0 * g / z.shape[0]).permute(0, 2, 3, 1)


@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia3d"])
@pytest.mark.parametrize("clip", [None, 0.05])
def test_sds_gradient_on_render_equals_formula(weighting, clip):
    teacher = StubTeacher()
    cfg = SDSConfig(guidance_scale=7.0, weighting=weighting, grad_clip=clip)
    guidance = SDSGuidance(cfg, teacher, max_steps=100)
    rgb = torch.rand(3, 8, 8, 3, requires_grad=True)
    cond, uncond = teacher.embed(["a red cube", "x", "yy"]), teacher.embed(["", "", ""])
    out = guidance(rgb, PromptBatch(cond, uncond, ["a", "b", "c"]), None, step=0,
                   generator=torch.Generator().manual_seed(5))
    out.loss.backward()
    expected = expected_sds_grad(teacher, rgb.detach(), cond, uncond, 5, cfg)
    assert torch.allclose(rgb.grad, expected, atol=1e-6, rtol=1e-5)
    assert out.terms["t_mean"] >= 20


def test_gradient_to_loss_has_exact_gradient():
    z = torch.randn(4, 3, 5, 5, requires_grad=True)
    grad = torch.randn(4, 3, 5, 5)
    gradient_to_loss(z, grad).backward()
    assert torch.allclose(z.grad, grad / 4)


def test_timestep_range_schedules_and_sqrt_anneal():
    teacher = StubTeacher()
    guidance = SDSGuidance(SDSConfig(min_step_percent=0.02, max_step_percent=[100, 0.98, 0.5, 101]), teacher, 1000)
    assert guidance.timestep_range(0) == (20, 980)
    assert guidance.timestep_range(200) == (20, 500)
    annealed = SDSGuidance(SDSConfig(min_step_percent=0.2, max_step_percent=0.98, sqrt_anneal=True), teacher, 400)
    assert annealed.timestep_range(0) == (980, 980)
    assert annealed.timestep_range(100) == (int(1000 * (0.98 - 0.78 * 0.5)),) * 2
    assert annealed.timestep_range(400) == (200, 200)


def test_prompt_processor_picks_view_suffix_and_negative():
    teacher = StubTeacher()
    processor = PromptProcessor(teacher, "a red cube", PromptConfig(negative_prompt="blurry"))
    cams = CameraSampler().orbit(4, elevation_deg=10.0)  # azimuths 0, 90, 180, -90
    batch = processor(cams)
    assert batch.texts == ["a red cube, front view", "a red cube, side view", "a red cube, back view",
                           "a red cube, side view"]
    assert torch.equal(batch.cond, teacher.embed(batch.texts))
    assert torch.equal(batch.uncond, teacher.embed(["blurry"] * 4))
    flat = PromptProcessor(teacher, "a red cube", PromptConfig(view_dependent=False))
    assert flat(cams).texts == ["a red cube"] * 4
