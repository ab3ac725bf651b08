"""Prompt-processor settings (``prompt_processor:``): view-dependent prompts, negative prompt, Perp-Neg.
See ``dreamengine/prompts.py``."""

from __future__ import annotations

from dataclasses import dataclass, field

from dreamengine.errors import ConfigError

STYLES = ("suffix", "prefix")


@dataclass
class PromptConfig:
    """How the user's prompt becomes per-view conditioning."""

    view_dependent: bool = True  # a direction phrase per camera: ", front view" / ", side view" / ...
    view_prompt_style: str = "suffix"  # suffix: "{prompt}, side view" | prefix: "side view of {prompt}"
    prompt_front: str | None = None  # full text for front views (replaces the automatic one)
    prompt_side: str | None = None
    prompt_back: str | None = None
    prompt_overhead: str | None = None
    negative_prompt: str = ""  # the unconditional branch; "" is the true unconditional model
    front_threshold: float = 45.0  # |azimuth| below this is a front view (degrees)
    back_threshold: float = 45.0  # |azimuth| above 180 minus this is a back view
    overhead_threshold: float = 60.0  # elevation above this is an overhead view
    # LucidDreamer / PlacidDreamer: the conditional embedding interpolates front/side/back by azimuth
    # (r front + (1-r) side, or r side + (1-r) back) instead of one direction's; overhead is not used
    view_interpolation: bool = False
    perp_neg: bool = False  # Perp-Neg: interpolated positive + perpendicular negative views (guidance-math §6)
    perp_neg_f_fs: list[float] = field(default_factory=lambda: [4.0, 0.5, -2.426])  # (a, b, c): a e^(-b r) + c
    perp_neg_f_sf: list[float] = field(default_factory=lambda: [4.0, 0.5, -2.426])
    perp_neg_f_sb: list[float] = field(default_factory=lambda: [1.0, 0.5, -0.606])
    perp_neg_f_fsb: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.967])
    cache_embeddings: bool = True  # cache real text encoders' embeddings on disk
    cache_dir: str | None = None  # null: $DREAMENGINE_CACHE/embeddings or ~/.cache/dreamengine/embeddings

    def __post_init__(self) -> None:
        if self.view_prompt_style not in STYLES:
            raise ConfigError(f"prompt_processor.view_prompt_style must be suffix or prefix; "
                              f"got {self.view_prompt_style!r}")
        for name in ("perp_neg_f_fs", "perp_neg_f_sf", "perp_neg_f_sb", "perp_neg_f_fsb"):
            if len(getattr(self, name)) != 3:
                raise ConfigError(f"prompt_processor.{name} must be three numbers [a, b, c] of a exp(-b r) + c; "
                                  f"got {list(getattr(self, name))}")
        if self.view_interpolation and not self.view_dependent:
            raise ConfigError("prompt_processor.view_interpolation=true needs view-dependent prompts: set "
                              "prompt_processor.view_dependent=true or view_interpolation=false")
        if self.perp_neg and not self.view_dependent:
            raise ConfigError("prompt_processor.perp_neg=true needs view-dependent prompts: set "
                              "prompt_processor.view_dependent=true or perp_neg=false")

