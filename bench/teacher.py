"""Where an SDS step with a Stable Diffusion teacher spends its time, on the CPU, batch 1.

Run from the repository root: ``python bench/teacher.py [--repeats 5] [--full-repeats 2] [--skip-full] [--threads N]``.
Prints a markdown table and writes it to bench/results/teacher.md.

Two teachers, both with random weights (nothing is downloaded):
(a) the tiny test stack of tests/tiny_sd.py (64x64 images, 8x8 latents);
(b) a full-size Stable Diffusion 2.1-base UNet and VAE built from their published configs (512x512 images,
    64x64 latents; the text encoder is the tiny one, since embeddings are computed once per run: the step
    uses random [1, 77, 1024] embeddings).

One step = render a 64x64 view of a fresh NeRF (48 samples, occupancy grid, albedo) -> resize + VAE encode
(with grad) -> UNet on [cond, uncond] (no grad, CFG batch 2) -> SDS gradient -> backward, split into the
VAE encoder's part (d loss / d rgb) and the scene's part (rgb -> NeRF parameters). "Outside the teacher"
is render + scene backward + the SDS arithmetic.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dreamengine.config.scenes import NeRFConfig  # noqa: E402
from dreamengine.core.background import Background  # noqa: E402
from dreamengine.core.cameras import CameraSampler  # noqa: E402
from dreamengine.guidance.base import (  # noqa: E402
    add_noise,
    cfg_convention_a,  # noqa: E402
    gradient_to_loss,
)
from dreamengine.renderers.volume import OccupancyGrid, render_volume  # noqa: E402
from dreamengine.scenes.nerf import NeRFScene  # noqa: E402
from dreamengine.teachers.stable_diffusion import StableDiffusionTeacher  # noqa: E402
from tests.tiny_sd import tiny_components  # noqa: E402

RESULTS = REPO / "bench" / "results" / "teacher.md"

# stabilityai/stable-diffusion-2-1-base unet/config.json and vae/config.json (the fields that differ from
# the diffusers defaults).
SD21_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
                 attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SD21_VAE = dict(sample_size=768, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)


def build_teacher(full: bool) -> tuple[StableDiffusionTeacher, torch.Tensor]:
    """(teacher, embeddings [2, L, D] for cond and uncond)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

    parts = tiny_components()
    if full:
        torch.manual_seed(0)
        parts["unet"] = UNet2DConditionModel(**SD21_UNET)
        parts["vae"] = AutoencoderKL(**SD21_VAE)
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    teacher = StableDiffusionTeacher("sd-2.1-base (random)" if full else "tiny", pipeline=pipe)
    if full:
        embeddings = torch.randn(2, 77, 1024, generator=torch.Generator().manual_seed(0))
    else:
        embeddings = teacher.embed(["a cat", ""])
    return teacher, embeddings


def time_steps(teacher: StableDiffusionTeacher, embeddings: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of each stage over ``repeats`` steps (after one warm-up step)."""
    torch.manual_seed(0)
    scene = NeRFScene(NeRFConfig(num_levels=8, log2_hashmap_size=16, per_level_scale=1.5, hidden_dim=32,
                                 encoding_backend="torch"))
    background = Background(mode="solid", color=(1.0, 1.0, 1.0))
    occupancy = OccupancyGrid(radius=1.0, num_samples=48, resolution=32, update_every=16,
                              occupancy_threshold=0.01, backend="torch", device=torch.device("cpu"))
    occupancy.update(scene, 0)
    sampler, gen = CameraSampler(), torch.Generator().manual_seed(0)
    cond, uncond = embeddings[:1], embeddings[1:]
    records: dict[str, list[float]] = {k: [] for k in ("render", "encode", "unet", "sds", "vae_backward",
                                                       "scene_backward", "step")}
    for index in range(repeats + 1):
        clock = {}
        start = time.perf_counter()
        cameras = sampler.sample(1, gen)
        render = render_volume(scene, cameras, 64, 64, num_samples=48, background=background, shading="albedo",
                               perturb=True, generator=gen, backend="torch", occupancy=occupancy)
        rgb = render.rgb.permute(0, 3, 1, 2)
        clock["render"] = time.perf_counter()
        z = teacher.encode(rgb)
        clock["encode"] = time.perf_counter()
        t = torch.randint(20, 981, (1,), generator=gen)
        noise = torch.randn(z.shape, generator=gen)
        z_t = add_noise(z.detach(), noise, t, teacher.alphas_cumprod)
        eps = teacher.predict_noise(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([cond, uncond]))
        clock["unet"] = time.perf_counter()
        eps_c, eps_u = eps.chunk(2)
        w = (1.0 - teacher.alphas_cumprod[t]).view(-1, 1, 1, 1)
        grad = torch.nan_to_num(w * (cfg_convention_a(eps_c, eps_u, 100.0) - noise))
        loss = gradient_to_loss(z, grad)
        clock["sds"] = time.perf_counter()
        (rgb_grad,) = torch.autograd.grad(loss, rgb)
        clock["vae_backward"] = time.perf_counter()
        rgb.backward(rgb_grad)
        clock["scene_backward"] = time.perf_counter()
        scene.zero_grad(set_to_none=True)
        if index == 0:
            continue  # warm-up
        previous = start
        for name in ("render", "encode", "unet", "sds", "vae_backward", "scene_backward"):
            records[name].append(clock[name] - previous)
            previous = clock[name]
        records["step"].append(previous - start)
    return {name: statistics.median(values) for name, values in records.items()}


def row(label: str, times: dict[str, float]) -> str:
    outside = times["render"] + times["scene_backward"] + times["sds"]
    share = 100.0 * outside / times["step"]
    cells = [f"{1000 * times[k]:.1f}" for k in ("render", "encode", "unet", "vae_backward", "scene_backward",
                                                 "sds", "step")]
    return f"| {label} | " + " | ".join(cells) + f" | {share:.1f}% |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps with the tiny stack")
    parser.add_argument("--full-repeats", type=int, default=2, help="timed steps with the full-size stack")
    parser.add_argument("--skip-full", action="store_true", help="only the tiny stack")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); 1 is steadier "
                        "when other processes share the CPU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lines = [
        "# SDS step with a Stable Diffusion teacher, CPU, batch 1 (bench/teacher.py)",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
        " (shared machine: expect noise). Render: fresh NeRF, 64x64, 48 samples, occupancy grid, albedo. "
        "Median ms per stage; warm-up step excluded.",
        "",
        "| teacher | render | VAE encode | UNet (CFG x2) | VAE backward | scene backward | SDS math | step |"
        " outside teacher |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    teacher, embeddings = build_teacher(full=False)
    lines.append(row("tiny (64 px, 8x8 latents)", time_steps(teacher, embeddings, args.repeats)))
    print(lines[-1], flush=True)
    if not args.skip_full:
        teacher, embeddings = build_teacher(full=True)
        lines.append(row("SD 2.1-base size (512 px, 64x64 latents)",
                         time_steps(teacher, embeddings, args.full_repeats)))
        print(lines[-1], flush=True)
    lines += ["", "Outside teacher = render + scene backward + SDS math, as a share of the whole step."]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
