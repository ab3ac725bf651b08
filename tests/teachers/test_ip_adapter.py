"""Visual prompts: an IP-Adapter (diffusers' load_ip_adapter) on the tiny Stable Diffusion teacher."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from dreamengine.teachers.stable_diffusion import StableDiffusionTeacher  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.tiny_sd import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("sd") / "sd")


@pytest.fixture(scope="module")
def teacher(folder) -> StableDiffusionTeacher:
    from tests.tiny_sd import tiny_image_encoder, tiny_ip_adapter

    model = StableDiffusionTeacher(str(folder), resolution=64)
    model.pipe.register_modules(image_encoder=tiny_image_encoder())
    model.load_ip_adapter(tiny_ip_adapter(model.unet), subfolder="", weight_name="", scale=1.0)
    model.set_visual_prompt(torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(0)))
    return model


def test_image_prompt_conditions_the_text_rows_and_not_the_unconditional_one(teacher):
    z_t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([400, 400])
    embeddings = teacher.embed(["a red cube", ""])
    eps = teacher.predict_noise(z_t, t, embeddings)
    image = teacher.visual_prompt
    with torch.no_grad():
        cond = teacher.unet(z_t[:1], t[:1], encoder_hidden_states=embeddings[:1],
                            added_cond_kwargs={"image_embeds": [image]}).sample
        uncond = teacher.unet(z_t[1:], t[1:], encoder_hidden_states=embeddings[1:],
                              added_cond_kwargs={"image_embeds": [torch.zeros_like(image)]}).sample
        without_image = teacher.unet(z_t[:1], t[:1], encoder_hidden_states=embeddings[:1],
                                     added_cond_kwargs={"image_embeds": [torch.zeros_like(image)]}).sample
    torch.testing.assert_close(eps[:1], cond)
    torch.testing.assert_close(eps[1:], uncond)
    assert not torch.allclose(cond, without_image)  # the image prompt changes the prediction


def test_scale_zero_is_the_text_only_teacher(teacher, folder):
    from dreamengine.errors import ConfigError

    z_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([300])
    embeddings = teacher.embed(["a red cube"])
    teacher.pipe.set_ip_adapter_scale(0.0)
    try:
        eps = teacher.predict_noise(z_t, t, embeddings)
    finally:
        teacher.pipe.set_ip_adapter_scale(1.0)
    plain = StableDiffusionTeacher(str(folder), resolution=64)  # the same weights without an adapter
    torch.testing.assert_close(eps, plain.predict_noise(z_t, t, embeddings), atol=1e-5, rtol=1e-5)
    saved, teacher.visual_prompt = teacher.visual_prompt, None
    try:
        with pytest.raises(ConfigError, match="no image prompt"):
            teacher.predict_noise(z_t, t, embeddings)
    finally:
        teacher.visual_prompt = saved


def tiny_visual_prompt_overrides(folder, tmp_path) -> list[str]:
    """Overrides that put a visual-prompt system (vp3d, tv3dg) on the tiny SD stack with a tiny IP-Adapter, small."""
    from diffusers import UNet2DConditionModel

    from tests.tiny_sd import save_tiny_ip_adapter

    adapter = save_tiny_ip_adapter(tmp_path / "ip", UNet2DConditionModel.from_pretrained(folder / "unet"))
    return [f"teacher.model={folder}", f"teacher.ip_adapter={adapter}", "teacher.resolution=64",
            f"text_prior.model={folder}", "image.sample_steps=4", "camera.height=24", "camera.width=24",
            "trainer.max_steps=1", "device=cpu"]


def test_vp3d_samples_a_visual_prompt_and_guides_with_it(folder, tmp_path):
    from dreamengine.api import prepare

    overrides = [*tiny_visual_prompt_overrides(folder, tmp_path), "render.num_samples=16",
                 "scene.log2_hashmap_size=12"]
    run = prepare("a red cube", system="vp3d", overrides=overrides, run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "input" / "visual-prompt.png").is_file()  # the sampled image is kept in the run
    assert run.trainer.teacher.visual_prompt is not None  # and is the teacher's image prompt
    terms = run.trainer.train_step()
    assert "ref_rgb" not in terms and terms["grad_norm"] > 0  # guided, not reconstructed


def test_vpcsm_takes_the_classifier_term_between_text_plus_image_and_nothing(teacher):
    """TV-3DG's VPCSM: CSM on a teacher with a visual prompt. Its gradient is w gamma (eps(x_t; text + image) -
    eps(x_t; nothing)) at the DDIM-inverted x_t, the inversion itself run without the image (the empty prompt)."""
    from dreamengine.config.guidance import CSMConfig
    from dreamengine.core.conditioning import PromptBatch
    from dreamengine.guidance.csm import CSMGuidance

    guidance = CSMGuidance(CSMConfig(warmup_steps=10), teacher, max_steps=20)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([500])
    prompts = PromptBatch(teacher.embed(["a red cube"]), teacher.embed([""]), ["a red cube"])
    grad, _ = guidance.gradient(z, t, noise, prompts, None, 15, None)

    x_t, _, _ = guidance.interval_points(z, t, noise, 15, None)
    image = teacher.visual_prompt
    with torch.no_grad():
        with_image = teacher.unet(x_t, t, encoder_hidden_states=prompts.cond,
                                  added_cond_kwargs={"image_embeds": [image]}).sample
        nothing = teacher.unet(x_t, t, encoder_hidden_states=prompts.uncond,
                               added_cond_kwargs={"image_embeds": [torch.zeros_like(image)]}).sample
    abar = teacher.alphas_cumprod[500]
    expected = 0.1 * ((1 - abar) / abar).sqrt() * 7.5 * (with_image - nothing)
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-4)

    saved = teacher.visual_prompt  # a different visual prompt steers the gradient elsewhere
    teacher.set_visual_prompt(torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(9)))
    try:
        other, _ = guidance.gradient(z, t, noise, prompts, None, 15, None)
    finally:
        teacher.visual_prompt = saved
    assert not torch.allclose(other, grad, atol=1e-4)


def test_tv3dg_guides_gaussians_with_a_given_or_sampled_visual_prompt(folder, tmp_path):
    from PIL import Image

    from dreamengine.api import prepare

    overrides = [*tiny_visual_prompt_overrides(folder, tmp_path), "camera.batch_size=1", "scene.num_points=200"]
    sampled = prepare("a red cube", system="tv3dg", overrides=overrides, run_dir=tmp_path / "sampled")
    assert (tmp_path / "sampled" / "input" / "visual-prompt.png").is_file()
    assert sampled.trainer.cfg.guidance.name == "csm" and sampled.trainer.teacher.visual_prompt is not None
    terms = sampled.trainer.train_step()
    assert "ref_rgb" not in terms and terms["grad_norm"] > 0  # guided by the visual prompt, not reconstructing it

    given = tmp_path / "my visual prompt.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(given)
    run = prepare("a red cube", image=given, system="tv3dg", overrides=overrides, run_dir=tmp_path / "given")
    assert (tmp_path / "given" / "input" / given.name).read_bytes() == given.read_bytes()
    assert not (tmp_path / "given" / "input" / "visual-prompt.png").exists()  # nothing sampled
    assert not torch.allclose(run.trainer.teacher.visual_prompt, sampled.trainer.teacher.visual_prompt)
