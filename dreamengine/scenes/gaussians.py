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
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dreamengine.config.run import OptimConfig
from dreamengine.config.scenes import GAUSSIAN_INITS, GaussiansConfig
from dreamengine.core.render import SplatTensors
from dreamengine.errors import ConfigError
from dreamengine.renderers.splat import covariance_and_precision
from dreamengine.scenes.gaussian_grid import gaussian_albedo_field, gaussian_density_grid
from dreamengine.scenes.gaussian_init import INITIALIZERS, SH_C0, rgb_to_sh_dc
from dreamengine.scenes.nerf import background_groups

PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh_dc", "sh_rest")
# param-group name -> attribute of GaussianScene (log scales and logit opacities are what is optimized)
ATTRIBUTES = {"means": "means", "scales": "log_scales", "quats": "quats", "opacities": "logit_opacities",
              "sh_dc": "sh_dc", "sh_rest": "sh_rest"}




def sh_dc_to_rgb(sh_dc: Tensor) -> Tensor:
    """View-independent color [..., 3] of degree-0 coefficients [..., 3], clamped at 0 like the renderer."""
    return (sh_dc * SH_C0 + 0.5).clamp(min=0.0)


class GaussianScene(nn.Module):
    """N Gaussians with SH colors. Parameters: means [N, 3], quats [N, 4], log_scales [N, 3],
    logit_opacities [N], sh_dc [N, 1, 3], sh_rest [N, (d + 1)^2 - 1, 3]."""

    def __init__(self, config: GaussiansConfig | None = None, initial: dict[str, Tensor] | None = None) -> None:
        """``initial``: the parameter tensors to start from (as :func:`~dreamengine.scenes.gaussian_init.gaussians_at`
        returns them); None: made by ``scene.init``'s initializer. ``scene.init=nerf`` needs them (the builder
        makes them from the NeRF run: :func:`dreamengine.build.gaussians_from_nerf_run`)."""
        super().__init__()
        config = config if config is not None else GaussiansConfig()
        _validate(config)
        self.config = config
        self.radius = float(config.radius)
        self.sh_degree = 0 if config.albedo_only else int(config.sh_degree)
        if initial is None and config.init not in INITIALIZERS:
            raise ConfigError(f"scene.init={config.init} starts from another run: build the scene with "
                              "dreamengine.build.build_scene, which reads scene.init_path")
        tensors = initial if initial is not None else INITIALIZERS[config.init](config, self.sh_degree)
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
    def param_groups(self, optim: OptimConfig | None = None,
                     background: nn.Module | None = None) -> list[dict[str, Any]]:
        """Adam groups, one parameter each, named as in :data:`PARAM_NAMES` (plus 'background' at
        ``optim.lr_background`` when a ``background`` with trainable parameters is given). Learning rates come
        from the scene config; the 'means' rate starts at ``lr_means_init`` (see :meth:`update_schedules`).
        'sh_rest' is included even when empty (degree 0) so that group indices do not depend on the degree."""
        cfg, optim = self.config, optim or OptimConfig()
        rates = {"means": cfg.lr_means_init, "scales": cfg.lr_scales, "quats": cfg.lr_quats,
                 "opacities": cfg.lr_opacities, "sh_dc": cfg.lr_sh_dc, "sh_rest": cfg.lr_sh_rest}
        groups: list[dict[str, Any]] = [{"name": name, "params": [param], "lr": rates[name]}
                                        for name, param in self.parameters_by_name().items()]
        return groups + background_groups(background, optim.lr_background)

    def means_learning_rate(self, step: int) -> float:
        """3DGS's position schedule: log-linear from ``lr_means_init`` to ``lr_means_final`` over
        ``lr_means_decay_steps`` steps, constant afterwards."""
        cfg = self.config
        t = min(max(step / cfg.lr_means_decay_steps, 0.0), 1.0)
        return math.exp((1.0 - t) * math.log(cfg.lr_means_init) + t * math.log(cfg.lr_means_final))

    def update_schedules(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the 'means' group's learning rate for ``step`` (call once per step); returns it."""
        lr = self.means_learning_rate(step)
        for group in optimizer.param_groups:
            if group.get("name") == "means":
                group["lr"] = lr
        return lr

    # ---- the Scene protocol's other parts (dreamengine.core.protocols.Scene) ---------------------------
    def render_inputs(self) -> SplatTensors:
        """The Gaussians as the splat renderer takes them (differentiable views of the parameters)."""
        return SplatTensors(means=self.means, quats=self.quats, scales=self.scales, opacities=self.opacities,
                            sh_coeffs=self.sh_coeffs, sh_degree=self.sh_degree)

    def regularizers(self) -> dict[str, Tensor]:
        return {}

    def log_terms(self) -> dict[str, float]:
        return {"num_gaussians": float(self.num_gaussians)}

    def splat_tensors(self) -> dict[str, Tensor]:
        """The stored (unconstrained) parameters, as a 3DGS PLY file holds them (detached)."""
        return {attr: getattr(self, attr).detach() for attr in ATTRIBUTES.values()}

    def density_grid(self, resolution: int) -> np.ndarray:
        """:meth:`density` on the export grid, [R, R, R], by scattering the Gaussians into it (much faster than
        point queries, same values: :func:`~dreamengine.scenes.gaussian_grid.gaussian_density_grid`)."""
        return gaussian_density_grid(self.render_inputs(), self.radius, resolution)

    def export_albedo(self, resolution: int) -> Any:
        """A fast stand-in for :meth:`albedo` for texture baking (a million texels), interpolated from the
        ``resolution``^3 export grid (:func:`~dreamengine.scenes.gaussian_grid.gaussian_albedo_field`)."""
        return gaussian_albedo_field(self.render_inputs(), self.radius, resolution)

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
    if config.init not in GAUSSIAN_INITS:
        raise ConfigError(f"scene.init must be one of {', '.join(GAUSSIAN_INITS)}, got {config.init!r}")
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


__all__ = ["GaussianScene", "PARAM_NAMES", "rgb_to_sh_dc", "sh_dc_to_rgb"]
