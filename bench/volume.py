"""Our pure-torch compositing vs nerfacc's batched CPU functions on identical samples.

Run from the repository root: ``python bench/volume.py [--rays 4096] [--samples 64] [--repeats 25]``.
Prints markdown tables and writes them to bench/results/volume.md:

1. compositing: both sides compute weights, opacity, rgb and depth from the same densities, interval bounds
   and colors; "forward+backward" also back-propagates a fixed random upstream gradient;
2. a whole render of a freshly initialized NeRFScene (one 64x64 view, 48 samples, 8 levels, 2^16 table,
   hidden 32), forward+backward, without and with the torch occupancy grid (32^3, updated once).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import nerfacc
import torch
from torch import Tensor

from dreamengine.config.scenes import NeRFConfig
from dreamengine.core.background import Background, sample_light_positions
from dreamengine.core.cameras import CameraSampler
from dreamengine.renderers.volume import OccupancyGrid, accumulate, composite_weights, render_volume
from dreamengine.scenes.nerf import NeRFScene

RESULTS = Path(__file__).resolve().parent / "results" / "volume.md"


def ours(t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, colors: Tensor) -> Tensor:
    weights = composite_weights(sigmas, t_ends - t_starts)
    t_mid = 0.5 * (t_starts + t_ends)
    depth = accumulate(weights, t_mid[..., None])
    return torch.cat([accumulate(weights, colors), accumulate(weights), depth], dim=-1)


def theirs(t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, colors: Tensor) -> Tensor:
    weights = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas)[0]
    t_mid = 0.5 * (t_starts + t_ends)
    return torch.cat([nerfacc.accumulate_along_rays(weights, colors), nerfacc.accumulate_along_rays(weights),
                      nerfacc.accumulate_along_rays(weights, t_mid[..., None])], -1)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def render_rows(repeats: int) -> list[str]:
    """Median wall-clock ms of render + backward for the scene described in the module docstring."""
    torch.manual_seed(0)
    scene = NeRFScene(NeRFConfig(num_levels=8, log2_hashmap_size=16, per_level_scale=1.5, hidden_dim=32,
                                 encoding_backend="torch"))
    background = Background()
    generator = torch.Generator().manual_seed(0)
    cameras = CameraSampler().sample(1, generator)
    lights = sample_light_positions(cameras, generator)
    grid = OccupancyGrid(num_samples=48, resolution=32, backend="torch")
    update_ms = median_ms(lambda: grid.update(scene, step=0), 3)
    lines = ["| shading | no grid (ms) | 32^3 grid (ms) | speed-up |", "|---|---:|---:|---:|"]
    for shading in ("albedo", "diffuse"):
        times = []
        for occupancy in (None, grid):
            def step(occupancy: OccupancyGrid | None = occupancy, shading: str = shading) -> None:
                out = render_volume(scene, cameras, 64, 64, background=background, num_samples=48,
                                    shading=shading, light_positions=lights, generator=generator,
                                    occupancy=occupancy)
                out.rgb.mean().backward()
                scene.zero_grad(set_to_none=True)

            times.append(median_ms(step, repeats))
        lines.append(f"| {shading} | {times[0]:.0f} | {times[1]:.0f} | {times[0] / times[1]:.1f}x |")
    occupied = float(grid.occupied.float().mean())
    lines += ["", f"Occupied cells at init: {occupied:.0%}; one grid update: {update_ms:.0f} ms "
              "(every 16 steps by default)."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rays", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--render-repeats", type=int, default=5)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    edges = torch.rand(args.rays, args.samples + 1, generator=generator).mul(4.0).sort(dim=-1).values
    t_starts, t_ends = edges[:, :-1].contiguous(), edges[:, 1:].contiguous()
    sigmas = torch.rand(args.rays, args.samples, generator=generator) * 5.0
    colors = torch.rand(args.rays, args.samples, 3, generator=generator)
    upstream = torch.randn(args.rays, 5, generator=generator)

    rows = []
    for name, fn in (("ours (torch)", ours), ("nerfacc", theirs)):
        def forward(fn: Callable[..., Tensor] = fn) -> Tensor:
            with torch.no_grad():
                return fn(t_starts, t_ends, sigmas, colors)

        def forward_backward(fn: Callable[..., Tensor] = fn) -> tuple[Tensor, Tensor, Tensor]:
            s, c = sigmas.clone().requires_grad_(True), colors.clone().requires_grad_(True)
            out = fn(t_starts, t_ends, s, c)
            (out * upstream).sum().backward()
            return out.detach(), s.grad, c.grad

        rows.append((name, median_ms(forward, args.repeats), median_ms(forward_backward, args.repeats),
                     forward_backward()))

    (_, ours_fwd, ours_both, ours_out), (_, ref_fwd, ref_both, ref_out) = rows
    differences = [float((a - b).abs().max()) for a, b in zip(ours_out, ref_out, strict=True)]
    lines = [
        f"# Volume compositing: ours vs nerfacc {nerfacc.__version__} (CPU)",
        "",
        f"{args.rays} rays x {args.samples} samples; weights, opacity, rgb, depth; median of {args.repeats} "
        f"runs; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or 'cpu'} (shared machine: expect noise).",
        "",
        "| pass | ours (ms) | nerfacc (ms) | ours / nerfacc |",
        "|---|---:|---:|---:|",
        f"| forward | {ours_fwd:.2f} | {ref_fwd:.2f} | {ours_fwd / ref_fwd:.2f} |",
        f"| forward+backward | {ours_both:.2f} | {ref_both:.2f} | {ours_both / ref_both:.2f} |",
        "",
        "| max abs difference | outputs | d/d sigma | d/d color |",
        "|---|---:|---:|---:|",
        "| ours - nerfacc | " + " | ".join(f"{d:.2e}" for d in differences) + " |",
        "",
        "## Whole render, 1 x 64 x 64 view, 48 samples/ray, forward+backward (median of "
        f"{args.render_repeats})",
        "",
        *render_rows(args.render_repeats),
        "",
    ]
    table = "\n".join(lines)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)


if __name__ == "__main__":
    main()
