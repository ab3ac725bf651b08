"""A tiny random-weight Stable Diffusion stack, saved as a user's local diffusers folder would be.

``save_tiny_sd(folder)`` builds the components from small configs (diffusers' dummy-component pattern),
wraps them in ``StableDiffusionPipeline`` and calls ``save_pretrained``, so the teacher loads them through
the same ``from_pretrained`` path as a downloaded model. The tokenizer is a real ``CLIPTokenizer``: with
CLIP's BPE vocabulary from the ``open_clip_torch`` wheel (its ``bpe_simple_vocab_16e6.txt.gz``, read from an
installed package or from the wheel downloaded once without installing it: open_clip imports torchvision),
otherwise (offline) with a character-level vocabulary of the same layout (bytes, bytes + ``</w>``, no merges,
start/end tokens).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

TEXT_DIM = 32
MAX_TOKENS = 32  # the tiny tokenizer's model_max_length (CLIP: 77); short enough to test truncation cheaply


def byte_characters() -> list[str]:
    """The 256 printable stand-ins for bytes that CLIP's BPE uses, in CLIP's order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
OPEN_CLIP_WHEEL = "open_clip_torch==3.3.0"  # only its BPE file is read; the package is never installed


def clip_bpe_file() -> Path | None:
    """CLIP's BPE vocabulary file: from an installed open_clip_torch, else from its wheel, downloaded once from
    the package registry (``pip download --no-deps``: open_clip itself needs torchvision, which must not be
    installed here) into a cache folder. None when neither is possible (offline)."""
    spec = importlib.util.find_spec("open_clip")  # locates the package without running its __init__
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / BPE_NAME
        if path.is_file():
            return path
    cache = Path(os.environ.get("DREAMENGINE_TEST_CACHE", Path(tempfile.gettempdir()) / "dreamengine-test-cache"))
    cached = cache / BPE_NAME
    if cached.is_file():
        return cached
    with tempfile.TemporaryDirectory() as folder:
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", OPEN_CLIP_WHEEL, "--no-deps", "-q", "-d", folder],
                           check=True, capture_output=True, timeout=180)
            wheel = next(Path(folder).glob("*.whl"))
            with zipfile.ZipFile(wheel) as archive:
                data = archive.read(f"open_clip/{BPE_NAME}")
        except (subprocess.SubprocessError, OSError, StopIteration, KeyError):
            return None
    cache.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.tmp")
    partial.write_bytes(data)
    partial.replace(cached)  # atomic: concurrent test processes never read half a file
    return cached


def clip_bpe_merges() -> list[str] | None:
    """CLIP's merges (see :func:`clip_bpe_file`), or None when the vocabulary file cannot be had."""
    path = clip_bpe_file()
    if path is None:
        return None
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    return lines[1:49152 - 256 - 2 + 1]  # CLIP's vocabulary size 49408 = 2 * 256 + merges + 2 specials


def tiny_tokenizer():
    """A ``CLIPTokenizer`` with CLIP's vocabulary layout (real CLIP ids when open_clip_torch is present)."""
    from transformers import CLIPTokenizer

    chars = byte_characters()
    merges = clip_bpe_merges() or []
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], model_max_length=MAX_TOKENS,
                         pad_token="<|endoftext|>")


def tiny_unet_and_vae(in_channels: int) -> tuple:
    """The tiny UNet (32, 64 channels; ``in_channels`` 4, or 8 for Zero123's concatenated reference latent) and
    the 8x-downsampling tiny VAE, with the current torch seed."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8,
                                in_channels=in_channels, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=TEXT_DIM,
                                norm_num_groups=8, attention_head_dim=(2, 4))
    vae = AutoencoderKL(block_out_channels=(32, 32, 64, 64), in_channels=3, out_channels=3, layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=64,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    return unet, vae


def tiny_components(prediction_type: str = "epsilon", seed: int = 0) -> dict:
    """UNet (32, 64 channels), 8x-downsampling VAE, 2-layer CLIP text encoder, DDIM schedule config."""
    from diffusers import DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    unet, vae = tiny_unet_and_vae(in_channels=4)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type=prediction_type)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": scheduler}


def save_tiny_sd(folder: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Write a tiny SD stack to ``folder`` with ``StableDiffusionPipeline.save_pretrained``; returns it."""
    from diffusers import StableDiffusionPipeline

    parts = tiny_components(prediction_type, seed)
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return Path(folder)


def tiny_t5_tokenizer():
    """A word-level T5 (Unigram) tokenizer over the words the tests use; unknown words map to <unk>."""
    from transformers import T5Tokenizer

    words = ["a", "cat", "dog", "photo", "of", "side", "front", "back", "backside", "overhead", "view", ",", "red",
             "cube"]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz,."]
    pieces += [("▁" + w, -1.0) for w in words] + [("▁", -2.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def save_tiny_if(folder: Path, seed: int = 0, camera: bool = False) -> Path:
    """Write a tiny DeepFloyd IF stage-I stack (6-channel learned-variance UNet, T5 encoder) to ``folder``;
    ``camera``: its UNet has MVDream's camera embedding (a "projection" class embedding of 16 inputs), as the
    camera-conditioned learned toy teacher does."""
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=37,
                                           num_layers=2, num_heads=4, pad_token_id=0, eos_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=32, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"), in_channels=3, out_channels=6,
        cross_attention_dim=TEXT_DIM, encoder_hid_dim=TEXT_DIM, attention_head_dim=8, addition_embed_type="text",
        addition_embed_type_num_heads=2, cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift",
        act_fn="gelu", norm_num_groups=8,
        **({"class_embed_type": "projection", "projection_class_embeddings_input_dim": 16} if camera else {}))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", thresholding=True,
                              dynamic_thresholding_ratio=0.95, sample_max_value=1.0, prediction_type="epsilon",
                              variance_type="learned_range")
    pipe = IFPipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler,
                      safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return Path(folder)


def save_tiny_zero123(folder: Path, seed: int = 0) -> Path:
    """A tiny random-weight Zero123 in the diffusers layout of kxic/zero123-xl: an 8-channel UNet, the tiny VAE, a
    2-layer CLIP vision encoder with projection, a DDIM scheduler and ``cc_projection`` (Linear(32 + 4 -> 32))."""
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet, vae = tiny_unet_and_vae(in_channels=8)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, projection_dim=TEXT_DIM, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    projection = torch.nn.Linear(TEXT_DIM + 4, TEXT_DIM)
    folder = Path(folder)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    encoder.save_pretrained(folder / "image_encoder")
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "cc_projection").mkdir(parents=True, exist_ok=True)
    (folder / "cc_projection" / "config.json").write_text(
        f'{{"_class_name": "CCProjection", "in_channel": {TEXT_DIM + 4}, "out_channel": {TEXT_DIM}}}')
    save_file({"projection.weight": projection.weight.detach().contiguous(),
               "projection.bias": projection.bias.detach().contiguous()},
              str(folder / "cc_projection" / "diffusion_pytorch_model.safetensors"))
    (folder / "model_index.json").write_text('{"_class_name": "Zero1to3StableDiffusionPipeline"}')
    return folder


def tiny_ip_adapter(unet, image_embed_dim: int = TEXT_DIM, seed: int = 0) -> dict:
    """Random IP-Adapter weights for ``unet`` in the layout diffusers' ``load_ip_adapter`` reads (its dummy
    image-projection pattern): ``image_proj`` (proj: image embedding -> 4 tokens of cross_attention_dim, norm) and
    ``ip_adapter`` (``{k}.to_k_ip.weight`` / ``{k}.to_v_ip.weight`` for the k-th cross-attention, k = 1, 3, 5, ...)."""
    generator = torch.Generator().manual_seed(seed)
    cross = int(unet.config.cross_attention_dim)
    tokens = 4
    image_proj = {"proj.weight": torch.randn(tokens * cross, image_embed_dim, generator=generator) * 0.1,
                  "proj.bias": torch.zeros(tokens * cross), "norm.weight": torch.ones(cross),
                  "norm.bias": torch.zeros(cross)}
    blocks = list(unet.config.block_out_channels)
    ip_adapter, key = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        ip_adapter[f"{key}.to_k_ip.weight"] = torch.randn(hidden, cross, generator=generator) * 0.1
        ip_adapter[f"{key}.to_v_ip.weight"] = torch.randn(hidden, cross, generator=generator) * 0.1
        key += 2
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def tiny_image_encoder(projection_dim: int = TEXT_DIM, seed: int = 0):
    """A 2-layer CLIP vision encoder with projection (32 px images)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, projection_dim=projection_dim, num_hidden_layers=2,
        num_attention_heads=4, image_size=32, patch_size=8))


def save_tiny_ip_adapter(folder: Path, unet, seed: int = 0) -> Path:
    """``tiny_ip_adapter`` saved as h94/IP-Adapter lays it out: ``models/ip-adapter_sd15.safetensors`` (keys
    ``image_proj.*`` and ``ip_adapter.*``) and ``models/image_encoder/`` (a tiny CLIP vision encoder)."""
    from safetensors.torch import save_file

    weights = tiny_ip_adapter(unet, seed=seed)
    flat = {f"{part}.{key}": value.contiguous() for part, values in weights.items() for key, value in values.items()}
    models = Path(folder) / "models"
    models.mkdir(parents=True, exist_ok=True)
    save_file(flat, str(models / "ip-adapter_sd15.safetensors"))
    tiny_image_encoder(seed=seed).save_pretrained(models / "image_encoder")
    return Path(folder)
