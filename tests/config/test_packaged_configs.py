"""Every packaged config loads, and the per-method Stable Diffusion configs hold their sources' key defaults
(guidance-math.md and the configs each file's header names)."""

import pytest

from dreamengine.config import available_configs, load_config
from dreamengine.config.guidance import GUIDANCE_CONFIGS

SD21_BASE = "stabilityai/stable-diffusion-2-1-base"
LUCID_NEGATIVE = ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, "
                  "oversaturation.")
LUCID_GUIDANCE = {"grad_scale": 0.1, "warmup_steps": 1500, "min_step_percent": 0.02, "max_step_percent": 0.5,
                  "warmup_max_step_percent": 0.98, "noise_offset": 0.1, "grad_injection": "sum"}

# config -> {dotted key: expected value}
SOURCE_DEFAULTS = {
    "vsd-sd": {  # threestudio configs/prolificdreamer.yaml + stable_diffusion_vsd_guidance.py
        "guidance.name": "vsd", "guidance.guidance_scale": 7.5, "guidance.guidance_scale_lora": 1.0,
        "guidance.min_step_percent": 0.02, "guidance.max_step_percent": [5000, 0.98, 0.5, 5001],
        "guidance.camera_condition_type": "c2w", "guidance.camera_dropout": 0.1, "guidance.lora_rank": 4,
        "guidance.lora_lr": 1e-4, "guidance.lora_n_timestamp_samples": 1,
        "prompt_processor.front_threshold": 30.0, "prompt_processor.back_threshold": 30.0,
        "camera.elevation_range": [-10.0, 45.0], "loss.lambda_sparsity": 10.0,
        "loss.lambda_opaque": [10000, 0.0, 1000.0, 10001], "render.shading": "albedo", "trainer.max_steps": 25000,
        "optim.name": "adamw", "optim.weight_decay": 0.01,
    },
    "bsd-sd": {  # PlacidDreamer train_step_BSD on LucidDreamer's schedule
        "guidance.name": "bsd", "guidance.variant": "standard", "guidance.classifier_ratio": 15.0,
        **{f"guidance.{k}": v for k, v in LUCID_GUIDANCE.items()},
        "prompt_processor.negative_prompt": "unrealistic, blurry, low quality.", "camera.batch_size": 4,
        "trainer.max_steps": 5000, "prompt_processor.view_interpolation": True,
    },
    "ism-sd": {  # LucidDreamer arguments/__init__.py and configs
        "guidance.name": "ism", "guidance.guidance_scale": 7.5, "guidance.delta_t": 80, "guidance.delta_t_start": 100,
        "guidance.xs_delta_t": 200, "guidance.xs_inv_steps": 5, "guidance.inverse_prompt": "",
        **{f"guidance.{k}": v for k, v in LUCID_GUIDANCE.items()},
        "prompt_processor.negative_prompt": LUCID_NEGATIVE, "camera.batch_size": 4, "trainer.max_steps": 5000,
        "prompt_processor.view_interpolation": True,
    },
    "csm-sd": {  # reconstruction on LucidDreamer's settings
        "guidance.name": "csm", "guidance.guidance_scale": 7.5, "guidance.weighting": "ism", "guidance.delta_t": 80,
        **{f"guidance.{k}": v for k, v in LUCID_GUIDANCE.items()},
        "camera.batch_size": 4, "trainer.max_steps": 5000, "prompt_processor.view_interpolation": True,
    },
    "csd-sd": {  # CVMI-Lab/Classifier-Score-Distillation configs/csd-if.yaml (NeRF stage)
        "guidance.name": "csd", "guidance.guidance_scale": 1.0, "guidance.uncond_scale": [0, 0.0, -1.0, 5000],
        "guidance.null_scale": [0, -1.0, 0.0, 5000], "guidance.weighting": "sds",  # the SD code path's 1 - abar
        "guidance.max_step_percent": [5000, 0.98, 0.5, 5001], "guidance.grad_normalize": True,
        "guidance.perpneg_scale": 3.0, "prompt_processor.perp_neg": True, "prompt_processor.front_threshold": 30.0,
        "prompt_processor.negative_prompt": "oversaturated color, ugly, tiling, low quality, noisy",
        "camera.elevation_range": [-10.0, 45.0], "render.random_background_prob": 0.5,
    },
    "cds-sd": {  # sail-sg/Consistent3D configs/consistency-coarse.yaml
        "guidance.name": "cds", "guidance.guidance_scale": [0, 100.0, 50.0, 3000],
        "guidance.cur_steps": [0, 700, 100, 3000], "guidance.anneal": "sqrt", "guidance.end_gap": 100,
        "guidance.perturb_factor": 200, "guidance.min_step_percent": 0.1, "guidance.max_step_percent": 0.98,
        "guidance.share_noise": True, "guidance.weighting": "uniform", "guidance.grad_clip": [0, 2.0, 8.0, 3000],
        "camera.batch_size": 8, "camera.elevation_range": [-10.0, 45.0], "render.random_background_prob": 0.5,
        "loss.lambda_orient": [0, 10.0, 1000.0, 2000], "trainer.max_steps": 3000,
    },
    "nfsd-sd": {  # Katzir et al. Eq. 6
        "guidance.name": "nfsd", "guidance.guidance_scale": 7.5, "guidance.small_t_threshold": 200,
        "prompt_processor.negative_prompt": "unrealistic, blurry, low quality, out of focus, ugly, low contrast, "
                                            "dull, dark, low-resolution, gloomy",
    },
    "asd-sd": {  # ScaleDreamer configs/single-prompt_benchmark/asd_sd_nerf.yaml
        "guidance.name": "asd", "guidance.guidance_scale": 7.5, "guidance.plus_ratio": 0.1,
        "guidance.plus_random": True, "guidance.min_step_percent": [0, 0.5, 0.02, 25000],
        "guidance.max_step_percent": [0, 0.98, 0.5, 25000], "prompt_processor.front_threshold": 30.0,
        "camera.elevation_range": [-10.0, 45.0], "loss.lambda_sparsity": 30.0,
        "loss.lambda_opaque": [10000, 0.0, 100.0, 10001], "optim.betas": [0.0, 0.99], "trainer.max_steps": 25000,
        "optim.name": "adamw", "optim.weight_decay": 0.01, "prompt_processor.perp_neg": True,
        "guidance.guidance_perp_neg": -0.5, "render.random_background_prob": 0.5,
    },
    "dreamfusion-sd": {  # threestudio configs/dreamfusion-sd.yaml
        "guidance.name": "sds", "guidance.guidance_scale": 100.0, "camera.elevation_range": [-10.0, 45.0],
        "optim.lr_encoding": 0.01, "optim.lr_network": 0.01,
    },
}


# config -> (progressive band (start_level, start_step, update_steps), albedo warm-up steps) of its source:
# threestudio's ProgressiveBandHashGrid and diffuse-with-point-light-material ambient_only_steps
SOURCE_BAND_AND_WARMUP = {
    "dreamfusion-sd": ((8, 2000, 500), 2001),  # threestudio configs/dreamfusion-sd.yaml
    "dreamfusion-if": ((8, 2000, 500), 2001),  # threestudio configs/dreamfusion-if.yaml
    "cds-sd": ((8, 0, 250), 1000),  # sail-sg/Consistent3D configs/consistency-coarse.yaml
    "csd-sd": ((0, 0, 0), 5001),  # CVMI-Lab/Classifier-Score-Distillation configs/csd-if.yaml: a plain HashGrid
    "magic123": ((8, 2000, 300), 0),  # threestudio configs/magic123-coarse-sd.yaml: no-material (albedo)
}


def value_at(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return list(cfg) if isinstance(cfg, (list, tuple)) else cfg


@pytest.mark.parametrize("name", available_configs())
def test_every_packaged_config_loads(name):
    cfg = load_config(name, prompt="a red cube")
    assert cfg.prompt == "a red cube"
    if name == "learned-toy":  # the toy world through the shipped learned model (no user path)
        assert (cfg.teacher.name, cfg.teacher.model, cfg.guidance.name) == \
            ("deepfloyd-if", "builtin:toy-learned-camera", "sds")
    elif name.endswith("-toy"):
        assert cfg.teacher.name.startswith("toyworld")  # toyworld or toyworld-multiview (mvdream-toy)
        method = name[: -len("-toy")]
        if method in GUIDANCE_CONFIGS:  # <method>-toy configs are named after their guidance
            assert cfg.guidance.name == method


def test_every_method_has_a_toy_and_an_sd_config():
    names = set(available_configs())
    for method in ("vsd", "bsd", "csm", "ism", "csd", "nfsd", "asd", "cds", "dsd"):
        assert f"{method}-toy" in names and f"{method}-sd" in names, method


@pytest.mark.parametrize("name", sorted(SOURCE_DEFAULTS))
def test_sd_config_holds_its_sources_defaults(name):
    cfg = load_config(name, prompt="a hamburger")
    assert cfg.teacher.name == "stable-diffusion" and cfg.teacher.model == SD21_BASE
    assert cfg.scene.name == "nerf" and cfg.scene.num_levels == 16 and cfg.scene.log2_hashmap_size == 19
    assert cfg.device == "auto"
    for key, expected in SOURCE_DEFAULTS[name].items():
        assert value_at(cfg, key) == expected, key


def test_learned_toy_is_the_quickstart_but_for_its_teacher_and_guidance_settings():
    """learned-toy.yaml copies quickstart.yaml (configs cannot inherit): everything but the teacher section and
    the guidance settings tuned for the learned teacher must stay equal, so a quickstart fix reaches it too."""
    import dataclasses

    quick = dataclasses.asdict(load_config("quickstart", prompt="a red cube"))
    learned = dataclasses.asdict(load_config("learned-toy", prompt="a red cube"))
    tuned = {"guidance_scale", "min_step_percent", "max_step_percent"}  # bench/results/learned_teacher.md
    for section in quick:
        if section == "teacher":
            continue
        if section == "guidance":
            assert {k: v for k, v in quick[section].items() if k not in tuned} == \
                {k: v for k, v in learned[section].items() if k not in tuned}
            continue
        assert quick[section] == learned[section], f"learned-toy.yaml's {section} section differs from quickstart's"


@pytest.mark.parametrize("name", available_configs())
def test_progressive_band_and_albedo_warmup_follow_the_sources(name):
    """On with the source's values where the source has them, off (0) everywhere else."""
    cfg = load_config(name, prompt="a hamburger")
    band, warmup = SOURCE_BAND_AND_WARMUP.get(name, ((0, 0, 0), 0))
    scene = cfg.scene
    assert (getattr(scene, "progressive_start_level", 0), getattr(scene, "progressive_start_step", 0),
            getattr(scene, "progressive_update_steps", 0)) == band
    assert cfg.render.albedo_warmup_steps == warmup
    if warmup:
        assert cfg.render.shading == "diffuse"  # the shading the warm-up hands over to
