"""Bad input through the CLI: one clear paragraph on stderr, exit code 2, never a traceback.

The first test goes through a real subprocess (the entry point as a user starts it); the rest call
``dreamengine.cli.main`` in this process, which is the same code without importing torch again."""

from pathlib import Path

import pytest

from tests.cli_helpers import TINY, run_cli, run_cli_in_process


def assert_clean_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    stderr = " ".join(result.stderr.split())  # messages are wrapped at the terminal width
    for fragment in fragments:
        assert fragment in stderr, result.stderr


def test_unknown_config_key(tmp_path: Path):
    result = run_cli(["generate", "a red cube", "trainer.max_step=5"], tmp_path)
    assert_clean_error(result, "trainer.max_step", "trainer.max_steps", "command-line")
    assert not (tmp_path / "runs").exists()


def test_unknown_key_in_config_file(tmp_path: Path):
    (tmp_path / "mine.yaml").write_text("camera:\n  heigth: 32\n")
    result = run_cli_in_process(["generate", "a red cube", "--config", "mine.yaml"], tmp_path)
    assert_clean_error(result, "camera.heigth", "mine.yaml", "camera.height")


def test_wrong_type(tmp_path: Path):
    assert_clean_error(run_cli_in_process(["generate", "a red cube", "seed=abc"], tmp_path), "seed")


@pytest.mark.parametrize("prompt", ["a red cub", "a shiny teapot"])
def test_unknown_toy_word_lists_vocabulary(tmp_path: Path, prompt: str):
    result = run_cli_in_process(["generate", prompt, *TINY], tmp_path)
    assert_clean_error(result, "cube", "red")
    assert not (tmp_path / "runs").exists()


def test_empty_prompt(tmp_path: Path):
    assert_clean_error(run_cli_in_process(["generate", "  "], tmp_path), "prompt is empty")


def test_missing_run_dir(tmp_path: Path):
    for command in ("resume", "export", "eval"):
        assert_clean_error(run_cli_in_process([command, "runs/nope"], tmp_path), "runs/nope", "does not exist")


def test_corrupt_checkpoint(tmp_path: Path):
    result = run_cli_in_process(["generate", "a red cube", *TINY, "trainer.max_steps=2", "--no-export"], tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    (run_dir / "ckpt" / "last.pt").write_bytes(b"this is not a checkpoint")
    for command in ("resume", "export", "eval"):
        assert_clean_error(run_cli_in_process([command, str(run_dir)], tmp_path), "corrupt")


def test_overrides_after_options_are_read(tmp_path: Path):
    result = run_cli_in_process(["generate", "a red cube", "--config", "quickstart", "trainer.max_step=5"], tmp_path)
    assert_clean_error(result, "trainer.max_step", "trainer.max_steps")


@pytest.mark.parametrize(("args", "fragments"), [
    (["generate", "a red cube", "trainer.max_steps=-5"], ["trainer.max_steps", ">= 1", "-5"]),
    (["generate", "a red cube", "guidance.guidance_scale=nan"], ["guidance.guidance_scale", "finite"]),
    (["generate", "a red cube", "camera.elevation_range=[60,-10]"], ["camera.elevation_range", "low <= high"]),
    (["generate", "a red cube", "guidance.max_step_percent=1.5"], ["guidance.max_step_percent", "[0, 1]"]),
    (["generate", "a red cube", "optim.betas={a: 1}"], ["command-line overrides"]),
    (["generate", "a red cube", "prompt=\x1f"], ["could not parse overrides"]),
])
def test_out_of_range_settings_stop_before_any_work(tmp_path: Path, monkeypatch, capsys, args, fragments):
    """In-process (no subprocess needed: nothing heavy loads before the config is refused)."""
    from dreamengine.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err.replace("\n  ", " "), err
    assert not (tmp_path / "runs").exists()


def test_a_prompts_file_without_prompts_is_refused(tmp_path: Path, monkeypatch, capsys):
    from dreamengine.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("\n# only a comment\n   \n")
    assert main(["batch", "empty.txt"]) == 2
    assert "has no prompts" in capsys.readouterr().err.replace("\n  ", " ")
