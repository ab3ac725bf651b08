"""dreamengine batch: prompts files, a local pool that survives a killed worker, Ray, skipping finished jobs."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import imageio.v3 as iio
import pytest

from dreamengine.batch import _init_worker, read_jobs, run_batch, threads_per_worker
from dreamengine.errors import DreamEngineError
from tests.cli_helpers import TINY, popen_cli, run_cli

SHORT = [*TINY, "trainer.max_steps=3", "trainer.checkpoint_every=1"]


def test_prompts_files_and_their_bad_lines(tmp_path: Path) -> None:
    txt = tmp_path / "prompts.txt"
    txt.write_text("a red cube\n\n# a comment\na teapot\na blue torus\na red cube\n")
    jobs, errors = read_jobs(txt, overrides=["seed=1"])
    assert [(j.line, j.prompt) for j in jobs] == [(1, "a red cube"), (5, "a blue torus")]
    assert len(errors) == 2
    assert errors[0].startswith(f"{txt}:4: unknown word 'teapot'")
    assert errors[1].startswith(f"{txt}:6: the same job as line 1")
    assert jobs[0].overrides == ["seed=1"] and jobs[0].config is None

    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("\n".join([
        json.dumps({"prompt": "a red cube", "seed": 3, "overrides": {"trainer": {"max_steps": 5}}}),
        "{not json",
        json.dumps({"prompt": "a snowman", "system": "luciddreamer-toy"}),
        json.dumps({"prompt": "a snowman", "colour": "red"}),
        json.dumps({"prompt": ""}),
        json.dumps({"prompt": "a red cube", "seed": "three"}),
        json.dumps({"prompt": "a red cube", "overrides": ["trainer.max_stesp=5"]}),
        json.dumps(["a list"]),
    ]) + "\n")
    jobs, errors = read_jobs(jsonl, config="quickstart")
    assert [(j.line, j.seed, j.system, j.config) for j in jobs] == [(1, 3, None, "quickstart"),
                                                                    (3, None, "luciddreamer-toy", None)]
    assert jobs[0].all_overrides == ["trainer.max_steps=5", "seed=3"]
    assert [e.split(": ", 1)[0] for e in errors] == [f"{jsonl}:{n}" for n in (2, 4, 5, 6, 7, 8)]
    assert "not valid JSON" in errors[0] and "unknown key(s) colour" in errors[1] and '"prompt"' in errors[2]
    assert '"seed" must be an integer' in errors[3] and "max_stesp" in errors[4] and "JSON object" in errors[5]
    with pytest.raises(DreamEngineError, match="prompts file not found"):
        read_jobs(tmp_path / "missing.txt")


def attempt_pids(out_dir: Path) -> dict[str, list[int]]:
    logs = (out_dir / ".batch").glob("*.attempts.jsonl") if (out_dir / ".batch").is_dir() else []
    return {log.name.split(".")[0]: [json.loads(line)["pid"] for line in log.read_text().splitlines()]
            for log in logs}


@pytest.mark.slow
def _worker_threads() -> tuple[int, str]:
    import torch

    return torch.get_num_threads(), os.environ["OMP_NUM_THREADS"]


def test_local_workers_share_the_cores_instead_of_each_taking_all() -> None:
    import multiprocessing
    from concurrent import futures

    cores = len(os.sched_getaffinity(0))
    assert threads_per_worker(1) == cores and threads_per_worker(2) == max(1, cores // 2)
    assert threads_per_worker(4 * cores) == 1
    with futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                                     initargs=(0, 0, 1)) as pool:
        assert pool.submit(_worker_threads).result() == (1, "1")


def test_a_killed_worker_is_retried_and_the_batch_completes(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue torus\n")
    out = tmp_path / "out"
    args = ["batch", str(prompts), "-o", str(out), "--workers", "1", *TINY, "trainer.max_steps=30",
            "trainer.checkpoint_every=2", "trainer.log_every=1"]
    process = popen_cli(args, tmp_path)
    deadline = time.time() + 300
    victim = None
    while victim is None and time.time() < deadline:  # kill the first job's worker once it has trained a bit
        for key, pids in attempt_pids(out).items():
            log = out / key / "metrics.jsonl"
            if log.is_file() and len(log.read_text().splitlines()) >= 5:
                victim = key
                os.kill(pids[-1], signal.SIGKILL)
                break
        time.sleep(0.1)
    assert victim is not None, "no job started training"
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr + stdout
    assert "retrying line 1" in stdout and "worker process died" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["prompt"], r["status"]) for r in summary] == [("a red cube", "done"), ("a blue torus", "done")]
    attempts = {r["key"]: r["attempts"] for r in summary}
    assert attempts[victim] == 2 and sum(attempts.values()) == 3
    for record in summary:
        assert (out / record["key"] / "final" / "model.glb").is_file()
        assert 0 < record["metrics"]["mask_iou"] <= 1
    resumed_log = [json.loads(line)["step"] for line in (out / victim / "metrics.jsonl").read_text().splitlines()]
    assert resumed_log == list(range(1, 31))  # resumed from its checkpoint, not started over
    sheet = iio.imread(out / "contact_sheet.png")
    assert sheet.shape[0] > 100 and sheet.shape[1] >= 2 * 160

    again = run_cli(args, tmp_path)  # the same command again: nothing left to do
    assert again.returncode == 0, again.stderr
    assert "2 job(s) already finished" in again.stdout
    assert sum(len(p) for p in attempt_pids(out).values()) == 3


@pytest.mark.slow
def test_ray_runs_a_batch_of_three(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue torus\na snowman\n")
    jobs, errors = read_jobs(prompts, overrides=SHORT)
    assert not errors
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = run_batch(jobs, tmp_path / "out", retries=1, use_ray=True)
    finally:
        ray.shutdown()
    assert [(r.prompt, r.status, r.attempts) for r in results] == [(p, "done", 1) for p in
                                                                   ("a red cube", "a blue torus", "a snowman")]
    for result in results:
        assert (tmp_path / "out" / result.key / "final" / "model.glb").is_file()
    rerun = run_batch(jobs, tmp_path / "out", retries=1)  # finished jobs are skipped, no pool started
    assert [r.status for r in rerun] == ["skipped"] * 3
