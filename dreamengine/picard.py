"""DreamPropeller (Zhou et al., CVPR 2024): a score-distillation run as a fixed-point problem over a window of steps.

A sequential run is ``theta_{k+1} = U(theta_k, g(theta_k; k))``: ``g`` is the step's gradient (render, guidance,
backward), whose randomness here depends only on ``(seed, k)`` (:func:`step_seed`), and ``U`` the optimizer update.
Given guesses ``theta_k .. theta_{k+P-1}`` (``theta_k`` exact), the P gradients ``g(theta_i; i)`` do not depend on
each other and are computed at once (:class:`GradientPool`: one process per GPU, or CPU processes). Replaying
``U`` from ``theta_k`` with them gives ``theta'_{k+1} .. theta'_{k+P}``; ``theta'_{k+1}`` is exact, and each later
one is accepted while the guesses before it were close to their replays::

    err_i = || theta'_{k+i} - theta_{k+i} ||^2 / D * 1e6          (the reference's units; D = number of parameters)

The window moves to the first ``i`` with ``err_i > tau`` (at least one step per iteration), the replayed parameters
become the next guesses (steps past the old window start as the last replay), and the threshold follows the errors,
``tau <- decay tau + (1 - decay) e`` with ``e`` the error of the window's middle step (the reference's "median") or
the window's mean error. With ``tau = 0`` only exact steps are accepted: the sequential trajectory, bit for bit.

This module holds the algorithm (:class:`PicardWindow`) and the worker processes; the trainer supplies the
operations of a :class:`PicardTarget` (dreamengine/trainer.py).
"""

from __future__ import annotations

import hashlib
import os
import queue
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.multiprocessing as mp
from torch import Tensor

from dreamengine.errors import TrainingError

ERROR_SCALE = 1e6  # DreamPropeller's compute_error_from_system: mean squared difference x 1e6
WORKER_POLL_S = 1.0  # how often the main process checks that its workers are alive while it waits


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed for one step's random numbers from (run seed, step, stream) alone (stream 0: the step's
    forward pass; 1: the after-step updates such as the occupancy grid's jitter)."""
    digest = hashlib.blake2b(f"dreamengine:{seed}:{step}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def clone_tree(tree: Any) -> Any:
    """A copy of nested dicts / lists / tuples with every tensor detached and cloned (other leaves shared)."""
    if isinstance(tree, Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {key: clone_tree(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(clone_tree(value) for value in tree)
    return tree


def move_tree(tree: Any, device: torch.device | str) -> Any:
    """Nested dicts / lists / tuples with every tensor moved to ``device``."""
    if isinstance(tree, Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {key: move_tree(value, device) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(move_tree(value, device) for value in tree)
    return tree


def parameter_error(replayed: list[Tensor], guessed: list[Tensor]) -> float:
    """``||replayed - guessed||^2 / D * 1e6`` over two lists of parameters; inf when their shapes differ."""
    if len(replayed) != len(guessed) or any(a.shape != b.shape for a, b in zip(replayed, guessed, strict=True)):
        return float("inf")
    total = sum(float((a.float() - b.to(a.device).float()).pow(2).sum()) for a, b in zip(replayed, guessed,
                                                                                          strict=True))
    count = sum(a.numel() for a in replayed)
    return total / max(count, 1) * ERROR_SCALE


@contextmanager
def deferred_steps(optimizers: list[torch.optim.Optimizer]) -> Iterator[list[list[Tensor | None] | None]]:
    """Within the block, ``optimizer.step()`` of each optimizer records its gradients instead of stepping.

    Yields one slot per optimizer: None while it has not stepped, else its parameters' gradients (param-group
    order) at the time of the step. A guidance that trains a model of its own in the forward pass (VSD's score
    model) steps it there; a Picard evaluation must leave the state alone and hand the gradient to the replay."""
    captured: list[list[Tensor | None] | None] = [None] * len(optimizers)

    def recorder(index: int, optimizer: torch.optim.Optimizer) -> Callable[..., None]:
        def step(closure: Any = None) -> None:
            captured[index] = [None if p.grad is None else p.grad.detach().clone()
                               for group in optimizer.param_groups for p in group["params"]]
        return step

    for index, optimizer in enumerate(optimizers):
        optimizer.step = recorder(index, optimizer)  # type: ignore[method-assign]
    try:
        yield captured
    finally:
        for optimizer in optimizers:
            del optimizer.step  # the class's step again


def apply_deferred(optimizers: list[torch.optim.Optimizer], captured: list[list[Tensor | None] | None]) -> None:
    """Step each optimizer that :func:`deferred_steps` recorded a step of, with the recorded gradients."""
    for optimizer, grads in zip(optimizers, captured, strict=True):
        if grads is None:
            continue
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for param, grad in zip(params, grads, strict=True):
            param.grad = None if grad is None else grad.to(param.device)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


class PicardTarget(Protocol):
    """What the Picard iteration needs of a trainer."""

    step: int

    def snapshot(self) -> Any:
        """Everything the run's next steps depend on, cloned (parameters, buffers, optimizer states, counters)."""

    def restore(self, snapshot: Any) -> None:
        """Return to a :meth:`snapshot`."""

    def evaluation_state(self) -> Any:
        """The cloned state a gradient evaluation reads (parameters and buffers, no optimizer state)."""

    def parameters_now(self) -> list[Tensor]:
        """The optimized parameters, cloned, in the optimizer's order (what the error compares)."""

    def gradients_at(self, state: Any | None, step: int) -> Any:
        """Step ``step``'s gradient evaluated at ``state`` (None: the current state), without updating anything."""

    def replay(self, gradients: Any) -> dict[str, float]:
        """Apply one step's update with gradients from :meth:`gradients_at`; returns the step's logged terms."""

    def ends_window(self, step: int) -> bool:
        """Whether the update that ends at ``step`` changes the parameters' shapes (Gaussian densification)."""


@dataclass
class Guess:
    """A guessed state of one future step: its parameters (for the error) and its evaluation state."""

    parameters: list[Tensor]
    state: Any


@dataclass
class PicardWindow:
    """The iteration's state between calls: the threshold and the guesses of the steps after the current one."""

    window: int
    threshold: float
    ema_decay: float = 0.9
    adaptivity: str = "median"  # median | mean | fixed
    guesses: list[Guess] = field(default_factory=list)  # steps k+1, k+2, ... of the current step k
    iterations: int = 0
    evaluations: int = 0
    accepted: int = 0

    def stride(self, errors: list[float]) -> int:
        """Steps accepted this iteration: through the first step whose guess was off by more than tau."""
        for index, error in enumerate(errors):
            if error > self.threshold:
                return index + 1
        return len(errors)

    def update_threshold(self, errors: list[float]) -> None:
        """``tau <- decay tau + (1 - decay) e`` (``e``: the middle step's error, or the mean; fixed: unchanged)."""
        finite = [e for e in errors if e != float("inf")]
        if self.adaptivity == "fixed" or not finite:
            return
        error = finite[len(finite) // 2] if self.adaptivity == "median" else sum(finite) / len(finite)
        self.threshold = self.ema_decay * self.threshold + (1.0 - self.ema_decay) * error

    def state_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "iterations": self.iterations, "evaluations": self.evaluations,
                "accepted": self.accepted,
                "guesses": [{"parameters": g.parameters, "state": g.state} for g in self.guesses]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.threshold = float(state["threshold"])
        self.iterations, self.evaluations = int(state["iterations"]), int(state["evaluations"])
        self.accepted = int(state["accepted"])
        self.guesses = [Guess(g["parameters"], g["state"]) for g in state["guesses"]]

    def summary(self) -> dict[str, float]:
        """The efficiency measures: gradient evaluations and iterations per accepted step."""
        steps = max(self.accepted, 1)
        return {"picard_iterations": self.iterations, "picard_evaluations": self.evaluations,
                "picard_steps": self.accepted, "evaluations_per_step": self.evaluations / steps,
                "steps_per_iteration": self.accepted / max(self.iterations, 1), "picard_threshold": self.threshold}

    # ------------------------------------------------------------------------------------------- one iteration
    def advance(self, target: PicardTarget, max_steps: int, pool: GradientPool | None) -> list[tuple[int, dict]]:
        """One Picard iteration from ``target.step``: evaluate the window, replay, accept, move on.

        Returns ``(step, terms)`` for each accepted step; ``target`` is left at the last accepted step."""
        start = target.step
        # the run's first step goes alone: state a guidance creates at its first call (CDS's fixed noise) then
        # exists in every guess
        size = 1 if start == 0 else min(self.window, max_steps - start)
        for offset in range(1, size):  # the window stops at a step that reshapes the parameters
            if target.ends_window(start + offset):
                size = offset
                break
        origin = target.snapshot()  # for evaluations at guesses here, and to come back to if anything fails
        try:
            return self._advance(target, start, size, pool, origin)
        except BaseException:  # out of memory, a worker failed, a second Ctrl-C: back to the last accepted state
            target.restore(origin)
            self.guesses = []
            raise

    def _advance(self, target: PicardTarget, start: int, size: int, pool: GradientPool | None,
                 origin: Any) -> list[tuple[int, dict]]:
        current = target.parameters_now()
        while len(self.guesses) < size:  # a fresh window (first iteration, after a reshape): the current state
            self.guesses.append(self.guesses[-1] if self.guesses else Guess(current, target.evaluation_state()))
        if any(p.shape != q.shape for p, q in zip(current, self.guesses[0].parameters, strict=True)):
            self.guesses = [Guess(current, target.evaluation_state()) for _ in range(size)]

        gradients = self.evaluate(target, start, size, pool, origin)
        self.iterations += 1
        self.evaluations += size

        errors: list[float] = []
        replays: list[Guess] = []
        accepted: list[tuple[int, dict]] = []
        keep = None  # the snapshot at the last accepted step, when the replay goes on past it
        for offset in range(size):
            terms = target.replay(gradients[offset])
            replayed = Guess(target.parameters_now(), target.evaluation_state())
            errors.append(parameter_error(replayed.parameters, self.guesses[offset].parameters))
            replays.append(replayed)
            if keep is None:
                accepted.append((target.step, {**terms, "picard_threshold": self.threshold}))
                if errors[-1] > self.threshold and offset + 1 < size:
                    keep = target.snapshot()  # accepted through here; replay on for better guesses
        self.update_threshold(errors)
        if keep is not None:
            target.restore(keep)
        stride = len(accepted)
        self.accepted += stride
        following = replays[stride:]  # replays past the accepted step guess the next window's steps
        self.guesses = following if following else [replays[-1]]
        if target.ends_window(target.step):
            self.guesses = []  # reshaped: the next window starts from the new state
        return accepted

    def evaluate(self, target: PicardTarget, start: int, size: int, pool: GradientPool | None,
                 origin: Any) -> list[Any]:
        """The window's gradients: step ``start`` at the current state (exact, ``origin`` its snapshot), the others
        at their guesses.

        With a pool of N - 1 processes, this process (worker 0) takes the steps ``offset % N == 0`` and the workers
        the others, all at once; without one, this process evaluates them one after another."""
        evaluators = 1 if pool is None else pool.size + 1
        remote = [offset for offset in range(1, size) if offset % evaluators]
        for offset in remote:
            pool.submit(offset, self.guesses[offset - 1].state, start + offset)  # type: ignore[union-attr]
        gradients: dict[int, Any] = {0: target.gradients_at(None, start)}
        own = [offset for offset in range(1, size) if offset not in remote]
        if own:
            for offset in own:
                gradients[offset] = target.gradients_at(self.guesses[offset - 1].state, start + offset)
            target.restore(origin)
        if remote:
            gradients.update(pool.collect(len(remote)))  # type: ignore[union-attr]
        return [gradients[offset] for offset in range(size)]


# --------------------------------------------------------------------------------------------- worker processes
class GradientPool:
    """Processes that evaluate gradients at guessed states: ``worker(rank, payload, tasks, results)`` runs in each
    (spawned, so CUDA works), takes ``(slot, state, step)`` tasks and puts ``(slot, gradients)`` or
    ``(slot, "error", text)`` results."""

    def __init__(self, worker: Callable[..., None], payload: Any, count: int) -> None:
        context = mp.get_context("spawn")
        self.tasks = context.Queue()
        self.results = context.Queue()
        self.processes = [context.Process(target=worker, args=(rank, payload, self.tasks, self.results), daemon=True)
                          for rank in range(1, count + 1)]
        for process in self.processes:
            process.start()

    @property
    def size(self) -> int:
        """The number of worker processes."""
        return len(self.processes)

    def submit(self, slot: int, state: Any, step: int) -> None:
        self.tasks.put((slot, move_tree(state, "cpu"), step))

    def collect(self, count: int) -> dict[int, Any]:
        """Wait for ``count`` results; a worker's exception (or death) becomes a :class:`TrainingError`."""
        results: dict[int, Any] = {}
        while len(results) < count:
            try:
                item = self.results.get(timeout=WORKER_POLL_S)
            except (EOFError, OSError) as error:  # a worker died while sending its result
                raise TrainingError(f"a trainer.parallel worker process died while sending a result ({error!r}). "
                                    "`dreamengine resume RUN_DIR` continues from the last checkpoint") from None
            except queue.Empty:
                dead = [p for p in self.processes if not p.is_alive()]
                if dead:
                    raise TrainingError(f"a trainer.parallel worker process died (exit code {dead[0].exitcode}; "
                                        "out of memory?). `dreamengine resume RUN_DIR` continues from the last "
                                        "checkpoint; set trainer.parallel.workers=1 in its config.yaml to train "
                                        "in this process only") from None
                continue
            if len(item) == 3 and item[1] == "error":
                raise TrainingError(f"a trainer.parallel worker failed:\n{item[2]}")
            slot, gradients = item
            results[slot] = gradients
        return results

    def close(self) -> None:
        for _ in self.processes:
            self.tasks.put(None)
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()


def serve(evaluate: Callable[[Any, int], Any], tasks: Any, results: Any) -> None:
    """A worker's loop: evaluate each ``(slot, state, step)`` task until a ``None`` arrives, or until the main
    process is gone (a worker never outlives the run that started it)."""
    parent = os.getppid()
    while True:
        try:
            task = tasks.get(timeout=WORKER_POLL_S)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if task is None:
            return
        slot, state, step = task
        try:
            results.put((slot, move_tree(evaluate(state, step), "cpu")))
        except Exception:  # noqa: BLE001 - reported to the main process, which stops the run with the text
            results.put((slot, "error", traceback.format_exc()))


__all__ = ["ERROR_SCALE", "GradientPool", "Guess", "PicardTarget", "PicardWindow", "apply_deferred", "clone_tree",
           "deferred_steps", "move_tree", "parameter_error", "serve", "step_seed"]
