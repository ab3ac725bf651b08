"""MVDream's x0-reconstruction SDS against its formula, and every guidance method with a multi-view teacher:
which work (the views of a group share their timestep), and VSD's clear refusal."""

from __future__ import annotations

import pytest
import torch

from dreamengine.config.guidance import GUIDANCE_CONFIGS, MVDreamSDSConfig
from dreamengine.config.prompts import PromptConfig
from dreamengine.core.cameras import CameraSampler
from dreamengine.errors import ConfigError
from dreamengine.guidance import GUIDANCES
from dreamengine.guidance.mvdream_sds import MVDreamSDSGuidance
from dreamengine.prompts import PromptProcessor
from dreamengine.teachers.toyworld_multiview import ToyWorldMultiViewTeacher


@pytest.fixture(scope="module")
def teacher() -> ToyWorldMultiViewTeacher:
    return ToyWorldMultiViewTeacher(resolution=8, objects=("a snowman", "a red cube"), elevations=(0.0, 30.0),
                                    azimuth_step=90.0, camera_width=20.0)


def batch(teacher, groups: int = 2, seed: int = 0):
    cameras = CameraSampler(views_per_group=4).sample(4 * groups, torch.Generator().manual_seed(seed))
    prompts = PromptProcessor(teacher, "a snowman", PromptConfig(view_dependent=False))(cameras)
    return cameras, prompts


def test_gradient_is_z_minus_the_rescaled_x0_of_each_group(teacher):
    cameras, prompts = batch(teacher)
    generator = torch.Generator().manual_seed(1)
    z = torch.rand(8, 3, 8, 8, generator=generator) * 2 - 1
    noise = torch.randn(8, 3, 8, 8, generator=generator)
    t = torch.full((8,), 600)
    cfg = MVDreamSDSConfig(guidance_scale=5.0, recon_std_rescale=0.5)
    g, _ = MVDreamSDSGuidance(cfg, teacher, 100).gradient(z, t, noise, prompts, cameras, 0, None)

    a = teacher.alphas_cumprod[600].double()
    z_t = a.sqrt() * z.double() + (1 - a).sqrt() * noise.double()
    eps_c = teacher.predict_noise(z_t.float(), t, prompts.cond, cameras).double()
    eps_u = teacher.predict_noise(z_t.float(), t, prompts.uncond, cameras).double()
    eps_hat = eps_u + 5.0 * (eps_c - eps_u)
    x0 = (z_t - (1 - a).sqrt() * eps_hat) / a.sqrt()
    x0_c = (z_t - (1 - a).sqrt() * eps_c) / a.sqrt()
    expected = torch.empty_like(x0)
    for group in range(2):  # the reference's std over [n_view, C, H, W] of each object
        rows = slice(4 * group, 4 * group + 4)
        factor = (x0_c[rows].std() + 1e-8) / (x0[rows].std() + 1e-8)
        expected[rows] = z.double()[rows] - (0.5 * factor * x0[rows] + 0.5 * x0[rows])
    assert torch.allclose(g.double(), expected, atol=1e-4, rtol=1e-4)

    plain, _ = MVDreamSDSGuidance(MVDreamSDSConfig(guidance_scale=5.0, recon_loss=False), teacher, 100).gradient(
        z, t, noise, prompts, cameras, 0, None)
    assert torch.allclose(plain.double(), (1 - a) * (eps_hat - noise.double()), atol=1e-4, rtol=1e-4)


def test_default_schedule_anneals_both_bounds_from_0_98():
    guidance = MVDreamSDSGuidance(MVDreamSDSConfig(), type("T", (), {"num_train_timesteps": 1000})(), 10000)
    assert guidance.timestep_range(0) == (980, 980)
    assert guidance.timestep_range(4000) == (500, 740)
    assert guidance.timestep_range(8000) == guidance.timestep_range(9999) == (20, 500)


class TimestepSpy:
    """Delegates to a teacher and records the timesteps of its calls."""

    def __init__(self, teacher) -> None:
        self._teacher, self.calls = teacher, []

    def __getattr__(self, name):
        return getattr(self._teacher, name)

    def predict_noise(self, z_t, t, embeddings, cameras=None):
        self.calls.append(t.clone())
        return self._teacher.predict_noise(z_t, t, embeddings, cameras)


@pytest.mark.parametrize("name", sorted(set(GUIDANCES) - {"vsd", "dsd"}))
def test_guidance_methods_work_with_a_multi_view_teacher_one_timestep_per_group(name, teacher):
    cameras, prompts = batch(teacher, seed=2)
    spy = TimestepSpy(teacher)
    guidance = GUIDANCES[name](GUIDANCE_CONFIGS[name](), spy, 100)
    rgb = torch.rand(8, 16, 16, 3, generator=torch.Generator().manual_seed(3)).requires_grad_()
    out = guidance(rgb, prompts, cameras, 10, torch.Generator().manual_seed(4))
    out.loss.backward()
    assert bool(torch.isfinite(rgb.grad).all())
    # CSM keeps only gamma (eps_c - eps_u): here both branches' exact posteriors settle on the same snowman set
    assert float(rgb.grad.abs().max()) > 0 or name == "csm"
    for t in spy.calls:  # every teacher pass sees each group of 4 views at one noise level
        per_group = t.view(-1, 4)
        assert torch.equal(per_group, per_group[:, :1].expand_as(per_group)), (name, t)


def test_vsd_refuses_a_multi_view_teacher_and_odd_batches_are_refused(teacher):
    for name in ("vsd", "dsd"):  # DSD uses VSD's particle score model
        with pytest.raises(ConfigError, match=f"{name} does not work with a multi-view teacher"):
            GUIDANCES[name](GUIDANCE_CONFIGS[name](), teacher, 100)
    cameras, prompts = batch(teacher)
    guidance = GUIDANCES["sds"](GUIDANCE_CONFIGS["sds"](), teacher, 100)
    with pytest.raises(ConfigError, match="groups of 4 views.*camera.views_per_group=4"):
        guidance(torch.rand(6, 8, 8, 3), prompts, cameras, 0, torch.Generator())
