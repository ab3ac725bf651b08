"""One-shot GPU check: every CUDA path against its torch reference, then short runs on the GPU. Run it first on a
new GPU machine (a few minutes on one GPU, no downloads: the toy-world teacher and random-weight scenes only):

    python bench/gpu_check.py [--steps 300] [--out bench/results/gpu_check.md]

Rows (each on identical inputs, both sides on the GPU; speed-up = torch ms / CUDA ms of forward + backward):

* volume (nerfacc): a fresh NeRF (Magic3D density blob) rendered by nerfacc's occupancy-grid marching vs our
  torch stratified sampler with many samples; rgb / opacity max and mean difference (the two sample the ray
  differently, so the tolerance is a quadrature error, 0.05 mean);
* hash grid (tiny-cuda-nn): tiny-cuda-nn's HashGrid vs ours. Their table layouts differ, so the check is
  functional: both (with the same MLP) fit the same smooth 3D function for 300 Adam steps; pass when the fitted
  errors agree within 2x (the max-difference column shows the two MSEs);
* splats (gsplat): gsplat.rasterization vs our torch rasterizer on the same 2000 Gaussians; rgb / alpha diff;
* mesh (nvdiffrast): nvdiffrast vs our torch rasterizer on the same icosphere; rgb / opacity diff (edges differ
  by antialiasing, so mean difference < 0.02 and max over interior pixels);
* quickstart / gaussian-toy on the GPU: ``dreamengine generate`` for ``--steps`` steps; mask IoU against the toy
  world's ground truth, wall time, peak GPU memory next to :mod:`dreamengine.memory`'s estimate.

On a machine without CUDA every row is skipped with its reason (a missing package skips only its row). Prints one
markdown table and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.md"
# --dry-run-cpu: every row on the CPU with the torch path on both sides (checks the script itself, not CUDA)
DEVICE, FAST = "cuda", "cuda"


@dataclass
class Row:
    name: str
    status: str  # pass | FAIL | skip
    difference: str = ""
    torch_ms: str = ""
    cuda_ms: str = ""
    speedup: str = ""
    note: str = ""


def timed_ms(fn: Callable[[], object], repeats: int = 10) -> float:
    """Median ms of ``fn`` on the GPU (synchronized; one warm-up call)."""
    repeats = repeats if DEVICE == "cuda" else 1
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def needs(module: str) -> str | None:
    """Why a row must be skipped, or None."""
    if DEVICE == "cpu":
        return None
    if not torch.cuda.is_available():
        return "no CUDA device"
    from dreamengine.core.backends import optional_import

    if optional_import(module) is None:
        return f"{module} is not installed (or its extension does not load)"
    return None


def speed_row(name: str, status: bool, difference: str, torch_ms: float, cuda_ms: float, note: str = "") -> Row:
    return Row(name, "pass" if status else "FAIL", difference, f"{torch_ms:.1f}", f"{cuda_ms:.1f}",
               f"{torch_ms / cuda_ms:.1f}x", note)


def cameras(n: int = 4):
    from dreamengine.core.cameras import cameras_from_spherical

    return cameras_from_spherical(torch.full((n,), 20.0), torch.linspace(0, 270, n), torch.full((n,), 2.5),
                                  torch.full((n,), 40.0)).to(DEVICE)


# ------------------------------------------------------------------------------------------------------ the rows
def volume_row() -> Row:
    from dreamengine.config.scenes import NeRFConfig
    from dreamengine.core.background import Background
    from dreamengine.renderers.volume import OccupancyGrid, render_volume
    from dreamengine.scenes.nerf import NeRFScene

    torch.manual_seed(0)
    scene = NeRFScene(NeRFConfig(encoding_backend="torch", density_bias="blob_magic3d")).to(DEVICE)
    background = Background().to(DEVICE)
    cams, size, samples = cameras(), 64, 512 if DEVICE == "cuda" else 32
    grid = OccupancyGrid(radius=scene.radius, num_samples=samples, resolution=64, backend=FAST,
                         device=torch.device(DEVICE))
    for step in range(1, 4):
        grid.update(scene, step * 16)

    def run(backend: str):
        out = render_volume(scene, cams, size, size, background=background, num_samples=samples, perturb=False,
                            backend=backend, occupancy=grid if backend == FAST else None)
        return out

    def step(backend: str) -> None:
        scene.zero_grad()
        run(backend).rgb.sum().backward()

    with torch.no_grad():
        reference, fast = run("torch"), run(FAST)
    rgb = (reference.rgb - fast.rgb).abs()
    opacity = (reference.opacity - fast.opacity).abs()
    ok = float(rgb.mean()) < 0.05 and float(opacity.mean()) < 0.05
    return speed_row("volume (nerfacc)", ok, f"rgb max {rgb.max():.3f} mean {rgb.mean():.4f}; opacity mean "
                     f"{opacity.mean():.4f}", timed_ms(lambda: step("torch")), timed_ms(lambda: step(FAST)),
                     f"{size}x{size}, 4 views, {samples} samples")


def hash_grid_row(steps: int = 300) -> Row:
    steps = steps if DEVICE == "cuda" else 10
    from dreamengine.scenes.encoding import HashGridEncoding

    def target(points: torch.Tensor) -> torch.Tensor:
        return torch.sin(6 * points).prod(dim=-1, keepdim=True)

    def fit(backend: str) -> tuple[float, float]:
        torch.manual_seed(0)
        encoding = HashGridEncoding(num_levels=8, log2_hashmap_size=15, base_resolution=8, per_level_scale=1.5,
                                    backend=backend).to(DEVICE)
        head = torch.nn.Sequential(torch.nn.Linear(encoding.output_dim, 32), torch.nn.ReLU(),
                                   torch.nn.Linear(32, 1)).to(DEVICE)
        optimizer = torch.optim.Adam([*encoding.parameters(), *head.parameters()], lr=1e-2)
        generator = torch.Generator(device=DEVICE).manual_seed(0)

        def step() -> torch.Tensor:
            points = torch.rand(8192, 3, device=DEVICE, generator=generator)
            loss = (head(encoding(points).float()) - target(points)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss

        for _ in range(steps):
            step()
        test = torch.rand(65536, 3, device=DEVICE, generator=torch.Generator(device=DEVICE).manual_seed(1))
        with torch.no_grad():
            mse = float((head(encoding(test).float()) - target(test)).pow(2).mean())
        return mse, timed_ms(step)

    torch_mse, torch_ms = fit("torch")
    cuda_mse, cuda_ms = fit(FAST)
    ok = max(torch_mse, cuda_mse) < 2 * min(torch_mse, cuda_mse) + 1e-4
    return speed_row("hash grid (tiny-cuda-nn)", ok, f"fit MSE torch {torch_mse:.2e}, tcnn {cuda_mse:.2e}",
                     torch_ms, cuda_ms, f"different table layouts: a {steps}-step fit is compared")


def splat_row() -> Row:
    from dreamengine.config.scenes import GaussiansConfig
    from dreamengine.core.background import Background
    from dreamengine.renderers.splat import render_splats
    from dreamengine.scenes.gaussians import GaussianScene

    torch.manual_seed(0)
    scene = GaussianScene(GaussiansConfig(num_points=2000, init_radius=0.6, init_scale=0.03,
                                          init_opacity=0.3)).to(DEVICE)
    background = Background().to(DEVICE)
    cams, size = cameras(), 128

    def run(backend: str):
        return render_splats(scene.render_inputs(), cams, size, size, background=background, backend=backend)

    def step(backend: str) -> None:
        scene.zero_grad()
        run(backend).rgb.sum().backward()

    with torch.no_grad():
        reference, fast = run("torch"), run(FAST)
    rgb = (reference.rgb - fast.rgb).abs()
    alpha = (reference.opacity - fast.opacity).abs()
    ok = float(rgb.max()) < 0.02 and float(alpha.max()) < 0.02
    return speed_row("splats (gsplat)", ok, f"rgb max {rgb.max():.4f}; alpha max {alpha.max():.4f}",
                     timed_ms(lambda: step("torch")), timed_ms(lambda: step(FAST)), f"2000 Gaussians, {size}px")


def mesh_row() -> Row:
    import trimesh

    from dreamengine.core.background import Background
    from dreamengine.renderers.raster import mesh_tensors_from_trimesh, render_mesh

    mesh = mesh_tensors_from_trimesh(trimesh.creation.icosphere(subdivisions=3, radius=0.7), device=DEVICE)
    background = Background().to(DEVICE)
    cams, size = cameras(), 128

    def run(backend: str):
        return render_mesh(mesh, cams, size, size, background=background, backend=backend)

    with torch.no_grad():
        reference, fast = run("torch"), run(FAST)
    rgb = (reference.rgb - fast.rgb).abs()
    interior = (reference.opacity > 0.999) & (fast.opacity > 0.999)
    inside = rgb[interior.expand_as(rgb)]
    ok = float(rgb.mean()) < 0.02 and (inside.numel() == 0 or float(inside.max()) < 0.02)
    return speed_row("mesh (nvdiffrast)", ok, f"rgb mean {rgb.mean():.4f}; interior max "
                     f"{(inside.max() if inside.numel() else torch.tensor(0.0)):.4f}",
                     timed_ms(lambda: run("torch")), timed_ms(lambda: run(FAST)), f"icosphere, {size}px, forward")


def run_row(config: str, steps: int) -> Row:
    from dreamengine.api import generate
    from dreamengine.config import load_config
    from dreamengine.memory import estimate_config

    overrides = [f"trainer.max_steps={steps}", f"device={DEVICE}", "trainer.progress=false", "report.turntable=false"]
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        asset = generate("a red cube", config=config, overrides=[*overrides, f"output_dir={folder}"])
        seconds = time.perf_counter() - start
        iou = (asset.metrics or {}).get("mask_iou")
        exported = asset.glb is not None
    peak = torch.cuda.max_memory_allocated() / 1024**3 if DEVICE == "cuda" else float("nan")
    estimate = estimate_config(load_config(config, overrides))["total"]
    ok = iou is not None and iou > 0.5 and exported
    return Row(f"{config} on the GPU", "pass" if ok else "FAIL", f"mask IoU {iou:.3f}" if iou is not None else "",
               "", f"{seconds * 1000 / steps:.1f}/step", "",
               f"{steps} steps in {seconds:.0f} s (with export + eval); peak {peak:.2f} GiB, estimate {estimate:.2f}")


CHECKS: list[tuple[str, str | None, Callable[[], Row]]] = [
    ("volume (nerfacc)", "nerfacc", volume_row),
    ("hash grid (tiny-cuda-nn)", "tinycudann", hash_grid_row),
    ("splats (gsplat)", "gsplat", splat_row),
    ("mesh (nvdiffrast)", "nvdiffrast.torch", mesh_row),
]


def check_all(steps: int) -> list[Row]:
    rows = []
    checks = [*CHECKS, ("quickstart on the GPU", None, lambda: run_row("quickstart", steps)),
              ("gaussian-toy on the GPU", None, lambda: run_row("gaussian-toy", steps))]
    for name, module, check in checks:
        reason = needs(module) if module is not None else (
            None if torch.cuda.is_available() or DEVICE == "cpu" else "no CUDA device")
        if reason is not None:
            rows.append(Row(name, "skip", note=reason))
            continue
        try:
            rows.append(check())
        except Exception as error:  # noqa: BLE001 - a crash in one path is that row's finding
            last = traceback.format_exc().strip().splitlines()[-1]
            rows.append(Row(name, "FAIL", note=f"{type(error).__name__}: {last}"[:200]))
        print(f"{rows[-1].status:>5}  {name}", flush=True)
    return rows


def table(rows: list[Row]) -> str:
    head = ("| check | result | max difference | torch ms | CUDA ms | speed-up | notes |\n"
            "|---|---|---|---|---|---|---|\n")
    return head + "".join(f"| {r.name} | {r.status} | {r.difference} | {r.torch_ms} | {r.cuda_ms} | {r.speedup} | "
                          f"{r.note} |\n" for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="steps of the two short runs (default: 300)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"markdown output (default: {RESULTS})")
    parser.add_argument("--dry-run-cpu", action="store_true",
                        help="run every row on the CPU with torch on both sides (tests this script, not CUDA)")
    args = parser.parse_args()
    if args.dry_run_cpu:
        global DEVICE, FAST
        DEVICE, FAST = "cpu", "torch"
    start = time.perf_counter()
    rows = check_all(args.steps)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and DEVICE == "cuda" else (
        "the CPU (--dry-run-cpu: torch on both sides)" if DEVICE == "cpu" else "no CUDA device")
    text = (f"# GPU check\n\n`python bench/gpu_check.py --steps {args.steps}` on {device}; torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}), Python {platform.python_version()}; "
            f"{time.perf_counter() - start:.0f} s in all.\n\n{table(rows)}")
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
