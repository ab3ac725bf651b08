"""Mesh export: marching cubes on analytic fields, cleanup, vertex colors, GLB/OBJ/PLY files.

Analytic fields have known surfaces, so every check compares against geometry we can write down.
The GLB checks use trimesh, pygltflib and the Khronos glTF validator (Node.js; see gltf_validator.py).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pygltflib
import pytest
import torch
import trimesh

from dreamengine.errors import ExportError
from dreamengine.export import clean_mesh, color_vertices, extract_mesh, load_mesh, save_mesh
from dreamengine.export.color import linear_to_srgb, srgb_to_linear
from tests.gltf_validator import validate_glb

PEAK = 100.0  # density deep inside the analytic objects
LEVEL = 50.0  # = PEAK / 2: the soft edge's midpoint, exactly on the analytic surface
RES = 64
VOXEL = 2.0 / (RES - 1)
CENTER = (0.2, -0.1, 0.15)  # off-center, so a permuted or flipped axis moves the surface visibly


def soft_sphere(center: tuple[float, float, float], radius: float, edge: float = 0.02):
    """Density [N, 3] -> [N]: PEAK inside, 0 outside, PEAK / 2 exactly at distance ``radius``."""
    c = torch.tensor(center)

    def density(points: torch.Tensor) -> torch.Tensor:
        return PEAK * torch.sigmoid((radius - (points - c).norm(dim=-1)) / edge)

    return density


def soft_cube(center: tuple[float, float, float], half: float, edge: float = 0.01):
    """Density of an axis-aligned cube of half-size ``half`` (PEAK / 2 on its faces)."""
    c = torch.tensor(center)

    def density(points: torch.Tensor) -> torch.Tensor:
        return PEAK * torch.sigmoid((half - (points - c).abs().amax(dim=-1)) / edge)

    return density


def outward_fraction(mesh: trimesh.Trimesh, center) -> float:
    """Fraction of faces whose normal points away from ``center`` (1.0 for a convex body around it)."""
    radial = mesh.triangles_center - np.asarray(center)
    return float(np.mean(np.sum(mesh.face_normals * radial, axis=1) > 0))


def rgb_of_position(points: torch.Tensor) -> torch.Tensor:
    """A color field [N, 3] -> [N, 3] in [0, 1] that differs at every point of the unit cube."""
    return (0.5 + 0.5 * points).clamp(0.0, 1.0)


@pytest.fixture(scope="module")
def sphere_mesh() -> trimesh.Trimesh:
    return extract_mesh(soft_sphere(CENTER, 0.4), radius=1.0, resolution=RES, threshold=LEVEL)


@pytest.fixture(scope="module")
def colored_mesh(sphere_mesh) -> trimesh.Trimesh:
    return color_vertices(clean_mesh(sphere_mesh, target_faces=3000), rgb_of_position)


METADATA = {"prompt": "a red cube", "seed": 7, "method": "sds", "teacher": "toyworld", "guidance_scale": 7.5}


# --- marching cubes ---------------------------------------------------------------------------------

def test_sphere_surface_radius_volume_and_orientation(sphere_mesh):
    dist = np.linalg.norm(sphere_mesh.vertices - np.asarray(CENTER), axis=1)
    assert np.abs(dist - 0.4).max() < VOXEL
    assert sphere_mesh.is_watertight
    expected = 4.0 / 3.0 * math.pi * 0.4**3
    assert sphere_mesh.volume > 0  # signed volume: positive means counter-clockwise seen from outside
    assert sphere_mesh.volume == pytest.approx(expected, rel=0.02)
    assert outward_fraction(sphere_mesh, CENTER) == 1.0


def test_cube_bounds_and_volume():
    mesh = extract_mesh(soft_cube(CENTER, 0.3), radius=1.0, resolution=RES, threshold=LEVEL)
    lo, hi = mesh.bounds
    np.testing.assert_allclose(lo, np.asarray(CENTER) - 0.3, atol=VOXEL)
    np.testing.assert_allclose(hi, np.asarray(CENTER) + 0.3, atol=VOXEL)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(0.6**3, rel=0.05)
    assert outward_fraction(mesh, CENTER) > 0.99  # faces on the (rounded) edges may tilt


def test_chunking_does_not_change_the_mesh():
    field = soft_sphere(CENTER, 0.4)
    whole = extract_mesh(field, resolution=24, threshold=LEVEL)
    chunked = extract_mesh(field, resolution=24, threshold=LEVEL, chunk=1000)
    np.testing.assert_array_equal(whole.vertices, chunked.vertices)
    np.testing.assert_array_equal(whole.faces, chunked.faces)


def test_surface_cut_by_the_grid_boundary_is_capped():
    # Dense for z < 0: the surface z = 0 reaches the cube's sides; padding caps it into a closed slab.
    def half_space(points: torch.Tensor) -> torch.Tensor:
        return PEAK * torch.sigmoid(-points[:, 2] / 0.02)

    radius = 0.5
    mesh = extract_mesh(half_space, radius=radius, resolution=32, threshold=LEVEL)
    voxel = 2 * radius / 31
    assert mesh.is_watertight
    lo, hi = mesh.bounds
    assert hi[2] == pytest.approx(0.0, abs=voxel)
    assert lo[2] < -radius and lo[2] > -radius - voxel  # caps sit within one padding voxel of the grid
    assert mesh.volume > 0


@pytest.mark.parametrize(("value", "word"), [(0.0, "below"), (1000.0, "above")])
def test_field_without_surface_raises(value, word):
    def constant(points: torch.Tensor) -> torch.Tensor:
        return torch.full((points.shape[0],), value)

    with pytest.raises(ExportError, match=rf"no surface at threshold 25 .*{word}"):
        extract_mesh(constant, resolution=16, threshold=25.0)


def test_nan_density_and_bad_arguments_raise():
    def nan_field(points: torch.Tensor) -> torch.Tensor:
        return torch.full((points.shape[0],), float("nan"))

    with pytest.raises(ExportError, match="NaN"):
        extract_mesh(nan_field, resolution=8)
    with pytest.raises(ExportError, match="resolution"):
        extract_mesh(soft_sphere(CENTER, 0.4), resolution=1)
    with pytest.raises(ExportError, match="threshold"):
        extract_mesh(soft_sphere(CENTER, 0.4), resolution=8, threshold=None)


# --- cleanup -----------------------------------------------------------------------------------------

def test_cleanup_removes_small_floater_and_keeps_the_body():
    body, floater = soft_sphere((0.0, 0.0, 0.0), 0.5), soft_sphere((0.0, 0.0, 0.8), 0.08)

    def field(points: torch.Tensor) -> torch.Tensor:
        return body(points) + floater(points)

    raw = extract_mesh(field, resolution=RES, threshold=LEVEL)
    assert len(raw.split(only_watertight=False)) == 2
    cleaned = clean_mesh(raw, min_component_fraction=0.05)
    parts = cleaned.split(only_watertight=False)
    assert len(parts) == 1
    assert np.abs(np.linalg.norm(cleaned.vertices, axis=1) - 0.5).max() < VOXEL
    assert cleaned.volume == pytest.approx(4.0 / 3.0 * math.pi * 0.5**3, rel=0.02)
    assert len(clean_mesh(raw, min_component_fraction=0.0).split(only_watertight=False)) == 2


def test_decimating_a_surface_with_many_handles_leaves_no_fragments():
    # data/foam_snowman_surface.npz: the raw marching-cubes surface of a quickstart NeRF snowman whose interior is
    # foam (~275 handles, 134 pieces). Decimating it folds the surface at dozens of places; the repairs delete the
    # folded faces and used to split off 13 fragments that the component filter (run before decimation) never saw.
    data = np.load(Path(__file__).parent / "data" / "foam_snowman_surface.npz")
    raw = trimesh.Trimesh(data["vertices"], data["faces"], process=False)
    assert len(raw.split(only_watertight=False)) > 100
    cleaned = clean_mesh(raw, min_component_fraction=0.05, target_faces=20000, max_hole_edges=30)
    welded = trimesh.Trimesh(cleaned.vertices, cleaned.faces, process=True)
    assert len(welded.split(only_watertight=False)) == 1
    assert abs(len(cleaned.faces) - 20000) < 1000


def test_cleanup_merges_duplicate_vertices():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    soup = trimesh.Trimesh(sphere.triangles.reshape(-1, 3), np.arange(3 * len(sphere.faces)).reshape(-1, 3),
                           process=False)  # every face has its own three vertices
    assert not soup.is_watertight
    cleaned = clean_mesh(soup)
    assert len(cleaned.vertices) == len(sphere.vertices)
    assert len(cleaned.faces) == len(sphere.faces)
    assert cleaned.is_watertight and cleaned.volume > 0


def test_decimation_hits_face_budget_and_keeps_shape(sphere_mesh):
    target = 1000
    assert len(sphere_mesh.faces) > 4 * target
    decimated = clean_mesh(sphere_mesh, target_faces=target)
    assert abs(len(decimated.faces) - target) <= 0.02 * target
    assert decimated.is_watertight
    assert decimated.volume == pytest.approx(sphere_mesh.volume, rel=0.02)
    assert outward_fraction(decimated, CENTER) == 1.0


def test_cleanup_rejects_bad_arguments(sphere_mesh):
    with pytest.raises(ExportError, match="min_component_fraction"):
        clean_mesh(sphere_mesh, min_component_fraction=1.5)
    with pytest.raises(ExportError, match="empty"):
        clean_mesh(trimesh.Trimesh())


# --- vertex colors -----------------------------------------------------------------------------------

def test_vertex_colors_equal_the_color_field(sphere_mesh):
    colored = color_vertices(sphere_mesh, rgb_of_position, chunk=5000)
    expected = np.round(255 * np.clip(0.5 + 0.5 * sphere_mesh.vertices, 0, 1))
    colors = colored.visual.vertex_colors
    assert colors.dtype == np.uint8 and colors.shape == (len(sphere_mesh.vertices), 4)
    assert np.abs(colors[:, :3].astype(int) - expected).max() <= 1  # float32 field vs float64 reference
    assert (colors[:, 3] == 255).all()
    assert sphere_mesh.visual.kind is None  # the input mesh is not modified


def test_vertex_color_inset_samples_inside_along_the_normal(sphere_mesh):
    def distance_to_center(points: torch.Tensor) -> torch.Tensor:
        d = (points - torch.tensor(CENTER)).norm(dim=-1, keepdim=True)
        return d.expand(-1, 3)

    colored = color_vertices(sphere_mesh, distance_to_center, inset=0.1)
    red = colored.visual.vertex_colors[:, 0].astype(float) / 255
    assert np.abs(red - 0.3).max() < 0.02  # vertices at 0.4 from the center, sampled 0.1 further in


# --- files ---------------------------------------------------------------------------------------------

def test_glb_round_trip_in_trimesh_is_y_up(colored_mesh, tmp_path):
    path = save_mesh(colored_mesh, tmp_path / "final" / "model.glb", "glb", METADATA)
    assert path == tmp_path / "final" / "model.glb"
    assert [p.name for p in path.parent.iterdir()] == ["model.glb"]  # no temp file left behind

    scene = trimesh.load(path, process=False)  # raw file content, no axis conversion
    (raw,) = scene.geometry.values()
    world = colored_mesh.vertices
    np.testing.assert_allclose(raw.vertices, np.stack([world[:, 0], world[:, 2], -world[:, 1]], 1), atol=1e-6)
    np.testing.assert_array_equal(raw.faces, colored_mesh.faces)
    top = np.argmax(world[:, 2])  # the highest point of the world (+Z) is the highest of the file (+Y)
    assert np.argmax(raw.vertices[:, 1]) == top

    # glTF's COLOR_0 is linear: the file holds the linear encoding of our sRGB colors (8 bits each)
    srgb = colored_mesh.visual.vertex_colors[:, :3].astype(float) / 255.0
    stored = np.round(srgb_to_linear(srgb) * 255.0)
    np.testing.assert_array_equal(raw.visual.vertex_attributes["color"][:, :3], stored)

    loaded = load_mesh(path)  # back in the world frame, and back to sRGB
    np.testing.assert_allclose(loaded.vertices, world, atol=1e-6)
    np.testing.assert_array_equal(loaded.faces, colored_mesh.faces)
    np.testing.assert_array_equal(loaded.visual.vertex_colors[:, :3], np.round(linear_to_srgb(stored / 255.0) * 255.0))
    assert np.abs(loaded.visual.vertex_colors[:, :3].astype(int) - colored_mesh.visual.vertex_colors[:, :3]).max() <= 2
    assert loaded.volume == pytest.approx(colored_mesh.volume, rel=1e-5)  # rotation kept the winding


def test_glb_metadata_material_and_colors_in_pygltflib(colored_mesh, tmp_path):
    path = save_mesh(colored_mesh, tmp_path / "model.glb", metadata=METADATA)
    gltf = pygltflib.GLTF2().load(str(path))
    assert gltf.asset.version == "2.0"
    assert gltf.asset.extras == METADATA
    (primitive,) = gltf.meshes[0].primitives
    assert primitive.attributes.COLOR_0 is not None and primitive.attributes.NORMAL is not None
    material = gltf.materials[primitive.material]
    assert material.pbrMetallicRoughness.baseColorFactor == [1.0, 1.0, 1.0, 1.0]


def test_glb_passes_khronos_validator(colored_mesh, tmp_path):
    path = save_mesh(colored_mesh, tmp_path / "model.glb", metadata=METADATA)
    report = validate_glb(path)
    print(f"glTF validator {report['validatorVersion']}: {report['numErrors']} errors, "
          f"{report['numWarnings']} warnings, {report['numInfos']} infos, {report['numHints']} hints")
    assert report["numErrors"] == 0, report["messages"]
    assert report["numWarnings"] == 0, report["messages"]


def _rewrite_glb_json(path: Path, edit) -> None:
    """Apply ``edit`` to the JSON chunk of a GLB file (header 12 bytes, then JSON chunk, then BIN chunk)."""
    data = path.read_bytes()
    json_len = struct.unpack_from("<I", data, 12)[0]
    tree = json.loads(data[20:20 + json_len])
    edit(tree)
    content = json.dumps(tree).encode()
    content += b" " * (-len(content) % 4)
    rest = data[20 + json_len:]
    header = struct.pack("<4sII", b"glTF", 2, 12 + 8 + len(content) + len(rest))
    path.write_bytes(header + struct.pack("<I4s", len(content), b"JSON") + content + rest)


def test_khronos_validator_reports_a_broken_glb(colored_mesh, tmp_path):
    path = save_mesh(colored_mesh, tmp_path / "model.glb")

    def break_indices(tree: dict) -> None:  # indices pointing past the end of the vertex arrays
        tree["accessors"][tree["meshes"][0]["primitives"][0]["indices"]]["max"] = [10**6]

    _rewrite_glb_json(path, break_indices)
    report = validate_glb(path)
    assert report["numErrors"] > 0
    assert "ACCESSOR_MAX_MISMATCH" in {message["code"] for message in report["messages"]}


@pytest.mark.parametrize("fmt", ["obj", "ply"])
def test_obj_and_ply_round_trip(colored_mesh, tmp_path, fmt):
    path = save_mesh(colored_mesh, tmp_path / f"model.{fmt}", fmt, METADATA)
    loaded = load_mesh(path)
    np.testing.assert_allclose(loaded.vertices, colored_mesh.vertices, atol=1e-6)
    np.testing.assert_array_equal(loaded.faces, colored_mesh.faces)
    np.testing.assert_array_equal(loaded.visual.vertex_colors, colored_mesh.visual.vertex_colors)

    raw = trimesh.load(path, process=False, force="mesh")
    world = colored_mesh.vertices
    expected_raw = np.stack([world[:, 0], world[:, 2], -world[:, 1]], 1) if fmt == "obj" else world
    np.testing.assert_allclose(raw.vertices, expected_raw, atol=1e-6)
    header = path.read_bytes()[:2000]
    prefix = b"# " if fmt == "obj" else b"comment "
    assert prefix + b"prompt: a red cube\n" in header and prefix + b"seed: 7\n" in header


def test_save_mesh_rejects_bad_input(colored_mesh, tmp_path):
    with pytest.raises(ExportError, match="unknown mesh format"):
        save_mesh(colored_mesh, tmp_path / "model.fbx")
    with pytest.raises(ExportError, match="empty"):
        save_mesh(trimesh.Trimesh(), tmp_path / "model.glb")
    with pytest.raises(ExportError, match="metadata"):
        save_mesh(colored_mesh, tmp_path / "model.glb", metadata={"prompt": ["a", "list"]})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["stl", "off"])
def test_load_mesh_reads_stl_and_off_in_the_world_frame(colored_mesh, tmp_path, fmt):
    """STL and OFF (shape-only formats, Z-up as in 3D printing) load with their coordinates as they are."""
    path = tmp_path / f"part.{fmt}"
    colored_mesh.export(path)  # trimesh's own writer: a file from another tool
    loaded = load_mesh(path)
    expected = colored_mesh.vertices[colored_mesh.faces]  # [F, 3, 3]: STL stores each triangle's corners
    np.testing.assert_allclose(loaded.vertices[loaded.faces], expected, atol=1e-5)


def test_load_mesh_rejects_truncated_glb(colored_mesh, tmp_path):
    path = save_mesh(colored_mesh, tmp_path / "model.glb")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ExportError, match="corrupt"):
        load_mesh(path)


def test_load_mesh_errors(tmp_path):
    with pytest.raises(ExportError, match="not found"):
        load_mesh(tmp_path / "missing.glb")
    garbage = tmp_path / "garbage.glb"
    garbage.write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(ExportError, match="corrupt"):
        load_mesh(garbage)
    garbage_ply = tmp_path / "garbage.ply"
    garbage_ply.write_bytes(b"not a ply file at all\n")
    with pytest.raises(ExportError, match=r"garbage\.ply"):
        load_mesh(garbage_ply)
    points_only = tmp_path / "points.obj"
    points_only.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(ExportError, match="no triangles"):
        load_mesh(points_only)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ExportError, match="unsupported suffix"):
        load_mesh(text)


def hollow_ball(points: torch.Tensor) -> torch.Tensor:
    """Density 30 in a ball of radius 0.6, dipping to 0 in an enclosed pocket of radius 0.25 at its center."""
    r = points.norm(dim=-1)
    return torch.where(r < 0.6, torch.where(r < 0.25, 0.0, 30.0), 0.0)


def test_enclosed_pockets_are_filled_so_a_hollow_ball_is_one_sphere():
    from dreamengine.export.marching import fill_voids, mesh_from_volume, sample_density_grid

    volume = sample_density_grid(hollow_ball, 1.0, 48)
    with_shell = mesh_from_volume(volume.copy(), 1.0, 15.0, fill_pockets=False)
    assert len(with_shell.split(only_watertight=False)) == 2  # outer sphere + inverted inner shell
    filled = mesh_from_volume(volume.copy(), 1.0, 15.0)
    filled.merge_vertices()
    assert len(filled.split(only_watertight=False)) == 1 and filled.is_watertight and filled.euler_number == 2
    assert filled.volume == pytest.approx(4 / 3 * math.pi * 0.6**3, rel=0.05)  # the outer surface is unchanged
    # a pocket open to the outside (a tunnel through the ball) is not a pocket
    tunnel = volume.copy()
    axis = np.linspace(-1, 1, 48)
    x, y = np.meshgrid(axis, axis, indexing="ij")
    tunnel[(x**2 + y**2 < 0.15**2)] = 0.0
    assert fill_voids(tunnel.copy(), 15.0) == 0
    assert fill_voids(volume.copy(), 15.0) == int(((volume <= 15.0) & (np.linalg.norm(np.stack(np.meshgrid(
        axis, axis, axis, indexing="ij")), axis=0) < 0.6)).sum())
