"""Loading MVDream's weights into diffusers modules: the original checkpoint (LDM key names) or a diffusers folder.

The original checkpoint (``MVDream/MVDream``'s ``sd-v2.1-base-4view.pt``) is the state dict of MVDream's
``LatentDiffusionInterface`` (``bytedance/MVDream``, ``mvdream/ldm/interface.py``): the multi-view UNet under
``model.diffusion_model.``, the SD VAE under ``first_stage_model.``, the OpenCLIP text encoder under
``cond_stage_model.`` and the noise schedule's buffers. It is converted with diffusers' own LDM-to-diffusers
functions (``diffusers.loaders.single_file_utils``):

* UNet: ``create_unet_diffusers_config_from_ldm`` + ``convert_ldm_unet_checkpoint``. MVDream's camera MLP
  ``camera_embed.{0,2}`` (``Linear(16, 1280)``, SiLU, ``Linear(1280, 1280)``, added to the time embedding;
  ``mvdream/ldm/modules/diffusionmodules/openaimodel.py``, ``MultiViewUNetModel``) has the layout diffusers'
  "projection" class embedding (``TimestepEmbedding(16, 1280)``) has; its keys are renamed to the LDM class-label
  keys ``label_emb.0.{0,2}`` so the same converter maps them to ``class_embedding.linear_{1,2}``.
* VAE: ``create_vae_diffusers_config_from_ldm`` + ``convert_ldm_vae_checkpoint``.
* Text encoder and tokenizer: from ``base_model`` (SD 2.1-base): MVDream kept SD 2.1's OpenCLIP encoder frozen,
  and MVDream-threestudio embeds prompts with SD 2.1-base's diffusers text encoder, not the checkpoint's.
* Noise schedule: the original config's ``linear_start``/``linear_end``/``timesteps`` (LDM's "linear" schedule is
  diffusers' ``scaled_linear``) and ``parameterization``.

The original config is MVDream's ``mvdream/configs/sd-v2-base.yaml`` (:data:`MVDREAM_SD21_CONFIG` holds its values)
or a YAML file of the same layout (``teacher.original_config``; the tests use a tiny one).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from dreamengine.errors import ConfigError, DreamEngineError
from dreamengine.teachers.stable_diffusion import (
    ModelNotFoundError,
    check_local_folder,
    explain_load_failure,
    looks_like_path,
    quiet_loading,
)
from dreamengine.teachers.weights import CHECKPOINT_SUFFIXES, download_checkpoint, read_state_dict

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CAMERA_KEYS = {"camera_embed.0.": "label_emb.0.0.", "camera_embed.2.": "label_emb.0.2."}  # MVDream -> LDM class labels

# mvdream/configs/sd-v2-base.yaml (bytedance/MVDream): the values the conversion reads
MVDREAM_SD21_CONFIG: dict[str, Any] = {"model": {"params": {
    "linear_start": 0.00085, "linear_end": 0.0120, "timesteps": 1000, "scale_factor": 0.18215,
    "parameterization": "eps",
    "unet_config": {"params": {
        "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
        "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
        "num_head_channels": 64, "use_spatial_transformer": True, "use_linear_in_transformer": True,
        "transformer_depth": 1, "context_dim": 1024, "legacy": False,
        "camera_dim": 16}},
    "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
        "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}},
}}}
PARAMETERIZATIONS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
CHECKPOINT_HINT = ("On a machine with internet access run `hf download MVDream/MVDream sd-v2.1-base-4view.pt "
                   "--local-dir DIR`, copy DIR here and set teacher.model=DIR/sd-v2.1-base-4view.pt.")


def read_original_config(path: str | None) -> dict[str, Any]:
    """The original model config: MVDream's sd-v2-base.yaml values, or the YAML file at ``path``."""
    if path is None:
        return copy.deepcopy(MVDREAM_SD21_CONFIG)
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"teacher.original_config {file} does not exist; give MVDream's config YAML "
                          "(mvdream/configs/sd-v2-base.yaml layout) or null for its built-in values")
    try:
        config = yaml.safe_load(file.read_text())
        params = config["model"]["params"]
        if not (isinstance(params["unet_config"]["params"], dict)
                and isinstance(params["first_stage_config"]["params"]["ddconfig"], dict)):
            raise TypeError("unet_config.params and first_stage_config.params.ddconfig must be mappings")
    except (yaml.YAMLError, KeyError, TypeError) as error:
        raise ConfigError(f"teacher.original_config {file} is not an MVDream/LDM model config (model.params with "
                          f"unet_config and first_stage_config): {error}") from None
    return config


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in an original checkpoint file (a ``state_dict`` entry is unwrapped)."""
    if not path.is_file():
        raise ModelNotFoundError(f"MVDream checkpoint {path} does not exist. {CHECKPOINT_HINT}")
    try:
        return read_state_dict(path)
    except TypeError:
        raise ModelNotFoundError(f"MVDream checkpoint {path} does not hold a state dict. {CHECKPOINT_HINT}") from None
    except Exception as error:  # truncated downloads, wrong formats
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotFoundError(f"could not read the MVDream checkpoint {path} ({first}); it may be truncated or "
                                 f"not a checkpoint. {CHECKPOINT_HINT}") from None


def check_checkpoint_parts(state: dict[str, torch.Tensor], path: Path) -> None:
    """ModelNotFoundError naming what is missing when the checkpoint lacks the UNet, its camera MLP or the VAE."""
    parts = {"the multi-view UNet (model.diffusion_model.*)": UNET_PREFIX,
             "the camera embedding (model.diffusion_model.camera_embed.*)": UNET_PREFIX + "camera_embed.",
             "the VAE (first_stage_model.*)": VAE_PREFIX}
    missing = [name for name, prefix in parts.items() if not any(key.startswith(prefix) for key in state)]
    if missing:
        plain_sd = "the camera embedding" in missing[0] and len(missing) == 1
        what = " (a single-view Stable Diffusion checkpoint?)" if plain_sd else ""
        raise ModelNotFoundError(f"MVDream checkpoint {path} has no {' and no '.join(missing)}{what}: it is partial "
                                 f"or not an MVDream checkpoint. {CHECKPOINT_HINT}")


def load_converted(module: torch.nn.Module, weights: dict[str, torch.Tensor], what: str, path: Path) -> None:
    """Load converted weights strictly; ModelNotFoundError when keys are missing, extra or of another shape."""
    try:
        result = module.load_state_dict(weights, strict=False)
    except RuntimeError as error:  # shape mismatches
        detail = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error))
        raise ModelNotFoundError(f"the {what} in MVDream checkpoint {path} does not match teacher.original_config "
                                 f"({detail})") from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelNotFoundError(
            f"the {what} in MVDream checkpoint {path} is incomplete or of another model: {len(result.missing_keys)} "
            f"missing weights (e.g. {', '.join(result.missing_keys[:3]) or '-'}), {len(result.unexpected_keys)} "
            f"unexpected (e.g. {', '.join(result.unexpected_keys[:3]) or '-'}). {CHECKPOINT_HINT}")


def convert_unet(state: dict[str, torch.Tensor], original: dict[str, Any], path: Path) -> Any:
    """The multi-view UNet as a ``UNet2DConditionModel`` with a 16 -> time-embedding "projection" class embedding."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm

    unet_params = original["model"]["params"]["unet_config"]["params"]
    vae_levels = len(original["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["ch_mult"])
    image_size = int(unet_params["image_size"]) * 2 ** (vae_levels - 1)
    renamed = {}
    for key, value in state.items():
        for ours, ldm in CAMERA_KEYS.items():
            if key.startswith(UNET_PREFIX + ours):
                key = UNET_PREFIX + ldm + key[len(UNET_PREFIX + ours):]
        renamed[key] = value
    with quiet_loading():
        config = create_unet_diffusers_config_from_ldm(original, renamed, image_size=image_size)
        config.update(class_embed_type="projection",
                      projection_class_embeddings_input_dim=int(unet_params.get("camera_dim") or 16))
        try:
            weights = convert_ldm_unet_checkpoint(renamed, config)
        except KeyError as error:
            raise ModelNotFoundError(f"MVDream checkpoint {path} lacks the UNet weight {error}: it is partial. "
                                     f"{CHECKPOINT_HINT}") from None
        unet = UNet2DConditionModel(**config)
    load_converted(unet, weights, "UNet", path)
    return unet


def convert_vae(state: dict[str, torch.Tensor], original: dict[str, Any], path: Path) -> Any:
    """The SD VAE of the checkpoint as an ``AutoencoderKL``."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

    params = original["model"]["params"]
    ddconfig = params["first_stage_config"]["params"]["ddconfig"]
    vae_state = {key: value for key, value in state.items() if key.startswith(VAE_PREFIX)}
    with quiet_loading():
        config = create_vae_diffusers_config_from_ldm(original, vae_state, image_size=int(ddconfig["resolution"]),
                                                      scaling_factor=float(params.get("scale_factor", 0.18215)))
        weights = convert_ldm_vae_checkpoint(vae_state, config)
        vae = AutoencoderKL(**config)
    load_converted(vae, weights, "VAE", path)
    return vae


def scheduler_from(original: dict[str, Any]) -> Any:
    """The noise schedule of the original config (only ``alphas_cumprod`` and the prediction type are used)."""
    from diffusers import DDIMScheduler

    params = original["model"]["params"]
    parameterization = str(params.get("parameterization", "eps"))
    if parameterization not in PARAMETERIZATIONS:
        raise ConfigError(f"teacher.original_config: unknown parameterization {parameterization!r}; expected one of "
                          f"{', '.join(PARAMETERIZATIONS)}")
    return DDIMScheduler(num_train_timesteps=int(params.get("timesteps", 1000)),
                         beta_start=float(params.get("linear_start", 0.00085)),
                         beta_end=float(params.get("linear_end", 0.012)), beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         prediction_type=PARAMETERIZATIONS[parameterization])


def load_text_encoder(base_model: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """(tokenizer, text encoder) of a diffusers SD folder or hub repo (its ``tokenizer`` and ``text_encoder``)."""
    source = str(check_local_folder(base_model)) if looks_like_path(base_model) else base_model
    try:
        with quiet_loading():
            from transformers import CLIPTextModel, CLIPTokenizer

            tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
            text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=dtype)
    except ImportError as error:
        raise DreamEngineError(f"the mvdream teacher needs diffusers and transformers ({error}); install them with: "
                               "pip install 'dreamengine[sd]'") from None
    except (OSError, ValueError, RuntimeError) as error:
        raise explain_load_failure(base_model, None, error) from None
    return tokenizer, text_encoder


def pipeline_from_checkpoint(path: Path, base_model: str, original_config: str | None, dtype: torch.dtype) -> Any:
    """A ``StableDiffusionPipeline`` holding MVDream's converted UNet and VAE, ``base_model``'s tokenizer and text
    encoder, and the original config's schedule."""
    original = read_original_config(original_config)
    state = read_checkpoint(path)
    check_checkpoint_parts(state, path)
    unet = convert_unet(state, original, path)
    vae = convert_vae(state, original, path)
    del state
    tokenizer, text_encoder = load_text_encoder(base_model, dtype)
    with quiet_loading():
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler_from(original), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)


def convert_to_diffusers_folder(checkpoint: str | Path, folder: str | Path, base_model: str,
                                original_config: str | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Convert an original checkpoint once and write it as a diffusers folder (``save_pretrained``), which
    ``teacher.model`` can then point at without converting again (``tools/convert_mvdream.py``)."""
    pipeline = pipeline_from_checkpoint(Path(checkpoint).expanduser(), base_model, original_config, dtype)
    with quiet_loading():
        pipeline.to(dtype=dtype).save_pretrained(str(folder))
    return Path(folder)


def load_mvdream_pipeline(model: str, checkpoint_file: str | None, base_model: str, original_config: str | None,
                          revision: str | None, dtype: torch.dtype) -> Any:
    """MVDream as a ``StableDiffusionPipeline`` (UNet with the camera class embedding; attention not yet
    multi-view) from a checkpoint file, a hub repo holding one, or a diffusers folder (module docstring)."""
    from dreamengine.teachers.stable_diffusion import load_pipeline

    if not str(model).strip():
        raise ConfigError("teacher.model is empty: give MVDream's checkpoint file (sd-v2.1-base-4view.pt), a hub repo "
                          "holding it (MVDream/MVDream) or a diffusers folder")
    if looks_like_path(model):
        path = Path(model).expanduser()
        if path.is_dir():
            return load_pipeline(model, revision, dtype)
        if path.suffix not in CHECKPOINT_SUFFIXES and not path.exists():
            raise ModelNotFoundError(f"teacher model {path} does not exist: give MVDream's checkpoint file or a "
                                     f"diffusers folder. {CHECKPOINT_HINT}")
        return pipeline_from_checkpoint(path, base_model, original_config, dtype)
    if checkpoint_file:
        return pipeline_from_checkpoint(download_checkpoint(model, checkpoint_file, revision), base_model,
                                        original_config, dtype)
    return load_pipeline(model, revision, dtype)  # a diffusers-layout repo on the hub


__all__ = ["MVDREAM_SD21_CONFIG", "check_checkpoint_parts", "convert_to_diffusers_folder", "convert_unet",
           "convert_vae", "load_mvdream_pipeline", "pipeline_from_checkpoint", "read_checkpoint",
           "read_original_config"]
