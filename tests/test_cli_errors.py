"""Bad input through the CLI: one clear paragraph on stderr, exit code 2, never a traceback."""

from pathlib import Path

import pytest

from tests.cli_helpers import TINY, run_cli


def assert_clean_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_unknown_config_key(tmp_path: Path):
    result = run_cli(["generate", "a red cube", "trainer.max_step=5"], tmp_path)
    assert_clean_error(result, "trainer.max_step", "trainer.max_steps", "command-line")
    assert not (tmp_path / "runs").exists()


def test_unknown_key_in_config_file(tmp_path: Path):
    (tmp_path / "mine.yaml").write_text("camera:\n  heigth: 32\n")
    result = run_cli(["generate", "a red cube", "--config", "mine.yaml"], tmp_path)
    assert_clean_error(result, "camera.heigth", "mine.yaml", "camera.height")


def test_wrong_type(tmp_path: Path):
    assert_clean_error(run_cli(["generate", "a red cube", "seed=abc"], tmp_path), "seed")


@pytest.mark.parametrize("prompt", ["a red cub", "a shiny teapot"])
def test_unknown_toy_word_lists_vocabulary(tmp_path: Path, prompt: str):
    result = run_cli(["generate", prompt, *TINY], tmp_path)
    assert_clean_error(result, "cube", "red")
    assert not (tmp_path / "runs").exists()


def test_empty_prompt(tmp_path: Path):
    assert_clean_error(run_cli(["generate", "  "], tmp_path), "prompt is empty")


def test_missing_run_dir(tmp_path: Path):
    for command in ("resume", "export", "eval"):
        assert_clean_error(run_cli([command, "runs/nope"], tmp_path), "runs/nope", "does not exist")


def test_corrupt_checkpoint(tmp_path: Path):
    result = run_cli(["generate", "a red cube", *TINY, "trainer.max_steps=2", "--no-export"], tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    (run_dir / "ckpt" / "last.pt").write_bytes(b"this is not a checkpoint")
    for command in ("resume", "export", "eval"):
        assert_clean_error(run_cli([command, str(run_dir)], tmp_path), "corrupt")


def test_overrides_after_options_are_read(tmp_path: Path):
    result = run_cli(["generate", "a red cube", "--config", "quickstart", "trainer.max_step=5"], tmp_path)
    assert_clean_error(result, "trainer.max_step", "trainer.max_steps")
