"""trainer.parallel (DreamPropeller's Picard iteration, dreamengine/picard.py): exactness at tau = 0 against the
sequential run with per-step seeds (NeRF, Gaussians through densification, VSD's own optimizer, worker processes),
window = 1 as the ordinary loop, exact resume, and the window arithmetic."""

import json
from pathlib import Path

import pytest
import torch

from dreamengine.config import load_config
from dreamengine.errors import ConfigError, TrainingError
from dreamengine.picard import (
    GradientPool,
    Guess,
    PicardWindow,
    apply_deferred,
    deferred_steps,
    parameter_error,
    step_seed,
)
from dreamengine.trainer import Trainer
from tests.cli_helpers import TINY
from tests.test_trainer import GAUSSIAN_TINY

EXACT = ["trainer.parallel.threshold=0", "trainer.parallel.adaptivity=fixed"]  # accept only exact steps


def make_trainer(run_dir: Path, config: str, steps: int, *overrides: str) -> Trainer:
    tiny = GAUSSIAN_TINY if config == "gaussian-toy" else [*TINY, "trainer.log_every=1"]
    cfg = load_config(config, [*tiny, f"trainer.max_steps={steps}", *overrides], prompt="a red cube")
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, run_dir)


def run_to(trainer: Trainer, pool: GradientPool | None = None) -> Trainer:
    """Advance to trainer.max_steps (what fit() does, without its logs and checkpoints)."""
    while trainer.step < trainer.cfg.trainer.max_steps:
        trainer.advance(pool)
    return trainer


def assert_same_parameters(a: Trainer, b: Trainer) -> None:
    for x, y in zip(a.parameters_now(), b.parameters_now(), strict=True):
        assert torch.equal(x, y)


def test_step_seeds_depend_on_seed_step_and_stream_only():
    assert step_seed(0, 5) == step_seed(0, 5)
    seeds = {step_seed(seed, step, stream) for seed in (0, 1) for step in range(50) for stream in (0, 1)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)


@pytest.mark.slow
@pytest.mark.parametrize("config, extra, steps", [
    ("quickstart", ["render.occupancy_update_every=2"], 7),  # the occupancy grid refreshes inside windows
    ("gaussian-toy", [], 8),  # densification at steps 3 and 6 (windows end there), N changes
    ("vsd-toy", ["guidance.pixel_model_width=8"], 4),  # VSD trains its score model in the forward pass: replayed too
])
def test_picard_at_zero_threshold_is_the_sequential_run_bit_for_bit(tmp_path, config, extra, steps):
    sequential = run_to(make_trainer(tmp_path / "seq", config, steps, *extra, "trainer.parallel.seed_per_step=true"))
    picard = run_to(make_trainer(tmp_path / "par", config, steps, *extra, "trainer.parallel.window=3", *EXACT))
    assert_same_parameters(sequential, picard)
    if config == "gaussian-toy":
        assert picard.scene.num_gaussians == sequential.scene.num_gaussians > 300
    if config == "vsd-toy":
        for x, y in zip(sequential.guidance.score_model.parameters(), picard.guidance.score_model.parameters(),
                        strict=True):
            assert torch.equal(x, y)
    summary = picard.picard.summary()
    assert summary["picard_steps"] == steps and summary["picard_evaluations"] > steps  # guesses were wrong


def test_a_loose_threshold_takes_several_steps_per_iteration_and_stays_close(tmp_path):
    sequential = run_to(make_trainer(tmp_path / "seq", "quickstart", 10, "trainer.parallel.seed_per_step=true"))
    picard = run_to(make_trainer(tmp_path / "par", "quickstart", 10, "trainer.parallel.window=4",
                                 "trainer.parallel.threshold=1e9", "trainer.parallel.adaptivity=fixed"))
    summary = picard.picard.summary()
    assert summary["picard_iterations"] == 4  # step 0 alone, then 4 + 4 + 1 steps (everything accepted)
    assert summary["steps_per_iteration"] == 2.5
    assert parameter_error(picard.parameters_now(), sequential.parameters_now()) > 0  # not the same trajectory
    moved = parameter_error(sequential.parameters_now(), make_trainer(tmp_path / "init", "quickstart", 10)
                            .parameters_now())
    assert parameter_error(picard.parameters_now(), sequential.parameters_now()) < moved  # but near it


def test_window_one_is_the_ordinary_loop(tmp_path):
    """trainer.parallel.window=1 (the default): fit() takes exactly the steps train_step() takes, drawing from the
    run's one generator (no per-step seeds)."""
    fitted = make_trainer(tmp_path / "a", "quickstart", 5, "trainer.parallel.window=1")
    assert fitted.picard is None and not fitted.step_seeds
    fitted.fit()
    stepped = make_trainer(tmp_path / "b", "quickstart", 5)
    for _ in range(5):
        stepped.train_step()
    assert_same_parameters(fitted, stepped)
    reseeded = run_to(make_trainer(tmp_path / "c", "quickstart", 5, "trainer.parallel.seed_per_step=true"))
    assert parameter_error(reseeded.parameters_now(), stepped.parameters_now()) > 0  # other random numbers


def test_worker_processes_give_the_in_process_result(tmp_path):
    here = run_to(make_trainer(tmp_path / "a", "quickstart", 6, "trainer.parallel.window=3", *EXACT))
    pooled = make_trainer(tmp_path / "b", "quickstart", 6, "trainer.parallel.window=3", "trainer.parallel.workers=3",
                          *EXACT)
    pool = pooled.start_workers()
    try:
        run_to(pooled, pool)
    finally:
        pool.close()
    assert_same_parameters(here, pooled)
    assert pooled.picard.summary() == here.picard.summary()


def test_a_checkpointed_picard_run_resumes_exactly(tmp_path):
    window = ["trainer.parallel.window=3", "render.occupancy_update_every=2"]
    straight = run_to(make_trainer(tmp_path / "a", "quickstart", 11, *window))
    first = make_trainer(tmp_path / "b", "quickstart", 11, *window)
    while first.step < 5:  # killed after an iteration that ended past step 5
        first.advance()
    first.save()
    second = make_trainer(tmp_path / "b", "quickstart", 11, *window)
    second.load()
    assert second.step == first.step and second.picard.threshold == first.picard.threshold
    assert len(second.picard.guesses) == len(first.picard.guesses) > 0
    run_to(second)
    assert second.step == straight.step
    assert_same_parameters(straight, second)


def test_fit_logs_every_step_taken_and_reports_the_evaluations(tmp_path):
    trainer = make_trainer(tmp_path, "quickstart", 9, "trainer.parallel.window=4",
                           "trainer.checkpoint_every=4")
    trainer.fit()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 10))
    timings = (tmp_path / "timings.json").read_text()
    assert "evaluations_per_step" in timings


def test_threshold_update_and_stride():
    window = PicardWindow(window=4, threshold=10.0, ema_decay=0.9, adaptivity="median")
    assert window.stride([1.0, 2.0, 3.0, 4.0]) == 4
    assert window.stride([1.0, 20.0, 3.0, 40.0]) == 2  # through the first step off by more than tau
    assert window.stride([20.0, 1.0]) == 1  # always at least the exact step
    window.update_threshold([1.0, 2.0, 30.0, 4.0])  # the middle step's error (the reference's "median")
    assert window.threshold == pytest.approx(0.9 * 10.0 + 0.1 * 30.0)
    mean = PicardWindow(window=4, threshold=10.0, adaptivity="mean")
    mean.update_threshold([1.0, 2.0, 3.0, float("inf")])  # a reshaped step has no error
    assert mean.threshold == pytest.approx(0.9 * 10.0 + 0.1 * 2.0)
    fixed = PicardWindow(window=4, threshold=10.0, adaptivity="fixed")
    fixed.update_threshold([100.0])
    assert fixed.threshold == 10.0
    state = window.state_dict()
    window.guesses = [Guess([torch.ones(2)], {"a": torch.zeros(1)})]
    restored = PicardWindow(window=4, threshold=0.0)
    restored.load_state_dict(window.state_dict())
    assert restored.threshold == window.threshold and len(restored.guesses) == 1
    assert state["guesses"] == []


def test_parameter_error_in_the_references_units():
    a, b = [torch.zeros(10), torch.zeros(5)], [torch.full((10,), 0.01), torch.zeros(5)]
    assert parameter_error(a, b) == pytest.approx(10 * 1e-4 / 15 * 1e6)
    assert parameter_error(a, [torch.zeros(11), torch.zeros(5)]) == float("inf")


def test_deferred_steps_record_the_gradient_and_replay_it():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([param], lr=0.1)
    param.grad = torch.tensor([1.0, -1.0, 0.5])
    with deferred_steps([optimizer]) as captured:
        optimizer.step()
    assert torch.equal(param.detach(), torch.ones(3)) and not optimizer.state  # nothing moved
    assert torch.equal(captured[0][0], torch.tensor([1.0, -1.0, 0.5]))
    reference = torch.nn.Parameter(torch.ones(3))
    reference_optimizer = torch.optim.Adam([reference], lr=0.1)
    reference.grad = torch.tensor([1.0, -1.0, 0.5])
    reference_optimizer.step()
    apply_deferred([optimizer], captured)
    assert torch.equal(param.detach(), reference.detach())
    with deferred_steps([optimizer]) as captured:
        pass
    assert captured == [None]
    optimizer.step()  # the class's step is back


def failing_worker(rank, payload, tasks, results):
    tasks.get()
    raise SystemExit(3)


def test_a_dead_worker_stops_the_run_with_a_clear_error():
    pool = GradientPool(failing_worker, None, 1)
    try:
        pool.submit(1, {}, 0)
        with pytest.raises(TrainingError, match="worker process died .*exit code 3"):
            pool.collect(1)
    finally:
        pool.close()


@pytest.mark.parametrize("overrides, message", [
    (["trainer.parallel.window=0"], "must be >= 1"),
    (["trainer.parallel.window=2", "trainer.parallel.workers=3"], "more than the window"),
    (["trainer.parallel.adaptivity=max"], "median, mean or fixed"),
    (["trainer.parallel.threshold=-1"], "finite number >= 0"),
])
def test_bad_parallel_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("quickstart", overrides, prompt="a red cube")
