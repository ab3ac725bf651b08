"""VSD (ProlificDreamer): the gradient on the render against its formula, the particle score model's training
(loss, targets, camera dropout), checkpoint round trips, the frozen teacher's isolation from the LoRA, and
end-to-end runs with the toy teacher and a tiny random Stable Diffusion stack."""

import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dreamengine.config import load_config
from dreamengine.config.guidance import GUIDANCE_CONFIGS, VSDConfig
from dreamengine.config.prompts import PromptConfig
from dreamengine.core.cameras import CameraSampler
from dreamengine.core.conditioning import PromptBatch
from dreamengine.errors import ConfigError
from dreamengine.guidance import GUIDANCES
from dreamengine.guidance.particle_score import CameraEmbedding, PixelScoreUNet, camera_condition
from dreamengine.guidance.vsd import VSDGuidance
from dreamengine.prompts import PromptProcessor
from dreamengine.trainer import Trainer
from tests.cli_helpers import TINY, cli_env, only_run_dir
from tests.stub_teacher import StubTeacher

SEED = 11


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation, which on a loaded 2-core
    machine makes a LoRA step 10-100x slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class LoRAStubTeacher(StubTeacher):
    """StubTeacher that offers a fake "LoRA on its UNet", a closed-form function of its inputs:

        phi(x, t, y, c) = 0.3 x + w tanh(x) + sum(y) + mean(E(c)) + 0.01 t / T

    with the trainable scalar w (the "LoRA") and E the guidance's camera embedding. It records the cameras
    it is given. ``prediction_type`` says whether phi's output is read as eps or v."""

    time_embedding_dim = 6

    def __init__(self, prediction_type: str = "epsilon") -> None:
        super().__init__()
        self.prediction_type = prediction_type
        self.cameras_seen: list[torch.Tensor] = []

    def add_lora_adapter(self, rank, alpha):
        self.lora_w = torch.nn.Parameter(torch.tensor(0.2))
        return {"w": self.lora_w}

    def predict_with_adapter(self, z_t, t, embeddings, class_embedding, class_labels):
        self.cameras_seen.append(class_labels.detach().clone())
        return phi_formula(z_t, t, embeddings, class_embedding(class_labels), self.lora_w)


def phi_formula(x, t, emb, cam_emb, w):
    return 0.3 * x + w * torch.tanh(x) + (emb.sum(-1) + cam_emb.mean(-1) + 0.01 * t.float() / 1000).view(-1, 1, 1, 1)


def stub_eps(x, t, emb):
    """tests/stub_teacher.StubTeacher's eps, restated."""
    return 0.5 * x + (emb.sum(-1) + 0.01 * t.float() / 1000).view(-1, 1, 1, 1)


def per_sample(values):
    return values.view(-1, 1, 1, 1)


def to_eps(out, x, abar, prediction_type):
    if prediction_type == "epsilon":
        return out
    a = per_sample(abar)
    return a.sqrt() * out + (1 - a).sqrt() * x


def stub_inputs(teacher, batch=3):
    cameras = CameraSampler(elevation_range=(-10.0, 60.0)).sample(batch, torch.Generator().manual_seed(2))
    prompts = PromptBatch(cond=teacher.embed(["a red cube, side view", "x", "yy", "zzz"][:batch]),
                          uncond=teacher.embed(["blurry"] * batch), texts=["p"] * batch,
                          plain=teacher.embed(["a red cube"] * batch))
    rgb = torch.rand(batch, 8, 8, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    return rgb, prompts, cameras


def randomize_camera_embedding(embedding: CameraEmbedding) -> None:
    """The output layer starts at zero; give it values so the camera actually changes phi."""
    with torch.no_grad():
        embedding.linear_2.weight.copy_(torch.randn(embedding.linear_2.weight.shape,
                                                    generator=torch.Generator().manual_seed(3)))


# ------------------------------------------------------------------------------------------- the formula
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("scale_lora", [1.0, 2.5])
def test_vsd_gradient_on_render_equals_formula(prediction_type, scale_lora):
    teacher = LoRAStubTeacher(prediction_type)
    cfg = VSDConfig(guidance_scale=6.0, guidance_scale_lora=scale_lora, max_step_percent=[5, 0.98, 0.5, 6])
    guidance = VSDGuidance(cfg, teacher, max_steps=100)
    randomize_camera_embedding(guidance.score_model.camera)
    camera_mlp = copy.deepcopy(guidance.score_model.camera)  # phi as it is before the call trains it
    w_before = float(teacher.lora_w.detach())
    rgb, prompts, cameras = stub_inputs(teacher)
    out = guidance(rgb, prompts, cameras, step=10, generator=torch.Generator().manual_seed(SEED))
    out.loss.backward()

    # the same draws, recomputed: t per element in [20, 500] at step 10, then noise
    gen = torch.Generator().manual_seed(SEED)
    z = 2.0 * rgb.detach().permute(0, 3, 1, 2) - 1.0
    t = torch.randint(20, 501, (3,), generator=gen)
    noise = torch.randn(z.shape, generator=gen)
    abar = teacher.alphas_cumprod[t]
    z_t = per_sample(abar).sqrt() * z + per_sample(1 - abar).sqrt() * noise
    e_c, e_u = stub_eps(z_t, t, prompts.cond), stub_eps(z_t, t, prompts.uncond)
    e_pretrained = e_u + cfg.guidance_scale * (e_c - e_u)  # convention B
    c2w = cameras.c2w.reshape(3, 16)
    with torch.no_grad():
        phi_c = phi_formula(z_t, t, prompts.plain, camera_mlp(c2w), torch.tensor(w_before))
        phi_0 = phi_formula(z_t, t, prompts.plain, camera_mlp(torch.zeros_like(c2w)), torch.tensor(w_before))
    e_phi_c, e_phi_0 = to_eps(phi_c, z_t, abar, prediction_type), to_eps(phi_0, z_t, abar, prediction_type)
    e_phi = e_phi_0 + scale_lora * (e_phi_c - e_phi_0)
    g = per_sample(1 - abar) * (e_pretrained - e_phi)
    expected = (2.0 * g / 3).permute(0, 2, 3, 1)  # z = 2 rgb - 1, d loss / dz = g / B
    assert torch.allclose(rgb.grad, expected, atol=1e-6, rtol=1e-4)
    assert not torch.allclose(e_phi_c, e_phi_0)  # the camera matters, so the LoRA CFG is exercised
    assert out.terms["t_mean"] == pytest.approx(float(t.float().mean()))
    assert float(teacher.lora_w.detach()) != w_before  # phi trained in the same call, after g was computed


def test_teacher_pass_uses_view_dependent_prompts_and_phi_the_plain_prompt():
    """Swapping cond and plain changes the gradient: each branch reads its own embedding."""
    teacher = LoRAStubTeacher()
    rgb, prompts, cameras = stub_inputs(teacher)
    grads = []
    for batch in (prompts, PromptBatch(prompts.plain, prompts.uncond, prompts.texts, plain=prompts.cond)):
        guidance = VSDGuidance(VSDConfig(), LoRAStubTeacher(), 100)
        x = rgb.detach().clone().requires_grad_(True)
        guidance(x, batch, cameras, 0, torch.Generator().manual_seed(SEED)).loss.backward()
        grads.append(x.grad)
    assert not torch.allclose(grads[0], grads[1])
    with pytest.raises(ValueError, match="PromptBatch.plain"):
        VSDGuidance(VSDConfig(), LoRAStubTeacher(), 100)(rgb, PromptBatch(prompts.cond, prompts.uncond, ["p"] * 3),
                                                          cameras, 0, torch.Generator().manual_seed(0))


def test_prompt_processor_gives_the_plain_prompt_per_view():
    teacher = StubTeacher()
    cams = CameraSampler().orbit(4, elevation_deg=10.0)
    for perp_neg in (False, True):
        batch = PromptProcessor(teacher, "a red cube", PromptConfig(perp_neg=perp_neg))(cams)
        assert torch.equal(batch.plain, teacher.embed(["a red cube"] * 4))


# ------------------------------------------------------------------------------- training the score model
def score_training_draws(z, cfg, seed_after_guidance_draws):
    """t', eps', dropout uniforms as VSD draws them after its own t and eps (documented order)."""
    gen = seed_after_guidance_draws
    count = z.shape[0] * cfg.lora_n_timestamp_samples
    t2 = torch.randint(0, 1000, (count,), generator=gen)
    noise2 = torch.randn((count, *z.shape[1:]), generator=gen)
    dropped = torch.rand((count,), generator=gen) < cfg.camera_dropout
    return t2, noise2, dropped


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_score_model_loss_uses_the_models_target(prediction_type):
    teacher = LoRAStubTeacher(prediction_type)
    cfg = VSDConfig(lora_n_timestamp_samples=2, camera_dropout=0.5)
    guidance = VSDGuidance(cfg, teacher, 100)
    randomize_camera_embedding(guidance.score_model.camera)
    camera_mlp = guidance.score_model.camera
    with torch.no_grad():
        camera_before = {k: v.clone() for k, v in camera_mlp.state_dict().items()}
    rgb, prompts, cameras = stub_inputs(teacher)
    out = guidance(rgb, prompts, cameras, 0, torch.Generator().manual_seed(SEED))

    gen = torch.Generator().manual_seed(SEED)
    z = 2.0 * rgb.detach().permute(0, 3, 1, 2) - 1.0
    torch.randint(20, 981, (3,), generator=gen), torch.randn(z.shape, generator=gen)  # VSD's own t and eps
    t2, noise2, dropped = score_training_draws(z, cfg, gen)
    zz = z.repeat(2, 1, 1, 1)
    abar = teacher.alphas_cumprod[t2]
    x = per_sample(abar).sqrt() * zz + per_sample(1 - abar).sqrt() * noise2
    c2w = cameras.c2w.reshape(3, 16).repeat(2, 1)
    c2w = torch.where(dropped[:, None], torch.zeros_like(c2w), c2w)
    assert torch.equal(teacher.cameras_seen[-1], c2w)  # the training pass saw exactly these cameras
    reference = CameraEmbedding(6)
    reference.load_state_dict(camera_before)
    with torch.no_grad():
        pred = phi_formula(x, t2, prompts.plain.repeat(2, 1), reference(c2w), torch.tensor(0.2))
    eps_target = noise2
    v_target = per_sample(abar).sqrt() * noise2 - per_sample(1 - abar).sqrt() * zz
    target = v_target if prediction_type == "v_prediction" else eps_target
    assert out.terms["lora_loss"] == pytest.approx(float(((pred - target) ** 2).mean()), rel=1e-5)
    other = eps_target if prediction_type == "v_prediction" else v_target
    assert out.terms["lora_loss"] != pytest.approx(float(((pred - other) ** 2).mean()), rel=1e-3)
    assert out.terms["camera_dropped"] == pytest.approx(float(dropped.float().mean()))


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.0])
def test_camera_dropout_happens_at_the_configured_rate(rate):
    teacher = LoRAStubTeacher()
    cfg = VSDConfig(camera_dropout=rate, lora_n_timestamp_samples=40)
    guidance = VSDGuidance(cfg, teacher, 100)
    gen = torch.Generator().manual_seed(4)
    rgb, prompts, cameras = stub_inputs(teacher, batch=4)
    z = 2.0 * rgb.detach().permute(0, 3, 1, 2) - 1.0
    camera = camera_condition(cameras)
    for _ in range(25):  # 25 calls x 4 views x 40 timestep samples = 4000 training samples
        guidance.train_score_model(z, prompts.plain, camera, gen)
    seen = torch.cat(teacher.cameras_seen)
    assert seen.shape == (4000, 16)
    zero = (seen == 0).all(dim=1)
    expected = camera.repeat(40, 1).repeat(25, 1)
    assert torch.equal(seen[~zero], expected[~zero])  # kept cameras are untouched
    # binomial std at 4000 samples is <= 0.0073: 4 sigma
    assert abs(float(zero.float().mean()) - rate) < 0.03
    if rate == 0.0:
        assert not zero.any()


def fixed_batch_losses(guidance, teacher, steps):
    rgb, prompts, cameras = stub_inputs(teacher, batch=2)
    z = teacher.encode(rgb.detach().permute(0, 3, 1, 2))
    plain = prompts.plain
    camera = camera_condition(cameras)
    return [guidance.train_score_model(z, plain, camera, torch.Generator().manual_seed(5))[0] for _ in range(steps)]


def test_pixel_score_model_loss_decreases_on_a_fixed_batch():
    teacher = StubTeacher()  # no add_lora_adapter: the pixel UNet
    guidance = VSDGuidance(VSDConfig(), teacher, 100)
    assert isinstance(guidance.score_model, PixelScoreUNet)
    losses = fixed_batch_losses(guidance, teacher, 40)
    assert losses[-1] < 0.3 * losses[0], losses


@pytest.mark.parametrize("make_teacher", [StubTeacher, LoRAStubTeacher])
def test_building_and_stepping_leave_the_global_rng_alone(make_teacher):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    teacher = make_teacher()
    guidance = VSDGuidance(VSDConfig(guidance_scale_lora=2.0), teacher, 100)
    rgb, prompts, cameras = stub_inputs(teacher)
    guidance(rgb, prompts, cameras, 0, torch.Generator().manual_seed(0)).loss.backward()
    assert torch.equal(torch.rand(3), expected)  # every draw came from the generator argument
    other = VSDGuidance(VSDConfig(), make_teacher(), 100).score_model
    fresh = VSDGuidance(VSDConfig(), make_teacher(), 100).score_model
    for key, value in other.state_dict().items():  # the same fixed-seed initial weights every time
        assert torch.equal(value, fresh.state_dict()[key])


# ------------------------------------------------------------------------------------- checkpoints
def round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def vsd_step(guidance, teacher, seed):
    rgb, prompts, cameras = stub_inputs(teacher, batch=2)
    out = guidance(rgb, prompts, cameras, 3, torch.Generator().manual_seed(seed))
    out.loss.backward()
    return rgb.grad, out.terms


def assert_round_trip_continues_exactly(make_teacher, cfg):
    teacher_a = make_teacher()
    first = VSDGuidance(cfg, teacher_a, 100)
    for seed in (1, 2):
        vsd_step(first, teacher_a, seed)
    state = round_trip(first.state_dict())
    teacher_b = make_teacher()
    second = VSDGuidance(cfg, teacher_b, 100)
    fresh_grad, _ = vsd_step(VSDGuidance(cfg, make_teacher(), 100), make_teacher(), 3)
    second.load_state_dict(state)
    grad_a, terms_a = vsd_step(first, teacher_a, 3)
    grad_b, terms_b = vsd_step(second, teacher_b, 3)
    assert torch.equal(grad_a, grad_b) and terms_a == terms_b
    assert not torch.equal(fresh_grad, grad_a)  # without the state the step differs
    for key, value in first.state_dict()["score_model"].items():
        assert torch.equal(value, second.state_dict()["score_model"][key]), key


def test_state_dict_round_trip_gives_identical_next_steps_pixel_model():
    assert_round_trip_continues_exactly(StubTeacher, VSDConfig())


def test_state_dict_round_trip_gives_identical_next_steps_lora_model():
    assert_round_trip_continues_exactly(LoRAStubTeacher, VSDConfig(guidance_scale_lora=1.5))


@pytest.mark.parametrize("particles", [1, 2])
def test_trainer_resume_with_vsd_equals_uninterrupted(tmp_path: Path, particles: int):
    def trainer(folder, steps):
        cfg = load_config("vsd-toy", [*TINY, "deterministic=true", f"trainer.max_steps={steps}",
                                      "render.occupancy_update_every=4", f"trainer.n_particles={particles}"],
                          prompt="a red cube")
        (tmp_path / folder).mkdir(exist_ok=True)
        return Trainer(cfg, tmp_path / folder)

    straight = trainer("a", 8)
    phi_batches = []
    real_train = straight.guidance.train_score_model

    def recording(z, *args, **kwargs):
        phi_batches.append(z.shape[0])
        return real_train(z, *args, **kwargs)

    straight.guidance.train_score_model = recording
    straight.fit()
    assert phi_batches == [particles] * 8  # one phi shared by the particles: it trains on all their renders
    first = trainer("b", 4)
    first.fit()
    second = trainer("b", 8)
    second.load()
    second.fit()
    for index in range(particles):
        for key, value in straight.scenes[index].state_dict().items():
            assert torch.equal(value, second.scenes[index].state_dict()[key]), (index, key)
    if particles == 2:  # the two particles are different scenes, not one scene twice
        first_scene, second_scene = (scene.state_dict() for scene in straight.scenes)
        assert any(not torch.equal(first_scene[k], second_scene[k]) for k in first_scene)
    for key, value in straight.guidance.state_dict()["score_model"].items():
        assert torch.equal(value, second.guidance.state_dict()["score_model"][key]), key


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("kwargs,key", [
    ({"camera_dropout": 1.5}, "guidance.camera_dropout"),
    ({"camera_condition_type": "mvp"}, "guidance.camera_condition_type"),
    ({"lora_rank": 0}, "guidance.lora_rank"),
    ({"lora_alpha": 0.0}, "guidance.lora_alpha"),
    ({"lora_lr": 0.0}, "guidance.lora_lr"),
    ({"pixel_model_width": 12}, "guidance.pixel_model_width"),
    ({"lora_n_timestamp_samples": 0}, "guidance.lora_n_timestamp_samples"),
    ({"max_step_percent": [0.5, 0.2]}, "guidance.max_step_percent"),
])
def test_config_validation_names_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        VSDConfig(**kwargs)


def test_registered_with_threestudio_defaults():
    cfg = GUIDANCE_CONFIGS["vsd"]()
    assert GUIDANCES["vsd"] is VSDGuidance
    assert (cfg.guidance_scale, cfg.guidance_scale_lora, cfg.camera_dropout) == (7.5, 1.0, 0.1)
    assert (cfg.min_step_percent, cfg.max_step_percent) == (0.02, [5000, 0.98, 0.5, 5001])
    assert (cfg.lora_rank, cfg.lora_lr, cfg.lora_n_timestamp_samples, cfg.camera_condition_type) == \
        (4, 1e-4, 1, "c2w")
    guidance = VSDGuidance(cfg, StubTeacher(), 100)
    assert guidance.timestep_range(5000) == (20, 980) and guidance.timestep_range(5001) == (20, 500)


# ------------------------------------------------------------------------------------ through the CLI
def run_cli(args: list[str], tmp_path: Path, timeout: float) -> subprocess.CompletedProcess:
    """tests.cli_helpers.run_cli with one intra-op thread (see ``one_thread``)."""
    return subprocess.run([sys.executable, "-m", "dreamengine.cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout, env={**cli_env(tmp_path), "OMP_NUM_THREADS": "1"})


def test_generate_with_the_toy_teacher_through_the_cli(tmp_path: Path):
    result = run_cli(["generate", "a red cube", "--config", "vsd-toy", *TINY, "trainer.max_steps=6",
                      "trainer.log_every=2", "trainer.progress=false"], tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6] and all(r["lora_loss"] > 0 for r in log)
    assert (run_dir / "final" / "model.glb").is_file() and (run_dir / "metrics.json").is_file()
    state = torch.load(run_dir / "ckpt" / "last.pt", weights_only=True)
    assert "conv_out.weight" in state["guidance"]["score_model"] and state["guidance"]["optimizer"]["state"]


# ------------------------------------------------------------------ a LoRA on a tiny random Stable Diffusion
TINY_SD = ["device=cpu", "teacher.resolution=null", "camera.height=32", "camera.width=32", "render.num_samples=16",
           "trainer.preview_every=0", "trainer.checkpoint_every=0", "trainer.progress=false",
           "export.resolution=32", "export.threshold=2.0",  # a fixed level: the fitted one costs seconds
           "export.texture_size=128", "report.turntable=false"]


def tiny_sd_teacher(prediction_type: str = "epsilon", dtype: str = "float32"):
    """A fresh tiny SD teacher built in memory (each VSD guidance installs its own LoRA on the teacher's UNet)."""
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline

    from dreamengine.teachers.stable_diffusion import StableDiffusionTeacher
    from tests.tiny_sd import tiny_components

    pipe = StableDiffusionPipeline(**tiny_components(prediction_type), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    return StableDiffusionTeacher("tiny-sd", pipeline=pipe, dtype=dtype)


def sd_inputs(teacher, batch=2):
    cameras = CameraSampler(elevation_range=(-10.0, 60.0)).sample(batch, torch.Generator().manual_seed(2))
    prompts = PromptBatch(cond=teacher.embed(["a cat, side view"] * batch), uncond=teacher.embed([""] * batch),
                          texts=["a cat, side view"] * batch, plain=teacher.embed(["a cat"] * batch))
    rgb = torch.rand(batch, 16, 16, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    return rgb, prompts, cameras


def test_lora_trains_without_touching_the_frozen_teacher_pass():
    teacher = tiny_sd_teacher()
    gen = torch.Generator().manual_seed(0)
    z_t, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([30, 700])
    rgb, prompts, cameras = sd_inputs(teacher)
    before = teacher.predict_noise(z_t, t, prompts.cond)
    guidance = VSDGuidance(VSDConfig(lora_lr=1e-2), teacher, 100)
    camera = camera_condition(cameras)
    assert teacher.unet.class_embedding is None and len(guidance.score_model.lora) > 0
    with torch.no_grad():  # phi starts as the teacher itself (LoRA B = 0, camera output layer = 0)
        assert torch.allclose(guidance.score_model(z_t, t, prompts.cond, camera), before, atol=1e-5)
    for seed in range(3):
        x = rgb.detach().clone().requires_grad_(True)
        guidance(x, prompts, cameras, 0, torch.Generator().manual_seed(seed)).loss.backward()
        assert x.grad.abs().sum() > 0
    assert any(float(p.detach().abs().max()) > 0 for n, p in guidance.score_model.lora.items() if "lora_B" in n)
    assert torch.equal(teacher.predict_noise(z_t, t, prompts.cond), before)  # the frozen pass is unchanged
    with torch.no_grad():
        assert not torch.allclose(guidance.score_model(z_t, t, prompts.cond, camera), before, atol=1e-4)
    assert teacher.unet.class_embedding is None
    assert all(p.grad is None for p in teacher.unet.parameters())
    assert all(not p.requires_grad for n, p in teacher.unet.named_parameters() if "lora_" not in n)
    with pytest.raises(Exception, match="one VSD guidance per teacher"):
        VSDGuidance(VSDConfig(), teacher, 100)


def test_lora_loss_decreases_on_a_fixed_batch():
    teacher = tiny_sd_teacher()
    guidance = VSDGuidance(VSDConfig(lora_lr=3e-3, camera_dropout=0.0), teacher, 100)
    losses = fixed_batch_losses(guidance, teacher, 25)
    assert losses[-1] < 0.8 * losses[0], losses


def test_v_prediction_model_trains_on_v_targets():
    teacher = tiny_sd_teacher("v_prediction")
    guidance = VSDGuidance(VSDConfig(), teacher, 100)
    assert guidance.score_model.prediction_type == "v_prediction"
    rgb, prompts, cameras = sd_inputs(teacher)
    z = teacher.encode(rgb.detach().permute(0, 3, 1, 2))
    camera = camera_condition(cameras)
    gen = torch.Generator().manual_seed(9)
    t2 = torch.randint(0, 1000, (2,), generator=gen)
    noise2 = torch.randn(z.shape, generator=gen)
    dropped = torch.rand((2,), generator=gen) < 0.1
    cam = torch.where(dropped[:, None], torch.zeros_like(camera), camera)
    abar = per_sample(teacher.alphas_cumprod[t2])
    x = abar.sqrt() * z + (1 - abar).sqrt() * noise2
    with torch.no_grad():
        pred = guidance.score_model(x, t2, prompts.plain, cam)
    loss, _ = guidance.train_score_model(z, prompts.plain, camera, torch.Generator().manual_seed(9))
    v = abar.sqrt() * noise2 - (1 - abar).sqrt() * z
    assert loss == pytest.approx(float(((pred - v) ** 2).mean()), rel=1e-4)
    assert loss != pytest.approx(float(((pred - noise2) ** 2).mean()), rel=1e-2)


def test_float16_teacher_keeps_the_lora_in_float32_and_trains_it():
    """The GPU default (teacher.dtype auto = float16): AdamW must not step float16 weights."""
    teacher = tiny_sd_teacher(dtype="float16")
    guidance = VSDGuidance(VSDConfig(lora_lr=1e-2, guidance_scale_lora=2.0), teacher, 100)
    assert teacher.unet.dtype == torch.float16
    assert {p.dtype for p in guidance.score_model.parameters()} == {torch.float32}
    rgb, prompts, cameras = sd_inputs(teacher)
    for seed in range(2):
        x = rgb.detach().clone().requires_grad_(True)
        out = guidance(x, prompts, cameras, 0, torch.Generator().manual_seed(seed))
        out.loss.backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0 and out.terms["lora_loss"] > 0
    assert any(float(p.detach().abs().max()) > 0 for n, p in guidance.score_model.lora.items() if "lora_B" in n)


def test_state_dict_round_trip_gives_identical_next_steps_with_a_real_lora():
    assert_round_trip_continues_exactly(tiny_sd_teacher, VSDConfig(lora_lr=1e-3, guidance_scale_lora=1.5))


def test_deepfloyd_if_teacher_gets_a_lora_too(tmp_path):
    pytest.importorskip("diffusers")
    from dreamengine.teachers.deepfloyd_if import DeepFloydIFTeacher
    from tests.tiny_sd import save_tiny_if

    teacher = DeepFloydIFTeacher(str(save_tiny_if(tmp_path / "if")))
    gen = torch.Generator().manual_seed(0)
    z_t, t = torch.randn(1, 3, 32, 32, generator=gen), torch.tensor([400])
    emb = teacher.embed(["a cat"])
    before = teacher.predict_noise(z_t, t, emb)
    guidance = VSDGuidance(VSDConfig(lora_lr=1e-2), teacher, 100)
    assert guidance.score_model.kind == "lora"
    rgb = torch.rand(1, 16, 16, 3, requires_grad=True)
    prompts = PromptBatch(emb, teacher.embed([""]), ["a cat"], plain=emb)
    cameras = CameraSampler().sample(1, gen)
    for seed in range(2):
        out = guidance(rgb, prompts, cameras, 0, torch.Generator().manual_seed(seed))
    out.loss.backward()
    assert torch.isfinite(rgb.grad).all() and out.terms["lora_loss"] > 0
    assert torch.equal(teacher.predict_noise(z_t, t, emb), before)


def test_generate_with_the_tiny_stack_through_the_cli(tmp_path: Path):
    pytest.importorskip("diffusers")
    from tests.tiny_sd import save_tiny_sd

    folder = save_tiny_sd(tmp_path / "tiny-sd", prediction_type="v_prediction")
    result = run_cli(["generate", "a cat", "--config", "vsd-sd", f"teacher.model={folder}",
                      f"prompt_processor.cache_dir={tmp_path / 'cache'}", "trainer.max_steps=3", "trainer.log_every=1",
                      *TINY_SD], tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["lora_loss"]])).all() for r in log)
    state = torch.load(run_dir / "ckpt" / "last.pt", weights_only=True)["guidance"]
    lora = [k for k in state["score_model"] if k.startswith("lora.")]
    assert lora and all(".vsd." in k for k in lora) and "camera.linear_2.weight" in state["score_model"]
    assert (run_dir / "final" / "model.glb").is_file()
