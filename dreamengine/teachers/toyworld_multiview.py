"""ToyWorldMultiViewTeacher: an exact *multi-view* diffusion model of the toy world, in pixel space (no weights).

MVDream denoises the n = 4 views of one object jointly, conditioned on their cameras. This teacher is the exact
version of that on the toy world. Its data are *sets*: for every object o, bank elevation e and bank azimuth a,
the n views of o at elevation e and azimuths a, a + 360/n, ..., in that order (the single-view teacher's bank
images, :class:`~dreamengine.teachers.toyworld.ToyWorldTeacher`, whose rendering and cache it reuses). For a group
of n noised views z^k = sqrt(abar_k) x^k + sqrt(1 - abar_k) eps^k drawn from set s with prior p_s(y, c), the
optimal denoiser is the joint posterior mean

    log w_s = log p_s(y) + log K_s(c) - sum_k |z^k - sqrt(abar_k) x_{s,k}|^2 / (2 (1 - abar_k)),
    x0_hat^k = sum_s softmax(log w)_s x_{s,k},        eps_hat^k = (z^k - sqrt(abar_k) x0_hat^k) / sqrt(1 - abar_k).

Every view's prediction depends on all n views of its group through the shared weights w (a view that looks
like the snowman's back pulls the other views towards its set's front and sides).

* Prompt conditioning ``p_s(y)``: the prompt selects its object's sets (uniform over them); the empty prompt is
  uniform over the whole world (the unconditional branch of classifier-free guidance). View phrases are ignored:
  the cameras say which view is which, and a group is conditioned on one prompt (its first view's).
* Camera conditioning ``K_s(c) = exp(-mean_k angle(c_k, c_{s,k})^2 / (2 width^2))``, a Gaussian kernel on the
  angles between the direction of each requested camera c_k (from the origin) and the direction of the set's
  k-th view; ``width`` is ``teacher.camera_width`` (degrees; ``None`` ignores the cameras). The kernel is a prior
  that competes with the image likelihood, whose log-ratios between neighbouring sets reach hundreds of nats at
  mid noise levels; a wide kernel (half the 15-degree bank spacing) loses that contest and a render that looks a
  little like another view (a dark blob like the hat seen from above) pulls the posterior to the wrong set. The
  default, 1 degree, charges 112 nats for a one-step (15 degree) mismatch, so the cameras decide which views the
  prediction shows, switching between neighbouring sets within about a degree of their midpoint (measured on
  "a snowman", 250 steps: width 7.5 -> held-out IoU 0.61, 4 -> 0.62, 2 -> 0.82, 1 -> 0.87; a bilinear
  interpolation of the neighbouring sets' weights instead gave 0.85).
* Without cameras (``cameras=None``) every view is denoised alone, under the marginal of the joint model (each
  bank image of the selected objects, weighted by how many sets hold it): the single-view toy teacher's
  posterior, as MVDream's UNet with ``num_frames = 1`` and no camera attends within one image only.

A batch scored with cameras holds whole groups: B = n m views, views g n .. g n + n - 1 forming group g
(``camera.views_per_group = n``); the copies of a batch that guidance methods concatenate (conditional,
unconditional) are whole multiples of the cameras.
Settings: :class:`~dreamengine.config.ToyWorldMultiViewTeacherConfig`.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from dreamengine.config.teachers import ToyWorldMultiViewTeacherConfig
from dreamengine.core.cameras import Cameras
from dreamengine.core.protocols import TeacherContext
from dreamengine.errors import ConfigError
from dreamengine.teachers.toyworld import ToyWorldTeacher
from dreamengine.toyworld.vocabulary import parse_prompt, split_view


class ToyWorldMultiViewTeacher:
    """Exact joint posterior-mean denoiser over n-view sets of toy-world renders (implements ``Teacher``).

    Args:
        views_per_group: n, the views of one set (and of one group of a batch).
        camera_width: width of the camera kernel in degrees; None: no camera conditioning.
        azimuth_step: bank azimuth spacing in degrees; must divide 360 / n.
        resolution, background, elevations, distance, fovy_deg, objects, device, cache_dir: the bank, as
            :class:`~dreamengine.teachers.toyworld.ToyWorldTeacher` takes them.
    """

    num_train_timesteps: int = 1000

    def __init__(self, views_per_group: int = 4, camera_width: float | None = 1.0, resolution: int = 32,
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 elevations: tuple[float, ...] = (-15.0, 0.0, 15.0, 30.0, 45.0, 60.0, 75.0),
                 azimuth_step: float = 15.0, distance: float = 2.5, fovy_deg: float = 40.0,
                 objects: tuple[str, ...] = (), device: str = "cpu", cache_dir: str | None = None) -> None:
        views = int(views_per_group)
        if views < 1:
            raise ConfigError(f"teacher.views_per_group must be >= 1, got {views_per_group}")
        if camera_width is not None and not camera_width > 0:
            raise ConfigError(f"teacher.camera_width must be > 0 degrees or null, got {camera_width}")
        per_turn = 360.0 / float(azimuth_step)
        per_view = per_turn / views
        if abs(per_turn - round(per_turn)) > 1e-6 or abs(per_view - round(per_view)) > 1e-6:
            raise ConfigError(f"teacher.azimuth_step ({azimuth_step} degrees) must divide 360 / "
                              f"teacher.views_per_group = {360.0 / views:g} degrees")
        self.bank_teacher = ToyWorldTeacher(resolution=resolution, background=background, elevations=elevations,
                                            azimuth_step=azimuth_step, distance=distance, fovy_deg=fovy_deg,
                                            objects=objects, device=device, cache_dir=cache_dir)
        bank = self.bank_teacher
        self.views_per_group = views
        self.camera_width = None if camera_width is None else float(camera_width)
        self.resolution = bank.resolution
        self.device = bank.device
        self.alphas_cumprod = bank.alphas_cumprod  # [T]
        self._alphas64 = bank._alphas64  # [T] float64

        # sets: object-major, then elevation, then first azimuth; view k of a set is a quarter turn (for n = 4) on
        azimuths, count = int(round(per_turn)), len(bank.cameras)
        camera_index = torch.arange(count).view(-1, azimuths)  # [E, A] bank camera of (elevation, azimuth)
        shift = torch.arange(views) * int(round(per_view))  # [n] azimuth steps from view 0 to view k
        columns = (torch.arange(azimuths)[:, None] + shift[None]) % azimuths  # [A, n]
        per_object = camera_index[:, columns].reshape(-1, views)  # [E * A, n] bank cameras of each set
        objects_count = len(bank.objects)
        offsets = (torch.arange(objects_count) * count).repeat_interleave(per_object.shape[0])
        self.set_images = (per_object.repeat(objects_count, 1) + offsets[:, None]).to(self.device)  # [S, n]
        self.set_object = torch.arange(objects_count).repeat_interleave(per_object.shape[0]).to(self.device)  # [S]
        directions = bank.cameras.position / bank.cameras.position.norm(dim=-1, keepdim=True)  # [V, 3]
        self.set_directions = directions[per_object].repeat(objects_count, 1, 1).to(self.device, torch.float64)

    @classmethod
    def from_config(cls, cfg: ToyWorldMultiViewTeacherConfig, context: TeacherContext) -> ToyWorldMultiViewTeacher:
        """The teacher of ``teacher.name: toyworld-multiview``, its bank framed like the run's cameras."""
        return cls(views_per_group=cfg.views_per_group, camera_width=cfg.camera_width, resolution=cfg.resolution,
                   background=tuple(context.background), elevations=tuple(cfg.elevations),
                   azimuth_step=cfg.azimuth_step, distance=context.distance, fovy_deg=context.fovy_deg,
                   device=str(context.device))

    @property
    def num_sets(self) -> int:
        return int(self.set_images.shape[0])

    # -- Teacher protocol -------------------------------------------------------------------------

    def encode(self, rgb: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 r r"]:
        """[B, 3, H, W] in [0, 1] -> z [B, 3, res, res] in [-1, 1]; differentiable (the single-view teacher's)."""
        return self.bank_teacher.encode(rgb)

    def decode(self, z: Tensor) -> Tensor:
        """z [B, 3, res, res] -> rgb in [0, 1]."""
        return self.bank_teacher.decode(z)

    def embed(self, prompts: list[str]) -> Float[Tensor, "P S"]:
        """Prior over sets per prompt, [P, S] (rows sum to 1): uniform over the named object's sets, or over every
        set for the empty prompt; view phrases are ignored. PromptError for words outside the toy world."""
        rows = []
        for prompt in prompts:
            selected = torch.ones(self.num_sets, dtype=torch.bool, device=self.device)
            object_prompt, _ = split_view(prompt)
            if object_prompt.strip():
                position = self.bank_teacher.object_position(parse_prompt(object_prompt), prompt)
                selected = self.set_object == position
            rows.append(selected.double() / selected.sum())
        return torch.stack(rows).float()

    @torch.no_grad()
    def predict_noise(self, z_t: Tensor, t: Int[Tensor, " B"], embeddings: Tensor,
                      cameras: Cameras | None = None) -> Tensor:
        """Exact eps [B, 3, res, res] for z_t [B, 3, res, res] at timesteps t [B] under set priors ``embeddings``
        [B, S] (or [1, S]); with ``cameras`` (B / copies of them, B a multiple of n) the views are denoised in
        groups of n, without them one by one (see the module docstring)."""
        z, x0, alpha = self._posterior_mean(z_t, t, embeddings, cameras)
        eps = (z - alpha.sqrt()[:, None] * x0) / (1.0 - alpha).sqrt()[:, None]
        return eps.to(z_t.dtype).view_as(z_t)

    # -- extras ------------------------------------------------------------------------------------

    @torch.no_grad()
    def denoise(self, z_t: Tensor, t: Tensor, embeddings: Tensor, cameras: Cameras | None = None) -> Tensor:
        """Posterior mean x0_hat [B, 3, res, res] (same arguments as :meth:`predict_noise`)."""
        _, x0, _ = self._posterior_mean(z_t, t, embeddings, cameras)
        return x0.to(z_t.dtype).view_as(z_t)

    def set_images_of(self, index: int) -> Float[Tensor, "n 3 r r"]:
        """The n images of set ``index``, [n, 3, res, res] in [-1, 1]."""
        return self.bank_teacher.bank_images()[self.set_images[index].cpu()]

    def camera_log_kernel(self, cameras: Cameras) -> Float[Tensor, "G S"]:
        """log K_s(c) per group of ``cameras`` (a multiple of n) and set: -mean_k angle_k^2 / (2 width^2)."""
        views = self.views_per_group
        position = cameras.position.to(self.device, torch.float64)
        requested = (position / position.norm(dim=-1, keepdim=True)).view(-1, views, 3)  # [G, n, 3]
        cosine = torch.einsum("gkc,skc->gsk", requested, self.set_directions).clamp(-1.0, 1.0)
        width = math.radians(self.camera_width if self.camera_width is not None else math.inf)
        return -(torch.arccos(cosine) ** 2).mean(dim=-1) / (2.0 * width**2)

    def _posterior_mean(self, z_t: Tensor, t: Tensor, embeddings: Tensor,
                        cameras: Cameras | None) -> tuple[Tensor, Tensor, Tensor]:
        """(z [B, D], x0_hat [B, D], alpha_bar [B]), float64 on the teacher's device."""
        bank = self.bank_teacher.bank  # [N, D]
        batch, dim = z_t.shape[0], bank.shape[1]
        if z_t.dim() != 4 or z_t[0].numel() != dim:
            raise ValueError(f"z_t must be [B, 3, {self.resolution}, {self.resolution}], got {tuple(z_t.shape)}")
        if embeddings.dim() != 2 or embeddings.shape[0] not in (1, batch) or embeddings.shape[1] != self.num_sets:
            raise ValueError(f"embeddings must be [{batch} or 1, {self.num_sets}] (from embed()), "
                             f"got {tuple(embeddings.shape)}")
        prior = embeddings.to(self.device, torch.float64).expand(batch, -1)  # [B, S]
        if cameras is None:  # every view alone, under the marginal: candidates are (set, view) pairs
            table = self.set_images.reshape(-1, 1)  # [S n, 1]
            log_prior = (prior / self.views_per_group).repeat_interleave(self.views_per_group, dim=1).log()
        else:
            table = self.set_images  # [S, n]
            log_prior = self._group_log_prior(prior, cameras, batch)
        z = z_t.reshape(batch, dim).to(self.device, torch.float64)
        alpha = self._alphas64[t.to(self.device).long().reshape(-1).expand(batch)]  # [B]
        # sum over the views of |z^k - sqrt(a_k) x_{s,k}|^2 / (2 (1 - a_k)) (less |z^k|^2, the same for every set)
        return z, self.bank_teacher.pixel_bank.posterior(z, alpha, log_prior, table).mean, alpha

    def _group_log_prior(self, prior: Tensor, cameras: Cameras, batch: int) -> Tensor:
        """log p_s(y) + log K_s(c) per group [G, S], checking that the batch is made of whole groups."""
        views = self.views_per_group
        if len(cameras) % views or batch % len(cameras):
            raise ValueError(f"the multi-view toy teacher scores whole groups of {views} views: got {batch} images "
                             f"for {len(cameras)} cameras; set camera.views_per_group={views} and camera.batch_size "
                             f"to a multiple of {views}")
        grouped = prior.view(batch // views, views, -1)
        if not torch.equal(grouped, grouped[:, :1].expand_as(grouped)):
            raise ValueError("the views of a group must share one prompt (one embedding row); use "
                             "prompt_processor.view_dependent=false with a multi-view teacher")
        log_prior = grouped[:, 0].log()  # [G, S]
        if self.camera_width is None:
            return log_prior
        kernel = self.camera_log_kernel(cameras)  # [G_c, S]
        return log_prior + kernel.repeat(batch // len(cameras), 1)


__all__ = ["ToyWorldMultiViewTeacher"]
