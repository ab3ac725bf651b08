"""Image-to-3D settings (``image:`` in a config; ``dreamengine generate --image REF.png`` fills ``image.path``).

The reference camera looks at the object from (``elevation_deg``, ``azimuth_deg``) at the middle of
``camera.distance_range`` with the middle of ``camera.fovy_range``; there the render is fitted to the image (RGB
and mask losses, as threestudio's zero123 system) and every other camera gets the image-conditioned guidance.
See dreamengine/images.py for how the image is read, masked and framed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dreamengine.errors import ConfigError

MASK_METHODS = ("auto", "alpha", "color", "rembg", "none")


@dataclass
class ImageConfig:
    path: str | None = None  # the reference image (the run keeps a copy in RUN_DIR/input/); null: text only
    elevation_deg: float | None = None  # reference camera elevation; null: 0, or the toy teacher's detected view
    azimuth_deg: float | None = None  # reference camera azimuth; null: 0, or the toy teacher's detected view
    object: str | None = None  # the toy-world object the image shows (found by the toy teacher): eval's truth
    mask: str = "auto"  # auto | alpha | color | rembg | none (see dreamengine/images.py)
    background_tolerance: float = 0.1  # plain-background masking: largest color difference counted as background
    recenter: bool = True  # center the object and scale it to ``fill`` of the image (DreamGaussian, threestudio)
    fill: float = 0.8  # the object's longer side after recentering, as a fraction of the image side
    lambda_guidance: Any = 1.0  # weight of the guidance loss on the other cameras (threestudio's lambda_sds)
    lambda_rgb: Any = 500.0  # weight of the reference view's RGB mean squared error
    lambda_mask: Any = 50.0  # weight of the reference view's mask (opacity) mean squared error
    # the reference image's depth (or disparity) map, e.g. from a monocular depth model (DPT, Depth Anything): a
    # grayscale PNG / TIFF or a .npy array of the image's size, any scale (dreamengine/images.py); null: none
    depth_path: str | None = None
    lambda_depth: Any = 0.0  # MSE of the render's depth against the map fitted to it by scale + shift (threestudio)
    lambda_depth_rel: Any = 0.0  # 1 - Pearson correlation of the render's depth and the map (Magic123)
    # VP3D's visual prompt: with no --image, the text prior's teacher (text_prior.teacher / model / guidance_scale)
    # first samples the reference image for the prompt
    sample: bool = False
    sample_view: str = "front"  # the view phrase added to the prompt for sampling (front | side | back | overhead)
    sample_steps: int = 50  # DDIM / ancestral steps of the sampling loop

    def __post_init__(self) -> None:
        if self.mask not in MASK_METHODS:
            raise ConfigError(f"image.mask must be one of {', '.join(MASK_METHODS)}, got {self.mask!r}")
        if not 0.1 <= self.fill <= 1.0:
            raise ConfigError(f"image.fill must be in [0.1, 1], got {self.fill}")
        if not 0.0 < self.background_tolerance < 1.0:
            raise ConfigError(f"image.background_tolerance must be in (0, 1), got {self.background_tolerance}")
        if self.sample_view not in ("front", "side", "back", "overhead") or self.sample_steps < 2:
            raise ConfigError("image.sample_view must be front, side, back or overhead and image.sample_steps >= 2, "
                              f"got {self.sample_view!r}, {self.sample_steps}")
        if self.elevation_deg is not None and not -90.0 < self.elevation_deg < 90.0:
            raise ConfigError(f"image.elevation_deg must be in (-90, 90) degrees, got {self.elevation_deg}")


TEXT_PRIOR_TEACHERS = ("toyworld", "stable-diffusion")


@dataclass
class TextPriorConfig:
    """Magic123's 2D prior (``text_prior:``): a text teacher's SDS on the same renders, added to the image-conditioned
    teacher's guidance with weight ``weight`` (threestudio's lambda_sd beside lambda_3d_sd). ``weight: 0`` is off.
    The text teacher has its own view-dependent prompts of the run's prompt."""

    weight: Any = 0.0  # schedule; 0: no text prior
    teacher: str = "toyworld"  # toyworld | stable-diffusion (that teacher's default settings, ``model`` below)
    model: str | None = None  # stable-diffusion: repo id or local folder (null: the teacher's default)
    guidance_scale: float = 100.0  # SDS convention eps_c + s (eps_c - eps_u)
    min_step_percent: Any = 0.2  # schedule
    max_step_percent: Any = 0.6  # schedule

    def __post_init__(self) -> None:
        if self.teacher not in TEXT_PRIOR_TEACHERS:
            raise ConfigError(f"text_prior.teacher must be one of {', '.join(TEXT_PRIOR_TEACHERS)}, got "
                              f"{self.teacher!r}")
