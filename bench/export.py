"""Mesh export by stage, export fidelity, and the mesh rasterizer's speed (CPU).

Run from the repository root: ``python bench/export.py [--prompt "a snowman"] [--repeats 5]``. Prints markdown
tables and writes them to bench/results/export.md.

Scenes (no trained run is needed; both are made from a toy-world object in well under a minute):

* **NeRF**: a ``NeRFScene`` with the default field (16-level hash grid, 2^19 entries, torch backend; ``trunc_exp``
  density without the initial blob) fitted by direct 3D regression to the toy object: ``log(1 + density)``
  to ``log(1 + 100 sigmoid(-sdf / 0.01))`` (density 50 on the true surface) on points
  uniform in the box and near the surface, albedo = the object's color near the surface. Adam, ``--fit-steps``
  (200) steps of 8192 + 8192 points.
* **Gaussians**: a ``GaussianScene`` of ``--gaussians`` Gaussians filling the object (means uniform inside it,
  scales 0.025 with log-normal jitter, random rotations, opacity 0.6, the object's colors), not optimized.

Both are exported as ``dreamengine generate`` does, with the density level fitted to the renders' silhouettes
(``export.threshold: null``; 16 views at 64x64 from the volume / splat renderer, counted in "extraction").

1. Export time by stage (``export_scene``'s timings: extraction = density grid + marching cubes, cleanup =
   pymeshlab incl. hole closing and decimation to 20k faces, uv = xatlas, bake = texture baking incl. seam
   padding, write = GLB encoding), default ``ExportConfig`` (1024^2 texture) at marching-cubes resolutions
   128 and 256; one run each (an export is seconds to minutes).
2. Export fidelity: the exported GLB read back and rendered with the rasterizer vs the scene's own render
   (volume renderer / splat renderer, albedo, white background) from 10 held-out views at 64x64.
3. Rasterizer: ``render_mesh`` forward and forward+backward (gradients to vertices and texture), one view,
   median CPU time of ``--repeats`` with one torch thread (the machine is shared: wall clock would measure the
   neighbours), for an icosphere with vertex colors (5k faces), the textured NeRF export (20k)
   and a finer icosphere (82k), at 64, 128 and 256 px.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pygltflib
import torch
import trimesh

from dreamengine.config import ExportConfig
from dreamengine.config.scenes import GaussiansConfig, NeRFConfig
from dreamengine.core.background import Background
from dreamengine.core.cameras import Cameras, cameras_from_spherical
from dreamengine.core.render import MeshTensors
from dreamengine.evaluate import true_mesh
from dreamengine.export import load_mesh
from dreamengine.export.fidelity import export_fidelity, fidelity_cameras
from dreamengine.export.scene_export import export_cameras, export_scene
from dreamengine.renderers.raster import mesh_tensors_from_trimesh, render_mesh
from dreamengine.renderers.splat import render_splats
from dreamengine.renderers.volume import OccupancyGrid, render_volume
from dreamengine.scenes.gaussians import GaussianScene, rgb_to_sh_dc
from dreamengine.scenes.nerf import NeRFScene
from dreamengine.toyworld import ToyObject, parse_prompt

RESULTS = Path(__file__).resolve().parent / "results" / "export.md"
WHITE = Background(color=(1.0, 1.0, 1.0))
STAGES = ("extraction", "cleanup", "uv", "bake", "write")


def fit_nerf(obj: ToyObject, steps: int, seed: int = 0) -> NeRFScene:
    """A default NeRF regressed onto the object's density and colors (see the module docstring)."""
    torch.manual_seed(seed)
    scene = NeRFScene(NeRFConfig(encoding_backend="torch", density_activation="trunc_exp", density_bias="none"))
    surface = torch.tensor(trimesh.sample.sample_surface(true_mesh(obj, 96), 50000, seed=seed)[0],
                           dtype=torch.float32)
    optimizer = torch.optim.Adam([{"params": scene.encoding.parameters(), "lr": 0.01},
                                  {"params": scene.network.parameters(), "lr": 0.003}], betas=(0.9, 0.99), eps=1e-15)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        uniform = torch.rand(8192, 3, generator=generator) * 2 - 1
        near = surface[torch.randint(len(surface), (8192,), generator=generator)]
        near = near + 0.02 * torch.randn(near.shape, generator=generator)
        points = torch.cat([uniform, near])
        target = 100.0 * torch.sigmoid(-obj.sdf(points) / 0.01)
        density, albedo = scene.query(points)
        loss = (torch.log1p(density) - torch.log1p(target)).square().mean() + \
            (albedo[8192:] - obj.color(near)).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return scene.eval()


def filled_gaussians(obj: ToyObject, count: int, seed: int = 0) -> GaussianScene:
    generator = torch.Generator().manual_seed(seed)
    candidates = (torch.rand(40 * count, 3, generator=generator) * 2 - 1) * 0.8
    inside = candidates[obj.sdf(candidates) < 0][:count]
    scene = GaussianScene(GaussiansConfig(num_points=len(inside), init_scale=0.025, init_opacity=0.6))
    with torch.no_grad():
        scene.means.copy_(inside)
        scene.sh_dc.copy_(rgb_to_sh_dc(obj.color(inside))[:, None, :])
        scene.log_scales.add_(0.3 * torch.randn(scene.log_scales.shape, generator=generator))
        scene.quats.copy_(torch.randn(scene.quats.shape, generator=generator))
    return scene.eval()


def median_cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median CPU time (this process, ``time.process_time``) of ``fn`` in ms, after a warm-up call. On a shared
    machine the wall clock measures the neighbours; with one torch thread, CPU time measures the work."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return 1000.0 * statistics.median(times)


def export_rows(scenes: dict, renders: dict, folder: Path,
                resolutions: list[int]) -> tuple[list[str], list[str], Path]:
    stage_lines = ["| scene | MC res | " + " | ".join(STAGES) + " | total (s) | faces | level |",
                   "|---|---:|" + "---:|" * (len(STAGES) + 3)]
    fidelity_lines = ["| scene | MC res | PSNR (dB) | mask IoU |", "|---|---:|---:|---:|"]
    cameras = fidelity_cameras(num_views=8)
    nerf_glb = folder / f"nerf-{resolutions[0]}.glb"
    level_cameras = export_cameras(2.5, 40.0)
    for name, scene in scenes.items():
        with torch.no_grad():
            scene_render = renders[name](cameras, 64)

        def render_opacity(cams: Cameras, size: int, name: str = name) -> torch.Tensor:
            with torch.no_grad():
                return renders[name](cams, size).opacity[..., 0]

        for resolution in resolutions:
            cfg = ExportConfig(resolution=resolution, threshold=None)  # the level fitted to the renders
            timings: dict[str, float] = {}
            path = export_scene(scene, cfg, folder / f"{name.lower()}-{resolution}.glb", "glb",
                                {"scene": name}, render_opacity, level_cameras, timings=timings)
            faces = len(load_mesh(path).faces)
            level = pygltflib.GLTF2().load(str(path)).asset.extras["density_threshold"]
            cells = " | ".join(f"{timings.get(stage, 0.0):.2f}" for stage in STAGES)
            stage_lines.append(f"| {name} | {resolution} | {cells} | {sum(timings.values()):.1f} | {faces} | "
                               f"{level:g} |")
            result = export_fidelity(path, lambda cams, h, w, r=scene_render: r, cameras, 64, 64, background=WHITE)
            fidelity_lines.append(f"| {name} | {resolution} | {result['psnr']:.2f} | {result['mask_iou']:.3f} |")
            print(stage_lines[-1], flush=True)
    return stage_lines, fidelity_lines, nerf_glb


def raster_rows(textured: Path, repeats: int) -> list[str]:
    meshes = [("icosphere, vertex colors", mesh_tensors_from_trimesh(_colored(trimesh.creation.icosphere(4, 0.6)))),
              ("NeRF export, 1024^2 texture", mesh_tensors_from_trimesh(load_mesh(textured))),
              ("icosphere, vertex colors", mesh_tensors_from_trimesh(_colored(trimesh.creation.icosphere(6, 0.6))))]
    cameras = cameras_from_spherical(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor(2.5),
                                     torch.tensor(40.0))
    lines = ["| mesh | faces | px | forward (ms) | forward+backward (ms) | fwd+bwd, no antialias (ms) |",
             "|---|---:|---:|---:|---:|---:|"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for name, mesh in meshes:
        vertices = mesh.vertices.clone().requires_grad_(True)
        appearance = {}
        if mesh.texture is not None:
            appearance["texture"] = mesh.texture.clone().requires_grad_(True)
        else:
            appearance["vertex_colors"] = mesh.vertex_colors.clone().requires_grad_(True)
        trainable = MeshTensors(**{**mesh.__dict__, "vertices": vertices, **appearance})
        for size in (64, 128, 256):
            def forward(size: int = size, mesh: MeshTensors = mesh) -> None:
                with torch.no_grad():
                    render_mesh(mesh, cameras, size, size, background=WHITE)

            def both(size: int = size, antialias: bool = True, trainable: MeshTensors = trainable) -> None:
                out = render_mesh(trainable, cameras, size, size, background=WHITE, antialias=antialias)
                out.rgb.sum().backward()

            cells = [median_cpu_ms(forward, repeats), median_cpu_ms(both, repeats),
                     median_cpu_ms(lambda s=size: both(s, False), repeats)]
            lines.append(f"| {name} | {len(mesh.faces)} | {size} | " + " | ".join(f"{c:.1f}" for c in cells)
                         + " |")
            print(lines[-1], flush=True)
    torch.set_num_threads(threads)
    return lines


def _colored(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    mesh.visual.vertex_colors = (0.5 + 0.5 * mesh.vertices / 0.6).clip(0, 1) * 255
    return mesh


REFINE_HEADING = "## Refine steps/s (dreamengine refine, torch rasterizer)"


def refine_lines(prompt: str, sizes: list[int], steps: int) -> list[str]:
    """Median seconds per refine step (render, toy teacher, SDS, backward, Adam) of the toy object's true
    mesh at each render size, with the refine-toy config (texture only, and texture + vertices)."""
    from dreamengine.config import load_config
    from dreamengine.export import save_mesh
    from dreamengine.trainer import Trainer

    obj = parse_prompt(prompt)
    rows = ["| render px | trained | faces | s/step (median) | steps/s |", "|---:|---|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        mesh = true_mesh(obj)
        mesh.visual.vertex_colors = [128, 128, 128, 255]
        path = save_mesh(mesh, Path(tmp) / "input.glb", "glb", {})
        for size in sizes:
            for label, extra in (("texture", []), ("texture + vertices", ["scene.optimize_vertices=true"])):
                cfg = load_config("refine-toy", [f"camera.height={size}", f"camera.width={size}",
                                                 f"scene.init_path='{path}'", "trainer.preview_every=0", *extra],
                                  prompt=prompt)
                run_dir = Path(tmp) / f"refine-{size}-{len(extra)}"
                run_dir.mkdir()
                trainer = Trainer(cfg, run_dir)
                trainer.train_step()  # warm-up
                times = []
                for _ in range(steps):
                    start = time.perf_counter()
                    trainer.train_step()
                    times.append(time.perf_counter() - start)
                median = statistics.median(times)
                rows.append(f"| {size} | {label} | {len(trainer.scene.faces)} | {median:.3f} | {1 / median:.1f} |")
                print(rows[-1], flush=True)
    return [REFINE_HEADING, "", f"'{prompt}' (its true mesh, {steps} timed steps, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}).", "", *rows, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a snowman")
    parser.add_argument("--fit-steps", type=int, default=200)
    parser.add_argument("--gaussians", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--refine-steps", type=int, default=20)
    parser.add_argument("--refine-only", action="store_true",
                        help="only measure refine steps/s, replacing that section of bench/results/export.md")
    args = parser.parse_args()
    if args.refine_only:
        kept = RESULTS.read_text().split(REFINE_HEADING)[0].rstrip("\n") + "\n\n" if RESULTS.is_file() else ""
        RESULTS.write_text(kept + "\n".join(refine_lines(args.prompt, [128], args.refine_steps)))
        print(RESULTS.read_text())
        return
    obj = parse_prompt(args.prompt)

    start = time.perf_counter()
    nerf = fit_nerf(obj, args.fit_steps)
    fit_seconds = time.perf_counter() - start
    gaussians = filled_gaussians(obj, args.gaussians)
    occupancy = OccupancyGrid(num_samples=128, backend="torch")
    occupancy.update(nerf, step=0)
    renders = {
        "NeRF": lambda cams, size: render_volume(nerf, cams, size, size, background=WHITE, num_samples=128,
                                                 perturb=False, occupancy=occupancy),
        "Gaussians": lambda cams, size: render_splats(gaussians.render_inputs(), cams, size, size, background=WHITE,
                                                      backend="torch"),
    }
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        stage_lines, fidelity_lines, textured = export_rows({"NeRF": nerf, "Gaussians": gaussians}, renders,
                                                            Path(tmp), args.resolutions)
        raster = raster_rows(textured, args.repeats)
    lines = [
        f"# Mesh export and rasterizer (CPU, {time.strftime('%Y-%m-%d')})",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}; load "
        f"average {load:.1f} at the start (a shared machine: expect noise). Object: '{args.prompt}'. NeRF fitted "
        f"by 3D regression in {args.fit_steps} steps ({fit_seconds:.0f} s); {len(gaussians.means)} Gaussians "
        "placed inside the object (see bench/export.py).",
        "",
        "## Export time by stage (wall-clock seconds, one run each; default export config: 20k faces, 1024^2 "
        "texture; level = the fitted density level)",
        "",
        *stage_lines,
        "",
        "## Export fidelity: exported GLB (read back, rasterized) vs the scene's own render",
        "",
        "10 held-out views (8 around at 20 degrees elevation, one from above, one from below), 64x64, albedo, "
        "white background.",
        "",
        *fidelity_lines,
        "",
        f"## Rasterizer, one view, median CPU time of {args.repeats}, 1 thread (torch path, antialiasing on unless "
        "noted)",
        "",
        *raster,
        "",
        *refine_lines(args.prompt, [128], args.refine_steps),
    ]
    table = "\n".join(lines)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)


if __name__ == "__main__":
    main()
