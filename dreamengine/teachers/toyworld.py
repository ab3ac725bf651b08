"""ToyWorldTeacher: an exact diffusion model of the toy world, in pixel space (no weights).

The data distribution is a *bank*: ground-truth renders of every toy-world object on a grid of views.
For a noised z_t = sqrt(a) x + sqrt(1 - a) eps with x drawn from the bank under a prior p (the
conditioning), the optimal denoiser is the posterior mean

    log w_i = log p_i - |z_t - sqrt(a) x_i|^2 / (2 (1 - a)),   x0_hat = sum_i softmax(log w)_i x_i,
    eps_hat = (z_t - sqrt(a) x0_hat) / sqrt(1 - a),

with Stable Diffusion's DDPM schedule. Conditioning works as with SD: a prompt selects its object's
entries, a view phrase (", side view") selects the entries with that view label, and the empty prompt
(the unconditional branch) is uniform over the whole world, so classifier-free guidance behaves as usual.

Building the bank renders every object from every grid view (tens of seconds for the default world),
so it is cached on disk: ``cache_dir`` or ``$DREAMENGINE_CACHE/toyworld`` or
``~/.cache/dreamengine/toyworld``, one safetensors file per distinct set of bank settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor

from dreamengine.config.teachers import ToyWorldTeacherConfig
from dreamengine.core.cameras import Cameras, cameras_from_spherical, direction_labels
from dreamengine.core.files import atomic_path
from dreamengine.core.protocols import TeacherContext
from dreamengine.errors import ConfigError, PromptError
from dreamengine.teachers.pixel_bank import PixelBank
from dreamengine.toyworld import render as toy_render
from dreamengine.toyworld.objects import ToyObject
from dreamengine.toyworld.vocabulary import VIEWS, all_objects, parse_prompt, split_view

# Bump when the renderer or the objects change in a way the cache key below does not capture.
BANK_VERSION = 1
BANK_SUPERSAMPLE = 2
# Banks that build faster than this are not written to disk.
CACHE_MIN_BUILD_SECONDS = 2.0


def scaled_linear_alphas_cumprod(num_steps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> Tensor:
    """Stable Diffusion's schedule, float64 [T]: betas = linspace(sqrt(b0), sqrt(b1), T)**2."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def to_teacher_space(rgb: Float[Tensor, "B 3 H W"], resolution: int) -> Float[Tensor, "B 3 r r"]:
    """Renders in [0, 1] -> the toy teachers' pixel space: ``resolution`` px per side, in [-1, 1].
    Downsizing averages pixels (``area``, how the bank's supersampled renders are filtered); upsizing is
    bilinear. Differentiable."""
    size = (resolution, resolution)
    if tuple(rgb.shape[-2:]) != size:
        if rgb.shape[-2] >= resolution and rgb.shape[-1] >= resolution:
            rgb = F.interpolate(rgb, size=size, mode="area")
        else:
            rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
    return 2.0 * rgb - 1.0


def default_cache_dir() -> Path:
    """``$DREAMENGINE_CACHE/toyworld`` if the variable is set, else ``~/.cache/dreamengine/toyworld``."""
    root = os.environ.get("DREAMENGINE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "dreamengine") / "toyworld"


class ToyWorldTeacher:
    """Exact posterior-mean denoiser over a bank of toy-world renders (implements ``Teacher``).

    Args:
        resolution: side of the square diffusion images (z is [B, 3, resolution, resolution]).
        background: RGB of the bank renders' background.
        elevations: bank view elevations in degrees; azimuth_step: bank azimuth spacing in degrees.
        distance, fovy_deg: bank camera distance and vertical field of view (match the training cameras).
        front_threshold, back_threshold, overhead_threshold: view labels of the bank entries, as in
            :func:`dreamengine.core.cameras.direction_labels` (use the prompt processor's values).
        objects: canonical names of the objects to include ("a red cube", ...); empty means the whole world.
        device: where the bank lives and the denoiser runs.
        cache_dir: bank cache folder (see the module docstring).
    """

    num_train_timesteps: int = 1000
    steps_offset: int = 0  # timesteps are their own indices (no scheduler config)

    def __init__(self, resolution: int = 32, background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 elevations: tuple[float, ...] = (-15.0, 0.0, 15.0, 30.0, 45.0, 60.0, 75.0),
                 azimuth_step: float = 15.0, distance: float = 2.5, fovy_deg: float = 40.0,
                 front_threshold: float = 45.0, back_threshold: float = 45.0,
                 overhead_threshold: float = 60.0, objects: tuple[str, ...] = (), device: str = "cpu",
                 cache_dir: str | None = None) -> None:
        if int(resolution) < 2:
            raise ConfigError(f"teacher.resolution must be >= 2, got {resolution}")
        if not 0.0 < float(azimuth_step) <= 360.0:
            raise ConfigError(f"teacher.azimuth_step must be in (0, 360] degrees, got {azimuth_step}")
        if len(elevations) == 0:
            raise ConfigError("teacher.elevations must list at least one elevation in degrees, e.g. [0, 30]")
        if len(background) != 3:
            raise ConfigError(f"teacher.background must be an RGB triple in [0, 1], got {background}")
        self.resolution = int(resolution)
        self.background = tuple(float(v) for v in background)
        self.device = torch.device(device)
        self.objects: list[ToyObject] = _select_objects(objects)
        self.cameras = _grid_cameras(elevations, azimuth_step, distance, fovy_deg)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()

        self._alphas64 = scaled_linear_alphas_cumprod(self.num_train_timesteps).to(self.device)
        self.alphas_cumprod = self._alphas64.float()  # [T]

        self.cache_key = self._cache_key()
        self.build_seconds: float | None = None  # None when the bank came from the cache
        pixels = self._load_cached()
        if pixels is None:
            start = time.perf_counter()
            pixels = self._render_bank()
            self.build_seconds = time.perf_counter() - start
            if self.build_seconds > CACHE_MIN_BUILD_SECONDS:
                self._save_cache(pixels)

        views = len(self.cameras)
        self.bank = pixels.to(self.device, torch.float32)  # [N, 3 * res * res] in [-1, 1]
        # the denoiser works in float64 (logits are divided by 2 (1 - a), about 1.7e-3 at t = 0), reading the rows
        # whose posterior weight can be nonzero only
        self.pixel_bank = PixelBank(self.bank)
        self.bank_object = torch.arange(len(self.objects)).repeat_interleave(views).to(self.device)  # [N]
        labels = direction_labels(self.cameras, front_threshold, back_threshold, overhead_threshold)
        self.bank_labels: list[str] = labels * len(self.objects)  # [N]
        self._bank_view = torch.tensor([VIEWS.index(label) for label in self.bank_labels], device=self.device)
        self.bank_elevation = self.cameras.elevation.repeat(len(self.objects)).to(self.device)  # [N] degrees
        self.bank_azimuth = self.cameras.azimuth.repeat(len(self.objects)).to(self.device)  # [N] degrees

    @classmethod
    def from_config(cls, cfg: ToyWorldTeacherConfig, context: TeacherContext) -> ToyWorldTeacher:
        """The teacher of ``teacher.name: toyworld``, its bank framed like the run's cameras."""
        front, back, overhead = context.view_thresholds
        return cls(resolution=cfg.resolution, background=tuple(context.background), elevations=tuple(cfg.elevations),
                   azimuth_step=cfg.azimuth_step, distance=context.distance, fovy_deg=context.fovy_deg,
                   front_threshold=front, back_threshold=back, overhead_threshold=overhead,
                   device=str(context.device))

    # -- Teacher protocol -------------------------------------------------------------------------

    def encode(self, rgb: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 r r"]:
        """[B, 3, H, W] in [0, 1] -> z [B, 3, res, res] in [-1, 1]; differentiable.

        Downsizing averages pixels (``area``), which is exactly how the bank's supersampled renders were
        filtered; upsizing is bilinear.
        """
        return to_teacher_space(rgb, self.resolution)

    def decode(self, z: Tensor) -> Tensor:
        """z [B, 3, res, res] -> rgb [B, 3, res, res] in [0, 1]."""
        return ((z + 1.0) / 2.0).clamp(0.0, 1.0)

    def embed(self, prompts: list[str]) -> Tensor:
        """Prior over bank entries per prompt, [P, N_bank] (rows sum to 1).

        "" (or whitespace) is uniform over the whole bank; "a red cube" is uniform over that object's
        entries; "a red cube, side view" / "side view of a red cube" over its entries labelled 'side'
        (all its entries if it has none with that label); "side view" alone over every 'side' entry.
        Raises PromptError for words outside the toy vocabulary or objects outside this teacher's world.
        """
        rows = []
        for prompt in prompts:
            selected = torch.ones(self.bank.shape[0], dtype=torch.bool, device=self.device)
            if prompt.strip():
                object_prompt, view = split_view(prompt)
                if object_prompt.strip():
                    selected = self.bank_object == self.object_position(parse_prompt(object_prompt), prompt)
                if view is not None:
                    with_view = selected & (self._bank_view == VIEWS.index(view))
                    selected = with_view if bool(with_view.any()) else selected
            rows.append(selected.float() / selected.sum())
        return torch.stack(rows)

    @torch.no_grad()
    def predict_noise(self, z_t: Tensor, t: Int[Tensor, " B"], embeddings: Tensor,
                      cameras: Cameras | None = None) -> Tensor:
        """Exact eps prediction [B, 3, res, res] for z_t [B, 3, res, res] at timesteps t [B] (long) under
        priors ``embeddings`` [B, N_bank] (or [1, N_bank], shared). ``cameras`` is unused."""
        z, x0, alpha = self._posterior_mean(z_t, t, embeddings)
        eps = (z - alpha.sqrt()[:, None] * x0) / (1.0 - alpha).sqrt()[:, None]
        return eps.to(z_t.dtype).view_as(z_t)

    # -- extras ------------------------------------------------------------------------------------

    @torch.no_grad()
    def denoise(self, z_t: Tensor, t: Tensor, embeddings: Tensor) -> Tensor:
        """Posterior mean x0_hat [B, 3, res, res] (same arguments as :meth:`predict_noise`)."""
        _, x0, _ = self._posterior_mean(z_t, t, embeddings)
        return x0.to(z_t.dtype).view_as(z_t)

    def bank_images(self) -> Tensor:
        """The bank as images [N_bank, 3, res, res] in [-1, 1], float32."""
        return self.bank.view(-1, 3, self.resolution, self.resolution)

    def _posterior_mean(self, z_t: Tensor, t: Tensor, embeddings: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(z [B, D], x0_hat [B, D], alpha_bar [B]), all float64 on the teacher's device."""
        batch, (entries, dim) = z_t.shape[0], self.bank.shape
        if z_t.dim() != 4 or z_t[0].numel() != dim:
            raise ValueError(f"z_t must be [B, 3, {self.resolution}, {self.resolution}], "
                             f"got {tuple(z_t.shape)}")
        if embeddings.dim() != 2 or embeddings.shape[0] not in (1, batch) or embeddings.shape[1] != entries:
            raise ValueError(f"embeddings must be [{batch} or 1, {entries}] (from embed()), "
                             f"got {tuple(embeddings.shape)}")
        z = z_t.reshape(batch, dim).to(self.device, torch.float64)
        alpha = self._alphas64[t.to(self.device).long().reshape(-1).expand(batch)]  # [B]
        log_prior = embeddings.to(self.device, torch.float64).log().expand(batch, -1)  # zero prior -> -inf
        return z, self.pixel_bank.posterior(z, alpha, log_prior).mean, alpha

    def object_position(self, obj: ToyObject, prompt: str) -> int:
        """Index of ``obj`` in this teacher's world; PromptError (naming ``prompt``) when the world leaves it out."""
        for index, candidate in enumerate(self.objects):
            if candidate.name == obj.name:
                return index
        raise PromptError(f"prompt '{prompt}' names {obj.name}, which this toy teacher's world leaves out; "
                          f"it has: {', '.join(o.name for o in self.objects)} (teacher.objects)")

    # -- bank building and caching -----------------------------------------------------------------

    def _render_bank(self) -> Tensor:
        """Render every object from every grid camera -> [N_objects * V, 3 * res * res] in [-1, 1]."""
        renders = toy_render.render_toys(self.objects, self.cameras, self.resolution, self.resolution,
                                         background=self.background, supersample=BANK_SUPERSAMPLE)
        rows = [out["rgb"].permute(0, 3, 1, 2).reshape(len(self.cameras), -1) * 2.0 - 1.0 for out in renders]
        return torch.cat(rows).float()

    def _cache_key(self) -> str:
        settings = {
            "version": BANK_VERSION,
            "resolution": self.resolution,
            "background": self.background,
            "supersample": BANK_SUPERSAMPLE,
            "elevation": self.cameras.elevation.tolist(),
            "azimuth": self.cameras.azimuth.tolist(),
            "distance": self.cameras.distance.tolist(),
            "fovy": self.cameras.fovy.tolist(),
            "objects": [repr(obj) for obj in self.objects],
            "lighting": [toy_render.AMBIENT, toy_render.LIGHTS],
            "tracing": [toy_render.BOUND_RADIUS, toy_render.HIT_EPSILON, toy_render.MAX_STEPS,
                        toy_render.NORMAL_STEP, toy_render.LATE_HIT_EPSILON],
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    @property
    def cache_path(self) -> Path:
        return self.cache_dir / f"bank-{self.resolution}px-{self.cache_key[:20]}.safetensors"

    def _load_cached(self) -> Tensor | None:
        path = self.cache_path
        if not path.exists():
            return None
        expected = (len(self.objects) * len(self.cameras), 3 * self.resolution**2)
        try:
            pixels = load_file(str(path))["pixels"]
            if tuple(pixels.shape) != expected or not bool(torch.isfinite(pixels).all()):
                raise ValueError(f"pixels have shape {tuple(pixels.shape)}, expected {expected}")
        except Exception as error:  # any unreadable file is rebuilt
            warnings.warn(f"toy teacher: bank cache {path} is unreadable ({error}); rebuilding it",
                          stacklevel=3)
            return None
        return pixels

    def _save_cache(self, pixels: Tensor) -> None:
        """Write the bank atomically (temporary file in the same folder, then rename)."""
        try:
            with atomic_path(self.cache_path) as tmp:
                save_file({"pixels": pixels.contiguous()}, str(tmp), metadata={"key": self.cache_key})
        except OSError as error:
            warnings.warn(f"toy teacher: could not write the bank cache to {self.cache_dir} ({error}); "
                          "set DREAMENGINE_CACHE or teacher.cache_dir to a writable folder", stacklevel=3)


def _select_objects(names: tuple[str, ...]) -> list[ToyObject]:
    world = all_objects()
    if not names:
        return world
    by_name = {obj.name: obj for obj in world}
    chosen = []
    for name in names:
        if name not in by_name:
            raise ConfigError(f"teacher.objects: unknown object '{name}'; use canonical names such as "
                              f"'a red cube' or 'a snowman' (all: {', '.join(by_name)})")
        chosen.append(by_name[name])
    return chosen


def _grid_cameras(elevations: tuple[float, ...], azimuth_step: float, distance: float,
                  fovy_deg: float) -> Cameras:
    """All (elevation, azimuth) pairs, elevation-major, azimuths 0, step, 2 step, ... below 360."""
    azimuths = torch.arange(0.0, 360.0 - 1e-6, float(azimuth_step), dtype=torch.float64).float()
    elevation = torch.tensor([float(e) for e in elevations]).repeat_interleave(len(azimuths))
    azimuth = azimuths.repeat(len(elevations))
    count = elevation.shape[0]
    return cameras_from_spherical(elevation, azimuth, torch.full((count,), float(distance)),
                                  torch.full((count,), float(fovy_deg)))
