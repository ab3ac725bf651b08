"""Gaussian splatting on the CPU: rasterizer speed, and time to a good toy object against the NeRF.

1. Render + backward of the torch rasterizer at 64x64 and 128x128 for 1k, 5k and 20k Gaussians (random
   Gaussians in a ball, one view), median of ``--repeats``; the goal is 5k at 64x64 in <= 100 ms.
2. The toy quickstart with Gaussians (``gaussian-toy``) and with the NeRF (``quickstart``): training wall time
   until the held-out mask IoU reaches ``--target`` (evaluated every ``--eval-every`` steps, evaluation time not
   counted), for each prompt.

    python bench/splat.py [--repeats 7] [--prompts "a red cube" ...] [--target 0.85] [--threads 2]

Prints a markdown table and writes bench/results/splat.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dreamengine.config import load_config
from dreamengine.config.scenes import GaussiansConfig
from dreamengine.core.background import Background
from dreamengine.core.cameras import cameras_from_spherical
from dreamengine.evaluate import evaluate_renders
from dreamengine.renderers.splat import render_splats
from dreamengine.scenes.gaussians import GaussianScene
from dreamengine.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def rasterizer_ms(num: int, resolution: int, repeats: int) -> tuple[float, int]:
    """Median ms of render + backward, and the number of (Gaussian, pixel) pairs composited."""
    scene = GaussianScene(GaussiansConfig(num_points=num, init_radius=0.6, init_scale=0.03, init_opacity=0.3))
    cams = cameras_from_spherical(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([2.5]), torch.tensor([40.0]))
    background = Background()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        out = render_splats(scene.render_inputs(), cams, resolution, resolution, background=background, backend="torch")
        out.rgb.sum().backward()
        times.append(time.perf_counter() - start)
        scene.zero_grad()
    covered = int((out.info["radii"] > 0).sum())
    return 1000 * statistics.median(times[1:]), covered


def time_to_iou(config: str, prompt: str, target: float, max_steps: int, eval_every: int,
                workdir: Path) -> tuple[float | None, int | None, float]:
    """(training seconds, steps) until the held-out IoU reaches ``target`` (None if never), and the best IoU."""
    cfg = load_config(config, [f"trainer.max_steps={max_steps}", "trainer.preview_every=0",
                               "trainer.checkpoint_every=0", "eval.num_views=8"], prompt=prompt)
    run_dir = workdir / f"{config}-{prompt.replace(' ', '-')}"
    run_dir.mkdir(parents=True)
    trainer = Trainer(cfg, run_dir)
    trained, best = 0.0, 0.0
    while trainer.step < max_steps:
        start = time.perf_counter()
        for _ in range(eval_every):
            trainer.train_step()
        trained += time.perf_counter() - start
        metrics = evaluate_renders(cfg, lambda cams, h, w: trainer.render_views(cams, h, w))
        best = max(best, metrics["mask_iou"])
        if metrics["mask_iou"] >= target:
            return trained, trainer.step, best
    return None, None, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--prompts", nargs="+", default=["a red cube", "a blue torus", "a snowman"])
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--max-steps", type=int, default=800)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-quickstart", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lines = [f"# Gaussian splatting on the CPU ({time.strftime('%Y-%m-%d')}, bench/splat.py)", "",
             f"torch {torch.__version__}, {args.threads} threads, {platform.machine()} (shared machine: expect "
             "noise). Torch rasterizer, one view, random Gaussians in a ball of radius 0.6 (scale 0.03, opacity 0.3),"
             f" median of {args.repeats}.", "",
             "| Gaussians | 64x64 render+backward (ms) | 128x128 render+backward (ms) | on screen |",
             "|---:|---:|---:|---:|"]
    for num in (1000, 5000, 20000):
        small, covered = rasterizer_ms(num, 64, args.repeats)
        large, _ = rasterizer_ms(num, 128, args.repeats)
        lines.append(f"| {num} | {small:.1f} | {large:.1f} | {covered} |")
        print(lines[-1], flush=True)
    if not args.skip_quickstart:
        lines += ["", f"## Time to held-out mask IoU {args.target} on the toy world", "",
                  f"Training time only (evaluation every {args.eval_every} steps not counted), at most "
                  f"{args.max_steps} steps; teacher bank building excluded.", "",
                  "| prompt | scene (config) | seconds to target | steps | best IoU |", "|---|---|---:|---:|---:|"]
        with tempfile.TemporaryDirectory() as tmp:
            for prompt in args.prompts:
                for config, label in (("gaussian-toy", "Gaussians"), ("quickstart", "NeRF")):
                    seconds, steps, best = time_to_iou(config, prompt, args.target, args.max_steps, args.eval_every,
                                                       Path(tmp))
                    shown = "not reached" if seconds is None else f"{seconds:.1f}"
                    lines.append(f"| {prompt} | {label} ({config}) | {shown} | {steps or '-'} | {best:.3f} |")
                    print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    out = REPO / "bench" / "results" / "splat.md"
    out.write_text(table)


if __name__ == "__main__":
    main()
