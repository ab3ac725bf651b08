"""``dreamengine doctor``: what this machine can run, and whether a config fits its GPU.

Checks, each a :class:`Check` (name, ok, detail): the torch build and CUDA; each GPU with its free memory; the
optional accelerators (nerfacc, tiny-cuda-nn, gsplat, nvdiffrast, xformers) -- imported, and on a GPU one tiny
op run through each; the diffusers stack's versions; model folders in the Hugging Face cache; free disk for runs;
and one real training step of the toy quickstart on the CPU (the path every machine has). With a config or a
system, the peak-memory estimate of :mod:`dreamengine.memory` against the GPU (or ``--gpu-memory GIB``), and if it
does not fit, the settings that would.
"""

from __future__ import annotations

import importlib.metadata
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamengine.config import load_config
from dreamengine.memory import FIT_MARGIN, estimate, fits, knobs, suggest

ACCELERATORS = {"nerfacc": "nerfacc", "tiny-cuda-nn": "tinycudann", "gsplat": "gsplat",
                "nvdiffrast": "nvdiffrast.torch", "xformers": "xformers.ops"}
DIFFUSERS_STACK = ("diffusers", "transformers", "accelerate", "peft", "huggingface_hub", "safetensors")


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not applicable here (e.g. a GPU op on a CPU machine)
    detail: str


def torch_checks() -> tuple[list[Check], list[tuple[str, float, float]]]:
    """The torch build and every GPU as (name, free GiB, total GiB)."""
    import torch

    checks = [Check("torch", True, f"{torch.__version__} (CUDA build: {torch.version.cuda or 'none, CPU only'})")]
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            name = torch.cuda.get_device_name(index)
            gpus.append((name, free / 1024**3, total / 1024**3))
            checks.append(Check(f"cuda:{index}", True, f"{name}, {free / 1024**3:.1f} of {total / 1024**3:.1f} GiB "
                                                         "free"))
    else:
        checks.append(Check("GPU", None, "no CUDA GPU visible: runs use the CPU (toy-world configs only; "
                                         "Stable Diffusion and DeepFloyd configs need a GPU)"))
    return checks, gpus


def tiny_ops() -> dict[str, Callable[[Any], Any]]:
    """One small op per accelerator on a CUDA device (what 'works' means beyond importing)."""

    def nerfacc_op(torch: Any) -> Any:
        import nerfacc

        sigmas = torch.rand(2, 8, device="cuda")
        deltas = torch.full((2, 8), 0.1, device="cuda")
        return nerfacc.render_weight_from_density(torch.zeros_like(sigmas), deltas, sigmas)[0].sum()

    def tcnn_op(torch: Any) -> Any:
        import tinycudann as tcnn

        grid = tcnn.Encoding(3, {"otype": "HashGrid", "n_levels": 2, "n_features_per_level": 2,
                                 "log2_hashmap_size": 10, "base_resolution": 4, "per_level_scale": 2.0})
        return grid(torch.rand(16, 3, device="cuda")).sum()

    def gsplat_op(torch: Any) -> Any:
        import gsplat

        n = 4
        colors, alphas, _ = gsplat.rasterization(
            torch.rand(n, 3, device="cuda") - 0.5 + torch.tensor([0, 0, 3.0], device="cuda"),
            torch.nn.functional.normalize(torch.rand(n, 4, device="cuda"), dim=-1),
            torch.full((n, 3), 0.1, device="cuda"), torch.ones(n, device="cuda"), torch.rand(n, 3, device="cuda"),
            torch.eye(4, device="cuda")[None], torch.tensor([[[16.0, 0, 8], [0, 16.0, 8], [0, 0, 1]]],
                                                            device="cuda"), 16, 16)
        return colors.sum()

    def nvdiffrast_op(torch: Any) -> Any:
        import nvdiffrast.torch as dr

        context = dr.RasterizeCudaContext()
        pos = torch.tensor([[[-0.5, -0.5, 0, 1], [0.5, -0.5, 0, 1], [0, 0.5, 0, 1]]], device="cuda")
        tri = torch.tensor([[0, 1, 2]], dtype=torch.int32, device="cuda")
        return dr.rasterize(context, pos, tri, (8, 8))[0].sum()

    def xformers_op(torch: Any) -> Any:
        import xformers.ops

        q = torch.rand(1, 4, 1, 8, device="cuda", dtype=torch.float16)
        return xformers.ops.memory_efficient_attention(q, q, q).sum()

    return {"nerfacc": nerfacc_op, "tiny-cuda-nn": tcnn_op, "gsplat": gsplat_op, "nvdiffrast": nvdiffrast_op,
            "xformers": xformers_op}


def accelerator_checks(cuda: bool) -> list[Check]:
    import torch

    from dreamengine.core.backends import optional_import

    checks = []
    for name, module in ACCELERATORS.items():
        if optional_import(module) is None:
            checks.append(Check(name, None, "not installed (the pure-torch path is used)"))
            continue
        if not cuda:
            checks.append(Check(name, None, "imports; not run: no CUDA device"))
            continue
        try:
            value = tiny_ops()[name](torch)
            torch.cuda.synchronize()
            checks.append(Check(name, bool(torch.isfinite(value)), "imports and runs a tiny op on the GPU"))
        except Exception as error:  # noqa: BLE001 - any failure of the extension is the finding
            checks.append(Check(name, False, f"imports but its op failed: {type(error).__name__}: {error}"[:300]))
    return checks


def stack_checks() -> list[Check]:
    versions = []
    for package in DIFFUSERS_STACK:
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package} missing")
    missing = [v for v in versions if v.endswith("missing")]
    return [Check("diffusers stack", None if missing else True, ", ".join(versions)
                  + ("; pip install 'dreamengine[sd]' for Stable Diffusion teachers" if missing else ""))]


def cache_checks() -> list[Check]:
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" /
                                                                       "huggingface")) / "hub")
    models = sorted(p.name.removeprefix("models--").replace("--", "/") for p in hub.glob("models--*")) \
        if hub.is_dir() else []
    detail = ", ".join(models) if models else "none (toy-world configs need none; SD configs download on first use)"
    return [Check("Hugging Face cache", True, f"{hub}: {detail}")]


def disk_check(runs_dir: Path) -> Check:
    path = runs_dir if runs_dir.exists() else Path.cwd()
    free = shutil.disk_usage(path).free / 1024**3
    return Check("disk", free > 1.0, f"{free:.1f} GiB free for runs in {path.resolve()}")


def cpu_step_check() -> Check:
    """One real training step of the toy quickstart (tiny sizes) on the CPU, in a temporary folder."""
    from dreamengine.trainer import Trainer

    start = time.perf_counter()
    try:
        cfg = load_config("quickstart", ["device=cpu", "camera.height=16", "camera.width=16",
                                         "render.num_samples=8", "trainer.max_steps=1", "trainer.preview_every=0",
                                         "trainer.progress=false"], prompt="a red cube")
        with tempfile.TemporaryDirectory() as folder:
            trainer = Trainer(cfg, Path(folder))
            terms = trainer.train_step()
        ok = all(map(lambda v: v == v, terms.values())) and "skipped" not in terms
        return Check("CPU path", ok, f"one toy-quickstart training step on the CPU in "
                                     f"{time.perf_counter() - start:.1f} s (loss {terms['loss']:.4g})")
    except Exception as error:  # noqa: BLE001 - report, don't crash the doctor
        return Check("CPU path", False, f"a toy training step failed: {type(error).__name__}: {error}"[:300])


def fit_report(cfg_or_configs: Any, gpu_gib: float | None) -> tuple[list[str], bool]:
    """Lines with each config's estimate (terms) against ``gpu_gib`` and, when it does not fit, the overrides
    that would; and whether every config fits (True when there is no GPU size to compare with)."""
    configs = cfg_or_configs if isinstance(cfg_or_configs, list) else [("", cfg_or_configs)]
    lines, all_fit = [], True
    for label, cfg in configs:
        k = knobs(cfg)
        terms = estimate(k)
        parts = ", ".join(f"{name} {value:.1f}" for name, value in terms.items() if name != "total")
        head = f"{label + ': ' if label else ''}estimated peak GPU memory {terms['total']:.1f} GiB ({parts})"
        if gpu_gib is None:
            lines.append(head + "; no GPU to compare with (give --gpu-memory GIB)")
            continue
        if fits(terms["total"], gpu_gib):
            lines.append(head + f"; fits in {gpu_gib:.1f} GiB")
            continue
        all_fit = False
        overrides, after = suggest(k, gpu_gib)
        verdict = "fits" if fits(after, gpu_gib) else "still does not fit"
        lines.append(head + f"; does NOT fit in {gpu_gib:.1f} GiB (with a {100 - FIT_MARGIN * 100:.0f} % margin)")
        shown = " ".join(shlex.quote(item) for item in overrides)
        lines.append(f"  try: {shown or '(nothing left to lower)'}  -> {after:.1f} GiB, {verdict}")
    return lines, all_fit


def system_configs(name: str) -> list[tuple[str, Any]]:
    from dreamengine.systems import load_system

    spec = load_system(name)
    return [(stage.name, load_config(stage.config, [*stage.overrides], prompt="doctor")) for stage in spec.stages]


__all__ = ["Check", "accelerator_checks", "cache_checks", "cpu_step_check", "disk_check", "fit_report",
           "stack_checks", "system_configs", "torch_checks"]
