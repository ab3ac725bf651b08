"""The exact toy teachers' posterior: the dense float64 pass over the whole bank against PixelBank's (issue 16).

Run from the repository root: ``python bench/toy_teacher.py [--repeats 9]``. Prints a markdown table and writes
it to bench/results/toy_teacher.md.

For the quickstart's teacher (camera-aware, 48 px, 7728 bank images) and the text-only toy teacher (32 px), one
teacher call's posterior (CFG batch: the prompt's row and the unconditional row) at several timesteps, z a
noised bank image of "a red cube": the median time of the dense computation (``log_prior - d`` over every bank
row in float64, softmax, ``weights @ bank``, written out here as the teachers did it before) and of
:meth:`~dreamengine.teachers.pixel_bank.PixelBank.posterior`, the bank rows each reads, and the largest
difference between their weights and means.
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

from dreamengine.core.cameras import cameras_from_spherical  # noqa: E402
from dreamengine.teachers.toyworld import ToyWorldTeacher  # noqa: E402
from dreamengine.teachers.toyworld_multiview import ToyWorldMultiViewTeacher  # noqa: E402

TIMESTEPS = (20, 100, 300, 500, 700, 980)


def dense_posterior(bank: torch.Tensor, sqnorm: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor,
                    log_prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 computation over every row (``bank`` [N, D] float64): (weights [B, N], mean [B, D])."""
    dots = z @ bank.T  # [B, N]
    distance = (alpha[:, None] * sqnorm[None] - 2.0 * alpha.sqrt()[:, None] * dots) / (2.0 * (1.0 - alpha))[:, None]
    weights = torch.softmax(log_prior - distance, dim=1)
    used = weights.ne(0).any(dim=0).nonzero().squeeze(1)  # the sparse mean the teachers already had
    return weights, weights[:, used] @ bank[used]


def median_ms(function, args: tuple, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*args)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def teacher_rows(name: str, teacher, log_prior_of, repeats: int) -> list[str]:
    """Table rows of one teacher: ``log_prior_of(teacher)`` is its [2, N] log prior (prompt, unconditional)."""
    bank_teacher = teacher.bank_teacher if hasattr(teacher, "bank_teacher") else teacher
    pixels = bank_teacher.pixel_bank
    bank64 = pixels.rows.double()
    resolution = bank_teacher.resolution
    generator = torch.Generator().manual_seed(0)
    clean = bank_teacher.bank_images()[bank_teacher.bank_object.eq(0).nonzero()[5]].double()  # a red cube view
    log_prior = log_prior_of(teacher)
    rows = []
    for timestep in TIMESTEPS:
        alpha = teacher._alphas64[torch.tensor([timestep, timestep])]
        noise = torch.randn(2, 3, resolution, resolution, generator=generator, dtype=torch.float64)
        z = (alpha.sqrt()[:, None, None, None] * clean + (1.0 - alpha).sqrt()[:, None, None, None] * noise)
        z = z.float().double().reshape(2, -1)  # renders are float32
        dense_w, dense_mean = dense_posterior(bank64, pixels.sqnorm, z, alpha, log_prior)
        posterior = pixels.posterior(z, alpha, log_prior)
        dense_ms = median_ms(dense_posterior, (bank64, pixels.sqnorm, z, alpha, log_prior), repeats)
        bank_ms = median_ms(pixels.posterior, (z, alpha, log_prior), repeats)
        nonzero = int(dense_w.ne(0).any(dim=0).sum())
        rows.append(f"| {name} | {timestep} | {dense_ms:.1f} | {bank_ms:.1f} | {dense_ms / bank_ms:.2f}x | "
                    f"{pixels.rows.shape[0]} | {posterior.rows_read} | {nonzero} | "
                    f"{float((posterior.weights - dense_w).abs().max()):.1e} | "
                    f"{float((posterior.mean - dense_mean).abs().max()):.1e} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    camera = cameras_from_spherical(torch.tensor([20.0]), torch.tensor([33.0]), torch.tensor([2.5]),
                                    torch.tensor([40.0]))
    header = ["| teacher | t | dense float64 ms | PixelBank ms | speed-up | bank rows | rows read | nonzero weights "
              "| max weight diff | max mean diff |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(header), flush=True)
    multiview = ToyWorldMultiViewTeacher(views_per_group=1, resolution=48)
    # one view per set: set s is bank row s, so the sets' prior is a prior over the rows
    assert torch.equal(multiview.set_images[:, 0], torch.arange(multiview.num_sets))
    rows = teacher_rows("quickstart (camera-aware, 48 px)", multiview, lambda t: t._group_log_prior(
        t.embed(["a red cube", ""]).double(), camera, 2), args.repeats)
    text_only = ToyWorldTeacher(resolution=32)
    rows += teacher_rows("text-only (32 px)", text_only,
                         lambda t: t.embed(["a red cube", ""]).double().log(), args.repeats)
    lines = [
        "# The exact toy teachers' posterior: dense float64 vs PixelBank (bench/toy_teacher.py)", "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()} (shared machine: "
        f"expect noise); median of {args.repeats} calls. One call: the prompt's row and the unconditional row "
        "(CFG), z a noised view of \"a red cube\". Dense: every bank row in float64 (the teachers before "
        "PixelBank, with their sparse mean). Rows read: the rows PixelBank reads in float64 after its float32 "
        "pass; nonzero weights: the dense softmax's.", "", *header, *rows, ""]
    out = REPO / "bench" / "results" / "toy_teacher.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
