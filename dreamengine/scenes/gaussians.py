"""A scene made of 3D Gaussians (3D Gaussian Splatting), the scene type of GaussianDreamer / DreamGaussian.

Gaussian ``i`` has a mean ``mu_i`` [3], a rotation (unit quaternion ``q_i = (w, x, y, z)``), per-axis scales
``s_i = exp(log_scale_i)`` [3], an opacity ``o_i = sigmoid(logit_opacity_i)`` and a view-dependent color
given by real spherical-harmonic coefficients of degree ``d`` (``(d + 1)^2`` coefficients per channel;
``color(dir) = max(0, SH(dir) . coeffs + 0.5)``, see :func:`dreamengine.renderers.splat.eval_sh`). Its
covariance is ``Sigma_i = R_i S_i^2 R_i^T``. ``albedo_only`` keeps only the degree-0 (view-independent) term.

The stored parameters are unconstrained (log scales, logit opacities, raw quaternions normalized on use),
exactly what the 3DGS PLY format stores, so :mod:`dreamengine.export.splat_ply` writes them as they are.

The number of Gaussians changes during training (:mod:`dreamengine.scenes.densify`). Parameters are resized
in place (``param.data = ...``) so the Parameter objects the optimizer holds stay valid, and
:meth:`GaussianScene.load_state_dict` resizes them to the checkpoint's size before loading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dreamengine.errors import ConfigError
from dreamengine.scenes.gaussian_init import INITIALIZERS, SH_C0, rgb_to_sh_dc

PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh_dc", "sh_rest")
# param-group name -> attribute of GaussianScene (log scales and logit opacities are what is optimized)
ATTRIBUTES = {"means": "means", "scales": "log_scales", "quats": "quats", "opacities": "logit_opacities",
              "sh_dc": "sh_dc", "sh_rest": "sh_rest"}


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


def sh_dc_to_rgb(sh_dc: Tensor) -> Tensor:
    """View-independent color [..., 3] of degree-0 coefficients [..., 3], clamped at 0 like the renderer."""
    return (sh_dc * SH_C0 + 0.5).clamp(min=0.0)


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] of quaternions (w, x, y, z) [..., 4] (normalized here)."""
    w, x, y, z = nn.functional.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)


def covariance_and_precision(quats: Tensor, scales: Tensor) -> tuple[Tensor, Tensor]:
    """3D covariances ``R S^2 R^T`` and their inverses ``R S^-2 R^T``, both [..., 3, 3].

    Args:
        quats: [..., 4] (w, x, y, z), any norm; scales: [..., 3] positive.
    """
    rot = quat_to_rotmat(quats)
    m = rot * scales[..., None, :]  # R S
    p = rot / scales[..., None, :]  # R S^-1
    return m @ m.transpose(-1, -2), p @ p.transpose(-1, -2)


class GaussianScene(nn.Module):
    """N Gaussians with SH colors. Parameters: means [N, 3], quats [N, 4], log_scales [N, 3],
    logit_opacities [N], sh_dc [N, 1, 3], sh_rest [N, (d + 1)^2 - 1, 3]."""

    def __init__(self, config: GaussiansConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else GaussiansConfig()
        _validate(config)
        self.config = config
        self.radius = float(config.radius)
        self.sh_degree = 0 if config.albedo_only else int(config.sh_degree)
        tensors = INITIALIZERS[config.init](config, self.sh_degree)
        self.means = nn.Parameter(tensors["means"].float())
        self.quats = nn.Parameter(tensors["quats"].float())
        self.log_scales = nn.Parameter(tensors["log_scales"].float())
        self.logit_opacities = nn.Parameter(tensors["logit_opacities"].float())
        self.sh_dc = nn.Parameter(tensors["sh_dc"].float())
        self.sh_rest = nn.Parameter(tensors["sh_rest"].float())

    # ---- views of the parameters -------------------------------------------------------------------
    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    @property
    def scales(self) -> Tensor:
        """[N, 3] positive."""
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> Tensor:
        """[N] in (0, 1)."""
        return torch.sigmoid(self.logit_opacities)

    @property
    def sh_coeffs(self) -> Tensor:
        """[N, (d + 1)^2, 3] all SH coefficients, degree 0 first."""
        return torch.cat([self.sh_dc, self.sh_rest], dim=1)

    def parameters_by_name(self) -> dict[str, nn.Parameter]:
        """The six parameters under their param-group names (see :data:`PARAM_NAMES`)."""
        return {name: getattr(self, attr) for name, attr in ATTRIBUTES.items()}

    # ---- optimization ------------------------------------------------------------------------------
    def param_groups(self, lr_background: float = 0.0, background: nn.Module | None = None) -> list[dict[str, Any]]:
        """Adam groups, one parameter each, named as in :data:`PARAM_NAMES` (plus 'background' when a
        ``background`` with trainable parameters is given). Learning rates come from the config; the
        'means' rate starts at ``lr_means_init`` (see :meth:`update_learning_rate`). 'sh_rest' is included
        even when empty (degree 0) so that group indices do not depend on the degree."""
        cfg = self.config
        rates = {"means": cfg.lr_means_init, "scales": cfg.lr_scales, "quats": cfg.lr_quats,
                 "opacities": cfg.lr_opacities, "sh_dc": cfg.lr_sh_dc, "sh_rest": cfg.lr_sh_rest}
        groups: list[dict[str, Any]] = [{"name": name, "params": [param], "lr": rates[name]}
                                        for name, param in self.parameters_by_name().items()]
        if background is not None:
            trainable = [p for p in background.parameters() if p.requires_grad]
            if trainable:
                groups.append({"name": "background", "params": trainable, "lr": lr_background})
        return groups

    def means_learning_rate(self, step: int) -> float:
        """3DGS's position schedule: log-linear from ``lr_means_init`` to ``lr_means_final`` over
        ``lr_means_decay_steps`` steps, constant afterwards."""
        cfg = self.config
        t = min(max(step / cfg.lr_means_decay_steps, 0.0), 1.0)
        return math.exp((1.0 - t) * math.log(cfg.lr_means_init) + t * math.log(cfg.lr_means_final))

    def update_learning_rate(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the 'means' group's learning rate for ``step`` (call once per step); returns it."""
        lr = self.means_learning_rate(step)
        for group in optimizer.param_groups:
            if group.get("name") == "means":
                group["lr"] = lr
        return lr

    # ---- resizing (densification, checkpoints) -----------------------------------------------------
    def set_parameter(self, name: str, value: Tensor) -> nn.Parameter:
        """Replace parameter ``name`` (of :data:`PARAM_NAMES`) by a new Parameter holding ``value``; return it.

        A new object, not a ``.data`` swap: autograd caches a leaf's shape while any graph through it is
        alive, so resizing in place breaks the next backward. The caller re-points the optimizer at it
        (:class:`~dreamengine.scenes.densify.DensifyStrategy` does)."""
        old = getattr(self, ATTRIBUTES[name])
        param = nn.Parameter(value.detach().to(dtype=old.dtype, device=old.device).contiguous(),
                             requires_grad=old.requires_grad)
        setattr(self, ATTRIBUTES[name], param)
        return param

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Like ``nn.Module.load_state_dict``, but first resizes the parameters to the checkpoint's N.

        Resizing here swaps ``.data`` so that the Parameter objects, which an optimizer built before the
        restore holds, stay the same; call it before any render (no autograd graph may hold the old size)."""
        for attr in ATTRIBUTES.values():
            param = getattr(self, attr)
            if attr in state_dict and state_dict[attr].shape != param.shape:
                param.data = torch.empty(state_dict[attr].shape, dtype=param.dtype, device=param.device)
                param.grad = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ---- fields, for the mesh exporter -------------------------------------------------------------
    @torch.no_grad()
    def _contributions(self, points: Tensor, chunk: int, fn: Any) -> list[Tensor]:
        """Run ``fn(points_chunk, weights [m, k], gaussian_ids [k])`` over chunks of ``points``. A Gaussian
        contributes to a point inside its box ``mu +- 3 max(scale)`` (at least 3 sigma in every direction); only
        Gaussians whose box overlaps the chunk's bounding box are evaluated."""
        _, precision = covariance_and_precision(self.quats, self.scales)
        reach = 3.0 * self.scales.amax(dim=-1)  # [N]
        opacities = self.opacities
        results = []
        for part in points.split(chunk):
            low, high = part.amin(dim=0), part.amax(dim=0)
            near = ((self.means + reach[:, None] >= low) & (self.means - reach[:, None] <= high)).all(-1)
            ids = torch.nonzero(near).squeeze(-1)
            diff = part[:, None, :] - self.means[ids]  # [m, k, 3]
            mahalanobis_sq = torch.einsum("mki,kij,mkj->mk", diff, precision[ids], diff)
            inside = (diff.abs() <= reach[ids, None]).all(-1)  # per point, so chunking changes nothing
            weights = opacities[ids] * torch.exp(-0.5 * mahalanobis_sq) * inside
            results.append(fn(part, weights, ids))
        return results

    def density(self, points: Tensor, chunk: int = 4096) -> Tensor:
        """Sum over Gaussians of ``opacity * exp(-0.5 (x - mu)^T Sigma^-1 (x - mu))``, [M, 3] -> [M].

        Truncated outside the box ``mu +- 3 max(scale)``. Only for export (no gradient)."""
        parts = self._contributions(points, chunk, lambda part, weights, ids: weights.sum(-1))
        return torch.cat(parts) if parts else points.new_zeros(0)

    def albedo(self, points: Tensor, chunk: int = 4096) -> Tensor:
        """View-independent color at points [M, 3] -> [M, 3]: the density-weighted mean of the degree-0
        colors of the Gaussians around each point, or the color of the nearest mean where none reaches."""
        colors = sh_dc_to_rgb(self.sh_dc[:, 0, :]).clamp(max=1.0)  # [N, 3]

        def blend(part: Tensor, weights: Tensor, ids: Tensor) -> Tensor:
            total = weights.sum(-1, keepdim=True)
            blended = weights @ colors[ids] / total.clamp(min=1e-12)
            nearest = torch.cdist(part, self.means.detach()).argmin(dim=-1)
            return torch.where(total > 1e-6, blended, colors[nearest])

        parts = self._contributions(points, chunk, blend)
        return torch.cat(parts) if parts else points.new_zeros(0, 3)


def _validate(config: GaussiansConfig) -> None:
    if config.init not in INITIALIZERS:
        raise ConfigError(f"scene.init must be one of {', '.join(INITIALIZERS)}, got {config.init!r}")
    if config.init in ("mesh", "nerf", "ply") and not config.init_path:
        raise ConfigError(f"scene.init={config.init} needs scene.init_path (a mesh file for mesh, a NeRF run "
                          "directory for nerf, a 3DGS .ply file for ply)")
    if not 0 <= config.sh_degree <= 3:
        raise ConfigError(f"scene.sh_degree must be 0, 1, 2 or 3, got {config.sh_degree}")
    if config.num_points < 1 and config.init != "ply":
        raise ConfigError(f"scene.num_points must be >= 1, got {config.num_points}")
    positive = {"radius": config.radius, "init_radius": config.init_radius, "init_scale": config.init_scale,
                "lr_means_init": config.lr_means_init, "lr_means_final": config.lr_means_final,
                "lr_means_decay_steps": config.lr_means_decay_steps}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"scene.{key} must be > 0, got {value}")
    if not 0.0 < config.init_opacity < 1.0:
        raise ConfigError(f"scene.init_opacity must be in (0, 1), got {config.init_opacity}")


__all__ = ["GaussianScene", "GaussiansConfig", "PARAM_NAMES", "covariance_and_precision", "quat_to_rotmat",
           "rgb_to_sh_dc", "sh_dc_to_rgb"]
