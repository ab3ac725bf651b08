from pathlib import Path

import pytest

from dreamengine.config import available_configs, config_to_yaml, find_config, load_config
from dreamengine.config.guidance import SDSConfig
from dreamengine.errors import ConfigError


def test_defaults_and_packaged_quickstart():
    cfg = load_config()
    assert cfg.guidance.name == "sds" and isinstance(cfg.guidance, SDSConfig)
    assert "quickstart" in available_configs()
    quick = load_config("quickstart", prompt="a red cube")
    # the camera-aware exact toy teacher, one view at a time (bench/results/teacher_information.md)
    assert (quick.teacher.name, quick.teacher.views_per_group) == ("toyworld-multiview", 1)
    assert quick.camera.views_per_group == 1 and quick.prompt == "a red cube"
    assert find_config("quickstart").name == "quickstart.yaml"


def test_overrides_apply_with_types():
    cfg = load_config("quickstart", ["trainer.max_steps=7", "camera.elevation_range=[0,45]",
                                     "guidance.max_step_percent=[0, 0.9, 0.5, 100]", "seed=3"])
    assert cfg.trainer.max_steps == 7 and cfg.seed == 3
    assert cfg.camera.elevation_range == [0.0, 45.0]
    assert cfg.guidance.max_step_percent == [0, 0.9, 0.5, 100]


def test_resolved_config_round_trips(tmp_path: Path):
    cfg = load_config("quickstart", ["trainer.max_steps=9"], prompt="a blue torus")
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg


def test_unknown_key_names_key_source_and_suggestion(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  max_step: 10\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "trainer.max_step" in message and str(path) in message and "trainer.max_steps" in message
    with pytest.raises(ConfigError, match="guidance.guidance_scal.*command-line.*guidance.guidance_scale"):
        load_config(None, ["guidance.guidance_scal=3"])


def test_wrong_type_and_bad_values():
    with pytest.raises(ConfigError, match="trainer.max_steps.*command-line"):
        load_config(None, ["trainer.max_steps=many"])
    with pytest.raises(ConfigError, match="guidance.weighting"):
        load_config(None, ["guidance.weighting=cubic"])
    with pytest.raises(ConfigError, match="guidance.max_step_percent"):
        load_config(None, ["guidance.max_step_percent=[1,2]"])
    with pytest.raises(ConfigError, match="unknown guidance.name 'sdss'.*Did you mean 'sds'"):
        load_config(None, ["guidance.name=sdss"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["trainer.max_steps"])


def test_missing_config_and_interpolations_are_rejected(tmp_path: Path):
    with pytest.raises(ConfigError, match="quickstrt.*Did you mean 'quickstart'"):
        load_config("quickstrt")
    path = tmp_path / "env.yaml"
    path.write_text("output_dir: ${oc.env:HOME}\n")
    with pytest.raises(ConfigError, match="interpolation"):
        load_config(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_changing_a_section_name_replaces_the_section():
    # quickstart's guidance keys are SDS's; naming another method starts from that method's defaults
    cfg = load_config("quickstart", ["guidance.name=ism", "guidance.delta_t=50"])
    assert cfg.guidance.name == "ism" and cfg.guidance.delta_t == 50 and cfg.guidance.grad_scale == 0.1
    # the scene too, and keys given for the new name in the same layer still count
    cfg = load_config("quickstart", ["scene.name=gaussians", "scene.num_points=123"])
    assert cfg.scene.name == "gaussians" and cfg.scene.num_points == 123
    # keys written for the old name in the overriding layer itself are still errors
    with pytest.raises(ConfigError, match="weighting"):
        load_config("quickstart", ["guidance.name=ism", "guidance.weighting=sds"])


def test_keys_renamed_since_earlier_versions_still_load(tmp_path):
    old_run = tmp_path / "config.yaml"  # what a run written before eval.elevations existed holds
    old_run.write_text("prompt: a red cube\neval:\n  num_views: 4\n  elevation: 30.0\n  resolution: 32\n")
    cfg = load_config(old_run)
    assert cfg.eval.elevations == [30.0] and cfg.eval.num_views == 4
    assert load_config(old_run, ["eval.elevations=[0,45]"]).eval.elevations == [0.0, 45.0]  # the new key wins
