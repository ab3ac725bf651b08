"""Diagnose the NeRF's vertical displacement (docs/architecture.md, known issues).

Renders the TRUE toy object as a volume field (density ``400 sigmoid(-sdf / 0.01)``, the toy world's lit color
as radiance) shifted by a translation ``tau`` [3], with the run's NeRF renderer and random training cameras,
and averages d loss / d tau at tau = 0 over ``N`` draws. A nonzero mean means the loss would move the true
object. Two losses:

- ``sds``: the run's guidance (its teacher, prompts and timestep schedule at ``--step``);
- ``direct``: squared error between the render (encoded to the teacher's pixels) and the analytic toy render
  of the same camera, with no teacher at all (how far the test field is from a perfect replica).

    python tools/translation_bias.py "an orange cone" --n 300 [--loss sds|direct] [key=value ...]

Prints the mean gradient with its standard error, overall and per elevation band.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from dreamengine.config import load_config
from dreamengine.teachers.toyworld import BANK_SUPERSAMPLE
from dreamengine.toyworld import ToyObject, parse_prompt
from dreamengine.toyworld.render import render_toy, shade_points
from dreamengine.trainer import Trainer


class TranslatedTrueField(torch.nn.Module):
    """The true object as a volume field, translated by the parameter ``tau`` [3]."""

    def __init__(self, obj: ToyObject, radius: float = 1.0, sharpness: float = 0.01) -> None:
        super().__init__()
        self.obj, self.radius, self.sharpness = obj, radius, sharpness
        self.tau = torch.nn.Parameter(torch.zeros(3))

    def query(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Density [N] and lit color [N, 3] at points [N, 3]."""
        shifted = points - self.tau
        return 400.0 * torch.sigmoid(-self.obj.sdf(shifted) / self.sharpness), shade_points(self.obj, shifted.detach())

    def density(self, points: Tensor) -> Tensor:
        return self.query(points)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--loss", choices=("sds", "direct"), default="sds")
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--step", type=int, default=300, help="training step for the guidance's schedules")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, ["render.occupancy_update_every=1000000", *args.overrides], prompt=args.prompt)
    trainer = Trainer(cfg, Path(tempfile.mkdtemp()))
    renderer = trainer.renderers[0]
    renderer.occupancy = None  # the grid belongs to the trainer's own scene
    field = TranslatedTrueField(parse_prompt(cfg.prompt), radius=cfg.scene.radius)
    generator = torch.Generator().manual_seed(1)
    height, width, _ = cfg.camera.size_at(args.step)
    gradients, elevations = [], []
    for _ in range(args.n):
        cameras = trainer.sampler.sample(1, generator)
        out = renderer(field, trainer.background, cameras, height, width, generator=generator, perturb=True)
        field.tau.grad = None
        if args.loss == "sds":
            trainer.guidance(out.rgb, trainer.prompts(cameras), cameras, args.step, generator).loss.backward()
        else:
            res = trainer.teacher.resolution
            truth = render_toy(field.obj, cameras, res, res, background=tuple(cfg.render.background_color),
                               supersample=BANK_SUPERSAMPLE)["rgb"]
            z = trainer.teacher.encode(out.rgb.permute(0, 3, 1, 2))
            ((z - (truth.permute(0, 3, 1, 2) * 2.0 - 1.0)) ** 2).sum().backward()
        gradients.append(field.tau.grad.clone())
        elevations.append(float(cameras.elevation[0]))
    grads, elev = torch.stack(gradients), torch.tensor(elevations)
    sem = grads.std(0) / len(grads) ** 0.5
    print(f"{cfg.prompt} ({args.loss}, {args.n} draws): mean d loss / d tau (x, y, z) = "
          f"{[round(v, 2) for v in grads.mean(0).tolist()]} +- {[round(v, 2) for v in sem.tolist()]}")
    low, high = cfg.camera.elevation_range
    edges = torch.linspace(low, high, 4).tolist()
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        band = (elev >= lo) & (elev <= hi)
        if int(band.sum()) > 1:
            print(f"  elevation [{lo:.0f}, {hi:.0f}]: n={int(band.sum())}, d/d tau_z = {grads[band, 2].mean():.2f} "
                  f"+- {grads[band, 2].std() / band.sum().sqrt():.2f}")


if __name__ == "__main__":
    main()
