"""Zero123Teacher: Zero123 / Zero123-XL / Stable Zero123, a novel-view diffusion model conditioned on one image.

Every network is a diffusers / transformers class; only the camera projection and the conditioning are written
here (threestudio's zero123 and stable-zero123 guidance, as in their papers):

    c_concat   = VAE.encode(2 x_ref - 1).mode()                [1, 4, h, w]  (unscaled, as Zero123 was trained)
    clip       = CLIPVisionModelWithProjection(x_ref).image_embeds   [1, 1, 768]
    T          = [d_polar, sin d_azimuth, cos d_azimuth, d_4]  (radians; polar = 90 - elevation)
                 d_4 = d_radius (camera distance - reference distance)                    variant zero123
                 d_4 = radians(90 - reference elevation), the reference's own polar angle   variant stable-zero123
    c_crossattn = cc_projection(cat(clip, T))                    Linear(768 + 4 -> 768)
    eps        = UNet(cat(z_t, c_concat), t, encoder_hidden_states=c_crossattn)     8 input channels

The unconditional branch of classifier-free guidance drops both conditions: zeros for ``c_crossattn`` (after the
projection) and for ``c_concat``. ``x_ref`` is the reference image (object over white) at the model's resolution
(256 px); the CLIP image is resized to the encoder's size (224) and normalized with CLIP's mean and std.

Loading: a local diffusers-layout folder (the layout of ``kxic/zero123-xl``: ``unet/``, ``vae/``,
``image_encoder/``, ``scheduler/``, ``cc_projection/`` with weights ``projection.weight`` / ``projection.bias``),
or an original LDM checkpoint (``stable_zero123.ckpt``: ``model.diffusion_model.*``, ``first_stage_model.*``,
``cc_projection.*``), converted with diffusers' single-file converters; its frozen CLIP image encoder is the
standard ViT-L/14 and is read from ``teacher.image_encoder``. Conditioning protocol: as
:class:`~dreamengine.teachers.toy_image.ToyImageTeacher` (``set_reference``; ``embed`` gives 1 for any non-empty
text, 0 for ``""``). Settings: :class:`dreamengine.config.teachers.Zero123TeacherConfig`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from dreamengine.config.teachers import Zero123TeacherConfig
from dreamengine.core.cameras import Cameras, wrap_azimuth
from dreamengine.core.protocols import TeacherContext
from dreamengine.errors import ConfigError, DreamEngineError
from dreamengine.teachers.stable_diffusion import (
    ModelNotFoundError,
    alphas_cumprod_from_scheduler,
    explain_load_failure,
    quiet_loading,
    resolve_dtype,
    teacher_device,
    to_epsilon,
)
from dreamengine.teachers.weights import CHECKPOINT_SUFFIXES, download_checkpoint, read_state_dict

VARIANTS = ("zero123", "stable-zero123")
# checkpoint files a config may name by file name alone, and the hub repositories that hold them
HUB_CHECKPOINTS = {"stable_zero123.ckpt": "stabilityai/stable-zero123"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CAMERA_DIM = 4
# Zero123's UNet (Stable Diffusion 1.x with 8 input channels) and VAE, for LDM checkpoints without configs
ZERO123_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 32, "in_channels": 8, "out_channels": 4, "layers_per_block": 2, "cross_attention_dim": 768,
    "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
ZERO123_VAE_CONFIG: dict[str, Any] = {
    "sample_size": 256, "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.18215}


def relative_camera(elevation: Tensor, azimuth: Tensor, distance: Tensor, reference: tuple[float, float, float],
                    variant: str = "zero123") -> Float[Tensor, "B 4"]:
    """Zero123's camera vector for target cameras (degrees, [B] each) seen from the reference camera
    (elevation, azimuth in degrees, distance): [d_polar (rad), sin d_az, cos d_az, d_4] (module docstring)."""
    ref_elevation, ref_azimuth, ref_distance = reference
    elevation, azimuth, distance = (v.to(torch.float64) for v in (elevation, azimuth, distance))
    d_polar = torch.deg2rad((90.0 - elevation) - (90.0 - ref_elevation))
    d_azimuth = torch.deg2rad(wrap_azimuth(azimuth - ref_azimuth))
    if variant == "zero123":
        fourth = distance - ref_distance
    else:
        fourth = torch.full_like(elevation, math.radians(90.0 - ref_elevation))
    return torch.stack([d_polar, torch.sin(d_azimuth), torch.cos(d_azimuth), fourth], dim=-1)


class Zero123Teacher:
    """A frozen Zero123-family model (implements :class:`dreamengine.core.protocols.Teacher`).

    Args:
        model: a local diffusers-layout folder, a hub repo id of one, or an LDM ``.ckpt`` / ``.safetensors`` file.
        variant: ``zero123`` (Zero123, Zero123-XL) or ``stable-zero123`` (the camera vector's 4th entry).
        image_encoder: the CLIP image encoder for checkpoint files (folder or repo id of a
            ``CLIPVisionModelWithProjection``); ignored for diffusers folders, which hold their own.
        device, dtype: as the Stable Diffusion teacher. resolution: the model's image side (256).
    """

    image_conditioned = True

    def __init__(self, model: str, variant: str = "zero123", image_encoder: str = "openai/clip-vit-large-patch14",
                 revision: str | None = None, device: str | torch.device = "cpu", dtype: str = "auto",
                 resolution: int = 256) -> None:
        if variant not in VARIANTS:
            raise ConfigError(f"teacher.variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if not str(model).strip():
            raise ConfigError("teacher.model is empty: give a Zero123 diffusers folder (the layout of "
                              "kxic/zero123-xl) or a Stable Zero123 checkpoint file (stable_zero123.ckpt)")
        self.model, self.variant, self.revision = str(model), variant, revision
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.resolution = int(resolution)
        with quiet_loading():
            checkpoint = checkpoint_file(self.model, revision)
            if checkpoint is not None:
                parts = load_ldm_checkpoint(checkpoint, image_encoder)
            else:
                parts = load_diffusers_folder(self.model, revision)
        self.unet, self.vae, self.image_encoder, self.cc_projection, scheduler_config = parts
        if int(self.unet.config.in_channels) != 2 * int(self.vae.config.latent_channels):
            raise DreamEngineError(f"teacher model {self.model} is not a Zero123 model: its UNet takes "
                                   f"{self.unet.config.in_channels} channels, not the noisy latent plus the "
                                   "reference latent")
        for part in (self.unet, self.vae, self.image_encoder, self.cc_projection):
            part.requires_grad_(False)
            part.eval()
            part.to(self.device, self.dtype)
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(scheduler_config)
        self.prediction_type = str(scheduler.config.get("prediction_type", "epsilon"))
        self._alphas64 = alphas_cumprod_from_scheduler(scheduler).to(self.device)
        self.alphas_cumprod = self._alphas64.float()
        self.num_train_timesteps = int(self.alphas_cumprod.shape[0])
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.clip_size = int(self.image_encoder.config.image_size)
        self.c_crossattn: Tensor | None = None  # [1, 1, D] CLIP embedding of the reference
        self.c_concat: Tensor | None = None  # [1, 4, h, w] its unscaled VAE latent
        self.reference_camera: tuple[float, float, float] | None = None

    @classmethod
    def from_config(cls, cfg: Zero123TeacherConfig, context: TeacherContext) -> Zero123Teacher:
        """The teacher of ``teacher.name: zero123`` on ``teacher.device`` (null: the run's device)."""
        return cls(cfg.model, variant=cfg.variant, image_encoder=cfg.image_encoder, revision=cfg.revision,
                   device=teacher_device(cfg.device, context.device), dtype=cfg.dtype, resolution=cfg.resolution)

    # -- Teacher protocol -------------------------------------------------------------------------
    def encode(self, rgb: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 4 h w"]:
        """rgb [B, 3, H, W] in [0, 1] -> scaled latents [B, 4, res/8, res/8] float32 (differentiable)."""
        rgb = self._resized(rgb.to(self.device))
        posterior = self.vae.encode((2.0 * rgb - 1.0).to(self.dtype)).latent_dist
        return (posterior.mean * self.scaling_factor).float()

    def decode(self, z: Tensor) -> Tensor:
        image = self.vae.decode((z.to(self.device) / self.scaling_factor).to(self.dtype)).sample
        return ((image.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def embed(self, prompts: list[str]) -> Float[Tensor, "P 1"]:
        """1 for a non-empty text (conditioned on the reference), 0 for ``""`` (unconditional). Zero123 reads no
        words."""
        return torch.tensor([[1.0 if text.strip() else 0.0] for text in prompts], device=self.device)

    @torch.no_grad()
    def predict_noise(self, z_t: Tensor, t: Int[Tensor, " B"], embeddings: Tensor,
                      cameras: Cameras | None = None) -> Tensor:
        """eps [B, 4, h, w] float32; rows with embedding 1 are conditioned on the reference and on their camera
        (``cameras`` [B or a divisor of B], row b uses ``b % len``), rows with 0 get zero conditions."""
        batch = z_t.shape[0]
        z_t = z_t.to(self.device)
        t = t.to(self.device).long().reshape(-1).expand(batch)
        crossattn, concat = self.conditions(embeddings, cameras, batch)
        sample = torch.cat([z_t.to(self.dtype), concat.to(self.dtype)], dim=1)
        output = self.unet(sample, t, encoder_hidden_states=crossattn.to(self.dtype)).sample.float()
        return to_epsilon(output, z_t.float(), self._alphas64[t], self.prediction_type)

    # -- the reference ----------------------------------------------------------------------------
    @torch.no_grad()
    def set_reference(self, rgb: Float[Tensor, "3 H W"], elevation: float, azimuth: float,
                      distance: float) -> None:
        """Condition on ``rgb`` (in [0, 1], object over the run's background; Zero123 was trained on white)."""
        image = self._resized(rgb.reshape(1, 3, *rgb.shape[-2:]).to(self.device).float())
        self.c_concat = self.vae.encode((2.0 * image - 1.0).to(self.dtype)).latent_dist.mode().float()
        clip_input = F.interpolate(image, size=(self.clip_size, self.clip_size), mode="bicubic", align_corners=False,
                                   antialias=True).clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)
        embeds = self.image_encoder(pixel_values=((clip_input - mean) / std).to(self.dtype)).image_embeds
        self.c_crossattn = embeds.float().unsqueeze(1)  # [1, 1, D]
        self.reference_camera = (float(elevation), float(azimuth), float(distance))

    def camera_vectors(self, cameras: Cameras) -> Float[Tensor, "B 4"]:
        if self.reference_camera is None:
            raise ConfigError("the Zero123 teacher has no reference image: set one with set_reference "
                              "(dreamengine generate --image REF.png)")
        return relative_camera(cameras.elevation, cameras.azimuth, cameras.distance, self.reference_camera,
                               self.variant).to(self.device)

    def conditions(self, embeddings: Tensor, cameras: Cameras | None, batch: int) -> tuple[Tensor, Tensor]:
        """(c_crossattn [B, 1, D], c_concat [B, 4, h, w]): the reference's for conditioned rows, zeros for the
        unconditional ones (classifier-free guidance drops both)."""
        if embeddings.dim() != 2 or embeddings.shape[0] not in (1, batch) or embeddings.shape[1] != 1:
            raise ValueError(f"embeddings must be [{batch} or 1, 1] (from embed()), got {tuple(embeddings.shape)}")
        conditioned = embeddings.to(self.device).reshape(-1).expand(batch) > 0.5  # [B]
        width = int(self.cc_projection.out_features)
        h = w = self.resolution // 8
        crossattn = torch.zeros(batch, 1, width, device=self.device)
        concat = torch.zeros(batch, int(self.vae.config.latent_channels), h, w, device=self.device)
        if bool(conditioned.any()):
            if cameras is None or batch % len(cameras) != 0:
                raise ValueError("the Zero123 teacher needs the target cameras of the rows it scores (B = "
                                 f"{batch}, got {None if cameras is None else len(cameras)} cameras)")
            rows = (torch.arange(batch, device=self.device) % len(cameras))[conditioned]
            vectors = self.camera_vectors(cameras.to(self.device))[rows]  # [b, 4]
            clip = self.c_crossattn.expand(len(rows), 1, -1)
            projected = self.cc_projection(torch.cat([clip, vectors[:, None].float()], dim=-1).to(self.dtype))
            crossattn[conditioned] = projected.float()
            concat[conditioned] = self.c_concat.expand(len(rows), -1, -1, -1)
        return crossattn, concat

    def _resized(self, rgb: Tensor) -> Tensor:
        size = (self.resolution, self.resolution)
        return rgb if tuple(rgb.shape[-2:]) == size else F.interpolate(rgb, size=size, mode="bilinear",
                                                                       align_corners=False)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "variant": self.variant, "revision": self.revision,
                "dtype": str(self.dtype).replace("torch.", ""), "resolution": self.resolution}


# ------------------------------------------------------------------------------------------------ loading
def projection_from_state(state: dict[str, Tensor], prefix: str, source: str) -> torch.nn.Linear:
    """Zero123's ``cc_projection`` (Linear(768 + 4 -> 768)) from ``{prefix}weight`` / ``{prefix}bias``."""
    try:
        weight, bias = state[f"{prefix}weight"], state[f"{prefix}bias"]
    except KeyError:
        raise ModelNotFoundError(f"{source} has no cc_projection weights ({prefix}weight, {prefix}bias): it is not "
                                 "a Zero123 model") from None
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
    layer.load_state_dict({"weight": weight, "bias": bias})
    return layer


def checkpoint_file(model: str, revision: str | None) -> Path | None:
    """The LDM checkpoint file ``teacher.model`` names, or None when it names a diffusers folder or repo.

    An existing file is used as it is. A ``.ckpt`` / ``.safetensors`` name that is no file is either a known
    checkpoint's bare file name (:data:`HUB_CHECKPOINTS`: ``stable_zero123.ckpt``, as the stable-zero123 config
    says), taken from the Hugging Face cache or downloaded from its hub repository, or a mistake (a clear error)."""
    path = Path(model).expanduser()
    if path.is_file():
        return path
    if path.suffix not in CHECKPOINT_SUFFIXES:
        return None
    repo = HUB_CHECKPOINTS.get(model)
    if repo is None:
        known = ", ".join(f"{name} (from {hub})" for name, hub in HUB_CHECKPOINTS.items())
        raise ModelNotFoundError(f"teacher.model {model}: no such checkpoint file ({path.resolve()}). Give the path of "
                                 f"a Zero123 or Stable Zero123 checkpoint file, a diffusers folder (the layout of "
                                 f"kxic/zero123-xl) or its hub repo id; known checkpoints by file name: {known}")
    return download_checkpoint(repo, model, revision)


def load_diffusers_folder(model: str, revision: str | None) -> tuple[Any, Any, Any, torch.nn.Linear, dict]:
    """(unet, vae, image_encoder, cc_projection, scheduler config) of a kxic/zero123-xl-layout folder or repo."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    folder = Path(model).expanduser()
    try:
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(model, revision=revision))
        unet = UNet2DConditionModel.from_pretrained(folder / "unet")
        vae = AutoencoderKL.from_pretrained(folder / "vae")
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder")
        scheduler_config = DDIMScheduler.load_config(folder / "scheduler")
    except (OSError, ValueError) as error:
        if folder.is_dir():
            raise ModelNotFoundError(f"{folder} is not a Zero123 diffusers folder (unet/, vae/, image_encoder/, "
                                     f"scheduler/, cc_projection/): {str(error).splitlines()[0]}") from None
        raise explain_load_failure(model, revision, error) from None
    files = sorted((folder / "cc_projection").glob("*.safetensors")) or sorted((folder / "cc_projection").glob("*.bin"))
    if not files:
        raise ModelNotFoundError(f"{folder} has no cc_projection/ weights: it is not a Zero123 folder")
    return unet, vae, image_encoder, projection_from_state(read_state_dict(files[0]), "projection.", str(folder)), \
        dict(scheduler_config)


def load_ldm_checkpoint(path: Path, image_encoder: str, configs: Path | None = None
                        ) -> tuple[Any, Any, Any, torch.nn.Linear, dict]:
    """(unet, vae, image_encoder, cc_projection, scheduler config) of an original Zero123 / Stable Zero123 LDM
    checkpoint, converted with diffusers' single-file converters. ``configs``: a folder with ``unet/config.json``
    and ``vae/config.json`` describing the checkpoint (default: Zero123's architecture)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from transformers import CLIPVisionModelWithProjection

    try:
        state = read_state_dict(path)
    except Exception as error:  # noqa: BLE001 (pickle and zip errors of a corrupt file)
        raise ModelNotFoundError(f"could not read the checkpoint {path} ({type(error).__name__}: {error})") from None
    unet_config, vae_config = dict(ZERO123_UNET_CONFIG), dict(ZERO123_VAE_CONFIG)
    if configs is not None:
        unet_config = json.loads((configs / "unet" / "config.json").read_text())
        vae_config = json.loads((configs / "vae" / "config.json").read_text())
    unet = UNet2DConditionModel.from_config(unet_config)
    unet.load_state_dict(convert_ldm_unet_checkpoint(state, unet.config))
    vae = AutoencoderKL.from_config(vae_config)
    vae.load_state_dict(convert_ldm_vae_checkpoint(state, vae.config))
    projection = projection_from_state(state, "cc_projection.", str(path))
    encoder_path = Path(image_encoder).expanduser()
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(str(encoder_path) if encoder_path.is_dir()
                                                                else image_encoder)
    except (OSError, ValueError) as error:
        raise explain_load_failure(image_encoder, None, error) from None
    scheduler_config = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                        "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
                        "steps_offset": 1, "prediction_type": "epsilon"}
    return unet, vae, encoder, projection, scheduler_config


__all__ = ["HUB_CHECKPOINTS", "VARIANTS", "Zero123Teacher", "checkpoint_file", "load_diffusers_folder",
           "load_ldm_checkpoint", "relative_camera"]
