"""Image-to-3D in the toy world: ``dreamengine generate --image`` on toy renders, measured against the truth.

For each toy object (one color per single shape, and the six view-asymmetric objects) the object is rendered at a
reference view as an RGBA PNG (alpha = mask), then ``dreamengine generate --image REF.png --system SYSTEM`` runs in
a subprocess and the run's ``metrics.json`` is read: held-out mask IoU and PSNR of novel views (25 views at
elevations -10, 20, 50 and overhead, none of them the reference view), the Janus score (asymmetric objects), and
the wall time. Goal (issue 14): IoU >= 0.85 on every single shape and >= 0.80 on the asymmetric objects.

    python bench/image_to_3d.py [--system zero123-toy] [--objects "a red cube" ...] [--workers 2]
                                [--workdir DIR] [--depth] [--out image_to_3d] [key=value ...]

Extra ``key=value`` overrides go to every run (e.g. ``trainer.max_steps=300``). ``--depth`` also hands each run the
reference view's exact depth map (``image.depth_path``, a .npy written beside the PNG; weigh it with
``image.lambda_depth=...`` / ``image.lambda_depth_rel=...``). Prints a markdown table and writes
bench/results/OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SINGLE_SHAPES = ["a red cube", "a blue sphere", "a green cylinder", "an orange cone", "a purple torus"]
ASYMMETRIC = ["a snowman", "a house", "a penguin", "a mug", "a car", "a duck"]
REFERENCE_VIEW = (15.0, 0.0)  # elevation, azimuth in degrees: a front view from slightly above
GOALS = {"single shape": 0.85, "asymmetric": 0.80}


def render_reference(name: str, path: Path, size: int = 64, depth_path: Path | None = None) -> None:
    """``name`` rendered at REFERENCE_VIEW as an RGBA PNG at ``path`` (and its depth map as .npy at ``depth_path``)."""
    import numpy as np
    import torch
    from PIL import Image

    from dreamengine.core.cameras import cameras_from_spherical
    from dreamengine.toyworld import all_objects, render_toy

    obj = next(o for o in all_objects() if o.name == name)
    elevation, azimuth = REFERENCE_VIEW
    cameras = cameras_from_spherical(torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([2.5]),
                                     torch.tensor([40.0]))
    out = render_toy(obj, cameras, size, size, supersample=2)
    rgba = torch.cat([out["rgb"][0], out["mask"][0]], dim=-1).numpy()
    Image.fromarray((rgba * 255.0 + 0.5).astype(np.uint8), "RGBA").save(path)
    if depth_path is not None:
        np.save(depth_path, out["depth"][0, ..., 0].numpy())


def run(name: str, system: str, workdir: Path, overrides: list[str], depth: bool = False) -> dict:
    slug = name.replace(" ", "-")
    out = workdir / f"{system}-{slug}{'-depth' if depth else ''}"
    image, depth_map = workdir / f"{slug}.png", workdir / f"{slug}-depth.npy"
    if not image.is_file() or not depth_map.is_file():
        render_reference(name, image, depth_path=depth_map)
    if depth:
        overrides = [*overrides, f"image.depth_path={depth_map}"]
    finished = list(out.glob("*/metrics.json"))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    wall = None
    if not finished:  # --workdir keeps runs: a finished one is read, not run again
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "dreamengine.cli", "generate", "--image", str(image),
                                 "--system", system, f"output_dir={out}", "trainer.progress=false",
                                 "report.turntable=false", "trainer.preview_every=0", *overrides],
                                capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or ["(no output)"]
            return {"object": name, "error": lines[-1], "wall": wall}
        finished = list(out.glob("*/metrics.json"))
    metrics = json.loads(finished[0].read_text())
    return {"object": name, "wall": wall, **metrics}


def mesh_columns(mesh: dict) -> str:
    """The exported mesh against the true shape: volumetric IoU, Chamfer distance, Euler characteristic."""
    if "volumetric_iou" not in mesh:
        return "- | - | -"
    closed = "" if mesh.get("watertight") else ", open"
    return (f"{mesh['volumetric_iou']:.3f} | {mesh['chamfer']:.3f} | "
            f"{mesh['euler_characteristic']} ({mesh['true_euler_characteristic']}{closed})")


def table(rows: list[dict]) -> str:
    lines = ["| object | kind | held-out mask IoU | goal | PSNR (dB) | IoU -10° / 20° / 50° / overhead | Janus | "
             "mesh vol. IoU | Chamfer | mesh Euler (truth) | wall (s) |", "|" + "---|" * 11]
    for row in rows:
        kind = "single shape" if row["object"] in SINGLE_SHAPES else "asymmetric"
        if "error" in row:
            lines.append(f"| {row['object']} | {kind} | error: {row['error']} | | | | | | | | |")
            continue
        bands = " / ".join(f"{band['mask_iou']:.3f}" for band in row.get("bands", {}).values())
        goal = GOALS[kind]
        verdict = "met" if row["mask_iou"] >= goal else "**missed**"
        janus = f"{row['janus_score']:.2f}" if "janus_score" in row else "-"
        wall = f"{row['wall']:.0f}" if row.get("wall") else "-"
        lines.append(f"| {row['object']} | {kind} | {row['mask_iou']:.3f} | {goal:.2f} ({verdict}) | "
                     f"{row['psnr']:.2f} | {bands} | {janus} | {mesh_columns(row.get('mesh') or {})} | {wall} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", default="zero123-toy")
    parser.add_argument("--objects", nargs="*", default=SINGLE_SHAPES + ASYMMETRIC)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="keep the runs here (finished ones are read, not rerun)")
    parser.add_argument("--depth", action="store_true", help="give each run the reference view's exact depth map")
    parser.add_argument("--out", default="image_to_3d", help="bench/results/OUT.md")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-image-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.workers) as pool:
        rows = list(pool.map(lambda name: run(name, args.system, workdir, args.overrides, args.depth), args.objects))
    elevation, azimuth = REFERENCE_VIEW
    text = (f"# Image-to-3D in the toy world (bench/image_to_3d.py)\n\n"
            f"`dreamengine generate --image REF.png --system {args.system}` "
            f"{' '.join(args.overrides)}{' with the exact depth map (--depth)' if args.depth else ''} "
            f"on 64 px RGBA toy renders from elevation {elevation:g}°, azimuth "
            f"{azimuth:g}°; held-out views are novel views (25 per object). {time.strftime('%Y-%m-%d')}, "
            f"{os.cpu_count()} CPU cores, {args.workers} run(s) at a time (shared machine: wall times are "
            "indicative).\n\n" + table(rows) + "\n")
    print(text)
    out = REPO / "bench" / "results" / f"{args.out}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
