"""Rendering 3D Gaussians (3D Gaussian Splatting) as a function over tensors.

Per camera (``gsplat.rasterization`` on CUDA when available, else the torch path below, which computes the
same thing):

1. **Projection (EWA).** World -> OpenCV camera (``viewmat = diag(1, -1, -1, 1) @ inverse(c2w)``: our cameras
   are OpenGL, gsplat's are OpenCV). With camera-space mean ``t`` and pinhole intrinsics ``fx, fy, cx, cy``:
   ``mean2d = (fx tx / tz + cx, fy ty / tz + cy)`` (pixel units, pixel centers at ``+0.5``, row 0 at the top),
   ``Sigma2d = J W Sigma W^T J^T + 0.3 I`` with ``J = [[fx/tz, 0, -fx tx'/tz^2], [0, fy/tz, -fy ty'/tz^2]]``
   where ``tx', ty'`` are ``tx, ty`` with ``tx/tz, ty/tz`` clamped to 1.3x the half field of view (3DGS and
   gsplat do this so Gaussians far off-screen do not get huge footprints). ``0.3 I`` is the low-pass filter.
   Gaussians with ``tz <= near`` or whose box ``mean2d +- radius`` misses the image are culled, with
   ``radius = ceil(3.33 sqrt(diag Sigma2d))``.
2. **Color.** ``max(0, SH(normalize(mu - camera center)) . coeffs + 0.5)`` (:func:`eval_sh`).
3. **Compositing**, front to back in camera depth ``tz``: at pixel center ``p``, with ``d = p - mean2d``,
   ``alpha_i = min(0.999, o_i exp(-0.5 d^T Sigma2d^-1 d))``; Gaussians with ``alpha_i < 1/255`` are skipped and
   a pixel stops at the Gaussian that would bring its transmittance ``T`` to ``<= 1e-4`` (gsplat's rules; the
   cap 0.999 is gsplat's too: the original 3DGS code uses 0.99, and both backends must agree).
   ``rgb = sum_i T_i alpha_i c_i + T_final background``, ``opacity = 1 - T_final``,
   ``depth = (sum_i T_i alpha_i tz_i) * |ray direction / ray z|``: a ray distance with empty space as 0, the
   convention of :mod:`dreamengine.renderers.volume`.

The torch compositor evaluates only the (Gaussian, pixel) pairs inside each Gaussian's box (exact: outside
its box a Gaussian's alpha is below 1/255), sorted by pixel, with a segmented cumulative sum for the
transmittance: memory and time are ``O(pairs)``, never pixels x Gaussians (:func:`composite_pairs`).

``render_splats`` takes the Gaussians as a :class:`~dreamengine.core.render.SplatTensors` and returns a
:class:`~dreamengine.core.render.RenderOut` whose ``info`` dict feeds densification (see
:mod:`dreamengine.scenes.densify`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from dreamengine.core.backends import optional_import
from dreamengine.core.backends import resolve_backend as resolve_any_backend
from dreamengine.core.cameras import Cameras
from dreamengine.core.render import RenderOut, SplatTensors
from dreamengine.errors import ConfigError

BACKENDS = ("auto", "torch", "cuda")
EPS2D = 0.3  # low-pass filter added to the 2D covariance diagonal, pixels^2
MAX_ALPHA = 0.999
MIN_ALPHA = 1.0 / 255.0
MIN_TRANSMITTANCE = 1e-4
RADIUS_SIGMAS = 3.33
FOV_CLAMP = 1.3  # the Jacobian sees tx/tz, ty/tz clamped to this multiple of the half field of view
NEAR_PLANE = 0.01

# Real spherical-harmonic basis constants (degree 0..3), in the order of the 3DGS code.
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


@dataclass
class Projection:
    """Screen-space Gaussians of one camera (all N, culled ones flagged by ``visible``)."""

    means2d: Tensor  # [N, 2] pixels
    covars2d: Tensor  # [N, 2, 2] with the low-pass filter
    conics: Tensor  # [N, 3] (a, b, c) of the inverse covariance [[a, b], [b, c]]
    depths: Tensor  # [N] camera z
    radii: Tensor  # [N, 2] box half sizes in pixels (integers as floats), 0 where culled
    visible: Tensor  # [N] bool


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] of quaternions (w, x, y, z) [..., 4] (normalized here)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
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


def opencv_viewmats(c2w: Tensor) -> Tensor:
    """World-to-camera OpenCV matrices (+X right, +Y down, +Z forward) of OpenGL camera-to-world [B, 4, 4]."""
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=c2w.dtype, device=c2w.device))
    return flip @ torch.linalg.inv(c2w)


def intrinsics(cameras: Cameras, height: int, width: int) -> Tensor:
    """Pinhole matrices [B, 3, 3] matching ``Cameras.rays``: focal from ``fovy``, center at the image center."""
    focal = cameras.focal(height)
    K = torch.zeros(len(cameras), 3, 3, dtype=cameras.c2w.dtype, device=cameras.device)
    K[:, 0, 0] = focal
    K[:, 1, 1] = focal
    K[:, 0, 2] = 0.5 * width
    K[:, 1, 2] = 0.5 * height
    K[:, 2, 2] = 1.0
    return K


def project_gaussians(means: Float[Tensor, "N 3"], covars: Float[Tensor, "N 3 3"], viewmat: Float[Tensor, "4 4"],
                      K: Float[Tensor, "3 3"], width: int, height: int,
                      eps2d: float = EPS2D, near_plane: float = NEAR_PLANE) -> Projection:
    """EWA projection of world Gaussians (means [N, 3], covariances [N, 3, 3]) into one camera.

    Args:
        viewmat: [4, 4] OpenCV world-to-camera; K: [3, 3] pinhole intrinsics.
    """
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    t = means @ rot.T + trans  # [N, 3]
    cov_cam = rot @ covars @ rot.T  # [N, 3, 3]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tx, ty, tz = t.unbind(-1)
    lim_x_pos = (width - cx) / fx + (FOV_CLAMP - 1.0) * 0.5 * width / fx
    lim_x_neg = cx / fx + (FOV_CLAMP - 1.0) * 0.5 * width / fx
    lim_y_pos = (height - cy) / fy + (FOV_CLAMP - 1.0) * 0.5 * height / fy
    lim_y_neg = cy / fy + (FOV_CLAMP - 1.0) * 0.5 * height / fy
    tx_c = tz * torch.clamp(tx / tz, min=-lim_x_neg, max=lim_x_pos)
    ty_c = tz * torch.clamp(ty / tz, min=-lim_y_neg, max=lim_y_pos)
    zero = torch.zeros_like(tz)
    jac = torch.stack([fx / tz, zero, -fx * tx_c / (tz * tz),
                       zero, fy / tz, -fy * ty_c / (tz * tz)], dim=-1).view(-1, 2, 3)
    covars2d = jac @ cov_cam @ jac.transpose(-1, -2) + eps2d * torch.eye(2, dtype=means.dtype,
                                                                         device=means.device)
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], dim=-1)
    a, b, c = covars2d[:, 0, 0], 0.5 * (covars2d[:, 0, 1] + covars2d[:, 1, 0]), covars2d[:, 1, 1]
    det = (a * c - b * b).clamp(min=1e-10)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    with torch.no_grad():
        radii = torch.ceil(RADIUS_SIGMAS * torch.stack([a, c], dim=-1).clamp(min=0.0).sqrt())
        visible = (det > 0) & (tz > near_plane)
        visible &= (means2d[:, 0] + radii[:, 0] > 0) & (means2d[:, 0] - radii[:, 0] < width)
        visible &= (means2d[:, 1] + radii[:, 1] > 0) & (means2d[:, 1] - radii[:, 1] < height)
        radii = radii * visible[:, None]
    return Projection(means2d, covars2d, conics, tz, radii, visible)


def eval_sh(degree: int, dirs: Float[Tensor, "*N 3"], coeffs: Float[Tensor, "*N K 3"]) -> Float[Tensor, "*N 3"]:
    """Real spherical harmonics up to ``degree`` (0..3) at directions [..., 3] (normalized here) dotted with
    coefficients [..., K, 3] (K >= (degree + 1)^2; extra ones ignored) -> [..., 3]. No +0.5, no clamp."""
    x, y, z = torch.nn.functional.normalize(dirs, dim=-1).unbind(-1)
    bases = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        bases += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        bases += [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2.0 * zz - xx - yy), SH_C2[3] * x * z,
                  SH_C2[4] * (xx - yy)]
    if degree >= 3:
        bases += [SH_C3[0] * y * (3.0 * xx - yy), SH_C3[1] * x * y * z, SH_C3[2] * y * (4.0 * zz - xx - yy),
                  SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy), SH_C3[4] * x * (4.0 * zz - xx - yy),
                  SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3.0 * yy)]
    basis = torch.stack(bases, dim=-1)  # [..., (degree + 1)^2]
    return torch.einsum("...k,...kc->...c", basis, coeffs[..., : basis.shape[-1], :])


def pixel_pairs(means2d: Tensor, radii: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Every (Gaussian, pixel) pair whose pixel center lies in the Gaussian's box ``mean2d +- radius``.

    Args:
        means2d: [G, 2] pixels; radii: [G, 2] box half sizes (pixels).
    Returns:
        gaussian: [P] index into the G Gaussians, in Gaussian order; pixel: [P] ``row * width + col``.
    """
    x0 = torch.ceil(means2d[:, 0] - radii[:, 0] - 0.5).clamp(0, width).long()  # first column whose center
    x1 = torch.floor(means2d[:, 0] + radii[:, 0] - 0.5).clamp(-1, width - 1).long()  # is inside the box
    y0 = torch.ceil(means2d[:, 1] - radii[:, 1] - 0.5).clamp(0, height).long()
    y1 = torch.floor(means2d[:, 1] + radii[:, 1] - 0.5).clamp(-1, height - 1).long()
    span_x = (x1 - x0 + 1).clamp(min=0)
    counts = span_x * (y1 - y0 + 1).clamp(min=0)
    gaussian = torch.repeat_interleave(torch.arange(len(counts), device=means2d.device), counts)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(len(gaussian), device=means2d.device) - first[gaussian]
    span = span_x[gaussian]
    pixel = (y0[gaussian] + local // span) * width + x0[gaussian] + local % span
    return gaussian, pixel


def composite_pairs(means2d: Tensor, conics: Tensor, opacities: Tensor, features: Tensor, radii: Tensor,
                    height: int, width: int) -> tuple[Tensor, Tensor]:
    """Alpha-composite depth-sorted screen-space Gaussians front to back (rules in the module docstring).

    Only the (Gaussian, pixel) pairs inside each Gaussian's box are evaluated (:func:`pixel_pairs`); outside
    it a Gaussian's alpha is below 1/255, so this is exact. The pairs are stably sorted by pixel, which keeps
    each pixel's Gaussians front to back, and transmittance is a segmented cumulative sum of ``log(1 - alpha)``
    (in float64, so long pixel lists lose no precision). Memory and time are O(pairs), never pixels x Gaussians.

    Args:
        means2d: [G, 2] pixels; conics: [G, 3]; opacities: [G]; features: [G, C] (colors, depth, ...);
        radii: [G, 2] box half sizes (no gradient). The Gaussians must be sorted front to back.
    Returns:
        image: [H, W, C] sum of T_i alpha_i features_i; alpha: [H, W, 1] = 1 - final transmittance.
    """
    num_pixels, dtype = height * width, means2d.dtype
    def pair_alpha(gaussian: Tensor, pixel: Tensor) -> Tensor:
        """alpha of each pair [P] (0 where gsplat skips it: sigma < 0 or alpha < 1/255)."""
        center_x = (pixel % width).to(dtype) + 0.5
        center_y = torch.div(pixel, width, rounding_mode="floor").to(dtype) + 0.5
        dx = center_x - means2d[gaussian, 0]
        dy = center_y - means2d[gaussian, 1]
        conic = conics[gaussian]
        sigma = 0.5 * conic[:, 0] * dx * dx + conic[:, 1] * dx * dy + 0.5 * conic[:, 2] * dy * dy
        alpha = (opacities[gaussian] * torch.exp(-sigma)).clamp(max=MAX_ALPHA)
        return torch.where((sigma >= 0) & (alpha >= MIN_ALPHA), alpha, torch.zeros_like(alpha))

    with torch.no_grad():
        gaussian, pixel = pixel_pairs(means2d.detach(), radii, height, width)
        visible = pair_alpha(gaussian, pixel) > 0  # drop the box corners and faint tails before sorting
        gaussian, pixel = gaussian[visible], pixel[visible]
        order = torch.sort(pixel, stable=True).indices
        gaussian, pixel = gaussian[order], pixel[order]
        counts = torch.bincount(pixel, minlength=num_pixels)
        starts = torch.cumsum(counts, 0) - counts  # first pair of each pixel
    alpha = pair_alpha(gaussian, pixel)

    def log_transmittance(alpha: Tensor) -> tuple[Tensor, Tensor]:
        """Per pair: log(1 - alpha) and the inclusive sum of it over the pixel's pairs so far (float64)."""
        step = torch.log1p(-alpha.double())
        total = torch.cumsum(step, 0)
        before_pixel = (total - step)[starts.clamp(max=max(len(step) - 1, 0))]  # exclusive sum at each pixel start
        return step, total - before_pixel[pixel]

    with torch.no_grad():  # a pixel stops at the Gaussian that would take T to MIN_TRANSMITTANCE (gsplat's rule)
        alive = log_transmittance(alpha)[1] > math.log(MIN_TRANSMITTANCE)
    alpha = torch.where(alive, alpha, torch.zeros_like(alpha))
    step, inclusive = log_transmittance(alpha)
    weights = (alpha.double() * torch.exp(inclusive - step)).to(dtype)  # T_i alpha_i, [P]
    image = torch.zeros(num_pixels, features.shape[1], dtype=dtype, device=means2d.device)
    image = image.index_add(0, pixel, weights[:, None] * features[gaussian])
    log_final = torch.zeros(num_pixels, dtype=torch.float64, device=means2d.device).index_add(0, pixel, step)
    alpha_image = (1.0 - torch.exp(log_final)).to(dtype)
    return image.view(height, width, -1), alpha_image.view(height, width, 1)


def ray_length_factor(K: Tensor, height: int, width: int) -> Tensor:
    """|ray direction| / |ray z| at each pixel center, [H, W, 1]: turns camera z into distance along the ray."""
    cols = torch.arange(width, dtype=K.dtype, device=K.device) + 0.5
    rows = torch.arange(height, dtype=K.dtype, device=K.device) + 0.5
    x = ((cols - K[0, 2]) / K[0, 0])[None, :]
    y = ((rows - K[1, 2]) / K[1, 1])[:, None]
    return torch.sqrt(1.0 + x * x + y * y)[..., None]


def resolve_backend(backend: str, device: torch.device) -> str:
    """'torch' or 'cuda' (gsplat) for a requested ``backend`` (auto | torch | cuda) on ``device``."""
    return resolve_any_backend(backend, device, component="splat renderer", module="gsplat",
                               install="pip install gsplat==1.5.3")


def render_splats(splats: SplatTensors, cameras: Cameras, height: int, width: int, *, background: torch.nn.Module,
                  backend: str = "auto") -> RenderOut:
    """Render ``cameras`` ([B] views) of a Gaussian scene at ``height`` x ``width``.

    Returns:
        :class:`RenderOut`: rgb [B, H, W, 3], opacity and depth [B, H, W, 1], normal and orientation_loss
        None, and ``info`` for densification ('means2d' [B, N, 2] with its gradient retained, 'radii' [B, N]
        in pixels (0 where culled), 'width', 'height', 'n_cameras').
    """
    if height < 1 or width < 1:
        raise ConfigError(f"render size must be >= 1, got {height}x{width}")
    viewmats = opencv_viewmats(cameras.c2w)
    Ks = intrinsics(cameras, height, width)
    if resolve_backend(backend, cameras.device) == "cuda":
        features, alphas, means2d, radii = _render_gsplat(splats, viewmats, Ks, height, width)
    else:
        features, alphas, means2d, radii = _render_torch(splats, cameras, viewmats, Ks, height, width)
    if means2d.requires_grad:
        means2d.retain_grad()
    _, directions = cameras.rays(height, width)
    rgb = features[..., :3] + (1.0 - alphas) * background(directions)
    factor = torch.stack([ray_length_factor(K, height, width) for K in Ks])
    depth = features[..., 3:4] * factor
    info = {"means2d": means2d, "radii": radii, "width": width, "height": height, "n_cameras": len(cameras)}
    return RenderOut(rgb=rgb, opacity=alphas, depth=depth, normal=None, orientation_loss=None, info=info)


def _render_torch(splats: SplatTensors, cameras: Cameras, viewmats: Tensor, Ks: Tensor, height: int,
                  width: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    covars, _ = covariance_and_precision(splats.quats, splats.scales)
    opacities, coeffs = splats.opacities, splats.sh_coeffs
    projections = [project_gaussians(splats.means, covars, viewmats[view], Ks[view], width, height)
                   for view in range(len(cameras))]
    # Composite from one stacked means2d tensor: its .grad (retained) then holds the screen-space gradients.
    means2d = torch.stack([proj.means2d for proj in projections])  # [B, N, 2]
    features, alphas = [], []
    for view, proj in enumerate(projections):
        ids = torch.nonzero(proj.visible).squeeze(-1)
        ids = ids[torch.argsort(proj.depths.detach()[ids], stable=True)]
        dirs = splats.means[ids] - cameras.position[view]
        colors = (eval_sh(splats.sh_degree, dirs, coeffs[ids]) + 0.5).clamp(min=0.0)
        feats = torch.cat([colors, proj.depths[ids, None]], dim=-1)
        image, alpha = composite_pairs(means2d[view, ids], proj.conics[ids], opacities[ids], feats,
                                       proj.radii[ids], height, width)
        features.append(image)
        alphas.append(alpha)
    radii = torch.stack([proj.radii.amax(dim=-1) for proj in projections])
    return torch.stack(features), torch.stack(alphas), means2d, radii


def _render_gsplat(splats: SplatTensors, viewmats: Tensor, Ks: Tensor, height: int,
                   width: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    gsplat = optional_import("gsplat")
    colors, alphas, meta = gsplat.rasterization(
        splats.means, torch.nn.functional.normalize(splats.quats, dim=-1), splats.scales, splats.opacities,
        splats.sh_coeffs, viewmats, Ks, width, height, near_plane=NEAR_PLANE, eps2d=EPS2D,
        sh_degree=splats.sh_degree, packed=False, render_mode="RGB+D")
    radii = meta["radii"]
    if radii.dim() == 3:  # [C, N, 2] in gsplat >= 1.5
        radii = radii.amax(dim=-1)
    return colors, alphas, meta["means2d"], radii.to(colors.dtype)


class SplatRenderer:
    """Renders a Gaussian scene with a run's render settings (``RenderConfig``): the trainer's renderer object
    for ``scene.name: gaussians`` (the protocol: :class:`~dreamengine.core.protocols.Renderer`).

    Gaussians carry colors, not normals, so only ``render.shading: albedo`` is supported (as in GaussianDreamer
    and DreamGaussian). The renderer holds no state; densification is the trainer's
    :class:`~dreamengine.scenes.densify.DensifyStrategy`.
    """

    def __init__(self, cfg: Any, radius: float, device: torch.device) -> None:
        """``radius`` (the scene's bound) is unused: splats need no bound."""
        if cfg.shading != "albedo":
            raise ConfigError(f"render.shading={cfg.shading} needs surface normals, which Gaussian scenes do not "
                              "have; set render.shading=albedo (the default) for scene.name=gaussians")
        resolve_backend(cfg.backend, device)  # fail early on backend=cuda without gsplat or a GPU
        self.cfg = cfg

    def __call__(self, splats: SplatTensors, background: torch.nn.Module, cameras: Cameras, height: int,
                 width: int, *, generator: torch.Generator | None = None, perturb: bool = False) -> RenderOut:
        """Render ``cameras`` [B] at ``height`` x ``width`` (deterministic: ``generator`` and ``perturb`` unused)."""
        return render_splats(splats, cameras, height, width, background=background, backend=self.cfg.backend)

    def after_step(self, splats: SplatTensors, step: int) -> None:
        """Nothing to refresh."""

    def after_training(self, splats: SplatTensors) -> None:
        """Nothing to ready."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Stateless."""


__all__ = ["Projection", "SplatRenderer", "composite_pairs", "covariance_and_precision", "eval_sh", "intrinsics",
           "opencv_viewmats", "project_gaussians", "quat_to_rotmat", "render_splats", "resolve_backend"]
