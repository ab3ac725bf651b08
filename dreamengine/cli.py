"""The ``dreamengine`` command line: generate, resume, export, eval, report.

Every command turns user mistakes (:class:`DreamEngineError`) into one clear paragraph on stderr and a
non-zero exit code; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from dreamengine.errors import DreamEngineError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
DreamEngine turns a text prompt into a 3D asset by score distillation: a frozen 2D diffusion model
(the teacher) scores renders of a 3D scene from random cameras and the scene is optimized until every
view looks like the prompt. The result is exported as a mesh (GLB).

Start here (runs offline on a CPU with the toy-world teacher, about 2-3 minutes):
  dreamengine generate "a red cube"
"""

GENERATE_HELP = """\
Optimize a scene for PROMPT, then export it to RUN_DIR/final/model.glb and (for toy-world prompts)
evaluate it. A run directory is created under output_dir (default: runs/) and printed first.

Settings come from a config (default: quickstart) and KEY=VALUE overrides, for example:
  dreamengine generate "a blue torus" trainer.max_steps=400 camera.height=48 seed=3
  dreamengine generate "a snowman" --config quickstart guidance.guidance_scale=20
Unknown keys and wrong types are reported before any work starts. Ctrl-C saves a checkpoint;
continue with: dreamengine resume RUN_DIR
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamengine", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from dreamengine import __version__

    parser.add_argument("--version", action="version", version=f"dreamengine {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    generate = commands.add_parser("generate", help="text prompt -> trained scene -> GLB", description=GENERATE_HELP,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    generate.add_argument("prompt", metavar="PROMPT", help='what to make, e.g. "a red cube" (quote it)')
    generate.add_argument("--config", "-c", default="quickstart",
                          help="a packaged config name (quickstart) or a path to a YAML file (default: quickstart)")
    generate.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. seed=3")
    generate.add_argument("--no-export", action="store_true", help="skip the mesh export at the end")

    resume = commands.add_parser("resume", help="continue a stopped run from its last checkpoint",
                                 description="Continue RUN_DIR from ckpt/last.pt with its own config.yaml, then "
                                             "export and evaluate as generate does.")
    resume.add_argument("run_dir", metavar="RUN_DIR")

    export = commands.add_parser("export", help="write a run's mesh as GLB, OBJ or PLY",
                                 description="Extract a mesh from RUN_DIR's last checkpoint and write "
                                             "RUN_DIR/final/model.FORMAT (export.* settings from its config).")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--format", "-f", choices=["glb", "ply", "obj"], default="glb")

    evaluate = commands.add_parser("eval", help="measure a toy-world run against ground truth",
                                   description="Render RUN_DIR's scene from held-out cameras and compare with the "
                                               "toy world's ground truth: mask IoU and PSNR, written to "
                                               "RUN_DIR/metrics.json.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")

    report = commands.add_parser("report", help="write RUN_DIR/report.html (3D viewer, turntable, curves, metrics)",
                                 description="Render a turntable video of RUN_DIR's last checkpoint (final/turntable"
                                             ".mp4 and .gif) and write RUN_DIR/report.html: the GLB in an interactive"
                                             " 3D viewer, the turntable, metrics, loss curves, previews and config. "
                                             "The page works offline, opened from disk.")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--frames", type=int, default=None,
                        help="turntable frames (default: the run's report.turntable_frames, or 36 when that is 0)")
    report.add_argument("--size", type=int, default=None, help="turntable pixels per side, a multiple of 16 (default: "
                        "the run's report.turntable_size, or twice the training resolution when that is 0)")
    report.add_argument("--no-turntable", action="store_true",
                        help="keep the existing turntable (or none); write the page only, without loading the scene")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling KEY=VALUE after an option (generate "a cat" --config x k=v): collect the rest
    if extra and args.command == "generate" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    from dreamengine.trainer import Interrupted

    try:
        return COMMANDS[args.command](args)
    except Interrupted as stop:
        print(f"\nStopped by {stop.signal_name} at step {stop.step}; a checkpoint was saved. "
              "Continue with: dreamengine resume RUN_DIR", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DreamEngineError as error:
        print("error: " + textwrap.fill(str(error), width=100, subsequent_indent="  "), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def cmd_generate(args: argparse.Namespace) -> int:
    from dreamengine.config import load_config
    from dreamengine.runs import init_run_dir, plan_run_dir
    from dreamengine.trainer import Trainer

    if not args.prompt.strip():
        raise DreamEngineError('the prompt is empty: give a text prompt, e.g. dreamengine generate "a red cube"')
    cfg = load_config(args.config, args.overrides, prompt=args.prompt)
    run_dir = plan_run_dir(cfg)
    trainer = Trainer(cfg, run_dir)  # validates the prompt and builds everything before touching the disk
    describe = getattr(trainer.teacher, "describe", None)
    init_run_dir(run_dir, cfg, sys.argv, describe() if describe is not None else None)
    print(f"run directory: {run_dir}", flush=True)
    return train_export_eval(trainer, export=not args.no_export)


def cmd_resume(args: argparse.Namespace) -> int:
    from dreamengine.runs import open_run_dir
    from dreamengine.trainer import Trainer

    run_dir, cfg = open_run_dir(args.run_dir)
    trainer = Trainer(cfg, run_dir)
    trainer.load()
    print(f"resuming {run_dir} at step {trainer.step}/{cfg.trainer.max_steps}", flush=True)
    return train_export_eval(trainer, export=True)


def train_export_eval(trainer: Any, export: bool) -> int:
    from dreamengine.trainer import progress_printer

    cfg, run_dir = trainer.cfg, trainer.run_dir
    progress = progress_printer(cfg.trainer.max_steps, trainer.step) if cfg.trainer.progress else None
    try:
        trainer.fit(progress)
    finally:
        if progress is not None:
            progress.stop()
    timings = trainer.timer.medians()
    if timings:
        print("median seconds per step: " + ", ".join(f"{k} {v:.4f}" for k, v in timings.items()))
    if export:
        for fmt in cfg.export.formats:
            path = export_run(trainer.scene, trainer.background, trainer.occupancy, cfg, run_dir, fmt)
            print(f"wrote {path}")
    if cfg.teacher.name == "toyworld":
        print_metrics(evaluate_run(trainer.scene, trainer.background, trainer.occupancy, cfg, run_dir))
    from dreamengine.report import report_after_training

    report_after_training(trainer)  # warns on failure: the results above are already saved
    return 0


def export_run(scene: Any, background: Any, occupancy: Any, cfg: Any, run_dir: Path, fmt: str) -> Path:
    import numpy as np

    from dreamengine import __version__
    from dreamengine.export.scene_export import export_cameras, export_scene
    from dreamengine.trainer import render_fixed

    metadata = {"generator": f"DreamEngine {__version__}", "prompt": cfg.prompt, "seed": cfg.seed,
                "guidance": cfg.guidance.name, "teacher": cfg.teacher.name, "scene": cfg.scene.name}
    cameras = export_cameras(float(np.mean(cfg.camera.distance_range)), float(np.mean(cfg.camera.fovy_range)))

    def render_opacity(cams: Any, resolution: int) -> Any:
        return render_fixed(scene, background, cfg.render, occupancy, cams, resolution, resolution).opacity[..., 0]

    return export_scene(scene, cfg.export, run_dir / "final" / f"model.{fmt}", fmt, metadata, render_opacity, cameras)


def evaluate_run(scene: Any, background: Any, occupancy: Any, cfg: Any, run_dir: Path) -> dict[str, Any]:
    from dreamengine.evaluate import evaluate_renders
    from dreamengine.runs import write_json
    from dreamengine.trainer import render_fixed

    device = next(scene.parameters()).device
    results = evaluate_renders(cfg, lambda cams, h, w: render_fixed(scene, background, cfg.render, occupancy,
                                                                    cams.to(device), h, w))
    glb = run_dir / "final" / "model.glb"
    if glb.is_file():
        from dreamengine.evaluate import mesh_metrics
        from dreamengine.export import load_mesh
        from dreamengine.toyworld import parse_prompt

        results["mesh"] = {"file": str(glb), **mesh_metrics(load_mesh(glb), parse_prompt(cfg.prompt))}
    write_json(run_dir / "metrics.json", results)
    return results


def print_metrics(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"held-out views of '{results['prompt']}' ({results['views']} views, "
                        f"{results['resolution']}px)")
    for column in ("azimuth", "elevation", "mask IoU", "PSNR (dB)"):
        table.add_column(column, justify="right")
    for view in results["per_view"]:
        table.add_row(f"{view['azimuth']:.1f}", f"{view['elevation']:.1f}", f"{view['mask_iou']:.3f}",
                      f"{view['psnr']:.2f}")
    table.add_row("all", "", f"{results['mask_iou']:.3f}", f"{results['psnr']:.2f}", style="bold")
    console = Console()
    console.print(table)
    line = f"foreground saturation {results['saturation']:.3f} (ground truth {results['true_saturation']:.3f})"
    if "janus_score" in results:
        line += f"; Janus score {results['janus_score']:.2f} (0: consistent back, 1: front shows on the back)"
    console.print(line)
    if "mesh" in results:
        mesh = results["mesh"]
        console.print(f"exported mesh vs true shape: volumetric IoU {mesh['volumetric_iou']:.3f}, "
                      f"Chamfer distance {mesh['chamfer']:.4f} (scene units)")


def load_trained(run_dir_arg: str) -> tuple[Path, Any, Any, Any, Any]:
    """(run_dir, cfg, scene, background, occupancy grid) from a run directory's config and last checkpoint."""
    import torch

    from dreamengine.checkpoint import load_checkpoint
    from dreamengine.runs import open_run_dir
    from dreamengine.scenes import build_background, build_scene
    from dreamengine.trainer import build_occupancy, restore_scene

    run_dir, cfg = open_run_dir(run_dir_arg)
    path = run_dir / "ckpt" / "last.pt"
    state = load_checkpoint(path)
    scene, background = build_scene(cfg.scene), build_background(cfg.render)
    occupancy = build_occupancy(cfg.render, scene.radius, torch.device("cpu"))
    restore_scene(state, path, scene, background, occupancy)
    return run_dir, cfg, scene.eval(), background.eval(), occupancy


def cmd_export(args: argparse.Namespace) -> int:
    run_dir, cfg, scene, background, occupancy = load_trained(args.run_dir)
    print(f"wrote {export_run(scene, background, occupancy, cfg, run_dir, args.format)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    run_dir, cfg, scene, background, occupancy = load_trained(args.run_dir)
    results = evaluate_run(scene, background, occupancy, cfg, run_dir)
    print_metrics(results)
    print(json.dumps({k: results[k] for k in ("mask_iou", "psnr")}))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dreamengine.report import report_run, write_report
    from dreamengine.report.turntable import check_turntable_settings
    from dreamengine.trainer import render_fixed

    check_turntable_settings(args.frames, args.size)  # before the slow part
    has_checkpoint = (Path(args.run_dir) / "ckpt" / "last.pt").is_file()
    if args.no_turntable or not has_checkpoint:
        if not args.no_turntable and (Path(args.run_dir) / "config.yaml").is_file():
            print("no checkpoint (ckpt/last.pt) to render a turntable from; writing the page only", file=sys.stderr)
        print(f"wrote {write_report(args.run_dir)}")
        return 0
    run_dir, cfg, scene, background, occupancy = load_trained(args.run_dir)
    path = report_run(run_dir, cfg, lambda cams, h, w: render_fixed(scene, background, cfg.render, occupancy, cams,
                                                                    h, w), "cpu", args.frames, args.size)
    print(f"wrote {path}")
    return 0


COMMANDS = {"generate": cmd_generate, "resume": cmd_resume, "export": cmd_export, "eval": cmd_eval,
            "report": cmd_report}

if __name__ == "__main__":
    sys.exit(main())
