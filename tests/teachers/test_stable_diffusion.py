"""StableDiffusionTeacher on tiny random-weight stacks saved and loaded as a user's local model folder."""

import json
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from dreamengine.config.prompts import PromptConfig  # noqa: E402
from dreamengine.config.teachers import StableDiffusionTeacherConfig  # noqa: E402
from dreamengine.core.protocols import TeacherContext  # noqa: E402
from dreamengine.prompts import PromptProcessor  # noqa: E402
from dreamengine.teachers.stable_diffusion import (  # noqa: E402
    ModelNotFoundError,
    StableDiffusionTeacher,
    explain_load_failure,
)
from dreamengine.teachers.toyworld import scaled_linear_alphas_cumprod  # noqa: E402
from tests.cli_helpers import cli_env, only_run_dir, run_cli  # noqa: E402
from tests.tiny_sd import MAX_TOKENS, TEXT_DIM, save_tiny_sd  # noqa: E402

CONTEXT = TeacherContext(distance=2.5, fovy_deg=40.0, background=(1.0, 1.0, 1.0), view_thresholds=(45, 45, 60),
                         device=torch.device("cpu"))


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def teacher(sd_folder):
    return StableDiffusionTeacher(str(sd_folder))


def test_loads_a_local_folder_with_the_model_schedule(teacher, sd_folder):
    assert teacher.resolution == 64 and teacher.prediction_type == "epsilon"
    assert teacher.num_train_timesteps == 1000
    assert torch.allclose(teacher.alphas_cumprod.double(), scaled_linear_alphas_cumprod(1000), atol=1e-7)
    assert all(not p.requires_grad for p in teacher.unet.parameters())
    config = StableDiffusionTeacherConfig(model=str(sd_folder), device="cpu")
    built = StableDiffusionTeacher.from_config(config, CONTEXT)
    assert built.embedding_key == teacher.embedding_key


def test_encode_resizes_scales_and_passes_gradients(teacher):
    rgb = torch.rand(2, 3, 40, 48, requires_grad=True)
    z = teacher.encode(rgb)
    assert z.shape == (2, 4, 8, 8) and z.dtype == torch.float32
    with torch.no_grad():
        resized = F.interpolate(rgb, size=(64, 64), mode="bilinear", align_corners=False)
        expected = teacher.vae.encode(2 * resized - 1).latent_dist.mean * teacher.vae.config.scaling_factor
    assert torch.allclose(z, expected, atol=1e-6)
    (z * torch.randn_like(z)).sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.vae.parameters())
    image = teacher.decode(z.detach())
    assert image.shape == (2, 3, 64, 64) and image.min() >= 0 and image.max() <= 1


def test_embed_pads_and_truncates_long_prompts_with_a_warning(teacher):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        short = teacher.embed(["a cat", ""])
    assert short.shape == (2, MAX_TOKENS, TEXT_DIM)
    long_prompt = "a very detailed photograph of a small cat, " * 6  # over 32 tokens with any vocabulary
    with pytest.warns(UserWarning, match="truncated"):
        long = teacher.embed([long_prompt])
    ids = teacher.tokenizer(long_prompt).input_ids
    clipped = torch.tensor([ids[: MAX_TOKENS - 1] + [teacher.tokenizer.eos_token_id]])
    with torch.no_grad():
        assert torch.allclose(long, teacher.text_encoder(clipped)[0], atol=1e-6)


def test_v_prediction_and_epsilon_teachers_give_the_same_eps(teacher, sd_folder, tmp_path):
    """A v-prediction UNet that outputs the v of an eps UNet must yield that UNet's eps after conversion."""
    v_folder = tmp_path / "v-model"  # the same weights; the scheduler config says v_prediction
    shutil.copytree(sd_folder, v_folder)
    scheduler_config = v_folder / "scheduler" / "scheduler_config.json"
    scheduler_config.write_text(json.dumps({**json.loads(scheduler_config.read_text()),
                                            "prediction_type": "v_prediction"}))
    eps_teacher = teacher
    v_teacher = StableDiffusionTeacher(str(v_folder))
    assert v_teacher.prediction_type == "v_prediction"
    eps_unet, abar = eps_teacher.unet, eps_teacher.alphas_cumprod.double()

    class VFromEps(torch.nn.Module):  # v = (eps - sqrt(1 - abar) z_t) / sqrt(abar)
        config = eps_unet.config  # a UNet's config, as the teacher reads it

        def forward(self, sample, t, encoder_hidden_states):
            eps = eps_unet(sample, t, encoder_hidden_states=encoder_hidden_states).sample.double()
            a = abar[t].view(-1, 1, 1, 1)
            v = (eps - (1 - a).sqrt() * sample.double()) / a.sqrt()
            return type("Out", (), {"sample": v.float()})()

    v_teacher.unet = VFromEps()
    gen = torch.Generator().manual_seed(0)
    z_t = torch.randn(4, 4, 8, 8, generator=gen)
    t = torch.tensor([0, 250, 600, 980])
    emb = eps_teacher.embed(["a cat", "a dog", "", "a cat"])
    expected = eps_teacher.predict_noise(z_t, t, emb)
    assert torch.allclose(v_teacher.predict_noise(z_t, t, emb), expected, atol=2e-5, rtol=1e-4)
    raw = v_teacher.unet(z_t, t, emb).sample  # the conversion is not the identity
    assert not torch.allclose(raw, expected, atol=1e-2)


def test_prompt_processor_caches_tiny_sd_embeddings(teacher, tmp_path, monkeypatch):
    cfg = PromptConfig(cache_dir=str(tmp_path))
    first = PromptProcessor(teacher, "a cat", cfg)
    calls = []
    monkeypatch.setattr(teacher, "embed", lambda prompts: calls.append(prompts) or 1 / 0)
    second = PromptProcessor(teacher, "a cat", cfg)
    assert calls == [] and torch.equal(first.cond_embeddings, second.cond_embeddings)
    assert torch.equal(first.uncond_embedding, second.uncond_embedding)


def test_missing_local_folder_names_it_and_says_how_to_fetch(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as info:
        StableDiffusionTeacher(str(missing))
    message = str(info.value)
    assert str(missing) in message and "hf download" in message and "teacher.model" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        StableDiffusionTeacher(str(tmp_path / "empty"))


def test_gated_repository_message():
    from huggingface_hub.errors import GatedRepoError

    gated = GatedRepoError.__new__(GatedRepoError)  # its __init__ wants an HTTP response; the type is what counts
    Exception.__init__(gated, "403 Client Error: access to model org/secret is restricted")
    try:
        try:
            raise gated
        except GatedRepoError as inner:
            raise OSError("cannot load org/secret") from inner
    except OSError as error:
        message = str(explain_load_failure("org/secret", None, error))
    assert "gated" in message and "https://huggingface.co/org/secret" in message and "hf download" in message


def test_unknown_repository_is_not_called_gated():
    from huggingface_hub.errors import RepositoryNotFoundError

    missing = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
    Exception.__init__(missing, "404 Repository Not Found. If you are trying to access a private or gated repo, "
                                "make sure you are authenticated.")
    message = str(explain_load_failure("org/typo", None, missing))
    assert "does not exist" in message and "gated" not in message


# ---------------------------------------------------------------------------------------- through the CLI
TINY_SD = ["device=cpu", "teacher.resolution=null", "camera.height=32", "camera.width=32", "render.num_samples=16",
           "trainer.max_steps=3", "trainer.preview_every=0", "trainer.checkpoint_every=0", "trainer.progress=false",
           "export.resolution=32", "export.threshold=2.0"]  # a fixed level: the fitted one costs seconds


def test_generate_with_the_tiny_stack_through_the_cli(sd_folder, tmp_path):
    env_cache = tmp_path / "cache"
    result = run_cli(["generate", "a cat", "teacher.name=stable-diffusion", f"teacher.model={sd_folder}",
                      f"prompt_processor.cache_dir={env_cache}", "prompt_processor.perp_neg=true", *TINY_SD],
                     tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["teacher"]["name"] == "stable-diffusion" and manifest["teacher"]["model"] == str(sd_folder)
    assert manifest["teacher"]["revision"] is None and manifest["teacher"]["prediction_type"] == "epsilon"
    assert (run_dir / "ckpt" / "last.pt").is_file() and (run_dir / "final" / "model.glb").is_file()
    assert len(list(env_cache.glob("text-*.safetensors"))) == 6  # 4 directions, negative, plain prompt
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log if "loss" in r)


def flat(text: str) -> str:
    """Text without any whitespace (the CLI wraps messages at 100 columns)."""
    return "".join(text.split())


@pytest.mark.parametrize("model", ["missing-folder", "stabilityai/stable-diffusion-2-1-base"])
def test_missing_model_message_through_the_cli(model, tmp_path):
    target = str(tmp_path / model) if model == "missing-folder" else model
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    args = ["generate", "a cat", "teacher.name=stable-diffusion", f"teacher.model={target}", "device=cpu"]
    result = subprocess.run([sys.executable, "-m", "dreamengine.cli", *args], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={**cli_env(tmp_path), **env})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1
    assert flat(target) in flat(result.stderr)
    assert flat("hf download") in flat(result.stderr) and "teacher.model=DIR" in flat(result.stderr)
    if model != "missing-folder":
        assert flat("is not in the Hugging Face cache") in flat(result.stderr)
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_tiny_tokenizer_uses_the_real_clip_ids_when_open_clip_is_installed():
    from tests.tiny_sd import clip_bpe_merges, tiny_tokenizer

    if clip_bpe_merges() is None:
        pytest.skip("CLIP's BPE vocabulary is unavailable: open_clip_torch is not installed and its wheel could "
                    "not be downloaded")
    assert tiny_tokenizer()("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_packaged_dreamfusion_sd_config_matches_threestudio():
    from dreamengine.config import load_config

    cfg = load_config("dreamfusion-sd", prompt="a hamburger")
    assert cfg.teacher.name == "stable-diffusion" and cfg.teacher.model == "stabilityai/stable-diffusion-2-1-base"
    assert (cfg.guidance.name, cfg.guidance.guidance_scale, cfg.guidance.weighting) == ("sds", 100.0, "sds")
    assert (cfg.guidance.min_step_percent, cfg.guidance.max_step_percent) == (0.02, 0.98)
    assert (cfg.scene.name, cfg.scene.num_levels, cfg.scene.log2_hashmap_size) == ("nerf", 16, 19)
    assert cfg.trainer.max_steps == 10000 and cfg.loss.lambda_orient == [0, 10.0, 1000.0, 5000]
