"""Scene settings (``scene:`` in a config, chosen by ``scene.name``) and Gaussian densification (``densify:``).

Plain values only. What each key does is documented with its scene: ``dreamengine/scenes/nerf.py``,
``gaussians.py`` (and ``gaussian_init.py`` for ``scene.init``), ``mesh.py``, ``densify.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

GAUSSIAN_INITS = ("sphere", "shape", "mesh", "nerf", "ply")  # scene.init of Gaussian scenes


DENSITY_ACTIVATIONS = ("softplus", "trunc_exp")


DENSITY_BIASES = ("blob_magic3d", "blob_dreamfusion", "none")


@dataclass
class NeRFConfig:
    """Everything that defines a NeRF scene. Plain types only, so it embeds in the OmegaConf run config."""

    name: str = "nerf"
    radius: float = 1.0  # half side of the bounding box (and radius of the renderer's bounding sphere)
    # hash grid
    num_levels: int = 16
    features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.447269237440378  # 16 levels from 16 to 4096
    encoding_backend: str = "auto"  # auto | torch | cuda (tiny-cuda-nn)
    # progressive band (threestudio's ProgressiveBandHashGrid): only the first progressive_start_level levels
    # are active at first, one more every progressive_update_steps steps from progressive_start_step on; the
    # inactive levels' features are multiplied by 0. progressive_start_level 0: off (every level, always)
    progressive_start_level: int = 0
    progressive_start_step: int = 0
    progressive_update_steps: int = 0
    # MLP
    hidden_dim: int = 64
    num_hidden_layers: int = 1
    # density
    density_activation: str = "softplus"  # softplus | trunc_exp
    density_bias: str = "blob_magic3d"  # blob_magic3d | blob_dreamfusion | none
    density_blob_scale: float = 10.0
    density_blob_std: float = 0.5
    density_blob_fade_steps: int = 0  # fade the blob's positive part out over this many steps (0: keep it)
    # finite-difference step for normals, world units (threestudio's finite_difference_normal_eps)
    normal_eps: float = 0.01


@dataclass
class GaussiansConfig:
    """Everything that defines a Gaussian scene. Plain types only, so it embeds in the OmegaConf run config."""

    name: str = "gaussians"
    radius: float = 1.0  # scene bound (the exporter's grid covers [-radius, radius]^3)
    num_points: int = 4096  # initial number of Gaussians (all inits but 'ply')
    init: str = "sphere"  # sphere | shape | mesh | nerf | ply (see dreamengine/scenes/gaussian_init.py)
    init_path: str = ""  # mesh: a GLB/OBJ/PLY mesh | nerf: a NeRF run directory | ply: a 3DGS PLY file
    init_shape: str = "sphere"  # shape: a toy shape name (geometry only) or a toy prompt (geometry + colors)
    init_mesh_normalize: bool = True  # mesh: center the surface points and scale them into init_radius
    init_radius: float = 0.5
    init_color: tuple[float, float, float] = (0.5, 0.5, 0.5)  # initial view-independent color
    init_random_color: bool = True  # uniform random colors in [0, 1] instead of init_color
    sh_degree: int = 0  # 0..3
    albedo_only: bool = False  # force degree 0 (view-independent color)
    init_scale: float = 0.02  # world units, isotropic
    init_opacity: float = 0.1
    seed: int = 0  # for the random initialization
    # learning rates (3DGS defaults, except means which has the exponential decay below)
    lr_means_init: float = 1.6e-4
    lr_means_final: float = 1.6e-6
    lr_means_decay_steps: int = 30_000  # lr(step) = exp(lerp(log init, log final, min(step / steps, 1)))
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh_dc: float = 2.5e-3
    lr_sh_rest: float = 2.5e-3 / 20.0


TEXTURE_KINDS = ("uv", "field")


TEXTURE_ACTIVATIONS = ("sigmoid", "clamp")


@dataclass
class MeshSceneConfig:
    """Everything that defines a mesh scene. Plain types only, so it embeds in the OmegaConf run config."""

    name: str = "mesh"
    init_path: str = ""  # the mesh file to start from: .glb | .obj | .ply (read with dreamengine.export.load_mesh)
    radius: float = 1.0  # scene bound: a sphere around the origin
    normalize: bool = True  # center the input; scale it to fit_radius unless it fits (fit_radius / 2 .. fit_radius)
    fit_radius: float = 0.75  # where training cameras frame an object (the toy world's objects fit in 0.75)
    texture: str = "uv"  # uv: texture map on the mesh's UVs (xatlas UVs if it has none) | field: hash grid + MLP
    texture_resolution: int = 512  # uv: texels per side
    texture_activation: str = "sigmoid"  # uv: sigmoid (texels hold logits) | clamp (texels hold colors)
    texture_levels: int = 1  # uv: a pyramid of this many maps (each half the last's size) summed: no SDS speckle
    texture_level_lr: float = 0.5  # uv pyramid: each finer level's lr relative to the next coarser one's
    uv_padding: int = 4  # uv: texels between xatlas charts
    # field (a small hash grid over [-radius, radius]^3 and an MLP with one hidden layer)
    num_levels: int = 12
    features_per_level: int = 2
    log2_hashmap_size: int = 16
    base_resolution: int = 16
    per_level_scale: float = 1.5
    hidden_dim: int = 32
    encoding_backend: str = "auto"  # auto | torch | cuda (tiny-cuda-nn)
    init_fit_steps: int = 100  # field: Adam steps fitting it to the input's colors (when it has colors)
    init_fit_points: int = 4096  # field: surface samples per fitting step
    init_fit_lr: float = 0.03  # field: Adam learning rate of the fitting (encoding and network alike)
    seed: int = 0  # for the field's initialization and fitting samples
    # what is trained
    optimize_texture: bool = True  # false: a geometry-only stage keeps the appearance as it is
    optimize_vertices: bool = False  # train per-vertex offsets
    # learning rates (Adam)
    lr_texture: float = 0.01
    lr_encoding: float = 0.01
    lr_network: float = 0.001
    lr_offsets: float = 1e-4
    # regularizer weights for trained offsets (see MeshScene.regularizer_loss). threestudio's Magic3D
    # refinement uses normal consistency 10000 and no Laplacian term; neither is calibrated here yet.
    lambda_laplacian: float = 0.0  # uniform Laplacian of the offsets: smooth displacements
    lambda_normal_consistency: float = 10000.0  # 1 - cos between normals of adjacent faces


@dataclass
class DensifyConfig:
    """When and how to clone, split, prune and reset (gsplat's DefaultStrategy defaults)."""

    refine_start: int = 500
    refine_stop: int = 15_000
    refine_every: int = 100
    reset_every: int = 3_000  # 0 disables opacity resets
    grow_grad2d: float = 0.0002
    grow_scale3d: float = 0.01  # fraction of the scene radius separating clone from split
    prune_opacity: float = 0.005
    prune_scale3d: float = 0.1  # fraction of the scene radius
    max_gaussians: int = 200_000
    seed: int = 0  # for the split children's positions


SCENE_CONFIGS = {"nerf": NeRFConfig, "gaussians": GaussiansConfig, "mesh": MeshSceneConfig}
