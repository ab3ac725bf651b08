"""ToyImageTeacher: an exact image-conditioned novel-view diffusion model of the toy world (Zero123's toy twin).

Data: pairs (reference view, target view) of one toy object, both on the bank's view grid (the views of
:class:`~dreamengine.teachers.toyworld.ToyWorldTeacher`). The model is conditioned on a reference image x_ref and
on the relative camera d = target - reference (elevation and azimuth, degrees), as Zero123 is. Its generative
story, which makes "the exact posterior" well defined for any reference image and any relative camera:

    object o ~ uniform,  reference view v ~ uniform,  target view v' ~ uniform       (on the grid)
    x_ref = bank[o, v] + N(0, reference_sigma^2 I)                                  (the reference image)
    d     = (el_v' - el_v, az_v' - az_v) + N(0, camera_sigma^2 I)   (azimuth wrapped to (-180, 180])
    x     = bank[o, v']                                                             (the target image)

For z_t = sqrt(a) x + sqrt(1 - a) eps the denoiser is the posterior mean of x given (z_t, x_ref, d):

    log w(o, v') = logsumexp_v [ log p(x_ref | o, v) + log p(d | v, v') ] - |z_t - sqrt(a) bank[o, v']|^2 / (2 (1 - a))
    x0_hat = sum_{o, v'} softmax(log w) bank[o, v'],      eps_hat = (z_t - sqrt(a) x0_hat) / sqrt(1 - a).

The unconditional branch (empty prompt, classifier-free guidance) drops both the reference image and the camera,
as Zero123's does: the prior is uniform over every bank entry. The camera distance is not modelled (the bank has
one distance). Schedule: Stable Diffusion's DDPM schedule, as the text toy teacher.

Conditioning protocol (shared with :class:`~dreamengine.teachers.zero123.Zero123Teacher`): call
:meth:`set_reference` with the reference image and its camera; ``embed(texts)`` is [P, 1], 1 for any non-empty
text (conditioned on the reference) and 0 for ``""`` (unconditional); ``predict_noise`` needs the cameras of the
rows it scores. Settings: :class:`dreamengine.config.teachers.ToyImageTeacherConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from dreamengine.config.teachers import ToyImageTeacherConfig
from dreamengine.core.cameras import Cameras, wrap_azimuth
from dreamengine.core.protocols import TeacherContext
from dreamengine.errors import ConfigError
from dreamengine.teachers.toyworld import ToyWorldTeacher


@dataclass
class ToyMatch:
    """What a toy image teacher recognizes in an image: the most probable bank object and view."""

    object: str  # canonical name ("a red cube")
    elevation: float  # degrees, of the most probable reference view
    azimuth: float  # degrees
    probability: float  # posterior probability of the object (summed over views)
    rms: float  # RMS pixel difference (in [0, 1] units) between the image and that bank view


class ToyImageTeacher:
    """Exact posterior-mean denoiser over (reference view, target view) pairs of the toy bank (``Teacher``).

    Args: as :class:`ToyWorldTeacher` (the bank), plus
        reference_sigma: std of the reference image's noise, in the [-1, 1] pixel units of the bank;
        camera_sigma_deg: std of the relative camera's noise in degrees (about half the grid spacing).
    """

    num_train_timesteps: int = 1000
    image_conditioned = True

    def __init__(self, resolution: int = 32, background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 elevations: tuple[float, ...] = (-15.0, 0.0, 15.0, 30.0, 45.0, 60.0, 75.0),
                 azimuth_step: float = 15.0, distance: float = 2.5, fovy_deg: float = 40.0,
                 objects: tuple[str, ...] = (), reference_sigma: float = 0.1, camera_sigma_deg: float = 7.5,
                 device: str = "cpu", cache_dir: str | None = None) -> None:
        if not reference_sigma > 0 or not camera_sigma_deg > 0:
            raise ConfigError("teacher.reference_sigma and teacher.camera_sigma_deg must be > 0, got "
                              f"{reference_sigma}, {camera_sigma_deg}")
        self.world = ToyWorldTeacher(resolution=resolution, background=background, elevations=elevations,
                                     azimuth_step=azimuth_step, distance=distance, fovy_deg=fovy_deg,
                                     objects=objects, device=device, cache_dir=cache_dir)
        self.resolution = self.world.resolution
        self.device = self.world.device
        self.alphas_cumprod = self.world.alphas_cumprod
        self._alphas64 = self.world._alphas64
        self.reference_sigma = float(reference_sigma)
        self.camera_sigma = float(camera_sigma_deg)
        self.objects = self.world.objects
        self.num_views = len(self.world.cameras)
        self.view_elevation = self.world.cameras.elevation.to(self.device, torch.float64)  # [V] degrees
        self.view_azimuth = self.world.cameras.azimuth.to(self.device, torch.float64)  # [V]
        self.bank = self.world.bank  # [O * V, D] float32 in [-1, 1], object-major
        self.reference_log_likelihood: Tensor | None = None  # [O, V] log p(x_ref | o, v) + const
        self.reference_camera: tuple[float, float, float] | None = None  # (elevation, azimuth, distance)

    @classmethod
    def from_config(cls, cfg: ToyImageTeacherConfig, context: TeacherContext) -> ToyImageTeacher:
        """The teacher of ``teacher.name: toyworld-image``, its bank framed like the run's cameras."""
        return cls(resolution=cfg.resolution, background=tuple(context.background), elevations=tuple(cfg.elevations),
                   azimuth_step=cfg.azimuth_step, distance=context.distance, fovy_deg=context.fovy_deg,
                   objects=tuple(cfg.objects), reference_sigma=cfg.reference_sigma,
                   camera_sigma_deg=cfg.camera_sigma_deg, device=str(context.device))

    # -- Teacher protocol -------------------------------------------------------------------------
    def encode(self, rgb: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 r r"]:
        """[B, 3, H, W] in [0, 1] -> pixels [B, 3, res, res] in [-1, 1] (as the text toy teacher)."""
        return self.world.encode(rgb)

    def decode(self, z: Tensor) -> Tensor:
        return self.world.decode(z)

    def embed(self, prompts: list[str]) -> Float[Tensor, "P 1"]:
        """1 for a non-empty text (conditioned on the reference image and camera), 0 for ``""`` (unconditional).
        The toy image teacher, like Zero123, reads no words."""
        return torch.tensor([[1.0 if text.strip() else 0.0] for text in prompts], device=self.device)

    @torch.no_grad()
    def predict_noise(self, z_t: Tensor, t: Int[Tensor, " B"], embeddings: Tensor,
                      cameras: Cameras | None = None) -> Tensor:
        """Exact eps [B, 3, res, res] for z_t at timesteps t [B]; ``embeddings`` [B or 1, 1] from :meth:`embed`;
        ``cameras`` [B or a divisor of B] the target cameras of the conditioned rows (row b uses ``b % len``)."""
        z, x0, alpha = self._posterior_mean(z_t, t, embeddings, cameras)
        eps = (z - alpha.sqrt()[:, None] * x0) / (1.0 - alpha).sqrt()[:, None]
        return eps.to(z_t.dtype).view_as(z_t)

    # -- the reference ----------------------------------------------------------------------------
    def set_reference(self, rgb: Float[Tensor, "3 H W"], elevation: float, azimuth: float,
                      distance: float) -> None:
        """Condition on the reference image ``rgb`` (in [0, 1], object over the run's background) seen from the
        camera (elevation, azimuth in degrees, distance)."""
        self.reference_log_likelihood = self.reference_likelihood(rgb)
        self.reference_camera = (float(elevation), float(azimuth), float(distance))

    def reference_likelihood(self, rgb: Float[Tensor, "3 H W"]) -> Float[Tensor, "O V"]:
        """log p(x_ref | o, v) up to a constant: -|x_ref - bank[o, v]|^2 / (2 reference_sigma^2), float64."""
        x_ref = self.encode(rgb.reshape(1, 3, *rgb.shape[-2:]).to(self.device).float()).reshape(-1).double()
        squared = ((self.bank - x_ref[None]) ** 2).sum(dim=1)  # [O * V]
        return (-squared / (2.0 * self.reference_sigma**2)).view(len(self.objects), self.num_views)

    def identify(self, rgb: Float[Tensor, "3 H W"]) -> ToyMatch:
        """The toy object and view an image most probably shows (posterior under uniform priors)."""
        log_lik = self.reference_likelihood(rgb)
        posterior = torch.softmax(log_lik.reshape(-1), dim=0).view_as(log_lik)
        best = int(log_lik.reshape(-1).argmax())
        obj, view = divmod(best, self.num_views)
        x_ref = self.encode(rgb.reshape(1, 3, *rgb.shape[-2:]).to(self.device).float()).reshape(-1).double()
        rms = float(((self.bank[best] - x_ref) ** 2).mean().sqrt()) / 2.0  # [-1, 1] units -> [0, 1] units
        return ToyMatch(self.objects[obj].name, float(self.view_elevation[view]), float(self.view_azimuth[view]),
                        float(posterior[obj].sum()), rms)

    def relative_camera(self, cameras: Cameras) -> tuple[Tensor, Tensor]:
        """(d_elevation, d_azimuth) [B] in degrees of ``cameras`` from the reference camera, float64."""
        if self.reference_camera is None:
            raise ConfigError("the image-conditioned teacher has no reference image: set one with set_reference "
                              "(dreamengine generate --image REF.png)")
        elevation, azimuth, _ = self.reference_camera
        d_elevation = cameras.elevation.to(self.device, torch.float64) - elevation
        d_azimuth = wrap_azimuth(cameras.azimuth.to(self.device, torch.float64) - azimuth)
        return d_elevation, d_azimuth

    def conditional_log_prior(self, cameras: Cameras) -> Float[Tensor, "B N"]:
        """log p(o, v' | x_ref, d) up to a constant per row, [B, O * V]: the reference likelihood and the camera
        likelihood of every pair (v, v'), with v summed out."""
        d_elevation, d_azimuth = self.relative_camera(cameras)
        pair_elevation = self.view_elevation[None, :] - self.view_elevation[:, None]  # [V, V'] el_v' - el_v
        pair_azimuth = self.view_azimuth[None, :] - self.view_azimuth[:, None]
        off_elevation = pair_elevation[None] - d_elevation[:, None, None]  # [B, V, V']
        off_azimuth = wrap_azimuth(pair_azimuth[None] - d_azimuth[:, None, None])
        log_camera = -(off_elevation**2 + off_azimuth**2) / (2.0 * self.camera_sigma**2)  # [B, V, V']
        log_reference = self.reference_log_likelihood  # [O, V]
        joint = log_reference[None, :, :, None] + log_camera[:, None]  # [B, O, V, V']
        return torch.logsumexp(joint, dim=2).reshape(len(cameras), -1)  # [B, O * V']

    def _posterior_mean(self, z_t: Tensor, t: Tensor, embeddings: Tensor,
                        cameras: Cameras | None) -> tuple[Tensor, Tensor, Tensor]:
        """(z [B, D], x0_hat [B, D], alpha_bar [B]), float64 on the teacher's device."""
        batch, (entries, dim) = z_t.shape[0], self.bank.shape
        if z_t.dim() != 4 or z_t[0].numel() != dim:
            raise ValueError(f"z_t must be [B, 3, {self.resolution}, {self.resolution}], got {tuple(z_t.shape)}")
        if embeddings.dim() != 2 or embeddings.shape[0] not in (1, batch) or embeddings.shape[1] != 1:
            raise ValueError(f"embeddings must be [{batch} or 1, 1] (from embed()), got {tuple(embeddings.shape)}")
        conditioned = embeddings.to(self.device).reshape(-1).expand(batch) > 0.5  # [B]
        log_prior = torch.zeros(batch, entries, dtype=torch.float64, device=self.device)
        if bool(conditioned.any()):
            if cameras is None or batch % len(cameras) != 0:
                raise ValueError("the image-conditioned teacher needs the target cameras of the rows it scores "
                                 f"(B = {batch}, got {None if cameras is None else len(cameras)} cameras)")
            rows = torch.arange(batch, device=self.device) % len(cameras)
            log_prior[conditioned] = self.conditional_log_prior(cameras.to(self.device))[rows[conditioned]]
        z = z_t.reshape(batch, dim).to(self.device, torch.float64)
        alpha = self._alphas64[t.to(self.device).long().reshape(-1).expand(batch)]  # [B]
        return z, self.world.pixel_bank.posterior(z, alpha, log_prior).mean, alpha

    @torch.no_grad()
    def denoise(self, z_t: Tensor, t: Tensor, embeddings: Tensor, cameras: Cameras | None = None) -> Tensor:
        """Posterior mean x0_hat [B, 3, res, res] (arguments as :meth:`predict_noise`)."""
        _, x0, _ = self._posterior_mean(z_t, t, embeddings, cameras)
        return x0.to(z_t.dtype).view_as(z_t)

    def bank_images(self) -> Tensor:
        """The bank [O * V, 3, res, res] in [-1, 1], float32, object-major."""
        return self.world.bank_images()


__all__ = ["ToyImageTeacher", "ToyMatch"]
