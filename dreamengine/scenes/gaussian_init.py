"""Where a Gaussian scene starts (``scene.init``): each initializer returns the scene's parameter tensors.

* ``sphere``: uniform random points in a ball of ``init_radius`` (threestudio / DreamGaussian).
* ``shape``: points in a thin shell just inside an analytic shape (``init_shape``): a bare toy-world shape
  name (``cube``, ``sphere``, ...) gives geometry only, a toy-world prompt (``"a snowman"``) gives geometry
  and colors. The toy world's stand-in for GaussianDreamer's text-to-3D prior (Shap-E).
* ``mesh``: points on the surface of a mesh file (``init_path``: GLB, OBJ or PLY), colored by its vertex
  colors or texture when it has them, normalized into ``init_radius`` (GaussianDreamer starts from Shap-E's
  mesh this way).
* ``nerf``: points where a finished NeRF run (``init_path``: its run directory) has density above its
  surface level, colored by its albedo. Reading a run belongs above the scenes: the builder makes these
  tensors (:func:`dreamengine.build.gaussians_from_nerf_run`) and hands them to the scene.
* ``ply``: a standard 3DGS PLY file (``init_path``), loaded as it is.

Every initializer except ``ply`` places isotropic Gaussians of scale ``init_scale`` and opacity
``init_opacity`` with identity rotations and degree-0 colors; randomness comes from ``seed``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dreamengine.errors import ConfigError

SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi))
SHELL_THICKNESS = 0.05  # world units: 'shape' points lie in -thickness < sdf < 0


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """Degree-0 coefficient [..., 3] giving the color ``rgb`` [..., 3] (renderer adds 0.5)."""
    return (rgb - 0.5) / SH_C0


def gaussians_at(points: Tensor, colors: Tensor, config: Any, sh_degree: int) -> dict[str, Tensor]:
    """Isotropic Gaussians (scale ``init_scale``, opacity ``init_opacity``, identity rotation) at points [N, 3]
    with view-independent colors [N, 3] in [0, 1]: the parameter tensors of a :class:`GaussianScene`."""
    n = points.shape[0]
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    return {
        "means": points.float(),
        "quats": quats,
        "log_scales": torch.full((n, 3), math.log(config.init_scale)),
        "logit_opacities": torch.full((n,), float(torch.logit(torch.tensor(config.init_opacity)))),
        "sh_dc": rgb_to_sh_dc(colors.float().clamp(0.0, 1.0))[:, None, :].clone(),
        "sh_rest": torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3),
    }


def initial_colors(config: Any, n: int, generator: torch.Generator) -> Tensor:
    """[n, 3]: uniform random colors (``init_random_color``) or ``init_color`` everywhere."""
    if config.init_random_color:
        return torch.rand(n, 3, generator=generator)
    return torch.tensor(config.init_color, dtype=torch.float32).expand(n, 3).clone()


def sphere_init(config: Any, sh_degree: int) -> dict[str, Tensor]:
    """Uniform random points in a ball of ``init_radius``."""
    generator = torch.Generator().manual_seed(config.seed)
    n = config.num_points
    direction = nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1)
    radius = config.init_radius * torch.rand(n, 1, generator=generator) ** (1.0 / 3.0)  # uniform in volume
    colors = initial_colors(config, n, generator)
    return gaussians_at(direction * radius, colors, config, sh_degree)


def shape_init(config: Any, sh_degree: int) -> dict[str, Tensor]:
    """Points in a thin shell inside the analytic shape ``init_shape`` (see the module docstring)."""
    from dreamengine.toyworld.objects import SHAPES
    from dreamengine.toyworld.vocabulary import parse_prompt

    generator = torch.Generator().manual_seed(config.seed)
    if config.init_shape in SHAPES:
        sdf, color_fn = SHAPES[config.init_shape](), None
    else:
        toy = parse_prompt(config.init_shape)  # PromptError naming the vocabulary for anything else
        sdf, color_fn = toy.sdf, toy.color
    points = []
    found = 0
    for _ in range(200):  # rejection sampling in the cube [-1, 1]^3
        candidates = 2.0 * torch.rand(65536, 3, generator=generator) - 1.0
        distance = sdf(candidates)
        kept = candidates[(distance < 0) & (distance > -SHELL_THICKNESS)]
        points.append(kept)
        found += len(kept)
        if found >= config.num_points:
            break
    points = torch.cat(points)[: config.num_points]
    if len(points) < config.num_points:
        raise ConfigError(f"scene.init_shape {config.init_shape!r} is too thin to place {config.num_points} "
                          "Gaussians in; lower scene.num_points")
    colors = color_fn(points) if color_fn is not None else initial_colors(config, len(points), generator)
    return gaussians_at(points, colors, config, sh_degree)


def mesh_init(config: Any, sh_degree: int) -> dict[str, Tensor]:
    """Points sampled uniformly on the surface of the mesh file ``init_path``, with its colors."""
    import trimesh

    from dreamengine.scenes.mesh import read_mesh_file

    if not config.init_path:
        raise ConfigError("scene.init=mesh needs scene.init_path: a GLB, OBJ or PLY mesh file")
    mesh = read_mesh_file(config.init_path)  # MeshFileError: missing, not a mesh, empty, NaN vertices
    points, face_ids = trimesh.sample.sample_surface(mesh, config.num_points, seed=config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    colors = mesh_surface_colors(mesh, np.asarray(points), np.asarray(face_ids))
    colors = torch.from_numpy(colors).float() if colors is not None else initial_colors(config, len(points), generator)
    points = torch.from_numpy(np.asarray(points)).float()
    if config.init_mesh_normalize:
        center = 0.5 * (points.amin(0) + points.amax(0))
        extent = float((points - center).norm(dim=-1).max())
        points = (points - center) * (config.init_radius / max(extent, 1e-12))
    return gaussians_at(points, colors, config, sh_degree)


def mesh_surface_colors(mesh: Any, points: np.ndarray, face_ids: np.ndarray) -> np.ndarray | None:
    """Colors in [0, 1] [N, 3] of surface points on faces ``face_ids``: barycentric blend of vertex colors
    (a texture is first turned into vertex colors by trimesh), or None when the mesh has no colors."""
    import trimesh

    visual = mesh.visual
    if visual.kind == "texture":
        visual = visual.to_color()
    if visual.kind != "vertex":
        return None
    vertex_colors = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0
    triangles = mesh.vertices[mesh.faces[face_ids]]
    weights = trimesh.triangles.points_to_barycentric(triangles, points)
    return np.einsum("nk,nkc->nc", weights, vertex_colors[mesh.faces[face_ids]])


def ply_init(config: Any, sh_degree: int) -> dict[str, Tensor]:
    """The Gaussians of a 3DGS PLY file, higher SH orders truncated or zero-padded to ``sh_degree``."""
    from dreamengine.export.splat_ply import read_splat_ply

    if not config.init_path:
        raise ConfigError("scene.init=ply needs scene.init_path: the path of a 3DGS .ply file")
    tensors = read_splat_ply(config.init_path)
    wanted = (sh_degree + 1) ** 2 - 1
    rest = tensors["sh_rest"]
    if rest.shape[1] >= wanted:
        tensors["sh_rest"] = rest[:, :wanted].contiguous()
    else:
        tensors["sh_rest"] = torch.cat([rest, rest.new_zeros(rest.shape[0], wanted - rest.shape[1], 3)], dim=1)
    return tensors


# scene.init=nerf reads another run, which is not a scene module's business: dreamengine.build.gaussians_from_nerf_run
INITIALIZERS = {"sphere": sphere_init, "shape": shape_init, "mesh": mesh_init, "ply": ply_init}

__all__ = ["INITIALIZERS", "gaussians_at", "mesh_surface_colors", "rgb_to_sh_dc"]
