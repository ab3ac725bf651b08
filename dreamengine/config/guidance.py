"""Guidance settings (``guidance:`` in a config): one dataclass per method, chosen by ``guidance.name``.

Plain values only (numbers, strings, lists; ``Any`` marks a schedule, see :mod:`dreamengine.schedules`).
Each method's formula, sources and the meaning of its keys are in ``dreamengine/guidance/<name>.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dreamengine.errors import ConfigError
from dreamengine.schedules import validate_schedule


def check_weighting_and_schedules(cfg: Any) -> None:
    """``guidance.weighting`` is known; the t range and ``grad_clip`` are valid schedules (the common checks)."""
    if cfg.weighting not in WEIGHTINGS:
        raise ConfigError(f"guidance.weighting must be one of {', '.join(WEIGHTINGS)}; got {cfg.weighting!r}")
    validate_schedule(cfg.min_step_percent, "guidance.min_step_percent")
    validate_schedule(cfg.max_step_percent, "guidance.max_step_percent")
    validate_schedule(cfg.grad_clip, "guidance.grad_clip", allow_none=True)


def validate_lucid_config(cfg: Any) -> None:
    """ConfigError checks shared by configs with LucidDreamer's timestep (and, if present, inversion) keys."""
    if not 0.0 <= cfg.min_step_percent < cfg.max_step_percent <= cfg.warmup_max_step_percent <= 1.0:
        raise ConfigError("guidance.min_step_percent < guidance.max_step_percent <= guidance.warmup_max_step_percent "
                          f"must hold, all in [0, 1]; got {cfg.min_step_percent}, {cfg.max_step_percent}, "
                          f"{cfg.warmup_max_step_percent}")
    if cfg.warmup_steps < 0:
        raise ConfigError(f"guidance.warmup_steps must be >= 0, got {cfg.warmup_steps}")
    if cfg.noise_offset < 0:
        raise ConfigError(f"guidance.noise_offset must be >= 0, got {cfg.noise_offset}")
    if cfg.grad_injection not in GRAD_INJECTIONS:
        raise ConfigError(f"guidance.grad_injection must be one of {', '.join(GRAD_INJECTIONS)}; "
                          f"got {cfg.grad_injection!r}")
    for key in ("delta_t", "delta_t_start"):
        if hasattr(cfg, key) and getattr(cfg, key) < 0:
            raise ConfigError(f"guidance.{key} must be >= 0, got {getattr(cfg, key)}")
    for key in ("xs_delta_t", "xs_inv_steps"):
        if hasattr(cfg, key) and getattr(cfg, key) < 1:
            raise ConfigError(f"guidance.{key} must be >= 1, got {getattr(cfg, key)}")


WEIGHTINGS = ("sds", "uniform", "fantasia3d")
# how g reaches the render: "sum" d loss / dz = g (LucidDreamer's and PlacidDreamer's SpecifyGradient), "mean"
# d loss / dz = g / B (threestudio's MSE trick); at LucidDreamer's batch of 4 "mean" is a 4x weaker step
GRAD_INJECTIONS = ("sum", "mean")


@dataclass
class SDSConfig:
    name: str = "sds"
    guidance_scale: float = 100.0  # s in eps_c + s (eps_c - eps_u)
    weighting: str = "sds"  # one of WEIGHTINGS
    min_step_percent: Any = 0.02  # schedule (see dreamengine.schedules): lower bound of t / T
    max_step_percent: Any = 0.98  # schedule: upper bound of t / T
    sqrt_anneal: bool = False  # HiFA: deterministic t = T (p_max - (p_max - p_min) sqrt(step / max_steps))
    grad_clip: Any = None  # schedule or null: element-wise clamp of g

    def __post_init__(self) -> None:
        check_weighting_and_schedules(self)


CAMERA_CONDITIONS = ("c2w",)


@dataclass
class VSDConfig:
    name: str = "vsd"
    guidance_scale: float = 7.5  # s in eps_u + s (eps_c - eps_u) (convention B)
    guidance_scale_lora: float = 1.0  # s_lora: CFG of phi between the camera and the zero camera
    min_step_percent: Any = 0.02  # schedule (see dreamengine.schedules): lower bound of t / T
    max_step_percent: Any = field(default_factory=lambda: [5000, 0.98, 0.5, 5001])  # schedule: upper bound of t / T
    camera_condition_type: str = "c2w"  # one of CAMERA_CONDITIONS (threestudio: extrinsics)
    camera_dropout: float = 0.1  # probability that phi trains on the zero camera (threestudio's lora_cfg_training)
    lora_n_timestamp_samples: int = 1  # phi's training batch is the renders repeated this many times
    lora_rank: int = 4  # LoRA rank (diffusers' LoRAAttnProcessor default, as threestudio uses it)
    lora_alpha: float | None = None  # LoRA scale alpha / rank; null: alpha = rank (scale 1, as LoRAAttnProcessor)
    lora_lr: float = 1.0e-4  # AdamW learning rate of the LoRA and its camera MLP (threestudio: guidance lr)
    # AdamW learning rate of the pixel UNet of teachers without a UNet. It starts from scratch and must follow the
    # renders within a few hundred steps: 10x the LoRA's fine-tuning rate (vsd-toy, "a red cube": its denoising
    # loss is 0.03 after 600 steps at 1e-3, still 0.22 at 1e-4)
    pixel_model_lr: float = 1.0e-3
    pixel_model_width: int = 16  # channels of the pixel UNet's first level (a multiple of 8)
    grad_clip: Any = None  # schedule or null: element-wise clamp of g

    def __post_init__(self) -> None:
        validate_schedule(self.grad_clip, "guidance.grad_clip", allow_none=True)
        validate_schedule(self.min_step_percent, "guidance.min_step_percent")
        validate_schedule(self.max_step_percent, "guidance.max_step_percent")
        if self.camera_condition_type not in CAMERA_CONDITIONS:
            raise ConfigError(f"guidance.camera_condition_type must be one of {', '.join(CAMERA_CONDITIONS)} "
                              f"(the flattened camera-to-world matrix); got {self.camera_condition_type!r}")
        if not 0.0 <= self.camera_dropout <= 1.0:
            raise ConfigError(f"guidance.camera_dropout must be a probability in [0, 1], got {self.camera_dropout}")
        if self.lora_n_timestamp_samples < 1:
            raise ConfigError(f"guidance.lora_n_timestamp_samples must be >= 1, got {self.lora_n_timestamp_samples}")
        if self.lora_rank < 1:
            raise ConfigError(f"guidance.lora_rank must be >= 1, got {self.lora_rank}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ConfigError(f"guidance.lora_alpha must be > 0 (or null for alpha = rank), got {self.lora_alpha}")
        for key in ("lora_lr", "pixel_model_lr"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"guidance.{key} must be > 0, got {getattr(self, key)}")
        if self.pixel_model_width < 8 or self.pixel_model_width % 8:
            raise ConfigError(f"guidance.pixel_model_width must be a positive multiple of 8 (GroupNorm groups), "
                              f"got {self.pixel_model_width}")


@dataclass
class DSDConfig(VSDConfig):
    """VSD's settings (the same particle score model phi) plus DSD's domain weight (a reconstruction: see
    dreamengine/guidance/dsd.py)."""

    name: str = "dsd"
    # schedule: lambda, the weight of the unconditional-image-domain term (eps_u - eps); 1 - lambda goes to the
    # variational-domain term (eps_u - eps_phi). 1 is SDS (convention B), 0 is VSD
    domain_weight: Any = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_schedule(self.domain_weight, "guidance.domain_weight")


BSD_VARIANTS = ("standard", "auto")


@dataclass
class BSDConfig:
    name: str = "bsd"
    variant: str = "standard"  # one of BSD_VARIANTS
    classifier_ratio: float = 15.0  # standard: c = ratio (eps_c - eps_u)
    auto_smoothing_scale: float = 1.25  # auto: d = scale (eps_u - eps)
    auto_norm_divisor: float = 50.0  # auto: w = |eps_u - eps| sqrt(1 - abar_t) / divisor
    grad_scale: float = 0.1  # g is multiplied by this (LucidDreamer's lambda_guidance)
    warmup_steps: int = 1500  # steps over which the largest t anneals from 979 to 499
    min_step_percent: float = 0.02  # lower bound of t / T
    max_step_percent: float = 0.5  # upper bound of t / T after the warm-up
    warmup_max_step_percent: float = 0.98  # upper bound of t / T at step 0
    noise_offset: float = 0.1  # offset-noise amplitude
    grad_injection: str = "sum"  # one of GRAD_INJECTIONS (source: SpecifyGradient, g itself)
    grad_clip: Any = None  # schedule or null: element-wise clamp of g

    def __post_init__(self) -> None:
        validate_schedule(self.grad_clip, "guidance.grad_clip", allow_none=True)
        if self.variant not in BSD_VARIANTS:
            raise ConfigError(f"guidance.variant must be one of {', '.join(BSD_VARIANTS)}; got {self.variant!r}")
        if self.auto_norm_divisor <= 0:
            raise ConfigError(f"guidance.auto_norm_divisor must be > 0, got {self.auto_norm_divisor}")
        validate_lucid_config(self)


CSM_WEIGHTINGS = ("ism", "sds", "uniform")


@dataclass
class ISMConfig:
    name: str = "ism"
    guidance_scale: float = 7.5  # s in eps_u + s (eps_c - eps_u) (convention B)
    grad_scale: float = 0.1  # lambda_guidance: g is multiplied by this
    delta_t: int = 80  # final interval t - s (LucidDreamer's default; its example configs use 50)
    delta_t_start: int = 100  # interval at step 0 when annealing_intervals
    annealing_intervals: bool = True  # anneal the interval from delta_t_start to delta_t with the warm-up rate
    xs_delta_t: int = 200  # stride of the inversion from ~0 to s
    xs_inv_steps: int = 5  # number of inversion steps to s
    # the inversion starts no lower than this timestep (plus the steps offset). 0: the source's ~clean start. An
    # exact teacher over a finite bank (the toy world) amplifies a render's distance to its nearest bank image
    # by 1 / sqrt(1 - abar_t) at t ~ 0, so the toy configs start at 100 (bench/results/guidance.md)
    inversion_floor: int = 0
    inverse_prompt: str = ""  # prompt of the inversion ("" = unconditional)
    warmup_steps: int = 1500  # steps over which the largest t anneals from 979 to 499
    min_step_percent: float = 0.02  # lower bound of t / T
    max_step_percent: float = 0.5  # upper bound of t / T after the warm-up
    warmup_max_step_percent: float = 0.98  # upper bound of t / T at step 0
    noise_offset: float = 0.1  # offset-noise amplitude of the start noise
    grad_injection: str = "sum"  # one of GRAD_INJECTIONS (source: SpecifyGradient, g itself)
    grad_clip: Any = None  # schedule or null: element-wise clamp of g

    def __post_init__(self) -> None:
        validate_schedule(self.grad_clip, "guidance.grad_clip", allow_none=True)
        validate_lucid_config(self)


@dataclass
class CSMConfig(ISMConfig):
    """ISM's settings (the same deterministic x_t) plus CSM's weighting; ``guidance_scale`` is gamma, the weight
    of the classifier term."""

    name: str = "csm"
    weighting: str = "ism"  # one of CSM_WEIGHTINGS

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weighting not in CSM_WEIGHTINGS:
            raise ConfigError(f"guidance.weighting must be one of {', '.join(CSM_WEIGHTINGS)}; got {self.weighting!r}")


@dataclass
class CSDConfig:
    name: str = "csd"
    guidance_scale: Any = 1.0  # schedule: k_c, weight of eps(e_c)
    uncond_scale: Any = 0.0  # schedule: k_u, weight of eps(e_neg) (the negative prompt)
    null_scale: Any = -1.0  # schedule: k_n, weight of eps(e_0) (the empty prompt)
    noise_scale: Any = 0.0  # schedule: k_e, weight of the sampled noise eps
    perpneg_scale: Any = 0.0  # schedule: weight of Perp-Neg's perpendicular sum (with prompt_processor.perp_neg)
    weighting: str = "uniform"  # one of WEIGHTINGS (IF guidance: its config's, uniform; SD code path: sds)
    min_step_percent: Any = 0.02  # schedule: lower bound of t / T
    max_step_percent: Any = 0.98  # schedule: upper bound of t / T
    # divide g (after the clamp) by the norm of the whole batch tensor (source: on in its IF guidance, off in SD's)
    grad_normalize: bool = False
    grad_clip: Any = None  # schedule or null: element-wise clamp of g, before grad_normalize

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"guidance.weighting must be one of {', '.join(WEIGHTINGS)}; got {self.weighting!r}")
        for key in ("guidance_scale", "uncond_scale", "null_scale", "noise_scale", "perpneg_scale",
                    "min_step_percent", "max_step_percent"):
            validate_schedule(getattr(self, key), f"guidance.{key}")
        validate_schedule(self.grad_clip, "guidance.grad_clip", allow_none=True)


@dataclass
class NFSDConfig:
    name: str = "nfsd"
    guidance_scale: float = 7.5  # s, the weight of d_C
    small_t_threshold: int = 200  # below this t, d_D = eps(e_0); from it on, eps(e_0) - eps(e_neg)
    weighting: str = "sds"  # one of WEIGHTINGS
    min_step_percent: Any = 0.02  # schedule: lower bound of t / T
    max_step_percent: Any = 0.98  # schedule: upper bound of t / T
    grad_clip: Any = None  # schedule or null: element-wise clamp of g

    def __post_init__(self) -> None:
        if self.small_t_threshold < 0:
            raise ConfigError(f"guidance.small_t_threshold must be >= 0, got {self.small_t_threshold}")
        check_weighting_and_schedules(self)


@dataclass
class ASDConfig:
    name: str = "asd"
    guidance_scale: float = 7.5  # s in eps_u + s (eps_c - eps_u) (convention B)
    plus_ratio: float = 0.1  # dt is at most plus_ratio (t - min_step)
    plus_random: bool = True  # dt scaled by U(0, 1)
    guidance_perp_neg: float = -0.5  # with prompt_processor.perp_neg: negative-view weights times -this (source)
    weighting: str = "sds"  # one of WEIGHTINGS
    min_step_percent: Any = field(default_factory=lambda: [0, 0.5, 0.02, 25000])  # schedule: lower bound of t / T
    max_step_percent: Any = field(default_factory=lambda: [0, 0.98, 0.5, 25000])  # schedule: upper bound of t / T
    grad_clip: Any = None  # schedule or null: element-wise clamp of g

    def __post_init__(self) -> None:
        if self.plus_ratio < 0:
            raise ConfigError(f"guidance.plus_ratio must be >= 0, got {self.plus_ratio}")
        check_weighting_and_schedules(self)


@dataclass
class MVDreamSDSConfig:
    """MVDream-threestudio's multiview-diffusion-guidance with configs/mvdream-sd21.yaml's values."""

    name: str = "mvdream-sds"
    guidance_scale: float = 50.0  # s in eps_u + s (eps_c - eps_u) (convention B)
    recon_loss: bool = True  # x0-reconstruction form g = z - x0_hat (false: SDS g = (1 - abar_t)(eps^ - eps))
    recon_std_rescale: float = 0.5  # r: x0_hat blended with x0_hat rescaled to the std of the unguided x0 (CFG rescale)
    min_step_percent: Any = field(default_factory=lambda: [0, 0.98, 0.02, 8000])  # schedule: lower bound of t / T
    max_step_percent: Any = field(default_factory=lambda: [0, 0.98, 0.5, 8000])  # schedule: upper bound of t / T
    grad_clip: Any = None  # schedule or null: element-wise clamp of g

    def __post_init__(self) -> None:
        if not 0.0 <= self.recon_std_rescale <= 1.0:
            raise ConfigError(f"guidance.recon_std_rescale must be in [0, 1], got {self.recon_std_rescale}")
        validate_schedule(self.min_step_percent, "guidance.min_step_percent")
        validate_schedule(self.max_step_percent, "guidance.max_step_percent")
        validate_schedule(self.grad_clip, "guidance.grad_clip", allow_none=True)


CDS_ANNEALS = ("sqrt", "linear")


@dataclass
class CDSConfig:
    name: str = "cds"
    guidance_scale: Any = field(default_factory=lambda: [0, 100.0, 50.0, 3000])  # schedule: s, CFG convention A
    # t' (the ODE step's end), [start_step, start, end, end_step] or a number; annealed along ``anneal``
    cur_steps: Any = field(default_factory=lambda: [0, 700, 100, 3000])
    anneal: str = "sqrt"  # one of CDS_ANNEALS: how cur_steps moves (source perturb_indices: sqrt)
    end_gap: int = 100  # t = t' + randint(end_gap, end_gap + perturb_factor)
    perturb_factor: int = 200
    min_step_percent: float = 0.1  # clamp of t' and t (source min_sigma_percent)
    max_step_percent: float = 0.98  # clamp of t (t' <= this - end_gap) (source max_sigma_percent)
    share_noise: bool = True  # one noise drawn once for the whole run and every view (the source's default)
    recon_std_rescale: float = 0.0  # rescale the CFG x0's std toward the conditional x0's (0: off, the source's)
    weighting: str = "uniform"  # one of WEIGHTINGS
    grad_clip: Any = field(default_factory=lambda: [0, 2.0, 8.0, 3000])  # schedule or null: element-wise clamp

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"guidance.weighting must be one of {', '.join(WEIGHTINGS)}; got {self.weighting!r}")
        if self.anneal not in CDS_ANNEALS:
            raise ConfigError(f"guidance.anneal must be one of {', '.join(CDS_ANNEALS)}; got {self.anneal!r}")
        validate_schedule(self.guidance_scale, "guidance.guidance_scale")
        validate_schedule(self.grad_clip, "guidance.grad_clip", allow_none=True)
        cur = self.cur_steps
        if not (isinstance(cur, int | float) or (isinstance(cur, list | tuple) and len(cur) == 4)):
            raise ConfigError("guidance.cur_steps must be a timestep or [start_step, start, end, end_step]; "
                              f"got {cur!r}")
        if not 0.0 <= self.min_step_percent < self.max_step_percent <= 1.0:
            raise ConfigError(f"guidance.min_step_percent < guidance.max_step_percent must hold, both in [0, 1]; got "
                              f"{self.min_step_percent}, {self.max_step_percent}")
        if self.end_gap < 0 or self.perturb_factor < 1:
            raise ConfigError(f"guidance.end_gap must be >= 0 and guidance.perturb_factor >= 1; got {self.end_gap}, "
                              f"{self.perturb_factor}")
        if not 0.0 <= self.recon_std_rescale <= 1.0:
            raise ConfigError(f"guidance.recon_std_rescale must be in [0, 1], got {self.recon_std_rescale}")


GUIDANCE_CONFIGS = {"sds": SDSConfig, "bsd": BSDConfig, "csm": CSMConfig, "ism": ISMConfig, "csd": CSDConfig,
                    "nfsd": NFSDConfig, "asd": ASDConfig, "vsd": VSDConfig, "mvdream-sds": MVDreamSDSConfig,
                    "cds": CDSConfig, "dsd": DSDConfig}
