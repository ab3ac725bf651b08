"""Volume rendering of a density/albedo field (NeRF), as a function over tensors.

For each pixel ray ``o + t d`` (``d`` unit length) that hits the scene's bounding sphere between ``near`` and
``far``, the torch path splits ``[near, far]`` into ``K = num_samples`` equal intervals of length ``delta``,
evaluates the field at one point per interval (a uniform random point when ``perturb``, else the midpoint)
and composites front to back:

    alpha_i = 1 - exp(-sigma_i delta)
    T_i     = exp(-sum_{j<i} sigma_j delta)          (transmittance before sample i)
    w_i     = T_i alpha_i
    opacity = sum_i w_i,    rgb = sum_i w_i c_i + (1 - opacity) background(d),    depth = sum_i w_i t_i

``depth`` is the expected hit distance with empty space counted as 0 (threestudio's convention): divide by
``opacity`` for the distance to the surface. Rays that miss the sphere get opacity 0, depth 0 and the
background. The CUDA path (nerfacc's occupancy-grid marching and packed compositing) evaluates the same
sums on the samples nerfacc keeps.

Shading (a renderer argument, not a scene property), with threestudio's diffuse_with_point_light model:

* ``albedo``:      c = albedo
* ``diffuse``:     c = albedo * (AMBIENT + DIFFUSE * max(0, n . l)), l = unit vector from point to light
* ``textureless``: c = AMBIENT + DIFFUSE * max(0, n . l)              (white albedo)

with ``n`` the scene's outward finite-difference normal. With ``render.albedo_warmup_steps`` N > 0 (threestudio's
``ambient_only_steps``) the renderer objects render 'albedo' for the training steps before step N, whatever
``render.shading`` says (:class:`AlbedoWarmup`: they count the steps done through ``after_step`` and save the
count in their state); the normals and the orientation loss are still computed when ``render.shading`` needs them.

:class:`RenderOut` carries the one regularizer that needs per-sample data, ``orientation_loss`` (DreamFusion's
Ro, threestudio's ``loss_orient``): ``sum over samples of w_i.detach() * max(0, n_i . d)^2``, divided by the
number of rays with opacity > 0. It penalizes visible normals that face away from the camera; the weights are
detached as threestudio does, so only the normals move. Opacity-based regularizers (sparsity, opaque) are
computed by the caller from ``opacity``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from dreamengine.core.backends import optional_import
from dreamengine.core.backends import resolve_backend as resolve_any_backend
from dreamengine.core.background import sample_light_positions
from dreamengine.core.cameras import Cameras
from dreamengine.core.protocols import Field
from dreamengine.core.render import RenderOut
from dreamengine.errors import ConfigError

SHADINGS = ("albedo", "diffuse", "textureless")
AMBIENT = 0.5
DIFFUSE = 0.5
NORMAL_MIN_WEIGHT = 1e-4  # samples lighter than this get no normal (see _normals_where_visible)


def resolve_backend(backend: str, device: torch.device) -> str:
    """'torch' or 'cuda' (nerfacc) for a requested ``backend`` (auto | torch | cuda) on ``device``."""
    return resolve_any_backend(backend, device, component="volume renderer", module="nerfacc",
                               install="install nerfacc")


def intersect_sphere(origins: Float[Tensor, "R 3"], directions: Float[Tensor, "R 3"],
                     radius: float) -> tuple[Float[Tensor, " R"], Float[Tensor, " R"], Tensor]:
    """Where rays ``o + t d`` (unit ``d``) cross the origin-centered sphere, clipped to t >= 0.

    Args:
        origins, directions: [R, 3].
    Returns:
        near, far: [R] (meaningless where ``hit`` is False); hit: [R] bool, True when the ray crosses the
        sphere in front of its origin.
    """
    t_closest = -(origins * directions).sum(-1)  # [R] parameter of the point nearest the center
    closest_sq = (origins * origins).sum(-1) - t_closest * t_closest
    half_chord_sq = radius * radius - closest_sq
    half_chord = half_chord_sq.clamp(min=0.0).sqrt()
    near = (t_closest - half_chord).clamp(min=0.0)
    far = t_closest + half_chord
    hit = (half_chord_sq > 0) & (far > 0)
    return near, far, hit


def stratified_samples(near: Float[Tensor, " R"], far: Float[Tensor, " R"], num_samples: int, perturb: bool,
                       generator: torch.Generator | None = None
                       ) -> tuple[Float[Tensor, "R K"], Float[Tensor, "R K"], Float[Tensor, "R K"]]:
    """Split ``[near, far]`` into ``num_samples`` equal intervals, one sample point in each.

    Args:
        near, far: [R].
    Returns:
        t_starts, t_ends: [R, K] interval bounds; t_points: [R, K] sample distances, uniform in each
        interval when ``perturb`` (drawn with ``generator`` on its own device), else the interval midpoints.
    """
    steps = torch.linspace(0.0, 1.0, num_samples + 1, device=near.device, dtype=near.dtype)
    edges = near[:, None] + (far - near)[:, None] * steps  # [R, K + 1]
    t_starts, t_ends = edges[:, :-1], edges[:, 1:]
    if perturb:
        device = generator.device if generator is not None else near.device
        u = torch.rand(t_starts.shape, generator=generator, device=device, dtype=near.dtype).to(near.device)
    else:
        u = torch.full_like(t_starts, 0.5)
    return t_starts, t_ends, t_starts + (t_ends - t_starts) * u


def composite_weights(sigmas: Float[Tensor, "R K"], deltas: Float[Tensor, "R K"]) -> Float[Tensor, "R K"]:
    """Volume-rendering weights w_i = T_i (1 - exp(-sigma_i delta_i)) along each ray.

    Args:
        sigmas, deltas: [R, K] densities and interval lengths, front to back.
    Returns:
        weights: [R, K].
    """
    optical_depth = sigmas * deltas
    # Exclusive cumulative sum: the optical depth in front of each sample.
    before = torch.cumsum(optical_depth, dim=-1) - optical_depth
    return torch.exp(-before) * (1.0 - torch.exp(-optical_depth))


def accumulate(weights: Float[Tensor, "R K"], values: Float[Tensor, "R K C"] | None = None) -> Float[Tensor, "R C"]:
    """Weighted sums along rays: weights [R, K], values [R, K, C] -> [R, C]; no values -> opacity [R, 1]."""
    if values is None:
        return weights.sum(-1, keepdim=True)
    return torch.einsum("rk,rkc->rc", weights, values)  # no [R, K, C] temporary, unlike (w[..., None] * v).sum(1)


def shade(albedo: Float[Tensor, "N 3"], normals: Float[Tensor, "N 3"] | None, points: Float[Tensor, "N 3"],
          light_positions: Float[Tensor, "N 3"] | None, shading: str) -> Float[Tensor, "N 3"]:
    """Sample colors [N, 3] for a shading mode (see the module docstring).

    Args:
        albedo, points: [N, 3]; normals: [N, 3] unit (ignored for 'albedo'); light_positions: [N, 3].
    """
    if shading == "albedo":
        return albedo
    to_light = torch.nn.functional.normalize(light_positions - points, dim=-1)
    lambert = (normals * to_light).sum(-1, keepdim=True).clamp(min=0.0)  # [N, 1]
    light = AMBIENT + DIFFUSE * lambert
    if shading == "textureless":
        return light.expand(-1, 3)
    return albedo * light


class OccupancyGrid:
    """A coarse grid over ``[-radius, radius]^3`` marking where the scene has density, to skip empty space.

    Both paths follow Instant-NGP / nerfacc: every ``update_every`` steps each cell's value becomes
    ``max(ema_decay * value, density at a random point in the cell)``, and a cell is occupied when
    ``value * step > min(occupancy_threshold, mean over cells of value * step)`` with the marching step
    ``step = 2 sqrt(3) radius / num_samples`` (so ``value * step`` approximates the cell's alpha; pass the
    renderer's ``num_samples``). Samples in empty cells get density 0 without a field evaluation, and no
    gradient. Until the first update the torch grid marks every cell occupied (the first due one is at step
    ``update_every``: the trainer counts steps from 1).

    * CUDA backend: wraps ``nerfacc.OccGridEstimator``, which also does the ray marching. Its fresh grid marks
      no cell, so the first ``update`` call refreshes it whatever the step (else nothing renders until step
      ``update_every``; threestudio updates before each step, from step 0).
    * torch backend: a boolean [resolution^3] grid that the torch renderer uses to evaluate the field only
      at samples in occupied cells (typically 4-6x fewer evaluations for an object in the middle).

    Call ``update(scene, step)`` once per optimization step, after ``optimizer.step()``. Its state goes into
    checkpoints through ``state_dict`` / ``load_state_dict`` so that a resumed run skips the same samples.
    """

    def __init__(self, radius: float = 1.0, num_samples: int = 64, resolution: int = 32,
                 update_every: int = 16, occupancy_threshold: float = 0.01, ema_decay: float = 0.95,
                 backend: str = "auto", device: torch.device | str = "cpu") -> None:
        if resolution < 1 or update_every < 1 or num_samples < 1:
            raise ConfigError("occupancy grid resolution, update_every and num_samples must be >= 1, got "
                              f"{resolution}, {update_every}, {num_samples}")
        self.device = torch.device(device)
        self.backend = resolve_backend(backend, self.device)
        self.radius = radius
        self.resolution = resolution
        self.render_step_size = 2.0 * math.sqrt(3.0) * radius / num_samples
        self.update_every = update_every
        self.occupancy_threshold = occupancy_threshold
        self.ema_decay = ema_decay
        self.estimator: Any | None = None
        if self.backend == "cuda":
            nerfacc = optional_import("nerfacc")
            aabb = torch.tensor([-radius, -radius, -radius, radius, radius, radius], device=self.device)
            self.estimator = nerfacc.OccGridEstimator(roi_aabb=aabb, resolution=resolution, levels=1)
            self.estimator.to(self.device)
            return
        self.values = torch.zeros(resolution**3, device=self.device)  # EMA of the max density per cell
        self.occupied = torch.ones(resolution**3, dtype=torch.bool, device=self.device)

    def update(self, scene: Field, step: int, chunk: int = 65536) -> None:
        """Refresh occupancy from the scene's density every ``update_every`` steps."""
        if self.estimator is not None:
            # nerfacc's fresh grid marks no cell: nothing would render until step n (checked only before then:
            # `refreshed` reads the grid back from the GPU)
            if step < self.update_every and not self.refreshed:
                self.refresh(scene)
            self.estimator.update_every_n_steps(step=step, occ_eval_fn=self._alpha_fn(scene),
                                                occ_thre=self.occupancy_threshold, n=self.update_every)
            return
        if step % self.update_every != 0:
            return
        self._update_torch(scene, chunk)

    @property
    def refreshed(self) -> bool:
        """Whether an update has looked at the scene yet (before the first one the torch grid marks every cell
        occupied, nerfacc's none)."""
        values = self.estimator.occs if self.estimator is not None else self.values
        return bool(values.any())

    def refresh(self, scene: Field, chunk: int = 65536) -> None:
        """One update now, whatever the step, with its own fixed random numbers (the global generators are left
        as they were): what the renders after a run shorter than ``update_every`` steps need."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            if self.estimator is None:
                self._update_torch(scene, chunk)
                return
            # nerfacc's documented way to update outside training; step 0 is in its warm-up (every cell evaluated)
            self.estimator._update(step=0, occ_eval_fn=self._alpha_fn(scene), occ_thre=self.occupancy_threshold,
                                   ema_decay=self.ema_decay)

    def _alpha_fn(self, scene: Field) -> Callable[[Tensor], Tensor]:
        """nerfacc's occupancy function: points [N, 3] -> density x marching step (~ alpha for small values)."""
        return lambda points: scene.density(points) * self.render_step_size

    def _update_torch(self, scene: Field, chunk: int) -> None:
        """The torch grid's update: the EMA of the density at one random point per cell, then the threshold."""
        res = self.resolution
        axis = torch.arange(res, device=self.device)
        cells = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
        jitter = torch.rand(cells.shape, device=self.device)
        points = ((cells + jitter) / res * 2.0 - 1.0) * self.radius  # a random point in each cell
        with torch.no_grad():
            density = torch.cat([scene.density(part) for part in points.split(chunk)])
        self.values = torch.maximum(self.values * self.ema_decay, density.float())
        alphas = self.values * self.render_step_size
        self.occupied = alphas > torch.clamp(alphas.mean(), max=self.occupancy_threshold)

    def state_dict(self) -> dict[str, Any]:
        if self.estimator is not None:
            return {"estimator": self.estimator.state_dict()}
        return {"values": self.values, "occupied": self.occupied}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.estimator is not None:
            self.estimator.load_state_dict(state["estimator"])
            return
        if state["values"].shape != self.values.shape:
            raise ValueError(f"occupancy grid of {state['values'].numel()} cells, expected {self.values.numel()}")
        self.values = state["values"].to(self.device)
        self.occupied = state["occupied"].to(self.device)

    def occupied_at(self, points: Tensor) -> Tensor:
        """Whether each point [N, 3] lies in an occupied cell (torch backend), bool [N]."""
        res = self.resolution
        cell = ((points / self.radius + 1.0) * 0.5 * res).floor().long().clamp(0, res - 1)  # [N, 3]
        return self.occupied[(cell[:, 0] * res + cell[:, 1]) * res + cell[:, 2]]


def render_volume(scene: Field, cameras: Cameras, height: int, width: int, *, background: torch.nn.Module,
                  num_samples: int = 64, shading: str = "albedo", light_positions: Tensor | None = None,
                  perturb: bool = True, generator: torch.Generator | None = None, chunk_rays: int = 16384,
                  compute_normals: bool = False, backend: str = "auto",
                  occupancy: OccupancyGrid | None = None) -> RenderOut:
    """Render ``cameras`` ([B] views) of ``scene`` at ``height`` x ``width``.

    Args:
        background: called on the ray directions [B, H, W, 3] for the color behind the scene.
        num_samples: samples per ray (torch path); the CUDA path marches with step 2 sqrt(3) r / num_samples.
        shading: 'albedo' | 'diffuse' | 'textureless'; the last two need ``light_positions`` [B, 3].
        perturb: jitter samples inside their intervals (training) or take midpoints (evaluation).
        generator: for the jitter (torch path only; any device, numbers are moved to the rays).
        chunk_rays: rays evaluated per field call, to bound peak memory.
        compute_normals: composite normals (and the orientation loss) even for 'albedo' shading.
        backend: 'auto' | 'torch' | 'cuda'. The CUDA path runs only with an ``occupancy`` grid built for the
            'cuda' backend; 'auto' without one renders with torch.
        occupancy: optional :class:`OccupancyGrid`; on the torch path a torch-backend grid skips the field
            evaluation of samples in empty cells.
    Returns:
        :class:`RenderOut`.
    """
    if shading not in SHADINGS:
        raise ConfigError(f"shading must be one of {SHADINGS}, got {shading!r}")
    if shading != "albedo" and light_positions is None:
        raise ConfigError(f"shading {shading!r} needs light_positions [B, 3] (see sample_light_positions)")
    if num_samples < 1 or chunk_rays < 1:
        raise ConfigError(f"num_samples and chunk_rays must be >= 1, got {num_samples}, {chunk_rays}")
    use_cuda = resolve_backend(backend, cameras.device) == "cuda"
    if use_cuda and (occupancy is None or occupancy.estimator is None):
        if backend == "cuda":
            raise ConfigError("volume renderer backend 'cuda' needs an occupancy grid: pass "
                              "occupancy=OccupancyGrid(..., backend='cuda')")
        use_cuda = False

    batch = len(cameras)
    origins, directions = cameras.rays(height, width)  # [B, H, W, 3]
    rays_o, rays_d = origins.reshape(-1, 3), directions.reshape(-1, 3)
    need_normals = compute_normals or shading != "albedo"
    ray_lights = None
    if light_positions is not None:
        ray_lights = light_positions.view(batch, 1, 3).expand(batch, height * width, 3).reshape(-1, 3)

    if use_cuda:
        fg = _march_nerfacc(scene, rays_o, rays_d, ray_lights, occupancy, shading, need_normals, perturb)
    else:
        torch_grid = occupancy if occupancy is not None and occupancy.estimator is None else None
        fg = _march_torch(scene, rays_o, rays_d, ray_lights, num_samples, shading, need_normals, perturb,
                          generator, chunk_rays, torch_grid)

    bg = background(directions).reshape(-1, 3)
    rgb = fg["rgb"] + (1.0 - fg["opacity"]) * bg
    opacity = fg["opacity"]
    orientation_loss = None
    if need_normals:
        rays_with_content = (opacity.detach() > 0).sum().clamp(min=1)
        orientation_loss = fg["orientation_sum"] / rays_with_content
    return RenderOut(
        rgb=rgb.view(batch, height, width, 3),
        opacity=opacity.view(batch, height, width, 1),
        depth=fg["depth"].view(batch, height, width, 1),
        normal=fg["normal"].view(batch, height, width, 3) if need_normals else None,
        orientation_loss=orientation_loss,
    )


def _normals_where_visible(scene: Field, points: Tensor, weights: Tensor) -> Tensor:
    """Scene normals [N, 3] at the samples whose weight exceeds NORMAL_MIN_WEIGHT, zero elsewhere.

    Finite-difference normals cost six extra field evaluations per sample; samples with weight below
    1e-4 change the pixel (and its gradient) by less than that weight, so they skip it (n = 0: their color
    is the ambient term and they add nothing to the orientation loss).
    """
    visible = (weights.detach().reshape(-1) > NORMAL_MIN_WEIGHT).nonzero().squeeze(-1)
    normals = points.new_zeros(points.shape)
    if visible.numel() == 0:
        return normals
    return normals.index_copy(0, visible, scene.normals(points[visible]))


def _query_occupied(scene: Field, points: Tensor,
                    occupancy: OccupancyGrid | None) -> tuple[Tensor, Tensor]:
    """``scene.query`` at the points [N, 3] in occupied cells; density 0 and albedo 0 elsewhere."""
    if occupancy is None:
        return scene.query(points)
    keep = occupancy.occupied_at(points).nonzero().squeeze(-1)
    density, albedo = scene.query(points[keep])
    full_density = density.new_zeros(points.shape[0]).index_copy(0, keep, density)
    return full_density, albedo.new_zeros(points.shape[0], 3).index_copy(0, keep, albedo)


def _march_torch(scene: Field, rays_o: Tensor, rays_d: Tensor, ray_lights: Tensor | None,
                 num_samples: int, shading: str, need_normals: bool, perturb: bool,
                 generator: torch.Generator | None, chunk_rays: int,
                 occupancy: OccupancyGrid | None) -> dict[str, Tensor]:
    """Foreground sums for all rays [R]: rgb [R, 3], opacity [R, 1], depth [R, 1], normal [R, 3] and the
    orientation-loss numerator (scalar). Only rays that hit the bounding sphere are evaluated."""
    num_rays = rays_o.shape[0]
    near, far, hit = intersect_sphere(rays_o, rays_d, scene.radius)
    hit_index = hit.nonzero().squeeze(-1)  # [R_hit]
    pieces: dict[str, list[Tensor]] = {"rgb": [], "opacity": [], "depth": [], "normal": []}
    orientation_sum = rays_o.new_zeros(())
    for start in range(0, hit_index.shape[0], chunk_rays):
        index = hit_index[start:start + chunk_rays]
        o, d = rays_o[index], rays_d[index]  # [C, 3]
        t_starts, t_ends, t_points = stratified_samples(near[index], far[index], num_samples, perturb,
                                                        generator)
        points = (o[:, None, :] + d[:, None, :] * t_points[..., None]).reshape(-1, 3)  # [C * K, 3]
        density, albedo = _query_occupied(scene, points, occupancy)
        weights = composite_weights(density.view(-1, num_samples), t_ends - t_starts)  # [C, K]
        normals = _normals_where_visible(scene, points, weights) if need_normals else None
        lights = None
        if ray_lights is not None:
            lights = ray_lights[index][:, None, :].expand(-1, num_samples, -1).reshape(-1, 3)
        colors = shade(albedo, normals, points, lights, shading).view(-1, num_samples, 3)
        pieces["rgb"].append(accumulate(weights, colors))
        pieces["opacity"].append(accumulate(weights))
        pieces["depth"].append(accumulate(weights, t_points[..., None]))
        if normals is not None:
            normals = normals.view(-1, num_samples, 3)
            pieces["normal"].append(accumulate(weights, normals))
            facing_away = (normals * d[:, None, :]).sum(-1).clamp(min=0.0)  # [C, K]
            orientation_sum = orientation_sum + (weights.detach() * facing_away * facing_away).sum()

    out = {"orientation_sum": orientation_sum}
    for key, channels in (("rgb", 3), ("opacity", 1), ("depth", 1), ("normal", 3)):
        full = rays_o.new_zeros(num_rays, channels)
        if pieces[key]:
            full = full.index_copy(0, hit_index, torch.cat(pieces[key]))
        out[key] = full
    return out


def _march_nerfacc(scene: Field, rays_o: Tensor, rays_d: Tensor, ray_lights: Tensor | None,
                   occupancy: OccupancyGrid, shading: str, need_normals: bool,
                   perturb: bool) -> dict[str, Tensor]:
    """The foreground sums of :func:`_march_torch`, with nerfacc's occupancy-grid marching (CUDA only)."""
    import nerfacc

    num_rays = rays_o.shape[0]
    near, far, _ = intersect_sphere(rays_o, rays_d, scene.radius)

    def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
        t_mid = 0.5 * (t_starts + t_ends)
        return scene.density(rays_o[ray_indices] + rays_d[ray_indices] * t_mid[:, None])

    with torch.no_grad():
        ray_indices, t_starts, t_ends = occupancy.estimator.sampling(
            rays_o, rays_d, sigma_fn=sigma_fn, t_min=near, t_max=far,
            render_step_size=occupancy.render_step_size, stratified=perturb, alpha_thre=0.0)
    ray_indices = ray_indices.long()
    t_points = 0.5 * (t_starts + t_ends)
    d = rays_d[ray_indices]
    points = rays_o[ray_indices] + d * t_points[:, None]
    density, albedo = scene.query(points)
    weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, density, ray_indices=ray_indices,
                                                       n_rays=num_rays)
    normals = _normals_where_visible(scene, points, weights) if need_normals else None
    lights = ray_lights[ray_indices] if ray_lights is not None else None
    colors = shade(albedo, normals, points, lights, shading)

    def along_rays(values: Tensor | None) -> Tensor:
        return nerfacc.accumulate_along_rays(weights, values, ray_indices=ray_indices, n_rays=num_rays)

    out = {"rgb": along_rays(colors), "opacity": along_rays(None), "depth": along_rays(t_points[:, None]),
           "normal": rays_o.new_zeros(num_rays, 3), "orientation_sum": rays_o.new_zeros(())}
    if normals is not None:
        out["normal"] = along_rays(normals)
        facing_away = (normals * d).sum(-1).clamp(min=0.0)
        out["orientation_sum"] = (weights.detach() * facing_away * facing_away).sum()
    return out


class AlbedoWarmup:
    """``render.albedo_warmup_steps``: which shading a renderer uses now. It counts the steps done (the renderer's
    ``after_step(scene, step)`` hands them over); before ``steps`` of them the shading is 'albedo', then the
    configured one. The count is renderer state (``state_dict`` holds it only when the warm-up is on, so renderers
    without one save what they always did)."""

    def __init__(self, shading: str, steps: int) -> None:
        if steps < 0:
            raise ConfigError(f"render.albedo_warmup_steps must be >= 0 (0: off), got {steps}")
        self.configured = shading
        self.steps = steps
        self.steps_done = 0

    @property
    def shading(self) -> str:
        return "albedo" if self.steps_done < self.steps else self.configured

    def after_step(self, step: int) -> None:
        self.steps_done = step

    def state_dict(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done} if self.steps > 0 else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state.get("steps_done", self.steps_done))


class VolumeRenderer:
    """Renders a NeRF scene with a run's render settings (``RenderConfig``); owns its occupancy grid.

    The trainer calls ``renderer(scene, background, cameras, H, W, generator=..., perturb=...)`` every step
    and ``renderer.after_step(scene, step)`` after each optimizer step (the grid refresh). Lights for the
    'diffuse' and 'textureless' shadings are drawn from ``generator`` (threestudio's dreamfusion strategy).
    """

    def __init__(self, cfg: Any, radius: float, device: torch.device) -> None:
        if cfg.shading not in SHADINGS:
            raise ConfigError(f"render.shading must be one of {', '.join(SHADINGS)}; got {cfg.shading!r}")
        self.cfg = cfg
        self.warmup = AlbedoWarmup(cfg.shading, cfg.albedo_warmup_steps)
        self.occupancy: OccupancyGrid | None = None
        if cfg.occupancy_grid:
            self.occupancy = OccupancyGrid(
                radius=radius, num_samples=cfg.num_samples, resolution=cfg.occupancy_resolution,
                update_every=cfg.occupancy_update_every, occupancy_threshold=cfg.occupancy_threshold,
                backend=cfg.backend, device=device)

    def __call__(self, scene: Field, background: torch.nn.Module, cameras: Cameras, height: int, width: int, *,
                 generator: torch.Generator | None, perturb: bool) -> RenderOut:
        """Render ``cameras`` [B] at ``height`` x ``width`` (see :func:`render_volume`); 'albedo' during the
        albedo warm-up (no lights drawn then)."""
        shading = self.warmup.shading
        light = None
        if shading != "albedo":
            light = sample_light_positions(cameras, generator).to(cameras.device)
        return render_volume(scene, cameras, height, width, num_samples=self.cfg.num_samples, background=background,
                             shading=shading, light_positions=light, perturb=perturb, generator=generator,
                             compute_normals=self.cfg.shading != "albedo" or self.cfg.compute_normals,
                             backend=self.cfg.backend,
                             occupancy=self.occupancy)

    def after_step(self, scene: Field, step: int) -> None:
        """Refresh the occupancy grid when it is due and count the step (call after ``optimizer.step()``)."""
        if self.occupancy is not None:
            self.occupancy.update(scene, step)
        self.warmup.after_step(step)

    def after_training(self, scene: Field) -> None:
        """Before the renders that follow training (export, evaluation, turntable): a run shorter than the grid's
        update period never refreshed it, and a never-refreshed grid marks every cell occupied (the torch path
        then evaluates every sample: a 10-step run's turntable cost 5x a trained one's); refresh it once."""
        if self.occupancy is not None and not self.occupancy.refreshed:
            self.occupancy.refresh(scene)

    def state_dict(self) -> dict[str, Any]:
        state = {"occupancy": self.occupancy.state_dict()} if self.occupancy is not None else {}
        return {**state, **self.warmup.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.occupancy is not None and state.get("occupancy"):
            self.occupancy.load_state_dict(state["occupancy"])
        self.warmup.load_state_dict(state)


__all__ = ["AlbedoWarmup", "OccupancyGrid", "VolumeRenderer", "accumulate", "composite_weights",
           "intersect_sphere", "render_volume", "resolve_backend", "shade", "stratified_samples"]
