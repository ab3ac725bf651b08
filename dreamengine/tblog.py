"""TensorBoard logging of a run (``logging.tensorboard=true``; needs ``pip install 'dreamengine[tensorboard]'``).

Event files go to ``RUN_DIR/tensorboard/`` (a system stage's own folder for each stage), so
``tensorboard --logdir runs`` shows every run side by side. Written every ``trainer.log_every`` steps:

    loss/<term>       every logged term of the step (the total ``loss``, the guidance's terms, the regularizers)
    grad_norm/<group> the L2 norm of each optimizer parameter group's gradient (before the Adam step)
    lr/<group>        each parameter group's learning rate
    time/<stage>      seconds of the step's render / guidance / teacher / backward / optimizer / after_step stages

and at every preview the grid as an image (``preview``), once the resolved config as text (``config``). A resumed
run purges events after its checkpoint's step, as ``metrics.jsonl`` is truncated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dreamengine.config import RunConfig, config_to_yaml
from dreamengine.errors import DreamEngineError

FOLDER = "tensorboard"


class TensorBoardLog:
    """Writes one trainer's scalars, previews and config to ``run_dir/tensorboard``."""

    def __init__(self, run_dir: Path, cfg: RunConfig, start_step: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise DreamEngineError("logging.tensorboard=true needs TensorBoard: pip install 'dreamengine[tensorboard]' "
                                   "(or set logging.tensorboard=false)") from None
        self.writer = SummaryWriter(str(run_dir / FOLDER), purge_step=start_step + 1 if start_step else None,
                                    flush_secs=max(1, round(cfg.logging.tensorboard_flush_seconds)))
        if start_step == 0:
            self.writer.add_text("config", "```yaml\n" + config_to_yaml(cfg) + "\n```", 0)

    def scalars(self, step: int, terms: dict[str, float], optimizer: torch.optim.Optimizer,
                timings: dict[str, float]) -> None:
        for name, value in terms.items():
            self.writer.add_scalar(f"loss/{name}", float(value), step)
        for index, group in enumerate(optimizer.param_groups):
            name = group.get("name", f"group{index}")
            grads = [p.grad.detach().float().norm() for p in group["params"] if p.grad is not None]
            if grads:
                self.writer.add_scalar(f"grad_norm/{name}", float(torch.stack(grads).norm()), step)
            self.writer.add_scalar(f"lr/{name}", float(group["lr"]), step)
        for name, seconds in timings.items():
            self.writer.add_scalar(f"time/{name}", float(seconds), step)

    def preview(self, step: int, image: np.ndarray) -> None:
        """``image``: the preview grid, [H, W, 3] uint8."""
        self.writer.add_image("preview", image, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


def last_timings(seconds: dict[str, list[float]]) -> dict[str, float]:
    """The latest step's seconds per stage from a :class:`~dreamengine.trainer.StageTimer`'s lists."""
    return {name: values[-1] for name, values in seconds.items() if values}


__all__ = ["FOLDER", "TensorBoardLog", "last_timings"]
