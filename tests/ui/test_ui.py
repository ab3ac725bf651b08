"""The UI's parts without a browser: settings -> overrides, the runs-folder fence, the progress file and its ETA,
and a failing worker that leaves the queue working."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from dreamengine.errors import DreamEngineError
from dreamengine.ui.jobs import JobQueue
from dreamengine.ui.worker import ProgressWriter, progress_path
from tests.cli_helpers import cli_env


def test_settings_become_overrides_and_bad_extras_are_refused():
    from dreamengine.ui.app import settings_overrides

    assert settings_overrides(300, 3, 48, 2, 7.5, 0, "render.num_samples=24 'prompt_processor.negative=a b'") == [
        "trainer.max_steps=300", "seed=3", "camera.height=48", "camera.width=48", "camera.batch_size=2",
        "guidance.guidance_scale=7.5", "trainer.preview_every=0", "render.num_samples=24",
        "prompt_processor.negative=a b"]
    assert settings_overrides(None, None, None, None, None, None, "") == []
    with pytest.raises(DreamEngineError, match="key=value"):
        settings_overrides(None, None, None, None, None, None, "seed 3")


def test_only_run_folders_inside_the_runs_folder_are_accepted(tmp_path: Path):
    runs = tmp_path / "runs"
    (runs / "a-run").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (runs / "link").symlink_to(tmp_path / "outside")
    jobs = JobQueue(runs)
    try:
        assert jobs.inside("a-run") == (runs / "a-run").resolve()
        for name in ("..", "../outside", str(tmp_path / "outside"), "link", ".", "", "missing", "/etc"):
            with pytest.raises(DreamEngineError, match="not a run folder"):
                jobs.inside(name)
    finally:
        jobs.close()


def test_progress_file_has_step_eta_and_preview(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    now = [100.0]
    monkeypatch.setattr("dreamengine.ui.worker.time.perf_counter", lambda: now[0])
    (tmp_path / "previews").mkdir()
    writer = ProgressWriter(tmp_path, every_seconds=0.0)
    event = SimpleNamespace(step=1, max_steps=11, terms={"loss": 2.0}, stage="", preview=None)
    writer(event)
    assert json.loads(progress_path(tmp_path).read_text())["eta_seconds"] is None  # one step: no rate yet
    now[0] = 102.0
    writer(SimpleNamespace(step=2, max_steps=11, terms={"loss": 1.0}, stage="", preview=None))
    now[0] = 104.0
    writer(SimpleNamespace(step=3, max_steps=11, terms={"loss": 0.5}, stage="",
                           preview=tmp_path / "previews" / "step-000003.png"))
    state = json.loads(progress_path(tmp_path).read_text())
    # 2 s per step since the first event; 8 steps left
    assert state["step"] == 3 and state["terms"] == {"loss": 0.5}
    assert state["eta_seconds"] == pytest.approx(8 * 2.0, rel=1e-6)
    assert state["preview"] == os.path.join("previews", "step-000003.png")


def test_a_failing_worker_is_reported_and_the_queue_goes_on(tmp_path: Path):
    runs = tmp_path / "runs"
    jobs = JobQueue(runs, python=sys.executable, env=cli_env(tmp_path))
    try:
        bad = jobs.submit_generate("a red cube", "quickstart", None, ["camera.height=-3"])
        missing = jobs.submit_generate("a red cube", "no-such-config", None, [])
        assert [row[-1] for row in jobs.table()][1] == "queued"  # one at a time
        assert jobs.wait(bad, timeout=120) == "failed"
        assert "camera sizes must be >= 1" in jobs.error_text(bad)
        assert jobs.wait(missing, timeout=120) == "failed"
        assert "no-such-config" in jobs.error_text(missing)
        with pytest.raises(DreamEngineError, match="prompt is empty"):
            jobs.submit_generate("  ", "quickstart", None, [])
    finally:
        jobs.close()
