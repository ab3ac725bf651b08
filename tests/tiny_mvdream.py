"""A tiny random-weight MVDream, saved both ways a user may have MVDream: a diffusers folder, and an original-style
checkpoint (LDM key names, as in ``sd-v2.1-base-4view.pt``) with its model config YAML.

The modules are built from a tiny config in the layout of MVDream's ``mvdream/configs/sd-v2-base.yaml``
(:data:`TINY_ORIGINAL_CONFIG`) with diffusers' own config translation, so the diffusers folder and the checkpoint
hold the same weights. The checkpoint is written by mapping the diffusers state dicts back to LDM names
(:func:`ldm_unet_state`, :func:`ldm_vae_state`; the inverse of diffusers' ``convert_ldm_*_checkpoint``), with the
camera MLP under MVDream's ``camera_embed.{0,2}`` and, like the real file, an OpenCLIP text encoder entry and the
schedule buffers (which the loader ignores). Loading both and comparing them tests the conversion end to end.
"""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import torch
import yaml

from tests.tiny_sd import TEXT_DIM, tiny_components

TINY_ORIGINAL_CONFIG = {"model": {"params": {
    "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215,
    "parameterization": "eps",
    "unet_config": {"params": {
        "image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32, "attention_resolutions": [2],
        "num_res_blocks": 1, "channel_mult": [1, 2], "num_head_channels": 8, "use_spatial_transformer": True,
        "use_linear_in_transformer": True, "transformer_depth": 1, "context_dim": TEXT_DIM, "legacy": False,
        "camera_dim": 16}},
    "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}},
}}}


def tiny_modules(seed: int = 0) -> dict:
    """Random-weight UNet (with the 16 -> 128 camera "projection" class embedding) and VAE of the tiny config, and
    the tiny SD stack's tokenizer, text encoder and scheduler."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    parts = tiny_components(seed=seed)
    original = copy.deepcopy(TINY_ORIGINAL_CONFIG)
    with warnings.catch_warnings():  # image_size is deprecated for from_single_file, not for these functions
        warnings.simplefilter("ignore", FutureWarning)
        unet_config = create_unet_diffusers_config_from_ldm(original, {}, image_size=64)
        vae_config = create_vae_diffusers_config_from_ldm(original, {}, image_size=64, scaling_factor=0.18215)
    unet_config.update(class_embed_type="projection", projection_class_embeddings_input_dim=16)
    torch.manual_seed(seed + 1)
    parts["unet"] = UNet2DConditionModel(**unet_config)
    parts["vae"] = AutoencoderKL(**vae_config)
    return parts


RESNET_TO_LDM = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                 ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def ldm_unet_key(key: str, layers: int, up_attention: set[int]) -> str:
    """A diffusers UNet key under MVDream's (LDM) name; ``layers`` is layers_per_block."""
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "class_embedding.linear_1": "camera_embed.0", "class_embedding.linear_2": "camera_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for ours, theirs in fixed.items():
        if key.startswith(ours + "."):
            return theirs + key[len(ours):]

    def resnet(rest: str) -> str:
        for ours, theirs in RESNET_TO_LDM:
            rest = rest.replace(ours, theirs)
        return rest

    if match := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = 1 + block * (layers + 1) + layer
        return f"input_blocks.{index}.0.{resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if match := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(match[1]) + 1) * (layers + 1)}.0.op.{match[2]}"
    if match := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        kind, layer, rest = match[1], int(match[2]), match[3]
        return f"middle_block.{2 * layer}.{resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
    if match := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = block * (layers + 1) + layer
        return f"output_blocks.{index}.0.{resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    if match := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        block = int(match[1])
        position = 2 if block in up_attention else 1
        return f"output_blocks.{block * (layers + 1) + layers}.{position}.conv.{match[2]}"
    raise KeyError(f"no LDM name for UNet key {key}")


def ldm_unet_state(unet) -> dict[str, torch.Tensor]:
    layers = int(unet.config.layers_per_block)
    up_attention = {i for i, kind in enumerate(unet.config.up_block_types) if "CrossAttn" in kind}
    return {"model.diffusion_model." + ldm_unet_key(key, layers, up_attention): value.clone()
            for key, value in unet.state_dict().items()}


def ldm_vae_key(key: str, levels: int) -> str:
    """A diffusers AutoencoderKL key under its LDM (``first_stage_model``) name."""
    key = key.replace("conv_norm_out", "norm_out")
    if match := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{match[3].replace('conv_shortcut', 'nin_shortcut')}"
    if match := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        rest = match[2]
        for ours, theirs in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                             ("to_out.0", "proj_out")):
            rest = rest.replace(ours, theirs)
        return f"{match[1]}.mid.attn_1.{rest}"
    if match := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"encoder.down.{match[1]}.block.{match[2]}.{match[3].replace('conv_shortcut', 'nin_shortcut')}"
    if match := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"encoder.down.{match[1]}.downsample.conv.{match[2]}"
    if match := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        level = levels - 1 - int(match[1])
        return f"decoder.up.{level}.block.{match[2]}.{match[3].replace('conv_shortcut', 'nin_shortcut')}"
    if match := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        return f"decoder.up.{levels - 1 - int(match[1])}.upsample.conv.{match[2]}"
    return key  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv


def ldm_vae_state(vae) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    state = {}
    for key, value in vae.state_dict().items():
        name = ldm_vae_key(key, levels)
        if ".mid.attn_1." in name and name.endswith("weight") and value.dim() == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        state["first_stage_model." + name] = value.clone()
    return state


def save_tiny_mvdream(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny MVDream as ``folder/diffusers`` (a diffusers folder), ``folder/sd-v2.1-base-4view.pt`` (an
    original-style checkpoint) and ``folder/tiny-mvdream.yaml`` (its model config). Returns the three paths."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = tiny_modules(seed)
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "diffusers")
    state = {**ldm_unet_state(parts["unet"]), **ldm_vae_state(parts["vae"])}
    state["cond_stage_model.model.token_embedding.weight"] = torch.randn(8, TEXT_DIM)  # ignored, as in the real file
    state["alphas_cumprod"] = parts["scheduler"].alphas_cumprod.float()
    torch.save(state, folder / "sd-v2.1-base-4view.pt")
    (folder / "tiny-mvdream.yaml").write_text(yaml.safe_dump(TINY_ORIGINAL_CONFIG))
    return {"diffusers": folder / "diffusers", "checkpoint": folder / "sd-v2.1-base-4view.pt",
            "config": folder / "tiny-mvdream.yaml"}
