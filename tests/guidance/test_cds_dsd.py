"""CDS (Consistent3D) and DSD (DreamPolish, reconstruction): gradients against the formulas written out here in
their source's own (variance-exploding) form, their schedules, fixed noise, checkpoints and a trainer smoke run."""

import math
from pathlib import Path

import pytest
import torch

from dreamengine.config import load_config
from dreamengine.config.guidance import CDSConfig
from dreamengine.core.conditioning import PromptBatch
from dreamengine.errors import ConfigError
from dreamengine.guidance.cds import CDSGuidance, annealed_target_step
from dreamengine.trainer import Trainer
from tests.cli_helpers import TINY
from tests.guidance.test_guidance_methods import TEACHERS, as_render_grad, per_sample

SEED = 11


def call(guidance, teacher, rgb, step, batch):
    cond = teacher.embed(["a red cube", "x", "yy", "zzz"][:batch])
    uncond = teacher.embed(["blurry"] * batch)
    out = guidance(rgb, PromptBatch(cond, uncond, ["p"] * batch), None, step, torch.Generator().manual_seed(SEED))
    return out, cond, uncond


# ----------------------------------------------------------------------------------------------- CDS
def test_cds_target_step_anneals_along_sqrt():
    assert annealed_target_step([0, 700, 100, 3000], "sqrt", 0) == 700
    assert annealed_target_step([0, 700, 100, 3000], "sqrt", 750) == int(700 - 600 * math.sqrt(0.25))  # 400
    assert annealed_target_step([0, 700, 100, 3000], "linear", 750) == 550
    assert annealed_target_step([0, 700, 100, 3000], "sqrt", 5000) == 100
    assert annealed_target_step(300, "sqrt", 5000) == 300


@pytest.mark.parametrize("kind", ["linear", "nonlinear"])
@pytest.mark.parametrize("step,rescale", [(0, 0.0), (750, 0.0), (1500, 0.7)])
def test_cds_gradient_equals_consistent3d_formula(kind, step, rescale):
    """Consistent3D's VE steps: zs = z + k_t eps*, e1 at zs / sqrt(1 + k_t^2), zs' = zs + (k_t' - k_t) e1',
    e2 at zs' / sqrt(1 + k_t'^2); target z + (k_t/k_t')(e1' - e1) + (e2 - e1') descended by MSE."""
    teacher_cls, eps_fn = TEACHERS[kind]
    teacher, batch = teacher_cls(), 3
    cfg = CDSConfig(guidance_scale=[0, 10.0, 5.0, 3000], recon_std_rescale=rescale, grad_clip=None,
                    weighting="sds")
    rgb = torch.rand(batch, 8, 8, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out, cond, uncond = call(CDSGuidance(cfg, teacher, 100), teacher, rgb, step, batch)
    out.loss.backward()

    gen = torch.Generator().manual_seed(SEED)
    t_next = max(min(int(700 - 600 * math.sqrt(min(step / 3000, 1.0))), 880), 100)
    t = (t_next + torch.randint(100, 300, (batch,), generator=gen)).clamp(100, 980)
    noise = torch.randn(1, 3, 8, 8, generator=gen).expand(batch, 3, 8, 8)  # one eps* for every view
    s = 10.0 - 5.0 * step / 3000
    abar = teacher.alphas_cumprod
    k, k2 = per_sample(((1 - abar[t]) / abar[t]).sqrt()), ((1 - abar[t_next]) / abar[t_next]).sqrt()
    z = 2.0 * rgb.detach().permute(0, 3, 1, 2) - 1.0
    tt = torch.full((batch,), t_next)

    def cfg_a(x, time):
        ec, eu = eps_fn(x, time, cond), eps_fn(x, time, uncond)
        return ec + s * (ec - eu), ec

    zs = z + k * noise
    e1, e_text = cfg_a(zs / (1 + k**2).sqrt(), t)
    x0 = zs - k * e1
    if rescale:
        x0_text = zs - k * e_text
        factor = (x0_text.std(dim=(1, 2, 3), keepdim=True) + 1e-8) / (x0.std(dim=(1, 2, 3), keepdim=True) + 1e-8)
        x0 = rescale * x0 * factor + (1 - rescale) * x0
    e1r = (zs - x0) / k
    zs2 = zs + (k2 - k) * e1r
    e2, _ = cfg_a(zs2 / (1 + k2**2).sqrt(), tt)
    grad_latents = (1 - per_sample(abar[t])) * ((k / (k2 + 1e-9)) * (e1r - e1) + (e2 - e1r))
    g = -grad_latents  # target = z + grad_latents, d/dz 0.5 |z - target|^2 / B = -grad_latents / B
    assert torch.allclose(rgb.grad, as_render_grad(g), atol=1e-6, rtol=1e-4)
    assert out.terms["t_next"] == t_next


def test_cds_noise_is_drawn_once_and_checkpointed():
    teacher_cls, _ = TEACHERS["nonlinear"]
    teacher = teacher_cls()
    guidance = CDSGuidance(CDSConfig(), teacher, 100)
    rgb = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(1))
    first = guidance.draw_noise(torch.Size([2, 3, 8, 8]), torch.Generator().manual_seed(0), torch.float32, "cpu")
    again = guidance.draw_noise(torch.Size([2, 3, 8, 8]), torch.Generator().manual_seed(5), torch.float32, "cpu")
    assert torch.equal(first, again) and torch.equal(first[0], first[1])
    call(guidance, teacher, rgb, 10, 2)
    restored = CDSGuidance(CDSConfig(), teacher, 100)
    restored.load_state_dict(guidance.state_dict())
    a = call(guidance, teacher, rgb, 20, 2)[0]
    b = call(restored, teacher, rgb, 20, 2)[0]
    assert torch.equal(a.loss, b.loss)
    fresh = CDSGuidance(CDSConfig(share_noise=False), teacher, 100)
    n = fresh.draw_noise(torch.Size([2, 3, 8, 8]), torch.Generator().manual_seed(0), torch.float32, "cpu")
    assert not torch.equal(n[0], n[1])


def test_cds_refuses_perp_neg_and_bad_settings():
    teacher_cls, _ = TEACHERS["linear"]
    teacher = teacher_cls()
    batch = PromptBatch(teacher.embed(["a"]), teacher.embed([""]), ["a"])
    batch.neg = teacher.embed(["b", "c"])[None]
    with pytest.raises(ConfigError, match="perp_neg=false"):
        CDSGuidance(CDSConfig(), teacher, 100)(torch.rand(1, 8, 8, 3), batch, None, 0)
    for kwargs, key in [({"anneal": "cubic"}, "guidance.anneal"), ({"cur_steps": [1, 2]}, "guidance.cur_steps"),
                        ({"perturb_factor": 0}, "guidance.perturb_factor"),
                        ({"recon_std_rescale": 2.0}, "guidance.recon_std_rescale")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            CDSConfig(**kwargs)


@pytest.mark.parametrize("config", ["cds-toy"])
def test_method_trains_end_to_end(tmp_path: Path, config):
    cfg = load_config(config, [*TINY, "trainer.max_steps=3", "trainer.log_every=1"], prompt="a red cube")
    trainer = Trainer(cfg, tmp_path)
    before = {k: v.clone() for k, v in trainer.scene.state_dict().items()}
    terms = [trainer.train_step() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(step["loss"])) and "skipped" not in step for step in terms)
    assert any(not torch.equal(before[k], v) for k, v in trainer.scene.state_dict().items())


# ----------------------------------------------------------------------------------------------- DSD
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_dsd_gradient_equals_template(lam):
    """g = (1 - abar) [s (eps_c - eps_u) + lambda (eps_u - eps) + (1 - lambda) (eps_u - eps_phi)]; lambda = 0 is VSD,
    lambda = 1 is SDS with convention B; phi trains in the same call as VSD's."""
    import copy

    from dreamengine.config.guidance import DSDConfig
    from dreamengine.guidance.dsd import DSDGuidance
    from tests.guidance.test_vsd import LoRAStubTeacher, phi_formula, randomize_camera_embedding, stub_eps, stub_inputs

    teacher = LoRAStubTeacher("epsilon")
    cfg = DSDConfig(guidance_scale=6.0, domain_weight=[0, lam, lam, 1], max_step_percent=[5, 0.98, 0.5, 6])
    guidance = DSDGuidance(cfg, teacher, max_steps=100)
    randomize_camera_embedding(guidance.score_model.camera)
    camera_mlp = copy.deepcopy(guidance.score_model.camera)
    w_before = float(teacher.lora_w.detach())
    rgb, prompts, cameras = stub_inputs(teacher)
    out = guidance(rgb, prompts, cameras, step=10, generator=torch.Generator().manual_seed(SEED))
    out.loss.backward()
    gen = torch.Generator().manual_seed(SEED)
    z = 2.0 * rgb.detach().permute(0, 3, 1, 2) - 1.0
    t = torch.randint(20, 501, (3,), generator=gen)
    noise = torch.randn(z.shape, generator=gen)
    abar = per_sample(teacher.alphas_cumprod[t])
    z_t = abar.sqrt() * z + (1 - abar).sqrt() * noise
    e_c, e_u = stub_eps(z_t, t, prompts.cond), stub_eps(z_t, t, prompts.uncond)
    with torch.no_grad():
        e_phi = phi_formula(z_t, t, prompts.plain, camera_mlp(cameras.c2w.reshape(3, 16)), torch.tensor(w_before))
    g = (1 - abar) * (6.0 * (e_c - e_u) + lam * (e_u - noise) + (1 - lam) * (e_u - e_phi))
    assert torch.allclose(rgb.grad, as_render_grad(g), atol=1e-6, rtol=1e-4)
    if lam == 0.0:  # VSD: eps_pre - eps_phi with eps_pre = e_u + s (e_c - e_u)
        assert torch.allclose(g, (1 - abar) * (e_u + 6.0 * (e_c - e_u) - e_phi), atol=1e-6)
    assert float(teacher.lora_w.detach()) != w_before and out.terms["domain_weight"] == lam


def test_dsd_toy_trains_end_to_end(tmp_path: Path):
    cfg = load_config("dsd-toy", [*TINY, "trainer.max_steps=2", "trainer.log_every=1"], prompt="a red cube")
    trainer = Trainer(cfg, tmp_path)
    terms = [trainer.train_step() for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(step["loss"])) and "lora_loss" in step for step in terms)
