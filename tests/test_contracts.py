"""Contract tests: every entry of every registry against its protocol (dreamengine/core/protocols.py).

One parametrized suite per registry, in the diffusers style: a guidance method, scene type (with its renderer)
or teacher added to ``GUIDANCES``, ``SCENES``/``RENDERERS`` or ``TEACHERS`` is tested here the moment it is
registered: shapes, a finite gradient that reaches the input, randomness that comes only from the generator,
checkpoint (state_dict) and config (YAML) round trips, and a clear error for a bad setting.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import torch
import trimesh

from dreamengine.build import build_scenes
from dreamengine.config import (
    GUIDANCE_CONFIGS,
    SCENE_CONFIGS,
    TEACHER_CONFIGS,
    DeepFloydIFTeacherConfig,
    MVDreamTeacherConfig,
    StableDiffusionTeacherConfig,
    ToyImageTeacherConfig,
    ToyWorldMultiViewTeacherConfig,
    ToyWorldOracleConfig,
    ToyWorldTeacherConfig,
    Zero123TeacherConfig,
    config_to_yaml,
    load_config,
)
from dreamengine.config.prompts import PromptConfig
from dreamengine.core.cameras import CameraSampler, cameras_from_spherical
from dreamengine.core.protocols import TeacherContext
from dreamengine.core.render import render_fixed
from dreamengine.errors import ConfigError
from dreamengine.guidance import GUIDANCES
from dreamengine.prompts import PromptProcessor
from dreamengine.renderers import RENDERERS
from dreamengine.scenes import SCENES
from dreamengine.teachers import TEACHERS
from dreamengine.teachers.toyworld import ToyWorldTeacher

CONTEXT = TeacherContext(distance=2.5, fovy_deg=40.0, background=(1.0, 1.0, 1.0), view_thresholds=(45.0, 45.0, 60.0),
                         device=torch.device("cpu"))


def test_every_registry_matches_its_config_registry() -> None:
    assert set(GUIDANCES) == set(GUIDANCE_CONFIGS)
    assert set(SCENES) == set(SCENE_CONFIGS) == set(RENDERERS)
    assert set(TEACHERS) == set(TEACHER_CONFIGS)
    for registry in (GUIDANCE_CONFIGS, SCENE_CONFIGS, TEACHER_CONFIGS):
        for name, config_class in registry.items():
            assert config_class().name == name  # the section's `name` selects the class that carries it


def assert_same_state(a: object, b: object) -> None:
    """Nested dicts / lists of tensors and plain values are equal."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_state(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


# ------------------------------------------------------------------------------------------------ guidance
@pytest.fixture(scope="module")
def small_teacher() -> ToyWorldTeacher:
    """A toy teacher over two objects at 8 px (its bank builds in well under a second)."""
    return ToyWorldTeacher(resolution=8, objects=("a red cube", "a blue sphere"), elevations=(0.0, 30.0),
                           azimuth_step=90.0)


def guidance_call(name: str, teacher: ToyWorldTeacher, seed: int = 0):
    """A fresh method, called once on fixed renders: (guidance, output, gradient on the renders)."""
    guidance = GUIDANCES[name](GUIDANCE_CONFIGS[name](), teacher, 100)
    cameras = CameraSampler().sample(2, torch.Generator().manual_seed(1))
    prompts = PromptProcessor(teacher, "a red cube", PromptConfig())(cameras)
    rgb = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(2)).requires_grad_()
    out = guidance(rgb, prompts, cameras, 10, torch.Generator().manual_seed(seed))
    out.loss.backward()
    return guidance, out, rgb.grad


@pytest.mark.parametrize("name", sorted(GUIDANCES))
def test_guidance_gives_a_finite_gradient_on_the_renders(name: str, small_teacher: ToyWorldTeacher) -> None:
    _, out, grad = guidance_call(name, small_teacher)
    assert out.loss.dim() == 0 and bool(torch.isfinite(out.loss))
    assert grad is not None and grad.shape == (2, 16, 16, 3)
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().max()) > 0
    assert {"t_mean", "grad_norm"} <= set(out.terms) and all(isinstance(v, float) for v in out.terms.values())


@pytest.mark.parametrize("name", sorted(GUIDANCES))
def test_guidance_randomness_comes_only_from_the_generator(name: str, small_teacher: ToyWorldTeacher) -> None:
    torch.manual_seed(123)
    _, first, first_grad = guidance_call(name, small_teacher, seed=5)
    torch.manual_seed(456)  # a different global state must not matter
    _, again, again_grad = guidance_call(name, small_teacher, seed=5)
    _, other, other_grad = guidance_call(name, small_teacher, seed=6)
    assert torch.equal(first_grad, again_grad) and first.terms == again.terms
    assert not torch.equal(first_grad, other_grad)


@pytest.mark.parametrize("name", sorted(GUIDANCES))
def test_guidance_state_round_trips(name: str, small_teacher: ToyWorldTeacher) -> None:
    trained, _, _ = guidance_call(name, small_teacher)  # VSD's score model has taken a step
    state = trained.state_dict()
    fresh = GUIDANCES[name](GUIDANCE_CONFIGS[name](), small_teacher, 100)
    fresh.load_state_dict(state)
    assert_same_state(fresh.state_dict(), state)


@pytest.mark.parametrize("name", sorted(GUIDANCE_CONFIGS))
def test_guidance_config_round_trips_and_rejects_bad_settings(name: str, tmp_path: Path) -> None:
    cfg = load_config("quickstart", [f"guidance.name={name}"], prompt="a red cube")
    assert type(cfg.guidance) is GUIDANCE_CONFIGS[name]
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg
    with pytest.raises(ConfigError, match="grad_clip"):
        load_config("quickstart", [f"guidance.name={name}", "guidance.grad_clip=[1, 2]"])
    with pytest.raises(ConfigError, match="guidance.no_such_key"):
        load_config("quickstart", [f"guidance.name={name}", "guidance.no_such_key=1"])


# ------------------------------------------------------------------------------------------ scenes, renderers
@pytest.fixture(scope="module")
def mesh_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mesh") / "sphere.ply"
    trimesh.creation.icosphere(subdivisions=2, radius=0.6).export(path)
    return path


SMALL_SCENES = {
    "nerf": ["scene.num_levels=4", "scene.log2_hashmap_size=12", "scene.hidden_dim=16", "render.num_samples=16"],
    "gaussians": ["scene.num_points=300", "scene.init_scale=0.05"],
    "mesh": ["scene.texture_resolution=32"],
}


def scene_config(name: str, mesh_file: Path, *extra: str):
    overrides = [f"scene.name={name}", *SMALL_SCENES[name], *extra]
    if name == "mesh":
        overrides.append(f"scene.init_path='{mesh_file}'")
    return load_config("quickstart", overrides, prompt="a red cube")


def test_every_scene_type_has_a_small_test_config() -> None:
    assert set(SMALL_SCENES) == set(SCENES)


@pytest.mark.parametrize("name", sorted(SCENES))
def test_scene_renders_and_every_trained_parameter_gets_a_gradient(name: str, mesh_file: Path) -> None:
    cfg = scene_config(name, mesh_file)
    scenes, background, renderers = build_scenes(cfg, torch.device("cpu"))
    scene, renderer = scenes[0], renderers[0]
    cameras = CameraSampler().sample(2, torch.Generator().manual_seed(0))
    out = renderer(scene.render_inputs(), background, cameras, 12, 10, generator=torch.Generator().manual_seed(1),
                   perturb=True)
    assert out.rgb.shape == (2, 12, 10, 3) and out.opacity.shape == out.depth.shape == (2, 12, 10, 1)
    assert float(out.rgb.detach().min()) >= 0.0 and float(out.rgb.detach().max()) <= 1.0 + 1e-6
    assert float(out.opacity.max()) > 0.0  # the scene is in view
    groups = scene.param_groups(cfg.optim, background)
    grouped = [param for group in groups for param in group["params"]]
    trainable = [param for param in scene.parameters() if param.requires_grad]
    assert len(grouped) == len({id(p) for p in grouped}) and {id(p) for p in trainable} <= {id(p) for p in grouped}
    (out.rgb.mean() + sum(scene.regularizers().values(), torch.zeros(()))).backward()
    grads = [param.grad for param in trainable if param.numel()]
    assert all(grad is not None and bool(torch.isfinite(grad).all()) for grad in grads)
    assert any(float(grad.abs().max()) > 0 for grad in grads)
    assert all(isinstance(value, float) for value in scene.log_terms().values())


@pytest.mark.parametrize("name", sorted(SCENES))
def test_scene_and_renderer_state_round_trip(name: str, mesh_file: Path) -> None:
    cfg = scene_config(name, mesh_file)
    scenes, background, renderers = build_scenes(cfg, torch.device("cpu"))
    with torch.no_grad():  # move the parameters away from their initial values
        for param in scenes[0].parameters():
            param.add_(0.01 * torch.randn_like(param))
    renderers[0].after_step(scenes[0].render_inputs(), 16)  # a volume renderer refreshes its occupancy grid
    other = scene_config(name, mesh_file, "seed=7", *(["scene.seed=7"] if name != "nerf" else []))
    restored, restored_background, restored_renderers = build_scenes(other, torch.device("cpu"))
    restored[0].load_state_dict(scenes[0].state_dict())
    restored_background.load_state_dict(background.state_dict())
    restored_renderers[0].load_state_dict(renderers[0].state_dict())
    cameras = CameraSampler().sample(2, torch.Generator().manual_seed(3))
    a = render_fixed(renderers[0], scenes[0].render_inputs(), background, cameras, 12, 12)
    b = render_fixed(restored_renderers[0], restored[0].render_inputs(), restored_background, cameras, 12, 12)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.opacity, b.opacity)


@pytest.mark.parametrize("name", sorted(SCENE_CONFIGS))
def test_scene_config_round_trips_and_rejects_bad_settings(name: str, mesh_file: Path, tmp_path: Path) -> None:
    cfg = scene_config(name, mesh_file)
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg
    with pytest.raises(ConfigError, match="scene.no_such_key"):
        scene_config(name, mesh_file, "scene.no_such_key=1")
    with pytest.raises(ConfigError, match="radius"):
        scenes, _, _ = build_scenes(scene_config(name, mesh_file, "scene.radius=-1.0"), torch.device("cpu"))


# -------------------------------------------------------------------------------------------------- teachers
@pytest.fixture(scope="module")
def teacher_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight diffusers folders for the real teachers (diffusers' dummy-component pattern)."""
    pytest.importorskip("diffusers")
    from tests.tiny_mvdream import save_tiny_mvdream
    from tests.tiny_sd import save_tiny_if, save_tiny_sd, save_tiny_zero123

    base = tmp_path_factory.mktemp("teachers")
    return {"stable-diffusion": save_tiny_sd(base / "sd"), "deepfloyd-if": save_tiny_if(base / "if"),
            "mvdream": save_tiny_mvdream(base / "mvdream")["diffusers"], "zero123": save_tiny_zero123(base / "zero123")}


TOY_TEACHERS = ("toyworld", "toyworld-oracle", "toyworld-multiview", "toyworld-image")  # no weights: no folders needed


def teacher_config(name: str, folders: dict[str, Path]):
    if name == "toyworld":
        return ToyWorldTeacherConfig(resolution=8, elevations=[0.0, 30.0], azimuth_step=90.0)
    if name == "toyworld-oracle":
        return ToyWorldOracleConfig(resolution=8)
    if name == "toyworld-image":
        return ToyImageTeacherConfig(resolution=8, elevations=[0.0, 30.0], azimuth_step=90.0)
    if name == "zero123":
        return Zero123TeacherConfig(model=str(folders[name]), resolution=64)
    if name == "toyworld-multiview":
        return ToyWorldMultiViewTeacherConfig(resolution=8, elevations=[0.0, 30.0], azimuth_step=90.0)
    if name == "stable-diffusion":
        return StableDiffusionTeacherConfig(model=str(folders[name]))
    if name == "mvdream":
        return MVDreamTeacherConfig(model=str(folders[name]))
    return DeepFloydIFTeacherConfig(model=str(folders[name]))


def build_test_teacher(name: str, request: pytest.FixtureRequest):
    folders = request.getfixturevalue("teacher_folders") if name not in TOY_TEACHERS else {}
    return TEACHERS[name].from_config(teacher_config(name, folders), CONTEXT)


def test_every_teacher_has_a_test_config() -> None:
    assert {"toyworld", "toyworld-oracle", "stable-diffusion", "deepfloyd-if", "toyworld-multiview",
            "mvdream", "toyworld-image", "zero123"} == set(TEACHERS)


def group_overrides(name: str) -> list[str]:
    """Camera settings a teacher needs: whole groups of views for a multi-view teacher."""
    views = getattr(TEACHER_CONFIGS[name](), "views_per_group", 1)
    return [f"camera.views_per_group={views}", f"camera.batch_size={views}"] if views > 1 else []


@pytest.mark.parametrize("name", sorted(TEACHERS))
def test_teacher_encodes_embeds_and_predicts_noise(name: str, request: pytest.FixtureRequest) -> None:
    teacher = build_test_teacher(name, request)
    abar = teacher.alphas_cumprod
    assert abar.shape == (teacher.num_train_timesteps,) and bool((abar[1:] < abar[:-1]).all())
    rgb = torch.rand(2, 3, 24, 24).requires_grad_()
    z = teacher.encode(rgb)
    z.sum().backward()  # differentiable: gradients reach the render
    assert rgb.grad is not None and float(rgb.grad.abs().sum()) > 0
    embeddings = teacher.embed(["a red cube", ""])
    assert embeddings.shape[0] == 2
    t = torch.tensor([10, 900])
    cameras = cameras_from_spherical(torch.tensor([0.0, 30.0]), torch.tensor([0.0, 90.0]), torch.tensor([2.5, 2.5]),
                                     torch.full((2,), 40.0))
    if getattr(teacher, "image_conditioned", False):  # conditioned on a reference image and the target cameras
        teacher.set_reference(torch.rand(3, 24, 24), elevation=0.0, azimuth=0.0, distance=2.5)
    needs_cameras = name == "toyworld-oracle" or getattr(teacher, "image_conditioned", False)
    eps = teacher.predict_noise(z.detach(), t, embeddings, cameras if needs_cameras else None)
    assert eps.shape == z.shape and bool(torch.isfinite(eps).all()) and not eps.requires_grad
    assert teacher.decode(z.detach()).shape[:2] == (2, 3)


@pytest.mark.parametrize("name", sorted(TEACHER_CONFIGS))
def test_teacher_config_round_trips_and_rejects_unknown_keys(name: str, tmp_path: Path) -> None:
    cfg = load_config("quickstart", [f"teacher.name={name}", *group_overrides(name)], prompt="a red cube")
    assert type(cfg.teacher) is TEACHER_CONFIGS[name]
    assert [f.name for f in fields(cfg.teacher)][0] == "name"
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg
    with pytest.raises(ConfigError, match="teacher.no_such_key"):
        load_config("quickstart", [f"teacher.name={name}", "teacher.no_such_key=1", *group_overrides(name)])
    if group_overrides(name):  # a multi-view teacher refuses cameras that are not drawn in its groups
        views = getattr(TEACHER_CONFIGS[name](), "views_per_group", 1)
        with pytest.raises(ConfigError, match="camera.views_per_group"):
            load_config("quickstart", [f"teacher.name={name}", f"teacher.views_per_group={views}"])


MULTI_VIEW_TEACHERS = sorted(name for name, config in TEACHER_CONFIGS.items()
                             if getattr(config(), "views_per_group", 1) > 1)


@pytest.mark.parametrize("name", MULTI_VIEW_TEACHERS)
def test_multi_view_teacher_scores_whole_groups_jointly(name: str, request: pytest.FixtureRequest) -> None:
    teacher = build_test_teacher(name, request)
    views = teacher.views_per_group
    cameras = CameraSampler(views_per_group=views).sample(2 * views, torch.Generator().manual_seed(0))
    z = teacher.encode(torch.rand(2 * views, 3, 24, 24)).detach()
    t = torch.full((2 * views,), 700)
    unconditional = teacher.embed([""])  # the whole world: the images, not only the cameras, pick the sets
    embeddings = unconditional.expand(2 * views, *([-1] * (unconditional.dim() - 1)))
    eps = teacher.predict_noise(z, t, embeddings, cameras)
    assert eps.shape == z.shape and bool(torch.isfinite(eps).all())
    moved = z.clone()
    moved[1] = moved[1] + 3.0 * torch.randn_like(moved[1])
    eps_moved = teacher.predict_noise(moved, t, embeddings, cameras)
    assert float((eps_moved[0] - eps[0]).abs().max()) > 0  # view 0 depends on view 1 of its group
    assert torch.equal(eps_moved[views:], eps[views:]) or torch.allclose(eps_moved[views:], eps[views:], atol=1e-6)
    with pytest.raises(ValueError, match=f"whole groups of {views} views"):
        teacher.predict_noise(z[:views - 1], t[:views - 1], embeddings[:views - 1], cameras[:views - 1])
