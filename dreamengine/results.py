"""What a trained run writes: meshes and splat files under ``final/``, and its evaluation in ``metrics.json``.

Used at the end of every run (:func:`dreamengine.pipeline.run_stage`) and by the CLI's ``export`` and ``eval``.
Every function takes the trained objects explicitly (scenes, background, renderers), so it works the same right
after training and on a checkpoint loaded later (:func:`dreamengine.build.load_scenes`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dreamengine.config import RunConfig
from dreamengine.core.files import write_json
from dreamengine.core.render import render_fixed
from dreamengine.errors import ExportError
from dreamengine.evaluate import evaluate_renders, mesh_metrics, toy_object, truth_name
from dreamengine.export import load_mesh

MESH_FORMATS = ("glb", "obj", "ply")
SPLAT_FORMAT = "splat"  # the 3DGS PLY of a Gaussian scene, written as final/scene.ply


def particle_folder(run_dir: Path, particle: int) -> Path:
    """``final/`` for the first particle, ``final/particle-<i>/`` for the others."""
    return run_dir / "final" if particle == 0 else run_dir / "final" / f"particle-{particle}"


def export_metadata(cfg: RunConfig) -> dict[str, Any]:
    """What every exported file records about the run that made it (GLB ``asset.extras``)."""
    from dreamengine.version import __version__

    return {"generator": f"DreamEngine {__version__}", "prompt": cfg.prompt, "seed": cfg.seed,
            "guidance": cfg.guidance.name, "teacher": cfg.teacher.name,
            "teacher_model": getattr(cfg.teacher, "model", cfg.teacher.name), "scene": cfg.scene.name}


def export_scene_file(scene: torch.nn.Module, background: torch.nn.Module, renderer: Any, cfg: RunConfig,
                      folder: Path, fmt: str) -> Path:
    """Write ``folder/model.<fmt>`` (a mesh) or, for ``fmt == 'splat'``, ``folder/scene.ply`` (3DGS)."""
    if fmt == SPLAT_FORMAT:
        if cfg.scene.name != "gaussians":
            raise ExportError(f"format 'splat' writes the Gaussians of a Gaussian scene; this run's scene is "
                              f"'{cfg.scene.name}': export it as one of {', '.join(MESH_FORMATS)}")
        from dreamengine.export.splat_ply import write_splat_ply

        return write_splat_ply(scene.splat_tensors(), folder / "scene.ply")
    from dreamengine.export.scene_export import export_cameras, export_scene

    cameras = export_cameras(*cfg.camera.framing())

    def render_opacity(cams: Any, resolution: int) -> torch.Tensor:
        return render_fixed(renderer, scene.render_inputs(), background, cams, resolution, resolution).opacity[..., 0]

    return export_scene(scene, cfg.export, folder / f"model.{fmt}", fmt, export_metadata(cfg), render_opacity, cameras)


def export_run(scenes: list[torch.nn.Module], background: torch.nn.Module, renderers: list[Any], cfg: RunConfig,
               run_dir: Path, formats: list[str] | None = None) -> list[Path]:
    """Every particle in every format of ``formats`` (default ``export.formats``; Gaussian scenes also get their
    splat PLY). Returns the written paths."""
    written = []
    for particle, (scene, renderer) in enumerate(zip(scenes, renderers, strict=True)):
        wanted = list(formats if formats is not None else cfg.export.formats)
        if formats is None and cfg.scene.name == "gaussians":
            wanted.append(SPLAT_FORMAT)
        for fmt in wanted:
            written.append(export_scene_file(scene, background, renderer, cfg, particle_folder(run_dir, particle), fmt))
    return written


def evaluate_run(scene: torch.nn.Module, background: torch.nn.Module, renderer: Any, cfg: RunConfig,
                 run_dir: Path) -> dict[str, Any]:
    """What a finished run measures, written to ``metrics.json``:

    * runs of a toy-world prompt: held-out render metrics against ground truth, and the exported GLB's shape
      metrics (:mod:`dreamengine.evaluate`);
    * every run with a ``final/model.glb``: its export fidelity (the GLB rendered by the mesh rasterizer vs the
      scene's own renders, from held-out cameras: PSNR and mask IoU), the number that says whether the
      exported file looks like the renders.
    """
    device = next(scene.parameters()).device

    def render(cams: Any, h: int, w: int) -> Any:
        return render_fixed(renderer, scene.render_inputs(), background, cams.to(device), h, w)

    results: dict[str, Any] = {"prompt": cfg.prompt}
    glb = run_dir / "final" / "model.glb"
    obj = toy_object(truth_name(cfg))  # image-to-3D: the object the reference image shows
    if obj is not None:  # the toy world knows the truth: whatever the teacher was (exact, learned, multi-view)
        results = evaluate_renders(cfg, render)
        if glb.is_file():
            results["mesh"] = {"file": str(glb), **mesh_metrics(load_mesh(glb), obj)}
    if glb.is_file():
        results["export_fidelity"] = export_fidelity_of(glb, render, background, cfg)
    write_json(run_dir / "metrics.json", results)
    return results


def export_fidelity_of(glb: Path, render: Any, background: torch.nn.Module, cfg: RunConfig) -> dict[str, Any]:
    """The exported file vs the scene's renders, from held-out views framed like training: ``eval.num_views``
    orbit views plus one from above and one from below, at ``eval.resolution`` (defaults: 8 views, 64 px)."""
    from dreamengine.export.fidelity import export_fidelity, fidelity_cameras

    cameras = fidelity_cameras(*cfg.camera.framing(), num_views=cfg.eval.num_views)
    size = cfg.eval.resolution
    return export_fidelity(glb, render, cameras, size, size, background)


__all__ = ["MESH_FORMATS", "SPLAT_FORMAT", "evaluate_run", "export_metadata", "export_run", "export_scene_file",
           "particle_folder"]
