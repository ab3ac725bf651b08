"""MeshScene: reading and checking mesh files, normalization, texture initialization, training hooks,
regularizers and export."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh

from dreamengine.config import ExportConfig, OptimConfig
from dreamengine.config.scenes import MeshSceneConfig
from dreamengine.core.background import Background
from dreamengine.core.cameras import cameras_from_spherical
from dreamengine.errors import ConfigError, DreamEngineError, MeshFileError
from dreamengine.export import load_mesh, save_mesh
from dreamengine.export.fidelity import export_fidelity
from dreamengine.export.scene_export import export_scene
from dreamengine.export.texture import texture_mesh
from dreamengine.renderers.raster import mesh_tensors_from_trimesh, render_mesh
from dreamengine.scenes.mesh import MeshScene, laplacian_loss, mesh_edges, normal_consistency_loss
from dreamengine.toyworld import psnr
from tests.gltf_validator import assert_valid_glb

WHITE = Background(color=(1.0, 1.0, 1.0))
SMALL = MeshSceneConfig(texture_resolution=64, uv_padding=2)
SMALL_FIELD = replace(SMALL, texture="field", encoding_backend="torch", num_levels=4, base_resolution=8,
                      per_level_scale=2.0, log2_hashmap_size=12, hidden_dim=16, init_fit_points=2048)


def position_colors(points: np.ndarray) -> np.ndarray:
    return np.clip(0.5 + 0.8 * (points - points.mean(0)) / np.abs(points - points.mean(0)).max(), 0.0, 1.0)


@pytest.fixture(scope="module")
def colored_sphere() -> trimesh.Trimesh:
    """A sphere far from the origin and not unit-sized, with smoothly varying vertex colors."""
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=3.0)
    sphere.apply_translation([10.0, -4.0, 2.0])
    rgba = np.full((len(sphere.vertices), 4), 255, dtype=np.uint8)
    rgba[:, :3] = np.round(255 * position_colors(sphere.vertices))
    sphere.visual = trimesh.visual.ColorVisuals(mesh=sphere, vertex_colors=rgba)
    return sphere


def cameras():
    return cameras_from_spherical(torch.tensor([20.0, -10.0, 50.0]), torch.tensor([0.0, 120.0, 240.0]),
                                  torch.tensor(2.5), torch.tensor(40.0))


# --- files -----------------------------------------------------------------------------------------------


def test_mesh_file_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(MeshFileError, match=r"missing\.glb does not exist"):
        MeshScene.from_file(tmp_path / "missing.glb")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a mesh")
    with pytest.raises(MeshFileError, match=r"notes\.txt has the suffix '\.txt'"):
        MeshScene.from_file(notes)
    garbage = tmp_path / "garbage.glb"
    garbage.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(MeshFileError, match=r"garbage\.glb.*corrupt or not a mesh"):
        MeshScene.from_file(garbage)
    points = tmp_path / "points.obj"
    points.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(MeshFileError, match=r"points\.obj.*no triangles"):
        MeshScene.from_file(points)
    nan = tmp_path / "nan.obj"
    nan.write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\n")
    with pytest.raises(MeshFileError, match=r"nan\.obj has 1 of 4 vertices with NaN"):
        MeshScene.from_file(nan)
    with pytest.raises(MeshFileError, match="no mesh file given"):
        MeshScene(MeshSceneConfig())  # no init_path
    with pytest.raises(MeshFileError, match="empty mesh"):
        MeshScene.from_trimesh(trimesh.Trimesh())
    assert issubclass(MeshFileError, DreamEngineError)


def test_config_is_validated():
    sphere = trimesh.creation.icosphere(subdivisions=1)
    for change, word in (({"texture": "paint"}, "scene.texture"), ({"texture_activation": "relu"}, "activation"),
                         ({"fit_radius": 2.0}, "fit_radius"), ({"lr_texture": 0.0}, "lr_texture")):
        with pytest.raises(ConfigError, match=word):
            MeshScene.from_trimesh(sphere, replace(SMALL, **change))


def test_from_file_reads_glb_in_the_world_frame(colored_sphere, tmp_path):
    path = save_mesh(colored_sphere, tmp_path / "input.glb", scale=0.1)  # Y-up, scaled: load_mesh undoes both
    assert_valid_glb(path)
    scene = MeshScene.from_file(path, replace(SMALL, normalize=False))
    np.testing.assert_allclose(scene.vertices.detach().numpy(), colored_sphere.vertices, atol=1e-4)


# --- normalization and appearance ---------------------------------------------------------------------------


def test_normalization_is_remembered_and_undone(colored_sphere):
    scene = MeshScene.from_trimesh(colored_sphere, SMALL)
    vertices = scene.vertices.detach()
    assert float(vertices.norm(dim=-1).max()) == pytest.approx(0.75, abs=1e-5)
    assert torch.allclose(0.5 * (vertices.amin(0) + vertices.amax(0)), torch.zeros(3), atol=1e-5)
    np.testing.assert_allclose(scene.to_original(vertices).numpy(), colored_sphere.vertices, atol=1e-4)
    cfg = ExportConfig(texture_size=64, size=0.0)
    original = scene.export_mesh(cfg, "glb", original_frame=True)
    np.testing.assert_allclose(original.bounds, colored_sphere.bounds, atol=1e-4)
    assert np.abs(scene.export_mesh(cfg, "glb").bounds).max() <= 0.75 + 1e-5


def test_uv_texture_starts_from_vertex_colors(colored_sphere):
    scene = MeshScene.from_trimesh(colored_sphere, SMALL)
    assert scene.texture.shape == (64, 64, 3)
    reference = mesh_tensors_from_trimesh(colored_sphere)
    reference.vertices = scene.base_vertices  # the same (normalized) geometry, colored by vertex colors
    ours = render_mesh(scene.render_inputs(), cameras(), 32, 32, background=WHITE)
    theirs = render_mesh(reference, cameras(), 32, 32, background=WHITE)
    assert psnr(ours.rgb, theirs.rgb) > 30.0


def test_uv_texture_starts_from_an_input_texture(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    textured = texture_mesh(sphere, lambda p: (0.5 + p).clamp(0, 1), size=128, padding=2)
    scene = MeshScene.from_trimesh(textured, replace(SMALL, normalize=False, texture_resolution=96))
    assert scene.texture.shape == (96, 96, 3)
    assert len(scene.base_vertices) == len(sphere.vertices)  # seams welded: the geometry is one piece
    ours = render_mesh(scene.render_inputs(), cameras(), 32, 32, background=WHITE)
    theirs = render_mesh(mesh_tensors_from_trimesh(textured), cameras(), 32, 32, background=WHITE)
    assert psnr(ours.rgb, theirs.rgb) > 32.0


def test_field_texture_is_fitted_to_the_input_colors(colored_sphere):
    config = replace(SMALL_FIELD, init_fit_steps=40)
    fitted = MeshScene.from_trimesh(colored_sphere, config)
    unfitted = MeshScene.from_trimesh(colored_sphere, replace(config, init_fit_steps=0))
    reference = mesh_tensors_from_trimesh(colored_sphere)
    reference.vertices = fitted.base_vertices
    truth = render_mesh(reference, cameras(), 32, 32, background=WHITE).rgb
    with torch.no_grad():
        scores = [psnr(render_mesh(s.render_inputs(), cameras(), 32, 32, background=WHITE).rgb, truth)
                  for s in (fitted, unfitted)]
    assert scores[0] > 22.0 and scores[0] > scores[1] + 8.0  # measured 27.2 dB vs 11.1 dB


# --- training hooks ---------------------------------------------------------------------------------------


def test_param_groups_and_gradients(colored_sphere):
    scene = MeshScene.from_trimesh(colored_sphere, replace(SMALL, optimize_vertices=True))
    background = Background(mode="mlp")
    groups = scene.param_groups(OptimConfig(lr_background=0.002), background=background)
    assert [g["name"] for g in groups] == ["texture", "offsets", "background"]
    assert [g["lr"] for g in groups] == [SMALL.lr_texture, SMALL.lr_offsets, 0.002]
    listed = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in [*scene.parameters(), *background.parameters()] if p.requires_grad]
    assert sorted(listed) == sorted(trainable) and len(set(listed)) == len(listed)
    out = render_mesh(scene.render_inputs(), cameras(), 24, 24, background=background)
    (out.rgb.mean() + scene.regularizer_loss()).backward()
    assert scene.texture_logits.grad.abs().sum() > 0 and scene.offsets.grad.abs().sum() > 0
    frozen = MeshScene.from_trimesh(colored_sphere, SMALL)
    assert [g["name"] for g in frozen.param_groups()] == ["texture"]
    assert not frozen.offsets.requires_grad and float(frozen.regularizer_loss()) == 0.0
    field = MeshScene.from_trimesh(colored_sphere, replace(SMALL_FIELD, init_fit_steps=0))
    assert [g["name"] for g in field.param_groups()] == ["encoding", "network"]
    for config in (SMALL, replace(SMALL_FIELD, init_fit_steps=0)):  # geometry only: the appearance is frozen
        geometry = MeshScene.from_trimesh(colored_sphere, replace(config, optimize_texture=False,
                                                                  optimize_vertices=True))
        assert [g["name"] for g in geometry.param_groups()] == ["offsets"]
        assert [name for name, p in geometry.named_parameters() if p.requires_grad] == ["offsets"]


def test_state_dict_round_trip(colored_sphere):
    scene = MeshScene.from_trimesh(colored_sphere, replace(SMALL, optimize_vertices=True))
    with torch.no_grad():
        scene.texture_logits.add_(0.3)
        scene.offsets.normal_(std=0.01)
    restored = MeshScene.from_trimesh(colored_sphere, replace(SMALL, optimize_vertices=True))
    restored.load_state_dict(scene.state_dict())
    a = render_mesh(scene.render_inputs(), cameras(), 24, 24, background=WHITE)
    b = render_mesh(restored.render_inputs(), cameras(), 24, 24, background=WHITE)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.depth, b.depth)


def test_laplacian_loss_values():
    # A fan: vertex 0 in the middle of a square of four neighbors (1..4).
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1]])
    edges = mesh_edges(faces)
    assert edges.shape == (8, 2)
    assert float(laplacian_loss(torch.full((5, 3), 0.3), edges)) == pytest.approx(0.0, abs=1e-12)
    bump = torch.zeros(5, 3)
    bump[0, 2] = 1.0  # raise the center by 1
    # center: L = 1 - 0 = 1; each rim vertex (neighbors: center and two rim vertices): L = 0 - 1/3
    expected = (1.0 + 4 * (1.0 / 3.0) ** 2) / 5
    assert float(laplacian_loss(bump, edges)) == pytest.approx(expected)


def test_normal_consistency_loss_values():
    from dreamengine.renderers.raster import face_neighbors

    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    flat = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    folded = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]])  # second face stands upright
    assert float(normal_consistency_loss(flat, faces, face_neighbors(flat, faces))) == pytest.approx(0.0, abs=1e-7)
    folded_neighbors = face_neighbors(folded, faces)
    expected = 1.0 - np.cos(np.radians(90.0))
    assert float(normal_consistency_loss(folded, faces, folded_neighbors)) == pytest.approx(expected, abs=1e-6)


# --- export -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("texture", ["uv", "field"])
def test_a_mesh_scene_exports_itself_faithfully(colored_sphere, tmp_path, texture):
    config = replace(SMALL_FIELD, init_fit_steps=30) if texture == "field" else SMALL
    scene = MeshScene.from_trimesh(colored_sphere, config)
    cfg = ExportConfig(texture_size=128, texture_padding=2, size=2.0)
    timings: dict[str, float] = {}
    path = export_scene(scene, cfg, tmp_path / "model.glb", "glb", {"prompt": "a ball"}, timings=timings)
    assert set(timings) == {"bake", "write"}
    assert_valid_glb(path)
    loaded = load_mesh(path)
    assert loaded.visual.kind == "texture"
    assert np.abs(loaded.vertices).max() == pytest.approx(0.75, abs=1e-4)  # scene units again

    def render(cams, height, width):
        with torch.no_grad():
            return render_mesh(scene.render_inputs(), cams, height, width, background=WHITE)

    result = export_fidelity(path, render, cameras(), 32, 32, background=WHITE)
    assert result["mask_iou"] > 0.99 and result["psnr"] > 30.0

    colored_path = export_scene(scene, replace(cfg, appearance="vertex_colors"), tmp_path / "c.glb", "glb", {})
    assert_valid_glb(colored_path)
    assert load_mesh(colored_path).visual.kind == "vertex"


def test_uv_albedo_reads_the_texture_at_the_closest_surface_point(colored_sphere):
    scene = MeshScene.from_trimesh(colored_sphere, SMALL)
    mesh = trimesh.Trimesh(scene.base_vertices.numpy(), scene.faces.numpy(), process=False)
    points, _ = trimesh.sample.sample_surface(mesh, 300, seed=0)
    normals = mesh.face_normals[trimesh.proximity.closest_point(mesh, points)[2]]
    on_surface = scene.albedo(torch.tensor(points, dtype=torch.float32))
    off_surface = scene.albedo(torch.tensor(points + 0.01 * normals, dtype=torch.float32))  # just outside
    assert torch.allclose(on_surface, off_surface, atol=0.02)
    original = scene.to_original(torch.tensor(points, dtype=torch.float32)).numpy()
    assert np.abs(on_surface.numpy() - position_colors_of(colored_sphere, original)).max() < 0.06


def position_colors_of(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """The input's vertex colors interpolated at surface points (in its own frame)."""
    closest, _, face = trimesh.proximity.closest_point(mesh, points)
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[face], closest)
    colors = mesh.visual.vertex_colors[:, :3].astype(np.float64) / 255.0
    return np.einsum("nk,nkc->nc", bary, colors[mesh.faces[face]])


def test_normalize_centers_always_and_scales_only_a_mesh_that_does_not_fit_the_frame():
    box = trimesh.creation.box(extents=(0.8, 0.8, 0.8))  # the toy world's cube: corners 0.69 from the center
    box.apply_translation((0.3, -0.2, 0.1))
    framed = MeshScene.from_trimesh(box, replace(SMALL, normalize=True, fit_radius=0.75))
    assert float(framed.normalization_scale) == 1.0
    assert torch.allclose(framed.base_vertices.abs().amax(0), torch.full((3,), 0.4), atol=1e-5)
    huge = box.copy()
    huge.apply_scale(100.0)
    fitted = MeshScene.from_trimesh(huge, replace(SMALL, normalize=True, fit_radius=0.75))
    assert float(fitted.base_vertices.norm(dim=-1).max()) == pytest.approx(0.75, rel=1e-5)
    tiny = box.copy()
    tiny.apply_scale(0.01)
    grown = MeshScene.from_trimesh(tiny, replace(SMALL, normalize=True, fit_radius=0.75))
    assert float(grown.base_vertices.norm(dim=-1).max()) == pytest.approx(0.75, rel=1e-5)


def noisy_fit_speckle(levels: int, steps: int = 150) -> tuple[float, float]:
    """Fit a texture to a flat red under per-texel gradient noise (what SDS writes into a texture); return the
    texture's spread over texels and its mean distance to red."""
    scene = MeshScene.from_trimesh(trimesh.creation.box(extents=(0.8, 0.8, 0.8)),
                                   replace(SMALL, texture_levels=levels, lr_texture=0.05))
    optimizer = torch.optim.Adam(scene.param_groups(OptimConfig()))
    generator = torch.Generator().manual_seed(0)
    red = torch.tensor([0.9, 0.1, 0.1])
    for _ in range(steps):
        texture = scene.texture
        noisy_target = red + 0.5 * torch.randn(texture.shape, generator=generator)
        loss = ((texture - noisy_target) ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    texture = scene.texture.detach()
    return float(texture.std(dim=(0, 1)).mean()), float((texture.mean(dim=(0, 1)) - red).abs().max())


def test_texture_pyramid_starts_as_the_single_map_and_averages_gradient_noise_out():
    box = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
    single, pyramid = (MeshScene.from_trimesh(box, replace(SMALL, texture_levels=n)) for n in (1, 4))
    torch.testing.assert_close(single.texture, pyramid.texture)
    assert [tuple(p.shape) for p in pyramid.texture_coarse] == [(32, 32, 3), (16, 16, 3), (8, 8, 3)]
    assert len(list(single.texture_coarse)) == 0 and "texture_coarse.0" not in single.state_dict()
    speckle_single, bias_single = noisy_fit_speckle(1)
    speckle_pyramid, bias_pyramid = noisy_fit_speckle(4)
    assert bias_single < 0.1 and bias_pyramid < 0.1  # both reach the color
    assert speckle_pyramid < 0.6 * speckle_single  # the pyramid's texels are far less noisy
    groups = {g["name"]: g["lr"] for g in pyramid.param_groups(OptimConfig())}
    assert groups == pytest.approx({"texture": 0.01 / 8, "texture_level1": 0.01 / 4, "texture_level2": 0.01 / 2,
                                    "texture_level3": 0.01})
    with pytest.raises(ConfigError, match="texture_levels"):
        MeshScene.from_trimesh(box, replace(SMALL, texture_levels=0))
