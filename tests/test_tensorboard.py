"""logging.tensorboard=true: the event files, read back with TensorBoard's own reader, hold the logged loss terms
(equal to metrics.jsonl), gradient norms (equal to the gradients' norms), learning rates, step timings, the
preview grids and the resolved config; a resumed run drops the events after its checkpoint; off by default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamengine.errors import ConfigError
from tests.test_trainer import tiny_trainer

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="pip install 'dreamengine[tensorboard]'")


def read_events(run_dir: Path):
    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0,
                                                                                             "images": 0,
                                                                                             "tensors": 0})
    events.Reload()
    return events


def test_scalars_previews_and_config_are_written_and_read_back(tmp_path: Path):
    trainer = tiny_trainer(tmp_path, "trainer.max_steps=4", "trainer.preview_every=2", "logging.tensorboard=true")
    norms: dict[int, dict[str, float]] = {}

    def record_grad_norms(event) -> None:  # the gradients the step used are still on the parameters
        norms[event.step] = {
            group["name"]: float(torch.stack([p.grad.norm() for p in group["params"] if p.grad is not None]).norm())
            for group in trainer.optimizer.param_groups if any(p.grad is not None for p in group["params"])}

    trainer.fit([record_grad_norms])
    events = read_events(trainer.run_dir)
    tags = events.Tags()
    log = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for name in log[0]:
        if name == "step":
            continue
        values = [(e.step, e.value) for e in events.Scalars(f"loss/{name}")]
        assert [s for s, _ in values] == [1, 2, 3, 4]
        np.testing.assert_allclose([v for _, v in values], [r[name] for r in log], rtol=1e-6)
    for group in trainer.optimizer.param_groups:
        lrs = [e.value for e in events.Scalars(f"lr/{group['name']}")]
        np.testing.assert_allclose(lrs, [group["lr"]] * 4, rtol=1e-6)
    assert norms and set(norms[4]) <= {t.split("/", 1)[1] for t in tags["scalars"] if t.startswith("grad_norm/")}
    for group, value in norms[4].items():
        (last,) = [e.value for e in events.Scalars(f"grad_norm/{group}") if e.step == 4]
        assert last == pytest.approx(value, rel=1e-5)
    assert {"time/render", "time/guidance", "time/backward"} <= set(tags["scalars"])
    assert all(e.value >= 0 for e in events.Scalars("time/render"))
    previews = events.Images("preview")
    assert [p.step for p in previews] == [2, 4]
    assert (previews[0].height, previews[0].width) == (2 * 24, 4 * 24)  # rgb row + opacity row, 4 views
    (tag,) = [t for t in tags["tensors"] if t.startswith("config")]
    config = events.Tensors(tag)[0].tensor_proto.string_val[0].decode()
    assert "tensorboard: true" in config and "prompt: a red cube" in config


def test_a_resumed_run_purges_the_events_after_its_checkpoint(tmp_path: Path):
    first = tiny_trainer(tmp_path, "trainer.max_steps=3", "logging.tensorboard=true")
    first.fit()
    second = tiny_trainer(tmp_path, "trainer.max_steps=5", "logging.tensorboard=true")
    second.load()
    second.fit()
    steps = [e.step for e in read_events(second.run_dir).Scalars("loss/loss")]
    assert steps == [1, 2, 3, 4, 5]


def test_off_by_default_and_range_checked(tmp_path: Path):
    trainer = tiny_trainer(tmp_path, "trainer.max_steps=1")
    trainer.fit()
    assert not trainer.cfg.logging.tensorboard
    assert not (trainer.run_dir / "tensorboard").exists()
    with pytest.raises(ConfigError, match="tensorboard_flush_seconds"):
        tiny_trainer(tmp_path, "logging.tensorboard_flush_seconds=0")
