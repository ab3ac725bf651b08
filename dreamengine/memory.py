"""Peak GPU memory of a config, estimated by a formula, and the settings that would make it fit a GPU.

The estimate (GiB) is a sum of terms read off the config:

    context     0.8                                    CUDA context and allocator slack
    teacher     parameters x bytes per weight            all of the model resident; cpu_offload: the UNet only
    vae         6.0 x B x (R / 512)^2                   encoding renders with gradients (latent teachers)
    unet        0.5 x 2B x (R_latent / 64)^2            the no-grad CFG forward (conditional + unconditional)
    lora        8.0 x B x n_t x (R / 512)^2             VSD: backward through the UNet into its LoRA
    nerf        600 B x H x W x B x P x samples x occ   ray samples kept for backward (occ 0.25 with the
                + hash-grid tables x 16 B               occupancy grid, 1 without); tables with grad + Adam
    gaussians   max Gaussians x 59 x 16 B + H x W x B x 200 B
    mesh        texture texels x 3 x 16 B + H x W x B x 200 B

with B the batch, H x W the largest render size over ``camera.phases``, P the particles and R the teacher's pixel
resolution. Calibration, stated honestly: the three activation constants (vae 6.0, lora 8.0, 600 B per sample)
were chosen so that threestudio's two published figures come out right -- DreamFusion-SD (SD 2.1-base fp16,
64 px renders, 256 samples) about 12 GB and ProlificDreamer's NeRF stage at 512 px about 27 GB (threestudio's
README) -- and nothing else; no GPU measurement of this engine calibrated it yet (``bench/gpu_check.py`` prints
estimate and measured peak side by side once a GPU runs it). Treat it as +-30 %.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

GIB = 1024**3
CONTEXT_GIB = 0.8
VAE_GIB_AT_512 = 6.0
UNET_GIB_PER_LATENT_64 = 0.5
LORA_GIB_AT_512 = 8.0
BYTES_PER_SAMPLE = 600
OCCUPANCY_FRACTION = 0.25
BYTES_PER_PIXEL = 200
FIT_MARGIN = 0.9  # a config fits when its estimate is below 90 % of the free memory

# parameters (millions) of each teacher's parts, from the models' configs; the first part is the UNet
TEACHER_PARAMETERS = {
    "stable-diffusion-2": {"unet": 866, "text_encoder": 340, "vae": 84},
    "stable-diffusion-v1": {"unet": 860, "text_encoder": 123, "vae": 84},
    "deepfloyd-if": {"unet": 4300, "text_encoder": 4760},
}


LATENT_TEACHERS = ("stable-diffusion", "mvdream")


@dataclass
class Knobs:
    """What the estimate reads from a config (the memory-relevant settings, flattened)."""

    teacher: str  # toyworld* | stable-diffusion | mvdream | deepfloyd-if
    model: str
    dtype_bytes: int  # bytes per teacher weight
    offload: bool
    teacher_resolution: int  # pixels per side the teacher sees
    latent: bool  # renders go through a VAE encoder (with gradients)
    sizes: list[tuple[int, int, int]]  # (height, width, batch) of the base camera and each phase
    particles: int
    scene: str  # nerf | gaussians | mesh
    samples: int
    occupancy: bool
    hash_entries: int  # total hash-grid table entries x features
    gaussians: int
    texels: int
    lora_samples: int  # VSD: renders repeated this many times for the LoRA step (0: no LoRA)
    group: int = 1  # batches are multiples of this (camera.views_per_group: multi-view teachers)
    starts: list[int] = dataclasses.field(default_factory=list)  # the step each camera phase starts at


def knobs(cfg: Any) -> Knobs:
    """The memory-relevant settings of a :class:`~dreamengine.config.RunConfig`."""
    teacher = cfg.teacher
    model = str(getattr(teacher, "model", "") or "")
    dtype = str(getattr(teacher, "dtype", "float32"))
    dtype_bytes = 4 if dtype == "float32" else 2  # auto is float16 on CUDA
    native = {"deepfloyd-if": 64, "stable-diffusion": 512, "mvdream": 256}.get(teacher.name, 32)
    resolution = int(getattr(teacher, "resolution", None) or native)
    sizes = [(cfg.camera.height, cfg.camera.width, cfg.camera.batch_size)]
    sizes += [(p.height, p.width, p.batch_size) for p in cfg.camera.phases]
    scene = cfg.scene
    hash_entries = 0
    if scene.name == "nerf":
        hash_entries = int(getattr(scene, "num_levels", 16)) * 2 ** int(getattr(scene, "log2_hashmap_size", 19)) * int(
            getattr(scene, "features_per_level", 2))
    gaussians = 0
    if scene.name == "gaussians":
        gaussians = max(int(getattr(scene, "num_points", 4096)), int(cfg.densify.max_gaussians))
    texels = int(getattr(scene, "texture_resolution", 0)) ** 2 if scene.name == "mesh" else 0
    lora = int(getattr(cfg.guidance, "lora_n_timestamp_samples", 0)) if cfg.guidance.name in ("vsd", "dsd") else 0
    return Knobs(teacher=teacher.name, model=model, dtype_bytes=dtype_bytes,
                 offload=bool(getattr(teacher, "cpu_offload", False)), teacher_resolution=resolution,
                 latent=teacher.name in LATENT_TEACHERS, sizes=sizes, particles=cfg.trainer.n_particles,
                 scene=scene.name, samples=int(cfg.render.num_samples), occupancy=bool(cfg.render.occupancy_grid),
                 hash_entries=hash_entries, gaussians=gaussians, texels=texels, lora_samples=lora,
                 group=max(1, int(getattr(cfg.camera, "views_per_group", 1))),
                 starts=[p.start for p in cfg.camera.phases])


def teacher_parameters(k: Knobs) -> dict[str, int]:
    """Millions of parameters per part of the teacher (empty for the toy world)."""
    if k.teacher == "deepfloyd-if":
        return TEACHER_PARAMETERS["deepfloyd-if"]
    if k.teacher == "mvdream":  # SD 2.1-base with multi-view attention (about the same size)
        return TEACHER_PARAMETERS["stable-diffusion-2"]
    if k.teacher == "stable-diffusion":
        v1 = any(tag in k.model.lower() for tag in ("v1-", "v1.", "1-5", "1.5", "1-4", "sd-1", "sd1"))
        return TEACHER_PARAMETERS["stable-diffusion-v1" if v1 else "stable-diffusion-2"]
    return {}


def estimate(k: Knobs) -> dict[str, float]:
    """Peak GPU memory in GiB, per term and ``total`` (see the module docstring for the formula)."""
    parts = teacher_parameters(k)
    resident = (max(parts.values()) if k.offload else sum(parts.values())) if parts else 0
    terms = {"context": CONTEXT_GIB, "teacher": resident * 1e6 * k.dtype_bytes / GIB}
    batch = max(b for _, _, b in k.sizes) * k.particles
    scale = (k.teacher_resolution / 512) ** 2
    if parts:
        latent_side = k.teacher_resolution / 8 if k.latent else k.teacher_resolution
        terms["unet"] = UNET_GIB_PER_LATENT_64 * 2 * batch * (latent_side / 64) ** 2
        if k.latent:
            terms["vae"] = VAE_GIB_AT_512 * batch * scale
        if k.lora_samples:
            terms["lora"] = LORA_GIB_AT_512 * batch * k.lora_samples * scale
    pixels = max(h * w * b for h, w, b in k.sizes) * k.particles
    if k.scene == "nerf":
        occupied = OCCUPANCY_FRACTION if k.occupancy else 1.0
        terms["scene"] = (pixels * k.samples * occupied * BYTES_PER_SAMPLE + k.hash_entries * 16 * k.particles) / GIB
    elif k.scene == "gaussians":
        terms["scene"] = (k.gaussians * 59 * 16 * k.particles + pixels * BYTES_PER_PIXEL) / GIB
    else:
        terms["scene"] = (k.texels * 3 * 16 * k.particles + pixels * BYTES_PER_PIXEL) / GIB
    terms["total"] = sum(terms.values())
    return terms


def estimate_config(cfg: Any) -> dict[str, float]:
    return estimate(knobs(cfg))


def fits(total_gib: float, free_gib: float) -> bool:
    return total_gib <= FIT_MARGIN * free_gib


def suggest(k: Knobs, free_gib: float, max_changes: int = 12) -> tuple[list[str], float]:
    """Overrides (``key=value``) that bring the estimate under ``FIT_MARGIN x free_gib``, cheapest in quality
    first: teacher offload, half-precision weights, smaller batch, fewer samples per ray, smaller renders (never
    below 64 px), and last a lower teacher resolution (latent teachers, never below 256 px). Returns (overrides,
    the estimate after them); the estimate may still not fit."""
    changes: dict[str, str] = {}
    current = dataclasses.replace(k, sizes=list(k.sizes))
    for _ in range(max_changes):
        total = estimate(current)["total"]
        if fits(total, free_gib):
            break
        if teacher_parameters(current) and not current.offload:
            current.offload = True
            changes["teacher.cpu_offload"] = "true"
        elif teacher_parameters(current) and current.dtype_bytes == 4:
            current.dtype_bytes = 2
            changes["teacher.dtype"] = "float16"
        elif max(b for _, _, b in current.sizes) > current.group:
            current.sizes = [(h, w, smaller_batch(b, current.group)) for h, w, b in current.sizes]
            _set_sizes(changes, current.sizes, current.starts)
        elif current.scene == "nerf" and current.samples > 64:
            current.samples = max(64, current.samples // 2)
            changes["render.num_samples"] = str(current.samples)
        elif max(max(h, w) for h, w, _ in current.sizes) > 64:
            current.sizes = [(max(64, _round8(h * 0.75)), max(64, _round8(w * 0.75)), b) for h, w, b in current.sizes]
            _set_sizes(changes, current.sizes, current.starts)
        elif current.latent and current.teacher_resolution > 256:  # last: the teacher sees fewer pixels
            current.teacher_resolution = max(256, current.teacher_resolution // 2 // 64 * 64)
            changes["teacher.resolution"] = str(current.teacher_resolution)
        else:
            break
    return [f"{key}={value}" for key, value in changes.items()], estimate(current)["total"]


def smaller_batch(batch: int, group: int = 1) -> int:
    """About half of ``batch``, a multiple of ``group`` (multi-view teachers), at least ``group``."""
    return max(group, batch // 2 // group * group)


def _round8(value: float) -> int:
    return int(math.floor(value / 8) * 8)


def _set_sizes(changes: dict[str, str], sizes: list[tuple[int, int, int]], starts: list[int]) -> None:
    h, w, b = sizes[0]
    changes.update({"camera.height": str(h), "camera.width": str(w), "camera.batch_size": str(b)})
    if len(sizes) > 1:
        phases = ", ".join(f"{{start: {s}, height: {h}, width: {w}, batch_size: {b}}}"
                           for s, (h, w, b) in zip(starts, sizes[1:], strict=True))
        changes["camera.phases"] = f"[{phases}]"


__all__ = ["Knobs", "estimate", "estimate_config", "fits", "knobs", "smaller_batch", "suggest"]
