"""Rough edges a new user met (issue 18, item 6): no float32-modules warning when loading Stable Diffusion, the
summary printed before the list of written files, and a refine run's report naming its config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dreamengine.api import Asset
from dreamengine.cli import execute_and_report
from dreamengine.report.page import config_name


def test_loading_stable_diffusion_prints_no_float32_modules_warning(tmp_path: Path, capfd: pytest.CaptureFixture):
    pytest.importorskip("diffusers")
    from dreamengine.teachers.stable_diffusion import StableDiffusionTeacher
    from tests.tiny_sd import save_tiny_sd

    folder = save_tiny_sd(tmp_path / "tiny-sd")
    capfd.readouterr()
    StableDiffusionTeacher(str(folder), dtype="float32")
    out, err = capfd.readouterr()
    assert "kept in float32" not in out + err and "torch_dtype" not in out + err


def test_the_summary_comes_before_the_written_files(tmp_path: Path, capsys: pytest.CaptureFixture):
    (tmp_path / "final").mkdir()
    (tmp_path / "timings.json").write_text(json.dumps({"render": 0.01, "steps_timed": 3}))
    (tmp_path / "report.html").write_text("<html></html>")
    files = [tmp_path / "final" / "model.glb", tmp_path / "final" / "turntable.mp4"]

    class FakeRun:
        run_dir = tmp_path
        trainer = None

        def execute(self, callbacks):
            return Asset(tmp_path, files, {"training": {"steps": 3}})

    assert execute_and_report(FakeRun()) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("median seconds per step (3 steps)")
    assert lines[1:] == [f"wrote {files[0]}", f"wrote {files[1]}", f"wrote {tmp_path / 'report.html'}"]


def test_a_refine_runs_config_is_named():
    assert config_name(["dreamengine", "refine", "mesh.glb", "a red cube"]) == "refine-toy"
    assert config_name(["dreamengine", "refine", "mesh.glb", "a red cube", "--config", "refine-sd"]) == "refine-sd"
    assert config_name(["/x/cli.py", "generate", "a refine of a cube"]) == "quickstart"
