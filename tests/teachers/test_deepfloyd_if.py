"""DeepFloydIFTeacher on a tiny random-weight IF stage-I stack saved as a local diffusers folder."""

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from dreamengine.config.teachers import DeepFloydIFTeacherConfig  # noqa: E402
from dreamengine.core.protocols import TeacherContext  # noqa: E402
from dreamengine.teachers.deepfloyd_if import DeepFloydIFTeacher  # noqa: E402
from dreamengine.teachers.stable_diffusion import ModelNotFoundError  # noqa: E402
from tests.cli_helpers import only_run_dir, run_cli  # noqa: E402
from tests.tiny_sd import TEXT_DIM, save_tiny_if  # noqa: E402


@pytest.fixture(scope="module")
def if_folder(tmp_path_factory):
    return save_tiny_if(tmp_path_factory.mktemp("tiny-if"))


@pytest.fixture(scope="module")
def teacher(if_folder):
    config = DeepFloydIFTeacherConfig(model=str(if_folder), device="cpu")
    context = TeacherContext(distance=2.5, fovy_deg=40.0, background=(1.0, 1.0, 1.0), view_thresholds=(45, 45, 60),
                             device=torch.device("cpu"))
    return DeepFloydIFTeacher.from_config(config, context)


def cosine_alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    """The squaredcos_cap_v2 schedule (Nichol & Dhariwal): beta_i = min(1 - f(i+1)/f(i), 0.999)."""
    def f(i):
        return math.cos((i / steps + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - f(i + 1) / f(i), 0.999) for i in range(steps)]
    return torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), dim=0)


def test_loads_with_its_cosine_schedule(teacher):
    assert isinstance(teacher, DeepFloydIFTeacher)
    assert teacher.resolution == 32 and teacher.num_train_timesteps == 1000
    assert torch.allclose(teacher.alphas_cumprod.double(), cosine_alphas_cumprod(), atol=1e-6)


def test_encode_is_resized_pixels_with_gradients(teacher):
    rgb = torch.rand(2, 3, 48, 40, requires_grad=True)
    z = teacher.encode(rgb)
    expected = 2 * F.interpolate(rgb.detach(), size=(32, 32), mode="bilinear", align_corners=False) - 1
    assert torch.allclose(z, expected, atol=1e-6)
    z.sum().backward()
    assert rgb.grad.abs().sum() > 0
    assert torch.allclose(teacher.decode(z.detach()), (z.detach() + 1) / 2, atol=1e-6)


def test_predict_noise_keeps_the_eps_half_of_the_learned_variance_output(teacher):
    emb = teacher.embed(["a cat", ""])
    assert emb.shape == (2, 77, TEXT_DIM)
    z_t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 900])
    with torch.no_grad():
        raw = teacher.unet(z_t, t, encoder_hidden_states=emb).sample
    assert raw.shape == (2, 6, 32, 32)
    assert torch.equal(teacher.predict_noise(z_t, t, emb), raw[:, :3])


def test_missing_if_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        DeepFloydIFTeacher(str(tmp_path / "IF-I-XL"))


def test_generate_with_the_tiny_if_stack_through_the_cli(if_folder, tmp_path):
    result = run_cli(["generate", "a cat", "teacher.name=deepfloyd-if", f"teacher.model={if_folder}",
                      "teacher.resolution=null", f"prompt_processor.cache_dir={tmp_path / 'cache'}", "device=cpu",
                      "guidance.guidance_scale=20", "camera.height=32", "camera.width=32", "render.num_samples=16",
                      "trainer.max_steps=3", "trainer.preview_every=0", "trainer.checkpoint_every=0",
                      "trainer.progress=false", "--no-export"], tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]  # export is covered by the Stable Diffusion CLI test
    assert (only_run_dir(tmp_path) / "ckpt" / "last.pt").is_file()


def test_packaged_dreamfusion_if_config():
    from dreamengine.config import load_config

    cfg = load_config("dreamfusion-if", prompt="a hamburger")
    assert (cfg.teacher.name, cfg.teacher.model, cfg.teacher.variant) == ("deepfloyd-if", "DeepFloyd/IF-I-XL-v1.0",
                                                                          "fp16")
    assert (cfg.guidance.name, cfg.guidance.guidance_scale) == ("sds", 20.0)


@pytest.fixture(scope="module")
def camera_teacher(tmp_path_factory):
    folder = save_tiny_if(tmp_path_factory.mktemp("tiny-if-camera"), seed=1, camera=True)
    return DeepFloydIFTeacher(str(folder), device="cpu")


def camera_batch():
    from dreamengine.core.cameras import cameras_from_spherical

    return cameras_from_spherical(torch.tensor([10.0, 45.0]), torch.tensor([0.0, 120.0]), torch.tensor([2.5, 3.0]),
                                  torch.tensor([40.0, 40.0]))


def test_a_camera_conditioned_pixel_model_gets_each_views_mvdream_camera(camera_teacher, teacher):
    """Scored with cameras, the UNet's camera embedding gets MVDream's camera of each view (translation unit
    length), repeated for the batch's copies; without cameras the embedding is removed (MVDream's camera=None);
    a model without a camera embedding ignores cameras."""
    from dreamengine.teachers.mvdream import mvdream_camera

    assert camera_teacher.camera_conditioned and not teacher.camera_conditioned
    cameras = camera_batch()
    g = torch.Generator().manual_seed(0)
    z_t, t = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([100, 700, 100, 700])
    emb = camera_teacher.embed(["a cube", "a cube", "", ""])
    unet = camera_teacher.unet
    labels = mvdream_camera(cameras).repeat(2, 1)
    assert torch.allclose(labels[:, [3, 7, 11]].norm(dim=1), torch.ones(4), atol=1e-5)
    with torch.no_grad():
        expected = unet(z_t, t, encoder_hidden_states=emb, class_labels=labels).sample[:, :3]
        embedding, unet.class_embedding = unet.class_embedding, None
        expected_plain = unet(z_t, t, encoder_hidden_states=emb).sample[:, :3]
        unet.class_embedding = embedding
    with_cameras = camera_teacher.predict_noise(z_t, t, emb, cameras)
    assert torch.allclose(with_cameras, expected, atol=1e-5)
    assert torch.allclose(camera_teacher.predict_noise(z_t, t, emb), expected_plain, atol=1e-5)
    assert not torch.allclose(with_cameras, expected_plain, atol=1e-3)  # the camera reaches the UNet
    swapped = camera_batch()[torch.tensor([1, 0])]
    assert not torch.allclose(camera_teacher.predict_noise(z_t, t, emb, swapped), with_cameras, atol=1e-3)
    with pytest.raises(ValueError, match="whole copies"):
        camera_teacher.predict_noise(z_t[:3], t[:3], emb[:3], cameras)
    plain_emb = teacher.embed(["a cube"] * 4)
    assert torch.equal(teacher.predict_noise(z_t, t, plain_emb, cameras), teacher.predict_noise(z_t, t, plain_emb))
    assert camera_teacher.describe()["camera_conditioned"] is True


def test_vsd_lora_on_a_camera_conditioned_model_adds_the_teachers_camera(camera_teacher):
    """VSD's LoRA score model on a camera-conditioned teacher: with its fresh LoRA (B = 0) and its zero-initialised
    camera embedding it predicts exactly the teacher's camera-conditioned eps of the same cameras (class labels are
    camera-to-world matrices, particle_score.camera_condition)."""
    from dreamengine.guidance.particle_score import build_score_model, camera_condition

    cameras = camera_batch()
    score_model = build_score_model(camera_teacher, lora_rank=4, lora_alpha=4.0, pixel_width=8)
    g = torch.Generator().manual_seed(2)
    z_t, t = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([300, 600])
    emb = camera_teacher.embed(["a cube", "a cube"])
    with torch.no_grad():
        adapter = camera_teacher.predict_with_adapter(z_t, t, emb, score_model.camera,
                                                      camera_condition(cameras))
    assert torch.allclose(adapter, camera_teacher.predict_noise(z_t, t, emb, cameras), atol=1e-5)
