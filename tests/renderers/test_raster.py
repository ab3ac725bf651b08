"""The mesh rasterizer against trimesh's ray casting, finite differences and supersampled coverage."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh

from dreamengine.core.background import Background, sample_light_positions
from dreamengine.core.cameras import cameras_from_spherical
from dreamengine.core.render import MeshTensors
from dreamengine.errors import ConfigError
from dreamengine.renderers.raster import (
    face_neighbors,
    mesh_tensors_from_trimesh,
    rasterize_mesh,
    rasterize_triangles,
    render_mesh,
    sample_texture,
    vertex_normals,
)

RES = 40
BLACK = Background(color=(0.0, 0.0, 0.0))


def views(dtype: torch.dtype = torch.float32):
    cameras = cameras_from_spherical(torch.tensor([20.0, 60.0, -10.0]), torch.tensor([30.0, 135.0, -100.0]),
                                     torch.tensor([2.5, 2.2, 2.8]), torch.tensor([40.0, 45.0, 35.0]))
    cameras.c2w = cameras.c2w.to(dtype)
    return cameras


def concave_torus() -> trimesh.Trimesh:
    torus = trimesh.creation.torus(0.45, 0.2, major_sections=24, minor_sections=12)
    torus.apply_transform(trimesh.transformations.rotation_matrix(0.6, [1.0, 0.3, 0.0]))  # see the hole
    return torus


MESHES = {
    "sphere": lambda: trimesh.creation.icosphere(subdivisions=2, radius=0.6),
    "box": lambda: trimesh.creation.box(extents=(0.9, 0.6, 0.5),
                                        transform=trimesh.transformations.rotation_matrix(0.4, [0, 0, 1])),
    "torus": concave_torus,
}


def ray_reference(mesh: trimesh.Trimesh, cameras, height: int, width: int) -> dict[str, np.ndarray]:
    """trimesh's first hit per pixel ray: face [B*H*W] (-1: miss), distance, and the smallest barycentric
    of the hit in its face (how far the hit lies from the face's edges)."""
    origins, directions = cameras.rays(height, width)
    origins = origins.reshape(-1, 3).double().numpy()
    directions = directions.reshape(-1, 3).double().numpy()
    locations, ray_index, tri_index = mesh.ray.intersects_location(origins, directions, multiple_hits=False)
    face = np.full(len(origins), -1)
    distance = np.zeros(len(origins))
    margin = np.zeros(len(origins))
    face[ray_index] = tri_index
    distance[ray_index] = np.linalg.norm(locations - origins[ray_index], axis=1)
    margin[ray_index] = trimesh.triangles.points_to_barycentric(mesh.triangles[tri_index], locations).min(axis=1)
    return {"face": face, "distance": distance, "margin": margin}


def away_from_silhouettes(hit: np.ndarray, batch: int, height: int, width: int,
                          distance: np.ndarray | None = None, jump: float = 0.05) -> np.ndarray:
    """Pixels whose 4-neighbours all agree with them on hit / miss, flat [B*H*W]; with ``distance``, also
    no neighbour's hit distance differs by more than ``jump`` (no occlusion boundary either)."""
    grid = hit.reshape(batch, height, width)
    far = (distance if distance is not None else np.zeros(hit.shape)).reshape(batch, height, width)
    padded = np.pad(grid, ((0, 0), (1, 1), (1, 1)), mode="edge")
    padded_far = np.pad(far, ((0, 0), (1, 1), (1, 1)), mode="edge")
    same = np.ones_like(grid)
    for di, dj in ((0, 1), (2, 1), (1, 0), (1, 2)):
        same &= padded[:, di:di + height, dj:dj + width] == grid
        same &= np.abs(padded_far[:, di:di + height, dj:dj + width] - far) < jump
    return same.reshape(-1)


@pytest.mark.parametrize("name", list(MESHES))
def test_face_ids_and_depth_match_trimesh_ray_casting(name):
    mesh = MESHES[name]()
    cameras = views()
    tensors = mesh_tensors_from_trimesh(mesh)
    fragments = rasterize_mesh(tensors, cameras, RES, RES)
    reference = ray_reference(mesh, cameras, RES, RES)
    face = fragments.face_id.reshape(-1).numpy()

    hit = reference["face"] >= 0
    interior = hit & (reference["margin"] > 1e-3)  # not within float error of a face edge
    np.testing.assert_array_equal(face[interior], reference["face"][interior])
    empty = ~hit & away_from_silhouettes(hit, len(cameras), RES, RES)
    assert (face[empty] == -1).all()
    assert interior.sum() > 0.8 * hit.sum() and empty.sum() > 0.3 * face.size  # the checks cover most pixels

    for antialias in (False, True):
        out = render_mesh(tensors, cameras, RES, RES, background=BLACK, antialias=antialias)
        depth = out.depth.reshape(-1).numpy()
        # antialiasing leaves pixels away from silhouettes and occlusion boundaries as they are
        settled = interior & away_from_silhouettes(hit, len(cameras), RES, RES, reference["distance"])
        np.testing.assert_allclose(depth[settled], reference["distance"][settled], rtol=1e-5)
        opacity = out.opacity.reshape(-1).numpy()
        assert (opacity[settled] == 1.0).all() and (opacity[empty] == 0.0).all()
    # Without antialiasing the mask is exactly the covered pixels.
    hard = render_mesh(tensors, cameras, RES, RES, background=BLACK, antialias=False)
    np.testing.assert_array_equal(hard.opacity.reshape(-1).numpy(), (face >= 0).astype(np.float32))


def test_rasterizer_chunking_and_z_order():
    # Two parallel squares, the nearer one drawn second; tiny chunks must give the same raster.
    square = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]])
    xy = torch.tensor(np.concatenate([square[[0, 1, 2]], square[[0, 2, 3]]] * 2), dtype=torch.float32).view(1, 4, 3, 2)
    w = torch.tensor([2.0] * 6 + [1.0] * 6).view(1, 4, 3)
    whole = rasterize_triangles(xy, w, 12, 12)
    chunked = rasterize_triangles(xy, w, 12, 12, max_pairs=7)
    assert torch.equal(whole.face_id, chunked.face_id)
    inside = whole.face_id[0, :10, :10]
    assert set(inside.unique().tolist()) == {2, 3}  # the near square hides the far one everywhere
    assert torch.allclose(whole.zdepth[0, :10, :10], torch.ones(10, 10))
    assert (whole.face_id[0, 10:, :] == -1).all() and (whole.face_id[0, :, 10:] == -1).all()


def test_face_neighbors_boundaries_seams_and_non_manifold_edges():
    sphere = trimesh.creation.icosphere(subdivisions=1)
    neighbors = face_neighbors(torch.tensor(sphere.vertices), torch.tensor(sphere.faces))
    assert (neighbors >= 0).all()
    for f in range(len(sphere.faces)):  # symmetric, and the shared edge is really shared
        for k in range(3):
            g = int(neighbors[f, k])
            assert f in neighbors[g].tolist()
            edge = {sphere.faces[f][k], sphere.faces[f][(k + 1) % 3]}
            assert edge <= set(sphere.faces[g].tolist())

    # Split every face into its own vertices (as at UV seams): positions are welded, nothing changes.
    soup_vertices = torch.tensor(sphere.triangles.reshape(-1, 3))
    soup_faces = torch.arange(len(soup_vertices)).view(-1, 3)
    assert torch.equal(face_neighbors(soup_vertices, soup_faces), neighbors)

    # A fan of three triangles on one edge (non-manifold) plus a lone boundary.
    vertices = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]])
    faces = torch.tensor([[0, 1, 2], [1, 0, 3], [0, 1, 4]])
    result = face_neighbors(vertices, faces)
    assert result[:, 0].tolist() == [-2, -2, -2]  # edge (0, 1) has three faces
    assert (result[:, 1:] == -1).all()


def test_vertex_normals_point_outward():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    normals = vertex_normals(torch.tensor(sphere.vertices), torch.tensor(sphere.faces))
    radial = sphere.vertices / np.linalg.norm(sphere.vertices, axis=1)[:, None]
    cosine = (normals.numpy() * radial).sum(axis=1)
    assert cosine.min() > np.cos(np.radians(3.0))  # area weighting tilts them a little on an icosphere


def quad_facing_camera(dtype: torch.dtype = torch.float64) -> MeshTensors:
    """A 1 x 1 square in the YZ plane facing +X (the camera at azimuth 0), UVs spanning [0, 1]^2."""
    vertices = torch.tensor([[0.0, -0.5, -0.5], [0.0, 0.5, -0.5], [0.0, 0.5, 0.5], [0.0, -0.5, 0.5]], dtype=dtype)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=dtype)
    return MeshTensors(vertices=vertices, faces=faces, uv=uv)


def front_camera(dtype: torch.dtype = torch.float64):
    cameras = cameras_from_spherical(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor(2.0), torch.tensor(30.0))
    cameras.c2w = cameras.c2w.to(dtype)
    return cameras


def test_texture_lookup_orientation_and_gradcheck():
    mesh = quad_facing_camera()
    # A texture whose top-left texel is red. Seen from the front camera (at +X, looking at -X), +Y points
    # right and +Z up, so uv (0, 1) at vertex 3 (y = -0.5, z = +0.5) is the image's top left: the texture
    # shows upright and unmirrored.
    texture = torch.zeros(4, 4, 3, dtype=torch.float64)
    texture[0, 0, 0] = 1.0  # row 0 = v near 1, column 0 = u near 0: the corner at vertex 3
    out = render_mesh(replace(mesh, texture=texture), front_camera(), 24, 24, background=BLACK, antialias=False)
    red = out.rgb[0, ..., 0]
    rows, cols = torch.nonzero(red > 0.5, as_tuple=True)
    assert len(rows) > 10 and rows.float().mean() < 10 and cols.float().mean() < 10  # top left

    texture = torch.rand(5, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    texture.requires_grad_(True)

    def render(tex: torch.Tensor) -> torch.Tensor:
        return render_mesh(replace(mesh, texture=tex), front_camera(), 10, 10, background=BLACK).rgb

    assert torch.autograd.gradcheck(render, (texture,), eps=1e-6, atol=1e-9, fast_mode=True)


def test_sample_texture_texel_centers_and_bilinear():
    texture = torch.arange(12, dtype=torch.float64).view(3, 4, 1)
    centers = torch.tensor([[(c + 0.5) / 4, 1 - (r + 0.5) / 3] for r in range(3) for c in range(4)],
                           dtype=torch.float64)
    np.testing.assert_allclose(sample_texture(texture, centers)[:, 0].numpy(), np.arange(12))
    between = torch.tensor([[1.0 / 4, 1 - 0.5 / 3]], dtype=torch.float64)  # halfway between texels 0 and 1
    assert float(sample_texture(texture, between)) == pytest.approx(0.5)


def interior_mask(mesh: trimesh.Trimesh, cameras, height: int, width: int) -> torch.Tensor:
    reference = ray_reference(mesh, cameras, height, width)
    return torch.tensor((reference["face"] >= 0) & (reference["margin"] > 1e-3)).view(len(cameras), height, width)


def test_vertex_gradients_on_interior_pixels_match_finite_differences():
    sphere = trimesh.creation.icosphere(subdivisions=1, radius=0.6)
    cameras = views(torch.float64)[:2]
    mask = interior_mask(sphere, cameras, 16, 16)
    colors = torch.rand(len(sphere.vertices), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lights = sample_light_positions(cameras, torch.Generator().manual_seed(2)).double()
    faces = torch.tensor(sphere.faces)

    def render(vertices: torch.Tensor) -> torch.Tensor:
        mesh = MeshTensors(vertices=vertices, faces=faces, vertex_colors=colors)
        out = render_mesh(mesh, cameras, 16, 16, background=BLACK, shading="diffuse", light_positions=lights,
                          antialias=False)
        return torch.cat([out.rgb[mask], out.depth[mask], out.normal[mask]], dim=-1)

    vertices = torch.tensor(sphere.vertices, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(render, (vertices,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_silhouette_gradients_have_the_right_sign_and_size():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    cameras = views(torch.float64)
    base = torch.tensor(sphere.vertices, dtype=torch.float64)
    faces = torch.tensor(sphere.faces)
    white = torch.ones_like(base)

    def coverage(scale: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        vertices = base * scale
        if shift is not None:
            vertices = vertices + shift
        return render_mesh(MeshTensors(vertices=vertices, faces=faces, vertex_colors=white), cameras, 32, 32,
                           background=BLACK).opacity

    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    opacity = coverage(scale)
    area = opacity.sum()
    (grad,) = torch.autograd.grad(area, scale)
    # The projected area grows like scale^2 (the perspective effect is small at this distance), so
    # d area / d scale is about twice the area; the finite difference of the antialiased area agrees too.
    assert float(grad) == pytest.approx(2.0 * float(area.detach()), rel=0.15)
    h = 0.02
    with torch.no_grad():
        finite = (coverage(torch.tensor(1 + h)).sum() - coverage(torch.tensor(1 - h)).sum()) / (2 * h)
    assert float(grad) == pytest.approx(float(finite), rel=0.1)

    # Moving the sphere to the camera's right moves coverage from the left half of the image to the right.
    right = cameras.c2w[0, :3, 0]
    shift = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opacity = coverage(torch.tensor(1.0, dtype=torch.float64), shift)[0, ..., 0]
    balance = opacity[:, 16:].sum() - opacity[:, :16].sum()
    (grad_shift,) = torch.autograd.grad(balance, shift)
    assert float(grad_shift @ right) > 0

    # Per vertex: the coverage gradient pushes silhouette vertices outward (across the view direction).
    vertices = (base * 1.0).requires_grad_(True)
    out = render_mesh(MeshTensors(vertices=vertices, faces=faces, vertex_colors=white), cameras[:1], 32, 32,
                      background=BLACK)
    (vertex_grad,) = torch.autograd.grad(out.opacity.sum(), vertices)
    view = torch.nn.functional.normalize(cameras.position[0], dim=0)
    radial = base - (base @ view)[:, None] * view  # outward, perpendicular to the view direction
    moved = vertex_grad.norm(dim=-1) > 1e-6
    assert moved.sum() > 20
    outward = (vertex_grad[moved] * radial[moved]).sum(-1) > 0
    assert outward.float().mean() > 0.9


def test_antialiasing_approaches_supersampled_coverage():
    box = MESHES["box"]()
    tensors = mesh_tensors_from_trimesh(box)
    cameras = views()
    size, factor = 24, 8
    fine = render_mesh(tensors, cameras, size * factor, size * factor, background=BLACK, antialias=False).opacity
    coverage = fine.view(len(cameras), size, factor, size, factor).mean(dim=(2, 4))  # [B, H, W]
    hard = render_mesh(tensors, cameras, size, size, background=BLACK, antialias=False).opacity[..., 0]
    soft = render_mesh(tensors, cameras, size, size, background=BLACK).opacity[..., 0]
    edge = (coverage > 0) & (coverage < 1)
    hard_error = (hard - coverage)[edge].abs().mean()
    soft_error = (soft - coverage)[edge].abs().mean()
    assert soft_error < 0.6 * hard_error
    assert torch.equal(soft[~edge & (hard == coverage)].round(), hard[~edge & (hard == coverage)])


def test_render_shading_modes_and_errors():
    sphere = mesh_tensors_from_trimesh(trimesh.creation.icosphere(subdivisions=2, radius=0.6))
    cameras = views()[:1]
    lights = cameras.position * 1.0
    albedo = render_mesh(sphere, cameras, 16, 16, background=BLACK, antialias=False)
    assert torch.allclose(albedo.rgb[albedo.opacity[..., 0] > 0], torch.ones(1, 3))  # white surface, no light
    textureless = render_mesh(sphere, cameras, 16, 16, background=BLACK, shading="textureless",
                              light_positions=lights, antialias=False)
    center = textureless.rgb[0, 8, 8]
    assert torch.allclose(center, torch.full((3,), 1.0), atol=0.02)  # light at the camera: n . l ~ 1
    with pytest.raises(ConfigError, match="light_positions"):
        render_mesh(sphere, cameras, 16, 16, background=BLACK, shading="diffuse")
    with pytest.raises(ConfigError, match="shading"):
        render_mesh(sphere, cameras, 16, 16, background=BLACK, shading="phong")
    with pytest.raises(ConfigError, match="backend"):
        render_mesh(sphere, cameras, 16, 16, background=BLACK, backend="vulkan")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nvdiffrast_matches_the_torch_path():
    pytest.importorskip("nvdiffrast.torch")
    mesh = mesh_tensors_from_trimesh(MESHES["torus"]())
    texture = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(0))
    uv = torch.rand(len(mesh.vertices), 2, generator=torch.Generator().manual_seed(1))
    mesh = replace(mesh, uv=uv, texture=texture).to("cuda")
    cameras = views().to("cuda")
    ours = render_mesh(mesh, cameras, RES, RES, background=BLACK, backend="torch", antialias=False)
    theirs = render_mesh(mesh, cameras, RES, RES, background=BLACK, backend="cuda", antialias=False)
    agree = (ours.opacity == theirs.opacity).float().mean()
    assert agree > 0.99
    both = (ours.opacity * theirs.opacity)[..., 0] > 0
    assert (ours.rgb[both] - theirs.rgb[both]).abs().median() < 1e-3
    assert (ours.depth[both] - theirs.depth[both]).abs().max() < 1e-3
