"""A scene made of one triangle mesh with a trainable appearance (and optionally trainable vertices).

What a :class:`MeshScene` holds:

* geometry: ``base_vertices`` [V, 3] (a buffer) plus ``offsets`` [V, 3] (a parameter, trained when
  ``optimize_vertices``), faces [F, 3]. Vertices that share a position are welded, so UV seams are not
  cracks when the vertices move;
* appearance, one of
  - ``texture: uv``: a texture map ``texture_logits`` [Ht, Wt, 3] on the mesh's UVs (``uv`` [T, 2] with their
    own ``uv_faces`` [F, 3]; xatlas UVs when the input has none). The color is ``sigmoid(logits)`` or, with
    ``texture_activation: clamp``, the stored values clamped to [0, 1]. With ``texture_levels`` L > 1 the
    logits are a pyramid: ``texture_logits`` plus L - 1 coarser maps (``texture_coarse``, half the size each,
    starting at zero) upsampled bilinearly and added; the coarsest level trains at ``lr_texture`` and each finer
    one at ``texture_level_lr`` times the next coarser one's. A coarse texel collects the gradient of the many
    fine texels it covers, so the SDS noise that a single map writes into every texel as speckle averages out
    there: flat colors form fast on the coarse levels while the slow fine level adds the detail;
  - ``texture: field``: a hash grid (:mod:`dreamengine.scenes.encoding`) and a tiny MLP evaluated at the
    surface points, ``sigmoid(mlp(encoding(x)))``.
  The appearance starts from the input's texture or vertex colors when it has them (resampled to
  ``texture_resolution``; a field is fitted to the input's colors for ``init_fit_steps`` Adam steps), else
  mid gray.

**Normalization.** With ``normalize`` (the default) the input is centered (its bounding-box center moves to
the origin) and, unless it already fits the frame (farthest vertex between ``fit_radius / 2`` and
``fit_radius`` from the center), scaled so its farthest vertex is ``fit_radius`` from the origin, where
training cameras frame it; ``fit_radius`` 0.75 matches the toy world's objects, so a mesh made at the toy
world's scale keeps its size. The transform is kept
(``normalization_center``, ``normalization_scale``, both in the state dict): :meth:`MeshScene.to_original`
maps scene points back to the input's frame, and :meth:`MeshScene.export_mesh` writes either frame
(``original_frame``). Without ``normalize`` the input's coordinates are used as they are.

Rendering goes through :func:`dreamengine.renderers.raster.render_mesh`, which takes the scene's
:meth:`MeshScene.mesh_tensors` (``render_inputs``). Export (:meth:`MeshScene.export_mesh`, used by
:func:`dreamengine.export.scene_export.export_scene`) writes the mesh with its texture, or bakes the field
onto xatlas UVs.

Regularizers for trained vertices (:func:`laplacian_loss`, :func:`normal_consistency_loss`) are returned by
:meth:`MeshScene.geometry_terms`; the config holds their weights and :meth:`MeshScene.regularizers` sums them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor, nn

from dreamengine.config.run import OptimConfig
from dreamengine.config.scenes import TEXTURE_ACTIVATIONS, TEXTURE_KINDS, MeshSceneConfig
from dreamengine.core.layers import check_choice, mlp
from dreamengine.core.render import MeshTensors
from dreamengine.errors import ConfigError, ExportError, MeshFileError
from dreamengine.export.color import color_vertices
from dreamengine.export.mesh_io import READ_FORMATS, load_mesh
from dreamengine.export.texture import (
    UVAtlas,
    bake_vertex_values,
    texel_samples,
    texture_mesh,
    textured_mesh,
    unwrap_uv,
)
from dreamengine.renderers.raster import face_neighbors, mesh_tensors_from_trimesh, sample_texture, surface_albedo
from dreamengine.scenes.encoding import HashGridEncoding
from dreamengine.scenes.nerf import background_groups

LOGIT_EPS = 1e-3  # initial colors are clamped to [eps, 1 - eps] before the logit
GRAY = 0.5




# ---------------------------------------------------------------------------------------------------
# Reading and checking meshes


def read_mesh_file(path: str | Path) -> trimesh.Trimesh:
    """Read a mesh file for a scene (world frame, scene units: :func:`dreamengine.export.load_mesh`).

    Raises:
        MeshFileError: the file is missing, not a mesh (or corrupt), empty, or has non-finite coordinates.
    """
    path = Path(path).expanduser()
    readable = ", ".join("." + f for f in READ_FORMATS)
    if not str(path) or str(path) == ".":
        raise MeshFileError(f"no mesh file given: set scene.init_path to a mesh file ({readable})")
    if not path.is_file():
        raise MeshFileError(f"mesh file {path} does not exist; set scene.init_path to an existing mesh file "
                            f"({readable})")
    if path.suffix.lower().lstrip(".") not in READ_FORMATS:
        raise MeshFileError(f"mesh file {path} has the suffix {path.suffix!r}; mesh scenes read {readable} files "
                            "(convert it, e.g. in Blender)")
    try:
        mesh = load_mesh(path)
    except ExportError as error:
        raise MeshFileError(f"cannot use {path} as a mesh: {error}") from None
    check_mesh(mesh, str(path))
    return mesh


def check_mesh(mesh: trimesh.Trimesh, source: str) -> None:
    """Raise :class:`MeshFileError` naming ``source`` if ``mesh`` has no faces, bad indices, non-finite
    coordinates or zero extent."""
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    if len(faces) == 0 or len(vertices) == 0:
        raise MeshFileError(f"{source} is an empty mesh (it has {len(vertices)} vertices and {len(faces)} "
                            "triangles); a mesh scene needs at least one triangle")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MeshFileError(f"{source} has triangles that refer to vertices that do not exist (indices up to "
                            f"{faces.max()} for {len(vertices)} vertices); the file is corrupt")
    bad = ~np.isfinite(vertices).all(axis=1)
    if bad.any():
        raise MeshFileError(f"{source} has {int(bad.sum())} of {len(vertices)} vertices with NaN or infinite "
                            "coordinates; repair or re-export the mesh")
    used = vertices[np.unique(faces)]
    if np.ptp(used, axis=0).max() <= 0:
        raise MeshFileError(f"{source} has zero size (all its triangles collapse to one point)")


# ---------------------------------------------------------------------------------------------------
# Regularizers


def mesh_edges(faces: Tensor) -> Tensor:
    """Unique undirected edges [E, 2] (low, high) of faces [F, 3]."""
    pairs = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=0)
    return torch.unique(torch.sort(pairs, dim=1).values, dim=0)


def laplacian_loss(values: Tensor, edges: Tensor) -> Tensor:
    """Mean squared uniform Laplacian ``|x_i - mean of x_j over the neighbors j of i|^2`` of per-vertex
    values [V, C] (vertex offsets), over the vertices with neighbors. Zero for constant values."""
    num = values.shape[0]
    neighbor_sum = torch.zeros_like(values).index_add(0, edges[:, 0], values[edges[:, 1]])
    neighbor_sum = neighbor_sum.index_add(0, edges[:, 1], values[edges[:, 0]])
    degree = torch.zeros(num, dtype=values.dtype, device=values.device).index_add(
        0, edges.reshape(-1), torch.ones(edges.numel(), dtype=values.dtype, device=values.device))
    connected = degree > 0
    laplacian = values[connected] - neighbor_sum[connected] / degree[connected, None]
    return (laplacian * laplacian).sum(-1).mean()


def normal_consistency_loss(vertices: Tensor, faces: Tensor, neighbors: Tensor) -> Tensor:
    """Mean over interior edges of ``1 - cos`` of the angle between the normals of the two faces sharing it
    (PyTorch3D's mesh_normal_consistency): 0 for a flat sheet, 1 for a right-angle fold."""
    tri = vertices[faces]
    normals = nn.functional.normalize(torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), dim=-1)
    face = torch.arange(faces.shape[0], device=faces.device)[:, None].expand_as(neighbors)
    pair = (neighbors >= 0) & (face < neighbors)  # each interior edge once
    if not pair.any():
        return vertices.new_zeros(())
    cosine = (normals[face[pair]] * normals[neighbors[pair]]).sum(-1)
    return (1.0 - cosine).mean()


# ---------------------------------------------------------------------------------------------------
# The scene


class MeshScene(nn.Module):
    """A triangle mesh with a trainable texture (see the module docstring). Points are world space [N, 3]."""

    def __init__(self, config: MeshSceneConfig | None = None, mesh: trimesh.Trimesh | None = None,
                 source: str = "the mesh") -> None:
        super().__init__()
        config = config if config is not None else MeshSceneConfig()
        _validate(config)
        self.config = config
        self.radius = float(config.radius)
        if mesh is None:
            mesh = read_mesh_file(config.init_path)
            source = config.init_path
        else:
            check_mesh(mesh, source)
        input_tensors = mesh_tensors_from_trimesh(mesh)  # welds UV seams, reads texture / vertex colors
        vertices = input_tensors.vertices.double()
        center, scale = torch.zeros(3, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
        if config.normalize:
            used = vertices[input_tensors.faces.unique()]
            center = 0.5 * (used.amin(0) + used.amax(0))
            farthest = (used - center).norm(dim=-1).max()
            if not 0.5 * config.fit_radius <= farthest <= config.fit_radius:  # else it is framed already
                scale = config.fit_radius / farthest
        vertices = ((vertices - center) * scale).float()
        self.register_buffer("normalization_center", center.float())
        self.register_buffer("normalization_scale", scale.float())
        self.register_buffer("base_vertices", vertices)
        self.register_buffer("faces", input_tensors.faces.clone())
        self.register_buffer("neighbors", face_neighbors(vertices, input_tensors.faces))
        self.register_buffer("edges", mesh_edges(input_tensors.faces), persistent=False)
        self.offsets = nn.Parameter(torch.zeros_like(vertices), requires_grad=config.optimize_vertices)
        input_tensors.vertices = vertices

        generator = torch.Generator().manual_seed(config.seed)
        if config.texture == "uv":
            uv, uv_faces, colors = self._uv_texture(input_tensors)
            self.register_buffer("uv", uv)
            self.register_buffer("uv_faces", uv_faces)
            values = colors.clamp(LOGIT_EPS, 1.0 - LOGIT_EPS)
            if config.texture_activation == "sigmoid":
                values = torch.logit(values)
            self.texture_logits = nn.Parameter(values.contiguous())  # [Ht, Wt, 3]
            height, width = values.shape[:2]
            self.texture_coarse = nn.ParameterList(  # [Ht / 2^l, Wt / 2^l, 3], l = 1 .. levels - 1
                nn.Parameter(torch.zeros(max(1, height >> level), max(1, width >> level), 3))
                for level in range(1, config.texture_levels))
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                self.encoding = HashGridEncoding(
                    num_levels=config.num_levels, features_per_level=config.features_per_level,
                    log2_hashmap_size=config.log2_hashmap_size, base_resolution=config.base_resolution,
                    per_level_scale=config.per_level_scale, backend=config.encoding_backend)
                self.network = mlp(self.encoding.output_dim, config.hidden_dim, 1, 3)
            if _has_colors(input_tensors) and config.init_fit_steps > 0:
                self._fit_field(input_tensors, generator)
        if not config.optimize_texture:  # a geometry-only stage: the appearance is frozen
            for name, param in self.named_parameters():
                if name != "offsets":
                    param.requires_grad_(False)

    # ---- constructors ------------------------------------------------------------------------------
    @classmethod
    def from_trimesh(cls, mesh: trimesh.Trimesh, config: MeshSceneConfig | None = None) -> MeshScene:
        """A scene from an in-memory mesh (world frame; normalized unless ``config.normalize`` is False)."""
        return cls(config, mesh=mesh, source="the given trimesh")

    @classmethod
    def from_file(cls, path: str | Path, config: MeshSceneConfig | None = None) -> MeshScene:
        """A scene from a .glb, .obj, .ply, .stl or .off file (see :func:`read_mesh_file` for the checks)."""
        return cls(config, mesh=read_mesh_file(path), source=str(path))

    # ---- appearance ----------------------------------------------------------------------------------
    def _uv_texture(self, tensors: MeshTensors) -> tuple[Tensor, Tensor, Tensor]:
        """(uv [T, 2], uv_faces [F, 3], initial colors [R, R, 3]) for the 'uv' kind."""
        res = self.config.texture_resolution
        if tensors.uv is not None and tensors.texture is not None:
            image = tensors.texture.permute(2, 0, 1)[None]
            colors = nn.functional.interpolate(image, size=(res, res), mode="bilinear", antialias=True,
                                               align_corners=False)[0].permute(1, 2, 0)
            return tensors.uv.float(), tensors.uv_faces.clone(), colors.clamp(0.0, 1.0)
        mesh = trimesh.Trimesh(tensors.vertices.numpy(), tensors.faces.numpy(), process=False)
        atlas = unwrap_uv(mesh, res, self.config.uv_padding)
        uv = torch.as_tensor(atlas.uv, dtype=torch.float32)
        uv_faces = torch.as_tensor(atlas.faces, dtype=torch.long)
        if tensors.vertex_colors is None:
            return uv, uv_faces, torch.full((res, res, 3), GRAY)
        samples = texel_samples(mesh.vertices, mesh.faces, atlas.uv, atlas.faces, res)
        colors = bake_vertex_values(samples, mesh.faces, tensors.vertex_colors.numpy())
        return uv, uv_faces, torch.as_tensor(colors)

    def _fit_field(self, tensors: MeshTensors, generator: torch.Generator) -> None:
        """A few Adam steps fitting the color field to the input's colors at random surface points."""
        optimizer = torch.optim.Adam([*self.encoding.parameters(), *self.network.parameters()],
                                     lr=self.config.init_fit_lr)
        for _ in range(self.config.init_fit_steps):
            face, bary, points = sample_surface(tensors.vertices, tensors.faces, self.config.init_fit_points,
                                                generator)
            with torch.no_grad():
                target = surface_albedo(tensors, face, bary, points)
            loss = ((self.field_color(points) - target) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    @property
    def texture(self) -> Tensor:
        """The texture colors [Ht, Wt, 3] in [0, 1] ('uv' kind): the pyramid's levels summed, activated."""
        values = self.texture_logits
        for coarse in self.texture_coarse:
            values = values + F.interpolate(coarse.permute(2, 0, 1)[None], size=values.shape[:2], mode="bilinear",
                                            align_corners=False)[0].permute(1, 2, 0)
        if self.config.texture_activation == "sigmoid":
            return torch.sigmoid(values)
        return values.clamp(0.0, 1.0)

    def field_color(self, points: Tensor) -> Tensor:
        """The color field at world points [N, 3] -> [N, 3] in (0, 1) ('field' kind)."""
        normalized = (points / self.radius + 1.0) * 0.5
        return torch.sigmoid(self.network(self.encoding(normalized)))

    @property
    def vertices(self) -> Tensor:
        """Current vertex positions [V, 3]: base + offsets."""
        return self.base_vertices + self.offsets

    def render_inputs(self) -> MeshTensors:
        """The Scene protocol's name for :meth:`mesh_tensors`: what the rasterizer draws."""
        return self.mesh_tensors()

    def mesh_tensors(self) -> MeshTensors:
        """What :func:`~dreamengine.renderers.raster.render_mesh` draws (differentiable in the parameters)."""
        if self.config.texture == "uv":
            return MeshTensors(vertices=self.vertices, faces=self.faces, uv=self.uv, uv_faces=self.uv_faces,
                               texture=self.texture, neighbors=self.neighbors)
        return MeshTensors(vertices=self.vertices, faces=self.faces, color_fn=self.field_color,
                           neighbors=self.neighbors)

    @torch.no_grad()
    def albedo(self, points: Tensor) -> Tensor:
        """Albedo at world points [N, 3] -> [N, 3], for export baking: the field there, or the texture at
        the closest point of the mesh ('uv' kind)."""
        if self.config.texture == "field":
            return self.field_color(points)
        mesh = self._current_trimesh()
        closest, _, face = trimesh.proximity.closest_point(mesh, points.detach().cpu().double().numpy())
        bary = trimesh.triangles.points_to_barycentric(mesh.triangles[face], closest)
        bary_t = torch.as_tensor(bary, dtype=torch.float32, device=points.device)
        face_t = torch.as_tensor(face, dtype=torch.long, device=points.device)
        uv = (bary_t[..., None] * self.uv[self.uv_faces[face_t]]).sum(1)
        return sample_texture(self.texture, uv)

    def _current_trimesh(self) -> trimesh.Trimesh:
        return trimesh.Trimesh(self.vertices.detach().cpu().double().numpy(), self.faces.cpu().numpy(),
                               process=False)

    def to_original(self, points: Tensor) -> Tensor:
        """Scene points [N, 3] -> the input mesh's frame (undoes the normalization)."""
        return points / self.normalization_scale + self.normalization_center

    # ---- optimization ------------------------------------------------------------------------------
    def param_groups(self, optim: OptimConfig | None = None,
                     background: nn.Module | None = None) -> list[dict[str, Any]]:
        """Adam groups from the config's rates: 'texture' ('uv') or 'encoding' and 'network' ('field') unless the
        texture is frozen (``optimize_texture: false``), then 'offsets' when vertices are optimized, and
        'background' (at ``optim.lr_background``) when a ``background`` with trainable parameters is given.
        Every trainable parameter appears exactly once."""
        cfg, optim = self.config, optim or OptimConfig()
        groups: list[dict[str, Any]] = []
        if cfg.optimize_texture and cfg.texture == "uv":
            # the coarsest level at lr_texture, each finer one at texture_level_lr times the next coarser one's
            finest_lr = cfg.lr_texture * cfg.texture_level_lr ** (cfg.texture_levels - 1)
            groups.append({"name": "texture", "params": [self.texture_logits], "lr": finest_lr})
            groups += [{"name": f"texture_level{level}", "params": [param],
                        "lr": finest_lr / cfg.texture_level_lr**level}
                       for level, param in enumerate(self.texture_coarse, start=1)]
        elif cfg.optimize_texture:
            groups += [{"name": "encoding", "params": list(self.encoding.parameters()), "lr": cfg.lr_encoding},
                       {"name": "network", "params": list(self.network.parameters()), "lr": cfg.lr_network}]
        if cfg.optimize_vertices:
            groups.append({"name": "offsets", "params": [self.offsets], "lr": cfg.lr_offsets})
        return groups + background_groups(background, optim.lr_background)

    def update_schedules(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Constant learning rates."""

    def geometry_terms(self) -> dict[str, Tensor]:
        """Unweighted geometry regularizers: 'laplacian' of the offsets and 'normal_consistency' of the
        current mesh (both differentiable in the offsets)."""
        return {"laplacian": laplacian_loss(self.offsets, self.edges),
                "normal_consistency": normal_consistency_loss(self.vertices, self.faces, self.neighbors)}

    def regularizer_loss(self) -> Tensor:
        """``lambda_laplacian * laplacian + lambda_normal_consistency * normal_consistency``; zero when the
        vertices are not optimized."""
        if not self.config.optimize_vertices:
            return self.offsets.new_zeros(())
        terms = self.geometry_terms()
        return (self.config.lambda_laplacian * terms["laplacian"]
                + self.config.lambda_normal_consistency * terms["normal_consistency"])

    def regularizers(self) -> dict[str, Tensor]:
        """The weighted geometry regularizer ('geometry': :meth:`regularizer_loss`) when vertices are trained."""
        return {"geometry": self.regularizer_loss()} if self.config.optimize_vertices else {}

    def log_terms(self) -> dict[str, float]:
        return {}

    # ---- export --------------------------------------------------------------------------------------
    @torch.no_grad()
    def export_mesh(self, cfg: Any, fmt: str = "glb", original_frame: bool = False) -> trimesh.Trimesh:
        """The current mesh with its appearance, for :func:`~dreamengine.export.save_mesh`.

        Args:
            cfg: an :class:`~dreamengine.config.ExportConfig` (appearance, texture size, material factors).
            fmt: the file format: GLB and OBJ get a texture when ``cfg.appearance == 'texture'``, PLY vertex
                colors.
            original_frame: undo the normalization (the input's coordinates); else the scene frame.
        Returns:
            A 'uv' scene's own UVs and texture (at ``texture_resolution``), or a 'field' scene baked onto
            xatlas UVs at ``cfg.texture_size``; vertex colors when no texture is wanted.
        """
        vertices = self.vertices.detach()
        if original_frame:
            vertices = self.to_original(vertices)
        mesh = trimesh.Trimesh(vertices.cpu().double().numpy(), self.faces.cpu().numpy(), process=False)
        textured = cfg.appearance == "texture" and fmt in ("glb", "obj")
        if self.config.texture == "field":
            # Bake in the scene frame (where the field lives), then move the result.
            scene_mesh = self._current_trimesh()
            if textured:
                result = texture_mesh(scene_mesh, self.field_color, cfg.texture_size, cfg.texture_padding,
                                      metallic=cfg.metallic, roughness=cfg.roughness)
            else:
                result = color_vertices(scene_mesh, self.field_color)
            if original_frame:
                result.vertices = self.to_original(torch.as_tensor(result.vertices)).numpy()
            return result
        if not textured:
            mesh.visual = trimesh.visual.ColorVisuals(mesh=mesh, vertex_colors=self._vertex_colors())
            return mesh
        # Split the welded vertices along the UV seams: one output vertex per UV coordinate.
        uv_faces = self.uv_faces.cpu().numpy()
        position_of_uv = np.zeros(len(self.uv), dtype=np.int64)
        position_of_uv[uv_faces.reshape(-1)] = self.faces.cpu().numpy().reshape(-1)
        atlas = UVAtlas(vmapping=position_of_uv, faces=uv_faces, uv=self.uv.cpu().numpy(), charts=0)
        return textured_mesh(mesh, atlas, self.texture.detach().cpu().numpy(), metallic=cfg.metallic,
                             roughness=cfg.roughness)

    def _vertex_colors(self) -> np.ndarray:
        """RGBA uint8 [V, 4]: the texture at each vertex's UV ('uv' kind; one of its UVs at a seam)."""
        uv_of_vertex = torch.zeros(len(self.base_vertices), dtype=torch.long, device=self.uv.device)
        uv_of_vertex[self.faces.reshape(-1)] = self.uv_faces.reshape(-1)
        rgb = sample_texture(self.texture.detach(), self.uv[uv_of_vertex]).cpu().numpy()
        rgba = np.full((len(rgb), 4), 255, dtype=np.uint8)
        rgba[:, :3] = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
        return rgba


def sample_surface(vertices: Tensor, faces: Tensor, count: int,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``count`` points uniformly distributed over the mesh's area: (face [N], barycentrics [N, 3], points [N, 3])."""
    tri = vertices[faces]
    area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
    face = torch.multinomial(area.double().cpu(), count, replacement=True, generator=generator).to(vertices.device)
    u, v = torch.rand(2, count, generator=generator).to(vertices)
    flip = u + v > 1.0
    u, v = torch.where(flip, 1.0 - u, u), torch.where(flip, 1.0 - v, v)
    bary = torch.stack([1.0 - u - v, u, v], dim=-1)
    points = (bary[..., None] * tri[face]).sum(1)
    return face, bary, points


def _has_colors(tensors: MeshTensors) -> bool:
    return tensors.texture is not None or tensors.vertex_colors is not None


def _validate(config: MeshSceneConfig) -> None:
    check_choice("scene.texture", config.texture, TEXTURE_KINDS)
    check_choice("scene.texture_activation", config.texture_activation, TEXTURE_ACTIVATIONS)
    if config.texture_resolution < 16:
        raise ConfigError(f"scene.texture_resolution must be >= 16, got {config.texture_resolution}")
    if not 0.0 < config.texture_level_lr <= 1.0:
        raise ConfigError(f"scene.texture_level_lr must be in (0, 1], got {config.texture_level_lr}")
    if not 1 <= config.texture_levels <= 8:
        raise ConfigError(f"scene.texture_levels must be in 1..8 (1: one texture map), got {config.texture_levels}")
    for key in ("radius", "fit_radius", "lr_texture", "lr_encoding", "lr_network", "lr_offsets", "init_fit_lr"):
        value = getattr(config, key)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"scene.{key} must be > 0, got {value}")
    if config.fit_radius > config.radius:
        raise ConfigError(f"scene.fit_radius ({config.fit_radius}) must not exceed scene.radius ({config.radius})")
    if config.lambda_laplacian < 0 or config.lambda_normal_consistency < 0:
        raise ConfigError("scene.lambda_laplacian and scene.lambda_normal_consistency must be >= 0, got "
                          f"{config.lambda_laplacian}, {config.lambda_normal_consistency}")
    if config.init_fit_steps < 0 or config.init_fit_points < 1 or config.uv_padding < 0:
        raise ConfigError("scene.init_fit_steps and scene.uv_padding must be >= 0 and scene.init_fit_points >= 1")


__all__ = ["MeshScene", "MeshSceneConfig", "check_mesh", "laplacian_loss", "mesh_edges", "normal_consistency_loss",
           "read_mesh_file", "sample_surface"]
