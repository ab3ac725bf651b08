"""The ``dreamengine`` command line: generate, resume, export, eval, report.

Every command turns user mistakes (:class:`DreamEngineError`) into one clear paragraph on stderr and a
non-zero exit code; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from dreamengine.errors import DreamEngineError

EXIT_USER_ERROR = 2
OVERRIDE_LIKE = re.compile(r"^[A-Za-z_][\w.:-]*=")  # key=value (or STAGE:key=value), not a prompt
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
DreamEngine turns a text prompt into a 3D asset by score distillation: a frozen 2D diffusion model
(the teacher) scores renders of a 3D scene from random cameras and the scene is optimized until every
view looks like the prompt. The result is exported as a mesh (GLB).

Start here (runs offline on a CPU with the toy-world teacher, about 1-2 minutes):
  dreamengine generate "a red cube"
"""

GENERATE_HELP = """\
Optimize a scene for PROMPT, then export it to RUN_DIR/final/model.glb and (for toy-world prompts)
evaluate it. A run directory is created under output_dir (default: runs/) and printed first.

Settings come from a config (default: quickstart; list them with: dreamengine configs) and KEY=VALUE
overrides, for example:
  dreamengine generate "a blue torus" trainer.max_steps=400 camera.height=48 seed=3
  dreamengine generate "a snowman" --config gaussian-toy guidance.guidance_scale=20
Or name a system, a paper's multi-stage pipeline (list them with: dreamengine systems):
  dreamengine generate "a snowman" --system dreamgaussian-toy
  dreamengine generate "a snowman" --system dreamgaussian-toy seed=3 texture:trainer.max_steps=100
(KEY=VALUE applies to every stage, STAGE:KEY=VALUE to one stage.)
Image-to-3D: a reference image instead of (or with) the prompt. Its alpha channel is the object's mask (an RGB
image needs a plain background, or rembg installed); the reference view is fitted to it and every other view is
guided by an image-conditioned teacher (Zero123 family). Without --system, a toy-world render goes to zero123-toy
and any other image to stable-zero123:
  dreamengine generate --image toy_render.png
  dreamengine generate --image chair.png "a wooden chair" --system magic123
Unknown keys and wrong types are reported before any work starts. Ctrl-C saves a checkpoint;
continue with: dreamengine resume RUN_DIR
"""


REFINE_HELP = """\
Load INPUT (a .glb, .obj, .ply, .stl or .off mesh), fit it into the unit sphere and optimize its texture for
PROMPT under any guidance method and teacher, then export it as generate does (RUN_DIR/final/model.glb). INPUT is never
modified: a copy is kept in RUN_DIR/input/. The texture is a UV map (the mesh's own UVs, or xatlas UVs when it
has none; scene.texture=field for a hash-grid texture field); scene.optimize_vertices=true also moves the
vertices, kept smooth by the Laplacian and normal-consistency regularizers (scene.lambda_*). Examples:
  dreamengine refine gray_cube.glb "a red cube"
  dreamengine refine chair.obj "a wooden chair" --config refine-sd scene.optimize_vertices=true
"""

BATCH_HELP = """\
Run every prompt of PROMPTS, one run folder per line under --output-dir, then write summary.md, a contact
sheet and an index page there. PROMPTS is a .txt file (one prompt per line; # comments) or a .jsonl file
whose lines are objects like {"prompt": "a red cube", "seed": 3, "system": "luciddreamer-toy",
"overrides": ["trainer.max_steps=300"]}. Bad lines are reported with their line numbers; the rest run.
Finished prompts are skipped, so running the same command again continues the batch; a failed prompt is
retried (--retries) and then recorded as failed. Examples:
  dreamengine batch prompts.txt trainer.max_steps=300
  dreamengine batch prompts.jsonl --system gaussiandreamer-toy --workers 2 -o /shared/batch1
  dreamengine batch prompts.txt --ray-address auto -o /shared/batch1     # on a Ray cluster
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamengine", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from dreamengine.version import __version__

    parser.add_argument("--version", action="version", version=f"dreamengine {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    generate = commands.add_parser("generate", help="text prompt -> trained scene -> GLB", description=GENERATE_HELP,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    generate.add_argument("prompt", metavar="PROMPT", nargs="?", default="",
                          help='what to make, e.g. "a red cube" (quote it); optional with --image')
    generate.add_argument("--image", "-i", default=None, metavar="PATH",
                          help="image-to-3D: a reference image (PNG/JPEG/WebP; RGBA, or RGB on a plain background); "
                               "never modified, a copy is kept in RUN_DIR/input/")
    choice = generate.add_mutually_exclusive_group()
    choice.add_argument("--config", "-c", default=None,
                        help="a packaged config name (quickstart) or a path to a YAML file (default: quickstart)")
    choice.add_argument("--system", "-s", default=None,
                        help="a packaged system name (see: dreamengine systems) or a path to a system YAML file")
    generate.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. seed=3")
    generate.add_argument("--no-export", action="store_true", help="skip the mesh export at the end")

    refine = commands.add_parser("refine", help="optimize an existing mesh's texture (and shape) for a prompt",
                                 description=REFINE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    refine.add_argument("mesh", metavar="INPUT",
                        help="the mesh to refine: a .glb, .obj, .ply, .stl or .off file (never modified)")
    refine.add_argument("prompt", metavar="PROMPT", help='what it should look like, e.g. "a red cube"')
    refine.add_argument("--config", "-c", default="refine-toy",
                        help="refine-toy (toy world, CPU; default), refine-sd (Stable Diffusion, GPU) or a YAML path")
    refine.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. trainer.max_steps=200")

    resume = commands.add_parser("resume", help="continue a stopped run from its last checkpoint",
                                 description="Continue RUN_DIR from ckpt/last.pt with its own config.yaml, then "
                                             "export and evaluate as generate does. A system run continues in the "
                                             "middle of the stage it stopped in; finished stages are kept.")
    resume.add_argument("run_dir", metavar="RUN_DIR")

    batch = commands.add_parser("batch", help="run many prompts (a process pool or a Ray cluster)",
                                description=BATCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    batch.add_argument("prompts_file", metavar="PROMPTS", help="a .txt file (one prompt per line) or a .jsonl file")
    batch_choice = batch.add_mutually_exclusive_group()
    batch_choice.add_argument("--config", "-c", default=None, help="config for every line (default: quickstart)")
    batch_choice.add_argument("--system", "-s", default=None, help="system for every line (see: dreamengine systems)")
    batch.add_argument("--output-dir", "-o", default=None,
                       help="where the runs go, one folder per line (default: runs/batch-<prompts file name>)")
    batch.add_argument("--workers", "-w", type=int, default=None,
                       help="local worker processes (default: one per GPU, one on a CPU machine)")
    batch.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="run the jobs as Ray tasks: auto (the running cluster), HOST:PORT, or local")
    batch.add_argument("--retries", type=int, default=2, help="retries of a failed prompt (default: 2)")
    batch.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every line")

    commands.add_parser("systems", help="list the packaged systems (papers' pipelines)",
                        description="List every packaged system with its stages and the paper it follows. Run one "
                                    "with: dreamengine generate PROMPT --system NAME")

    commands.add_parser("configs", help="list the packaged configs (--config NAME)",
                        description="List every packaged config with the first line of its YAML header. Use one "
                                    "with: dreamengine generate PROMPT --config NAME")

    export = commands.add_parser("export", help="write a run's mesh as GLB, OBJ or PLY (or its Gaussians)",
                                 description="Extract a mesh from RUN_DIR's last checkpoint and write "
                                             "RUN_DIR/final/model.FORMAT (export.* settings from its config). "
                                             "For a Gaussian scene, --format splat writes its Gaussians as a "
                                             "standard 3DGS PLY, RUN_DIR/final/scene.ply, for splat viewers.")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--format", "-f", choices=["glb", "ply", "obj", "splat"], default="glb")

    evaluate = commands.add_parser("eval", help="measure a run (toy-world runs: against ground truth)",
                                   description="Render RUN_DIR's scene from held-out cameras and compare with the "
                                               "toy world's ground truth (mask IoU and PSNR), and the exported GLB "
                                               "with the scene's renders (export fidelity); written to "
                                               "RUN_DIR/metrics.json.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")

    doctor = commands.add_parser("doctor", help="what this machine can run; does a config fit its GPU",
                                 description="Check the torch build and CUDA, each GPU's free memory, the CUDA "
                                             "accelerators (imported and, on a GPU, one tiny op each), the diffusers "
                                             "stack, models in the Hugging Face cache, free disk, and one toy training "
                                             "step on the CPU. With --config or --system: the estimated peak GPU "
                                             "memory of that config against the GPU (or --gpu-memory), and the "
                                             "settings that would fit when it does not. Exit code 1 when a check "
                                             "fails or the config does not fit.")
    doctor_choice = doctor.add_mutually_exclusive_group()
    doctor_choice.add_argument("--config", "-c", default=None, help="a packaged config name or a YAML path")
    doctor_choice.add_argument("--system", "-s", default=None, help="a packaged system name or a YAML path")
    doctor.add_argument("--gpu-memory", type=float, default=None, metavar="GIB",
                        help="compare with a GPU of this many GiB (default: the free memory of cuda:0)")
    doctor.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (with --config)")

    ui = commands.add_parser("ui", help="a web page to start, watch, stop and resume runs (Gradio)",
                             description="Serve a web page (Gradio; pip install 'dreamengine[ui]') to start runs, "
                                         "watch their progress, previews and losses, stop (checkpointed) and resume "
                                         "them, view the model and browse past runs. Each run works in its own "
                                         "process, one at a time; the page serves files from --runs only.")
    ui.add_argument("--runs", default="runs", help="the runs folder (default: runs)")
    ui.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for the network)")
    ui.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    ui.add_argument("--share", action="store_true", help="also publish a temporary public gradio.live link")

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
    takes_overrides = args.command in ("generate", "refine", "batch", "doctor")
    if extra and takes_overrides and all("=" in e and not e.startswith("-") for e in extra):
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
    except BrokenPipeError:  # output piped into a reader that stopped early (| head)
        sys.stderr.close()
        return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from dreamengine.api import prepare

    prompt, overrides = args.prompt or "", list(args.overrides)
    if args.image is not None and OVERRIDE_LIKE.match(prompt):  # generate --image x.png key=value: no prompt
        prompt, overrides = "", [prompt, *overrides]
    if not prompt.strip() and args.image is None:
        raise DreamEngineError('the prompt is empty: give a PROMPT or a reference image: dreamengine generate '
                               '"a red cube", or dreamengine generate --image REF.png')
    run = prepare(prompt, image=args.image, config=args.config, system=args.system, overrides=overrides,
                  export=not args.no_export)
    run.on_stage = announce_stage
    print(f"run directory: {run.run_dir}", flush=True)
    if args.image is not None:
        print(f"reference image: {args.image} (copied to {run.run_dir / 'input'})", flush=True)
    return execute_and_report(run)


def cmd_refine(args: argparse.Namespace) -> int:
    from dreamengine.api import prepare_refine

    run = prepare_refine(args.mesh, args.prompt, config=args.config, overrides=args.overrides)
    print(f"run directory: {run.run_dir} (input copied to {run.run_dir / 'input'})", flush=True)
    return execute_and_report(run)


def cmd_resume(args: argparse.Namespace) -> int:
    from dreamengine.api import open_run

    run = open_run(args.run_dir)
    run.on_stage = announce_stage
    if run.trainer is not None:
        print(f"resuming {run.run_dir} at step {run.trainer.step}/{run.trainer.cfg.trainer.max_steps}", flush=True)
    else:
        print(f"resuming {run.run_dir}", flush=True)
    return execute_and_report(run)


def announce_stage(name: str, index: int, count: int, trainer: Any) -> None:
    cfg = trainer.cfg
    start = f", resuming at step {trainer.step}" if trainer.step else ""
    print(f"stage {index + 1}/{count}: {name} ({cfg.scene.name} + {cfg.guidance.name}, {cfg.trainer.max_steps} "
          f"steps{start})", flush=True)


class StageProgress:
    """A step-event callback that draws one rich progress bar per stage (nothing when not on a terminal)."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar: Any = None

    def __call__(self, event: Any) -> None:
        if event.stage != self.stage or self.bar is None:
            self.stop()
            self.stage = event.stage
            self.bar = progress_bar(event.max_steps, event.step - 1, label=event.stage)
        if self.bar is not None:
            self.bar(event)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def progress_bar(max_steps: int, start_step: int, label: str = "") -> Any:
    """A step-event callback drawing a rich progress bar on a terminal (call ``.stop()`` when done), or None
    when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(f"{label + ' ' if label else ''}step {{task.completed}}/{{task.total}}"), BarColumn(),
                   TextColumn("loss {task.fields[loss]:.4g}"), TimeRemainingColumn(), transient=False)
    task = bar.add_task("train", total=max_steps, completed=start_step, loss=float("nan"))
    bar.start()

    def update(event: Any) -> None:
        bar.update(task, completed=event.step, loss=event.terms.get("loss", float("nan")))
        if event.step >= max_steps:
            bar.stop()

    update.stop = bar.stop  # type: ignore[attr-defined]
    return update


def execute_and_report(run: Any) -> int:
    """Train, export and evaluate a prepared run with a progress bar, then print what it wrote and measured."""
    progress = StageProgress()
    callbacks = [progress] if progress_enabled(run) else []
    try:
        asset = run.execute(callbacks)
    finally:
        progress.stop()
    # the summary first (step timings, metrics), then where everything is
    for timings in sorted(run.run_dir.rglob("timings.json")):
        medians = json.loads(timings.read_text())
        steps = medians.pop("steps_timed", None)
        fit_seconds = medians.pop("fit_seconds", None)
        parallel = medians.pop("parallel", None)
        label = f"{timings.parent.name}: " if timings.parent != run.run_dir else ""
        stages = ", ".join(f"{k} {v:.4f}" for k, v in medians.items())
        print(f"{label}median seconds per step ({steps} steps): {stages}")
        if fit_seconds is not None:
            print(f"{label}training took {fit_seconds:.1f} s")
        if parallel:
            print(f"{label}trainer.parallel: {parallel['picard_steps']} steps in {parallel['picard_iterations']} "
                  f"iterations, {parallel['evaluations_per_step']:.2f} gradient evaluations per step")
    if asset.metrics and "mask_iou" in asset.metrics:
        print_metrics(asset.metrics)
    report = run.run_dir / "report.html"
    for path in [*asset.files, *([report] if report.is_file() and report not in asset.files else [])]:
        print(f"wrote {path}")
    return 0


def progress_enabled(run: Any) -> bool:
    cfg = run.trainer.cfg if run.trainer is not None else None
    return cfg is None or cfg.trainer.progress


def print_metrics(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    truth = results.get("object") or results["prompt"]  # an image run is measured against the object it shows
    table = Table(title=f"held-out views of '{truth}' ({results['views']} views, {results['resolution']}px)")
    for column in ("elevation (°)", "views", "mask IoU", "PSNR (dB)"):
        table.add_column(column, justify="right")
    for band, values in results.get("bands", {}).items():
        table.add_row(band, str(values["views"]), f"{values['mask_iou']:.3f}", f"{values['psnr']:.2f}")
    table.add_row("all", str(results["views"]), f"{results['mask_iou']:.3f}", f"{results['psnr']:.2f}", style="bold")
    console = Console()
    console.print(table)
    line = f"foreground saturation {results['saturation']:.3f} (ground truth {results['true_saturation']:.3f})"
    if "texture_noise" in results:
        line += (f"; texture noise {results['texture_noise']:.3f} (ground truth "
                 f"{results['true_texture_noise']:.3f})")
    if "janus_score" in results:
        line += f"; Janus score {results['janus_score']:.2f} (0: consistent back, 1: front shows on the back)"
    console.print(line)
    if "export_fidelity" in results:
        fidelity = results["export_fidelity"]
        console.print(f"exported GLB vs the scene's renders: PSNR {fidelity['psnr']:.2f} dB, mask IoU "
                      f"{fidelity['mask_iou']:.3f} ({fidelity['views']} held-out views)")
    if "mesh" in results:
        mesh = results["mesh"]
        console.print(f"exported mesh vs true shape: volumetric IoU {mesh['volumetric_iou']:.3f}, "
                      f"Chamfer distance {mesh['chamfer']:.4f} (scene units)")
        if "euler_characteristic" in mesh:
            console.print(f"exported mesh topology: {'watertight' if mesh['watertight'] else 'NOT watertight'}, "
                          f"{mesh['pieces']} piece(s), Euler characteristic {mesh['euler_characteristic']} (true "
                          f"shape: {mesh['true_euler_characteristic']})")


def cmd_export(args: argparse.Namespace) -> int:
    from dreamengine.build import load_run
    from dreamengine.results import export_run

    run_dir, cfg, scenes, background, renderers = load_run(args.run_dir)
    for path in export_run(scenes, background, renderers, cfg, run_dir, formats=[args.format]):
        print(f"wrote {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from dreamengine.build import load_run
    from dreamengine.results import evaluate_run

    run_dir, cfg, scenes, background, renderers = load_run(args.run_dir)
    results = evaluate_run(scenes[0], background, renderers[0], cfg, run_dir)
    if "mask_iou" in results:
        print_metrics(results)
    headline = {k: results[k] for k in ("mask_iou", "psnr") if k in results}
    if "export_fidelity" in results:
        headline["export_fidelity"] = {k: results["export_fidelity"][k] for k in ("psnr", "mask_iou")}
    print(json.dumps(headline))
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from dreamengine.batch import read_jobs, run_batch

    jobs, bad_lines = read_jobs(args.prompts_file, args.system, args.config, args.overrides)
    for message in bad_lines:
        print(f"error: {message}", file=sys.stderr)
    if args.retries < 0 or (args.workers is not None and args.workers < 1):
        raise DreamEngineError("--retries must be >= 0 and --workers >= 1")
    out_dir = Path(args.output_dir or Path("runs") / f"batch-{Path(args.prompts_file).stem}")
    print(f"batch of {len(jobs)} prompt(s) in {out_dir}" + (f"; {len(bad_lines)} bad line(s) skipped"
                                                            if bad_lines else ""), flush=True)
    results = run_batch(jobs, out_dir, workers=args.workers, retries=args.retries, ray_address=args.ray_address)
    print_batch_summary(results, out_dir)
    failed = [r for r in results if r.status == "failed"]
    return 1 if failed or bad_lines else 0


def print_batch_summary(results: list[Any], out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"batch {out_dir}")
    for column in ("line", "prompt", "status", "attempts", "mask IoU", "seconds"):
        table.add_column(column)
    for r in results:
        iou = r.metrics.get("mask_iou")
        status = r.status if r.status != "failed" else f"failed: {r.error}"
        table.add_row(str(r.line), r.prompt, status, str(r.attempts), "-" if iou is None else f"{iou:.3f}",
                      f"{r.seconds:.0f}")
    Console().print(table)
    print(f"summary: {out_dir / 'summary.md'}; contact sheet: {out_dir / 'contact_sheet.png'}")


def cmd_systems(args: argparse.Namespace) -> int:
    from dreamengine.systems import load_system, packaged_systems

    specs = [load_system(name) for name in sorted(packaged_systems())]
    width = max(len(spec.name) for spec in specs) + 2
    print("Systems (run one with: dreamengine generate PROMPT --system NAME; its YAML file documents it):\n")
    for spec in specs:
        stages = " -> ".join(stage.name for stage in spec.stages)
        print(f"{spec.name:<{width}}{spec.description}")
        print(f"{'':<{width}}stages: {stages}")
        print(f"{'':<{width}}paper: {spec.paper}\n")
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    from dreamengine.config import available_configs, find_config

    names = available_configs()
    width = max(len(name) for name in names) + 2
    print("Configs (use one with: dreamengine generate PROMPT --config NAME; its YAML file documents it):\n")
    for name in names:
        header = next((line.lstrip("# ").strip() for line in find_config(name).read_text().splitlines()
                       if line.startswith("#")), "")
        print(f"{name:<{width}}{header}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dreamengine.build import load_run
    from dreamengine.core.render import render_fixed
    from dreamengine.report import report_run, write_report
    from dreamengine.report.turntable import check_turntable_settings
    from dreamengine.runs import is_system_run

    check_turntable_settings(args.frames, args.size)  # before the slow part
    top = Path(args.run_dir)
    has_checkpoint = any(top.glob("ckpt/last.pt")) or any(top.glob("stages/*/ckpt/last.pt"))
    if args.no_turntable or not has_checkpoint:
        if not args.no_turntable and ((top / "config.yaml").is_file() or is_system_run(top)):
            print("no checkpoint (ckpt/last.pt) to render a turntable from; writing the page only", file=sys.stderr)
        print(f"wrote {write_report(top)}")
        return 0
    _, cfg, scenes, background, renderers = load_run(args.run_dir)  # a system run: its last started stage

    def render(cams: Any, h: int, w: int) -> Any:
        return render_fixed(renderers[0], scenes[0].render_inputs(), background, cams, h, w)

    print(f"wrote {report_run(top, cfg, render, 'cpu', args.frames, args.size)}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from dreamengine.config import load_config
    from dreamengine.doctor import (
        accelerator_checks,
        cache_checks,
        cpu_step_check,
        disk_check,
        fit_report,
        stack_checks,
        system_configs,
        torch_checks,
    )

    if args.gpu_memory is not None and not args.gpu_memory > 0:
        raise DreamEngineError(f"--gpu-memory must be a positive number of GiB, got {args.gpu_memory}")
    if args.system is not None and args.overrides:
        raise DreamEngineError("overrides go with --config (a system's stages keep their own settings here)")
    configs = None  # load first: a bad config name is reported before the slow checks
    if args.config is not None:
        configs = load_config(args.config, args.overrides)
    elif args.system is not None:
        configs = system_configs(args.system)
    checks, gpus = torch_checks()
    checks += accelerator_checks(cuda=bool(gpus))
    checks += stack_checks() + cache_checks() + [disk_check(Path("runs")), cpu_step_check()]
    marks = {True: "ok  ", False: "FAIL", None: "--  "}
    for check in checks:
        print(f"{marks[check.ok]} {check.name:<20} {check.detail}")
    failed = any(check.ok is False for check in checks)
    if configs is not None:
        gpu = args.gpu_memory if args.gpu_memory is not None else (gpus[0][1] if gpus else None)
        lines, all_fit = fit_report(configs, gpu)
        print()
        for line in lines:
            print(line)
        failed = failed or not all_fit
    return 1 if failed else 0


def cmd_ui(args: argparse.Namespace) -> int:
    from dreamengine.ui.app import launch

    print(f"DreamEngine UI on http://{args.host}:{args.port} (runs in {Path(args.runs).resolve()}); Ctrl-C stops",
          flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1") or args.share:
        print("warning: the page has no login; anyone who can reach it can start runs and download their files",
              file=sys.stderr, flush=True)
    launch(args.runs, host=args.host, port=args.port, share=args.share)
    return 0


COMMANDS = {"ui": cmd_ui, "doctor": cmd_doctor, "generate": cmd_generate, "resume": cmd_resume, "export": cmd_export,
            "eval": cmd_eval,
            "refine": cmd_refine, "batch": cmd_batch, "report": cmd_report, "systems": cmd_systems,
            "configs": cmd_configs}

if __name__ == "__main__":
    sys.exit(main())
