"""Textured export: xatlas UVs, baking, seam padding, PBR GLB / OBJ files, cleanup extras, export_scene."""

from __future__ import annotations

import json
import math

import numpy as np
import pygltflib
import pytest
import torch
import trimesh
from PIL import Image

from dreamengine.config import ExportConfig, load_config
from dreamengine.errors import ConfigError, ExportError
from dreamengine.export import clean_mesh, extract_mesh, load_mesh, save_mesh
from dreamengine.export.scene_export import export_scene, file_scale
from dreamengine.export.texture import (
    bake_field,
    default_pieces,
    fill_empty_texels,
    spatial_pieces,
    texel_samples,
    texture_mesh,
    unwrap_uv,
)
from dreamengine.renderers.raster import sample_texture
from tests.gltf_validator import assert_valid_glb
from tests.toy_fields import ToyField

METADATA = {"prompt": "a snowman", "seed": 3, "method": "sds", "teacher": "toyworld"}


def smooth_color(points: torch.Tensor) -> torch.Tensor:
    """A color field [N, 3] -> [N, 3] that changes smoothly and differs everywhere on a sphere of radius 0.5."""
    return (0.5 + 0.9 * points).clamp(0.0, 1.0)


@pytest.fixture(scope="module")
def sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=3, radius=0.5)


@pytest.fixture(scope="module")
def atlas(sphere):
    return unwrap_uv(sphere, resolution=128, padding=2)


def uv_coverage_count(uv: np.ndarray, faces: np.ndarray, size: int) -> np.ndarray:
    """How many UV triangles strictly contain each texel center, [size, size] (brute force, per face)."""
    count = np.zeros((size, size), dtype=np.int64)
    xy = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], axis=-1)
    for a, b, c in xy[faces]:
        lo = np.floor(np.minimum(np.minimum(a, b), c)).astype(int).clip(0, size - 1)
        hi = np.ceil(np.maximum(np.maximum(a, b), c)).astype(int).clip(0, size - 1)
        cols, rows = np.meshgrid(np.arange(lo[0], hi[0] + 1) + 0.5, np.arange(lo[1], hi[1] + 1) + 0.5)
        p = np.stack([cols.ravel(), rows.ravel()], axis=-1)

        def side(u, v, p=p):
            return (v[0] - u[0]) * (p[:, 1] - u[1]) - (v[1] - u[1]) * (p[:, 0] - u[0])

        s0, s1, s2 = side(a, b), side(b, c), side(c, a)
        inside = ((s0 > 1e-9) & (s1 > 1e-9) & (s2 > 1e-9)) | ((s0 < -1e-9) & (s1 < -1e-9) & (s2 < -1e-9))
        np.add.at(count, (p[inside, 1].astype(int), p[inside, 0].astype(int)), 1)
    return count


@pytest.fixture(scope="module", params=[1, 4], ids=["whole", "4 pieces"])
def any_atlas(request, sphere):
    return unwrap_uv(sphere, resolution=128, padding=2, pieces=request.param)


def test_uv_atlas_covers_the_mesh_without_overlapping_charts(sphere, any_atlas):
    atlas = any_atlas
    assert atlas.faces.shape == sphere.faces.shape
    np.testing.assert_array_equal(atlas.vmapping[atlas.faces], sphere.faces)  # same faces, split vertices
    assert atlas.charts > 1 and (atlas.uv >= 0).all() and (atlas.uv <= 1).all()
    tri = atlas.uv[atlas.faces]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    uv_area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    assert (uv_area > 0).all()  # every face has texture space
    count = uv_coverage_count(atlas.uv, atlas.faces, 128)
    assert count.max() == 1  # no texel center lies in two UV triangles: charts do not overlap
    assert (count > 0).mean() > 0.4  # and they use a fair part of the texture
    # Texels map to 3D points on their own face.
    samples = texel_samples(sphere.vertices, sphere.faces, atlas.uv, atlas.faces, 128)
    assert samples.mask.sum() >= (count > 0).sum()
    _, distance, face = trimesh.proximity.closest_point(sphere, samples.points[:2000])
    assert distance.max() < 1e-9
    np.testing.assert_allclose(np.linalg.norm(samples.points, axis=1), 0.5, atol=0.02)


def test_spatial_pieces_partition_the_faces_into_compact_halves():
    centers = np.random.default_rng(0).uniform(-1.0, 1.0, size=(1001, 3)) * np.array([3.0, 1.0, 0.5])
    for count in (1, 2, 3, 4, 8):
        groups = spatial_pieces(centers, count)
        assert len(groups) == count
        np.testing.assert_array_equal(np.sort(np.concatenate(groups)), np.arange(1001))  # each face exactly once
    left, right = spatial_pieces(centers, 2)  # the first cut halves the longest side (x)
    assert abs(len(left) - len(right)) <= 1 and centers[left, 0].max() <= centers[right, 0].min()
    sizes = [len(group) for group in spatial_pieces(centers, 8)]
    assert max(sizes) - min(sizes) <= 1
    assert [default_pieces(faces) for faces in (100, 9999, 10000, 15000, 20000, 39999, 10**6)] == [1, 1, 2, 2, 4, 4, 8]
    with pytest.raises(ExportError, match="at least 1 piece"):
        spatial_pieces(centers, 0)


def test_seam_padding_keeps_filtered_lookups_on_the_surface_color(sphere, atlas):
    samples = texel_samples(sphere.vertices, sphere.faces, atlas.uv, atlas.faces, 64)
    padded = bake_field(samples, smooth_color)
    unpadded = np.where(samples.mask[..., None], padded, 0.0)  # the same texels, background left black
    assert np.array_equal(fill_empty_texels(unpadded, samples.mask), padded)

    points, face = trimesh.sample.sample_surface(sphere, 4000, seed=0)
    bary = trimesh.triangles.points_to_barycentric(sphere.triangles[face], points)
    uv = torch.tensor(np.einsum("nk,nkc->nc", bary, atlas.uv[atlas.faces[face]]))
    truth = smooth_color(torch.tensor(points)).numpy()

    def worst_error(texture: np.ndarray, mip: int) -> float:
        image = torch.tensor(texture)
        if mip > 1:  # a mipmap level: box-filtered, as a viewer minifying the texture reads it
            image = torch.nn.functional.avg_pool2d(image.permute(2, 0, 1)[None], mip)[0].permute(1, 2, 0)
        return float(np.abs(sample_texture(image, uv).numpy() - truth).max())

    assert worst_error(padded, 1) < 0.08
    assert worst_error(padded, 2) < 0.15
    assert worst_error(unpadded, 1) > 0.3  # without padding, bilinear lookups near seams pull in black


def test_textured_glb_round_trip_validator_and_material(sphere, tmp_path):
    def roughness(points: torch.Tensor) -> torch.Tensor:
        return (points[:, 2:] + 0.5).clamp(0.0, 1.0)

    textured = texture_mesh(sphere, smooth_color, size=64, padding=2, roughness_fn=roughness)
    path = save_mesh(textured, tmp_path / "model.glb", metadata=METADATA, scale=2.0)
    assert_valid_glb(path)

    gltf = pygltflib.GLTF2().load(str(path))
    assert gltf.asset.extras == {**METADATA, "meters_per_scene_unit": 2.0}
    (primitive,) = gltf.meshes[0].primitives
    assert primitive.attributes.TEXCOORD_0 is not None and primitive.attributes.NORMAL is not None
    pbr = gltf.materials[primitive.material].pbrMetallicRoughness
    assert pbr.baseColorTexture is not None and pbr.metallicRoughnessTexture is not None
    assert pbr.metallicFactor == 1.0 and pbr.roughnessFactor == 1.0
    assert gltf.samplers[0].minFilter == 9987  # trilinear mipmapping
    assert [image.mimeType for image in gltf.images] == ["image/png", "image/png"]

    raw = next(iter(trimesh.load(path, process=False).geometry.values()))  # file frame: Y-up, meters
    world = textured.vertices
    np.testing.assert_allclose(raw.vertices, 2.0 * np.stack([world[:, 0], world[:, 2], -world[:, 1]], 1), atol=1e-5)
    base = np.asarray(textured.visual.material.baseColorTexture)
    loaded_base = np.asarray(raw.visual.material.baseColorTexture.convert("RGB"))
    assert np.median(np.abs(loaded_base.astype(int) - base.astype(int))) <= 2
    np.testing.assert_allclose(raw.visual.uv, textured.visual.uv, atol=1e-6)

    loaded = load_mesh(path)  # back to the world frame and scene units
    np.testing.assert_allclose(loaded.vertices, world, atol=1e-6)
    assert loaded.visual.kind == "texture"


def test_constant_material_factors_without_maps(sphere, tmp_path):
    textured = texture_mesh(sphere, smooth_color, size=32, padding=1, metallic=0.25, roughness=0.6)
    path = save_mesh(textured, tmp_path / "model.glb")
    gltf = pygltflib.GLTF2().load(str(path))
    pbr = gltf.materials[0].pbrMetallicRoughness
    assert pbr.metallicRoughnessTexture is None
    assert pbr.metallicFactor == pytest.approx(0.25) and pbr.roughnessFactor == pytest.approx(0.6)
    assert_valid_glb(path)


def test_textured_obj_writes_mtl_and_pngs_and_round_trips(sphere, tmp_path):
    def metallic(points: torch.Tensor) -> torch.Tensor:
        return (points[:, :1] + 0.5).clamp(0.0, 1.0)

    textured = texture_mesh(sphere, smooth_color, size=32, padding=1, metallic_fn=metallic)
    path = save_mesh(textured, tmp_path / "asset" / "chair.obj", metadata=METADATA, scale=0.5)
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["chair.mtl", "chair.obj", "chair.png", "chair_metallic.png", "chair_roughness.png"]
    mtl = (path.parent / "chair.mtl").read_text()
    assert "map_Kd chair.png" in mtl and "map_Pm chair_metallic.png" in mtl and "map_Pr chair_roughness.png" in mtl
    header = path.read_text().splitlines()[:8]
    assert "# meters_per_scene_unit: 0.5" in header and "mtllib chair.mtl" in path.read_text()
    metallic_map = np.asarray(Image.open(path.parent / "chair_metallic.png"))
    packed = np.asarray(textured.visual.material.metallicRoughnessTexture)
    np.testing.assert_array_equal(metallic_map, packed[..., 2])

    loaded = load_mesh(path)
    assert loaded.visual.kind == "texture"
    np.testing.assert_allclose(loaded.bounds, textured.bounds, atol=1e-5)
    loaded_base = np.asarray(loaded.visual.material.image.convert("RGB")).astype(int)
    assert np.median(np.abs(loaded_base - np.asarray(textured.visual.material.baseColorTexture).astype(int))) <= 2


# --- a toy object through export_scene ------------------------------------------------------------------


def surface_colors(mesh: trimesh.Trimesh, count: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """(points [N, 3], the mesh's color there [N, 3]) at random surface points of a textured or colored mesh."""
    points, face = trimesh.sample.sample_surface(mesh, count, seed=1)
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[face], points)
    if mesh.visual.kind == "texture":
        uv = torch.tensor(np.einsum("nk,nkc->nc", bary, mesh.visual.uv[mesh.faces[face]]))
        material = mesh.visual.material  # PBR from a GLB, a simple material from an OBJ's MTL
        image = getattr(material, "baseColorTexture", None) or material.image
        image = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
        return points, sample_texture(torch.tensor(image), uv).numpy()
    colors = mesh.visual.vertex_colors[:, :3].astype(np.float64) / 255.0
    return points, np.einsum("nk,nkc->nc", bary, colors[mesh.faces[face]])


@pytest.mark.parametrize("prompt", ["a snowman", "a house"])
def test_toy_object_export_recovers_its_colors(prompt, tmp_path):
    scene = ToyField(prompt)
    cfg = ExportConfig(resolution=48, threshold=50.0, target_faces=3000, texture_size=192, size=1.5)
    timings: dict[str, float] = {}
    path = export_scene(scene, cfg, tmp_path / "model.glb", "glb", {**METADATA, "prompt": prompt}, timings=timings)
    assert set(timings) == {"extraction", "cleanup", "uv", "bake", "write"}
    assert_valid_glb(path)
    extras = pygltflib.GLTF2().load(str(path)).asset.extras
    assert extras["prompt"] == prompt and extras["seed"] == 3 and extras["density_threshold"] == 50.0

    mesh = load_mesh(path)  # scene units again
    assert mesh.visual.kind == "texture"
    points, colors = surface_colors(mesh)
    truth = scene.obj.color(torch.tensor(points, dtype=torch.float32)).numpy()
    error = np.abs(colors - truth).max(axis=1)
    assert np.median(error) < 0.01  # flat-colored parts come back exactly (up to 8-bit rounding)
    assert np.mean(error < 0.1) > 0.97  # only texels straddling a color boundary differ
    raw = trimesh.load(path, force="mesh", process=False)
    assert max(raw.extents) == pytest.approx(1.5, rel=1e-4)  # longest side = export.size meters


def test_export_scene_vertex_colors_obj_and_ply(tmp_path):
    scene = ToyField("a red cube")
    red = np.array([0.85, 0.10, 0.10])
    base = ExportConfig(resolution=32, threshold=50.0, target_faces=1000, texture_size=64, size=0.0)
    for fmt, cfg, kind in (("glb", ExportConfig(**{**base.__dict__, "appearance": "vertex_colors"}), "vertex"),
                           ("obj", base, "texture"), ("ply", base, "vertex")):
        path = export_scene(scene, cfg, tmp_path / fmt / f"model.{fmt}", fmt, METADATA)
        if fmt == "glb":
            assert_valid_glb(path)
        mesh = load_mesh(path)
        assert mesh.visual.kind == kind, fmt
        _, colors = surface_colors(mesh, 500)
        assert np.abs(np.median(colors, axis=0) - red).max() < 0.01, fmt
        np.testing.assert_allclose(mesh.extents, 0.8, atol=0.07)  # size 0 keeps scene units
    assert sorted(p.name for p in (tmp_path / "obj").iterdir()) == ["model.mtl", "model.obj", "model.png"]


def test_file_scale():
    box = trimesh.creation.box(extents=(0.5, 2.0, 1.0))
    assert file_scale(box, 1.0) == pytest.approx(0.5)
    assert file_scale(box, 0.0) == 1.0


# --- cleanup ---------------------------------------------------------------------------------------------


def test_cleanup_closes_small_holes_and_remeshes():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    top = np.argsort(-sphere.triangles_center[:, 2])[:6]  # a small cap of 6 faces around the pole
    holed = trimesh.Trimesh(sphere.vertices, np.delete(sphere.faces, top, axis=0), process=False)
    assert not holed.is_watertight
    assert not clean_mesh(holed).is_watertight  # holes are kept by default
    closed = clean_mesh(holed, max_hole_edges=30)
    assert closed.is_watertight and closed.volume > 0
    assert closed.volume == pytest.approx(sphere.volume, rel=0.01)
    cap = np.argsort(-sphere.triangles_center[:, 2])[:200]
    big_hole = trimesh.Trimesh(sphere.vertices, np.delete(sphere.faces, cap, axis=0), process=False)
    assert not clean_mesh(big_hole, max_hole_edges=10).is_watertight  # larger than the limit: left open

    # Isotropic remeshing evens out edge lengths and keeps the shape.
    raw = extract_mesh(lambda p: 100.0 * torch.sigmoid((0.5 - p.norm(dim=-1)) / 0.02), resolution=40, threshold=50.0)
    remeshed = clean_mesh(raw, remesh_iterations=3, remesh_edge_percent=2.0)
    spread = [np.std(m.edges_unique_length) / np.mean(m.edges_unique_length) for m in (raw, remeshed)]
    assert spread[1] < 0.6 * spread[0]
    assert remeshed.volume == pytest.approx(4.0 / 3.0 * math.pi * 0.5**3, rel=0.03)
    with pytest.raises(ExportError, match="max_hole_edges"):
        clean_mesh(raw, max_hole_edges=-1)


def test_export_config_keys_are_validated(tmp_path):
    cfg = load_config(overrides=["export.appearance=vertex_colors", "export.size=2.5"])
    assert cfg.export.appearance == "vertex_colors" and cfg.export.size == 2.5
    assert load_config().export.appearance == "texture"  # the texture path is the default
    for override, word in (("export.appearance=fbx", "appearance"), ("export.texture_size=8", "texture_size"),
                           ("export.metallic=2", "metallic"), ("export.size=-1", "size")):
        with pytest.raises(ConfigError, match=word):
            load_config(overrides=[override])
    config_file = tmp_path / "c.yaml"
    config_file.write_text(json.dumps({"export": {"texture_size": 512, "roughness": 0.5}}))
    assert load_config(config_file).export.texture_size == 512


def test_normals_are_unit_length_even_for_folded_faces(tmp_path):
    # Two faces back to back on the same vertices: their normals cancel; glTF still needs unit normals.
    vertices = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    mesh = trimesh.Trimesh(vertices, np.array([[0, 1, 2], [0, 2, 1], [0, 1, 3]]), process=False)
    assert_valid_glb(save_mesh(mesh, tmp_path / "folded.glb"))
    # A textured sphere split along its UV seams gets the same normals on both sides of every seam.
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    path = save_mesh(texture_mesh(sphere, smooth_color, size=32, padding=1), tmp_path / "s.glb")
    assert_valid_glb(path)
    raw = next(iter(trimesh.load(path, process=False).geometry.values()))  # the file's NORMAL attribute
    assert len(raw.vertices) > len(sphere.vertices)  # split along seams
    radial = raw.vertices / np.linalg.norm(raw.vertices, axis=1, keepdims=True)
    assert (np.sum(raw.vertex_normals * radial, axis=1) > np.cos(np.radians(2))).all()
