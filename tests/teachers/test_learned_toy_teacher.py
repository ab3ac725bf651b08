"""The shipped learned toy teacher (dreamengine/models/toy-learned) through the real diffusers teacher code.

It is a real trained diffusion model, so these tests check what it *knows*, against the toy world's ground truth:
its samples are the prompted objects, and its denoiser needs the right prompt. A wrong sign in the eps
conversion, swapped cond/uncond branches or an off-by-one timestep in the teacher path breaks them.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from dreamengine.config.teachers import DeepFloydIFTeacherConfig  # noqa: E402
from dreamengine.core.cameras import cameras_from_spherical  # noqa: E402
from dreamengine.core.protocols import TeacherContext  # noqa: E402
from dreamengine.teachers.deepfloyd_if import DeepFloydIFTeacher  # noqa: E402
from dreamengine.teachers.stable_diffusion import ModelNotFoundError, builtin_model  # noqa: E402
from dreamengine.toyworld import parse_prompt, render_toy  # noqa: E402
from tests.cli_helpers import only_run_dir, run_cli, run_cli_in_process  # noqa: E402

SHAPES = ("sphere", "cube", "cylinder", "cone", "torus")
COLORS = ("red", "green", "blue", "yellow")


@pytest.fixture(scope="module")
def teacher() -> DeepFloydIFTeacher:
    torch.manual_seed(0)
    config = DeepFloydIFTeacherConfig(model="builtin:toy-learned", device="cpu")
    context = TeacherContext(distance=2.5, fovy_deg=40.0, background=(1.0, 1.0, 1.0), view_thresholds=(45, 45, 60),
                             device=torch.device("cpu"))
    return DeepFloydIFTeacher.from_config(config, context)


def article(color: str) -> str:
    return "an" if color[0] in "aeiou" else "a"


def views(count: int, seed: int) -> object:
    """``count`` random cameras framed as in training: elevation in [-10, 60], distance 2.5, fovy 40."""
    g = torch.Generator().manual_seed(seed)
    elevation = -10.0 + 70.0 * torch.rand(count, generator=g)
    azimuth = -180.0 + 360.0 * torch.rand(count, generator=g)
    return cameras_from_spherical(elevation, azimuth, torch.full((count,), 2.5), torch.full((count,), 40.0))


def truth(prompt: str, count: int, seed: int) -> torch.Tensor:
    """Ground-truth renders [count, 3, 32, 32] in [-1, 1] of the prompt's object."""
    rgb = render_toy(parse_prompt(prompt), views(count, seed), 32, 32, background=(1.0, 1.0, 1.0), supersample=2)
    return 2.0 * rgb["rgb"].permute(0, 3, 1, 2) - 1.0


def test_builtin_name_resolves_to_the_shipped_folder_and_unknown_names_are_clear_errors():
    for name in ("toy-learned", "toy-learned-camera"):
        folder = builtin_model(f"builtin:{name}")
        assert folder is not None and folder.name == name and (folder / "model_index.json").is_file()
        for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
            assert (folder / part).stat().st_size < 8_000_000  # fp16, a few MB
    assert builtin_model("DeepFloyd/IF-I-XL-v1.0") is None
    with pytest.raises(ModelNotFoundError, match="builtin:toy-learned"):
        builtin_model("builtin:toy-unlearned")


def test_loads_through_the_if_teacher_with_sd_schedule_and_finite_predictions(teacher):
    assert teacher.resolution == 32 and teacher.channels == 3 and teacher.prediction_type == "epsilon"
    assert teacher.num_train_timesteps == 1000
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2  # SD's scaled_linear
    assert torch.allclose(teacher.alphas_cumprod.double(), torch.cumprod(1 - betas, 0), atol=1e-6)
    emb = teacher.embed(["a red cube", ""])
    assert emb.shape == (2, 77, 64) and emb.dtype == torch.float32
    z_t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    eps = teacher.predict_noise(z_t, torch.tensor([20, 900]), emb)
    assert eps.shape == (2, 3, 32, 32) and eps.dtype == torch.float32 and torch.isfinite(eps).all()


def test_denoiser_recovers_the_render_and_needs_the_right_prompt(teacher):
    """x0 = (z_t - sqrt(1 - a) eps) / sqrt(a) from the teacher's eps is much closer to the true render than z_t is
    (eps has the right sign and timestep), and closer under the true prompt than under another object's or no
    prompt (the text conditioning reaches the UNet)."""
    prompts = ["a red cube", "a blue torus", "a yellow cone"]
    x0 = torch.cat([truth(p, 4, seed=k) for k, p in enumerate(prompts)])  # [12, 3, 32, 32]
    g = torch.Generator().manual_seed(1)
    t = torch.full((len(x0),), 600)
    a = teacher.alphas_cumprod[t].view(-1, 1, 1, 1)
    noise = torch.randn(x0.shape, generator=g)
    z_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    emb = teacher.embed(prompts + ["a green sphere", ""])

    def error(rows: list[int]) -> float:
        eps = teacher.predict_noise(z_t, t, emb[rows].repeat_interleave(4, dim=0))
        x0_hat = (z_t - (1 - a).sqrt() * eps) / a.sqrt()
        return float(((x0_hat.clamp(-1, 1) - x0) ** 2).mean())

    right, wrong, empty = error([0, 1, 2]), error([1, 2, 0]), error([4, 4, 4])
    naive = float(((z_t / a.sqrt()).clamp(-1, 1) - x0).pow(2).mean())
    assert right < 0.2 * naive
    assert right < 0.5 * wrong and right < empty


@torch.no_grad()
def sample(teacher: DeepFloydIFTeacher, prompts: list[str], guidance: float, steps: int, seed: int) -> torch.Tensor:
    """Ancestral DDPM samples [P, 3, 32, 32] in [-1, 1] with classifier-free guidance, written against the
    teacher's own ``embed``/``predict_noise``/``alphas_cumprod`` (the path SDS uses), x0 clipped to [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    abar = teacher.alphas_cumprod.double()
    ts = torch.linspace(999, 0, steps).round().long()
    cond, uncond = teacher.embed(prompts), teacher.embed([""]).expand(len(prompts), -1, -1)
    x = torch.randn(len(prompts), 3, 32, 32, generator=g, dtype=torch.float64)
    for i, t in enumerate(ts):
        a_t = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        tt = t.repeat(len(prompts))
        eps_u = teacher.predict_noise(x.float(), tt, uncond).double()
        eps_c = teacher.predict_noise(x.float(), tt, cond).double()
        eps = eps_u + guidance * (eps_c - eps_u)
        x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        if i + 1 == len(ts):
            x = x0
            break
        beta = 1 - a_t / a_prev  # the step's effective beta; posterior q(x_prev | x_t, x0)
        mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)) * x
        var = beta * (1 - a_prev) / (1 - a_t)
        x = mean + var.sqrt() * torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x.float()


@pytest.mark.slow
def test_samples_are_recognisably_the_prompted_object(teacher):
    """20 samples (5 shapes x 4 colors, CFG 7.5, 15 DDPM steps) classified by their nearest ground-truth render
    among 20 random views of each of the 20 candidate objects: most get both color and shape right."""
    objects = [f"{article(c)} {c} {s}" for s in SHAPES for c in COLORS]
    samples = sample(teacher, objects, guidance=7.5, steps=15, seed=0)
    assert torch.isfinite(samples).all()
    refs = torch.cat([truth(p, 20, seed=100 + k) for k, p in enumerate(objects)])  # [20 * 20, 3, 32, 32]
    nearest = torch.cdist(samples.flatten(1), refs.flatten(1)).argmin(dim=1) // 20
    correct = [int(n) == k for k, n in enumerate(nearest)]
    shape_ok = [objects[int(n)].split()[-1] == objects[k].split()[-1] for k, n in enumerate(nearest)]
    assert sum(correct) >= 16, [objects[int(n)] for n in nearest]
    assert sum(shape_ok) >= 16


@pytest.mark.slow
def test_learned_toy_config_runs_end_to_end_and_is_evaluated(tmp_path):
    """``--config learned-toy`` finds the shipped model with no path from the user, trains, exports and writes
    the toy-world evaluation (a few steps: this checks the plumbing, the benchmark measures quality)."""
    listed = run_cli_in_process(["configs"], tmp_path)
    assert listed.returncode == 0 and "learned-toy" in listed.stdout and "quickstart" in listed.stdout
    result = run_cli(["generate", "a red cube", "--config", "learned-toy", "camera.height=24", "camera.width=24",
                      "render.num_samples=16", "trainer.max_steps=4", "trainer.preview_every=0",
                      "trainer.checkpoint_every=0", "trainer.progress=false", "export.resolution=32",
                      "eval.resolution=32", "eval.num_views=4", "report.turntable=false",
                      f"prompt_processor.cache_dir={tmp_path / 'cache'}"], tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["teacher"]["name"] == "deepfloyd-if" and config["teacher"]["model"] == "builtin:toy-learned-camera"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["object"] == "a red cube" and 0.0 <= metrics["mask_iou"] <= 1.0
    assert (run_dir / "final" / "model.glb").is_file()


def test_loading_casts_nothing_twice(capfd):
    """The pipeline is loaded in the teacher's dtype, so moving it to the device casts nothing (diffusers warns
    on every dtype cast after loading, which read as a problem on every learned-toy run)."""
    teacher = DeepFloydIFTeacher("builtin:toy-learned", device="cpu")
    assert teacher.unet.dtype == torch.float32 and teacher.text_encoder.dtype == torch.float32
    assert "should be kept in float32" not in capfd.readouterr().err


@pytest.fixture(scope="module")
def camera_teacher() -> DeepFloydIFTeacher:
    return DeepFloydIFTeacher("builtin:toy-learned-camera", device="cpu")


def test_the_camera_model_denoises_toward_the_view_its_camera_names(camera_teacher):
    """The camera-conditioned learned teacher (builtin:toy-learned-camera) predicts x0 from a noisy render closer
    to the truth when it is given the render's own camera than when given another camera (the elevation mirrored,
    the azimuth turned half way): the camera reaches the UNet through the IF teacher and the model uses it."""
    from dreamengine.core.cameras import cameras_from_spherical

    assert camera_teacher.camera_conditioned
    prompts = ["an orange cone", "a house", "a blue torus"]
    cameras = views(4, seed=7)
    x0 = torch.cat([2.0 * render_toy(parse_prompt(p), cameras, 32, 32, background=(1.0, 1.0, 1.0),
                                     supersample=2)["rgb"].permute(0, 3, 1, 2) - 1.0 for p in prompts])
    g = torch.Generator().manual_seed(3)
    t = torch.full((len(x0),), 700)
    a = camera_teacher.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g)
    emb = camera_teacher.embed(prompts).repeat_interleave(4, dim=0)
    wrong = cameras_from_spherical(50.0 - cameras.elevation, cameras.azimuth + 180.0, torch.full((4,), 2.5),
                                   torch.full((4,), 40.0))
    per_prompt = torch.arange(4).repeat(len(prompts))  # the 4 cameras for each prompt's 4 renders

    def error(cams) -> float:
        eps = camera_teacher.predict_noise(z_t, t, emb, cams[per_prompt])
        x0_hat = ((z_t - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
        return float((x0_hat - x0).pow(2).mean())

    right, other = error(cameras), error(wrong)
    assert right < 0.8 * other, (right, other)
