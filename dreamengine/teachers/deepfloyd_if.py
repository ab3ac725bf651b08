"""DeepFloydIFTeacher: DeepFloyd IF stage I (64x64 pixel-space diffusion, T5 text encoder), frozen.

Loaded with ``IFPipeline.from_pretrained`` from a repo id (``DeepFloyd/IF-I-XL-v1.0``, a gated repository:
accept its license on the hub first) or a local diffusers folder. There is no VAE:

    encode:  rgb [B, 3, H, W] in [0, 1] -> resize to 64x64 -> z = 2 rgb - 1   (differentiable)
    decode:  z -> (z + 1) / 2, clamped to [0, 1]
    embed:   T5 encoder states of the prompt padded to 77 tokens (as IFPipeline does), truncated with a warning
    predict_noise: the UNet predicts eps and a variance (6 channels, "learned_range"); the first 3 are eps

Like the SD teacher it can carry VSD's LoRA (``add_lora_adapter`` / ``predict_with_adapter``).

Camera-conditioned pixel-space models (DreamEngine's learned toy teacher ``builtin:toy-learned-camera``): a UNet
with MVDream's camera embedding (a diffusers "projection" class embedding of 16 inputs) is scored with each view's
MVDream camera (:func:`~dreamengine.teachers.mvdream.mvdream_camera`) as ``class_labels`` when the guidance passes
cameras, and with the embedding removed when it does not (the model's no-camera mode, as MVDream with
``camera=None``). Views are scored one at a time (no attention across views). VSD's LoRA score model then sees
the camera twice: through the teacher's own embedding and through its own zero-initialised one.

The prompt is not "cleaned" (IFPipeline's optional caption cleaning needs bs4 and ftfy).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from dreamengine.config.teachers import DeepFloydIFTeacherConfig
from dreamengine.core.cameras import Cameras
from dreamengine.core.protocols import TeacherContext
from dreamengine.errors import ConfigError, DreamEngineError
from dreamengine.teachers.mvdream import (
    CAMERA_DIM,
    camera_inputs,
    mvdream_camera,
    normalize_camera,
    without_camera_embedding,
)
from dreamengine.teachers.stable_diffusion import (
    PREDICTION_TYPES,
    UNetLoraAdapter,
    alphas_cumprod_from_scheduler,
    load_pipeline,
    resolve_dtype,
    teacher_device,
    text_encoder_key,
    to_epsilon,
)

IF_MAX_TOKENS = 77  # IFPipeline.encode_prompt pads and truncates to 77 tokens


class DeepFloydIFTeacher(UNetLoraAdapter):
    """A frozen IF stage-I model (implements :class:`dreamengine.core.protocols.Teacher`).

    Args:
        model: Hugging Face repo id or local diffusers folder; revision: hub branch / tag / commit.
        device, dtype: as for StableDiffusionTeacher (auto: float16 on CUDA, float32 elsewhere).
        variant: weight file variant to load ("fp16" for the hub's half-precision files; None: the default).
        cpu_offload: keep weights on the CPU and move each part to the GPU when used (T5-XXL is ~10 GB in fp16).
        resolution: image side the renders are resized to; None: the UNet's sample_size (64 for IF-I).
        pipeline: an already built ``IFPipeline`` to use instead of loading ``model``.
    """

    def __init__(self, model: str, revision: str | None = None, device: str | torch.device = "cpu",
                 dtype: str = "auto", variant: str | None = None, cpu_offload: bool = False,
                 resolution: int | None = None, pipeline: Any | None = None) -> None:
        self.model = str(model)
        self.revision = revision
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if cpu_offload and self.device.type != "cuda":
            raise ConfigError("teacher.cpu_offload=true needs a CUDA teacher device; set it to false on a CPU")
        extra = {"watermarker": None, **({"variant": variant} if variant else {})}
        pipe = pipeline if pipeline is not None else load_pipeline(self.model, revision, self.dtype, "IFPipeline",
                                                                   **extra)
        self.prediction_type = str(pipe.scheduler.config.get("prediction_type", "epsilon"))
        if self.prediction_type not in PREDICTION_TYPES:
            raise DreamEngineError(f"teacher model {model} predicts {self.prediction_type!r}; supported: "
                                   f"{', '.join(PREDICTION_TYPES)}")
        for part in (pipe.unet, pipe.text_encoder):
            part.requires_grad_(False)
            part.eval()
        self.cpu_offload = bool(cpu_offload)
        self.lora_parameters: dict[str, torch.nn.Parameter] = {}  # VSD's LoRA, once added
        if cpu_offload:
            pipe.enable_model_cpu_offload(device=self.device)
        elif pipe.unet.dtype == self.dtype:  # loaded with torch_dtype: casting again makes diffusers warn
            pipe.to(self.device)
        else:
            pipe.to(self.device, self.dtype)
        self.pipe, self.unet, self.text_encoder, self.tokenizer = pipe, pipe.unet, pipe.text_encoder, pipe.tokenizer
        native = int(pipe.unet.config.sample_size)
        self.resolution = int(resolution) if resolution else native
        if self.resolution != native:
            warnings.warn(f"teacher.resolution={self.resolution} differs from {self.model}'s native {native} px; "
                          "set teacher.resolution=null to use the model's own", stacklevel=2)
        self.channels = int(pipe.unet.config.in_channels)
        self.camera_conditioned = camera_inputs(pipe.unet) == CAMERA_DIM
        self._alphas64 = alphas_cumprod_from_scheduler(pipe.scheduler).to(self.device)
        self.alphas_cumprod = self._alphas64.float()  # [T]
        self.num_train_timesteps = int(self.alphas_cumprod.shape[0])
        # diffusers' DDIM/PNDM timesteps are index + steps_offset (SD's scheduler config: 1); LucidDreamer's family
        # indexes its timesteps through it (guidance/base.py lucid_timestep_range)
        self.steps_offset = int(pipe.scheduler.config.get("steps_offset", 0))
        self.max_tokens = IF_MAX_TOKENS
        self.embedding_key = text_encoder_key(self.model, revision, self.max_tokens, self.text_encoder)

    @classmethod
    def from_config(cls, cfg: DeepFloydIFTeacherConfig, context: TeacherContext) -> DeepFloydIFTeacher:
        """The teacher of ``teacher.name: deepfloyd-if`` on ``teacher.device`` (null: the run's device)."""
        return cls(cfg.model, revision=cfg.revision, device=teacher_device(cfg.device, context.device),
                   dtype=cfg.dtype, variant=cfg.variant, cpu_offload=cfg.cpu_offload, resolution=cfg.resolution)

    def encode(self, rgb: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 r r"]:
        """rgb [B, 3, H, W] in [0, 1] -> pixels [B, 3, res, res] in [-1, 1], float32 (differentiable)."""
        rgb = rgb.to(self.device)
        if tuple(rgb.shape[-2:]) != (self.resolution, self.resolution):
            rgb = F.interpolate(rgb, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return (2.0 * rgb - 1.0).float()

    def decode(self, z: Tensor) -> Tensor:
        """pixels [B, 3, 64, 64] in [-1, 1] -> rgb in [0, 1]."""
        return ((z.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def embed(self, prompts: list[str]) -> Tensor:
        """T5 hidden states [P, 77, D] (float32), padded positions masked out of attention as IFPipeline does."""
        for prompt in prompts:
            count = len(self.tokenizer(prompt, truncation=False, verbose=False).input_ids)
            if count > self.max_tokens:
                warnings.warn(f"prompt '{prompt}' is {count} tokens long; {self.model} reads only {self.max_tokens} "
                              "(end token included), so it is truncated", stacklevel=2)
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.max_tokens, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        with torch.no_grad():
            hidden = self.text_encoder(tokens.input_ids.to(self.device),
                                       attention_mask=tokens.attention_mask.to(self.device))[0]
        return hidden.float()

    @torch.no_grad()
    def predict_noise(self, z_t: Tensor, t: Int[Tensor, " B"], embeddings: Tensor,
                      cameras: Cameras | None = None) -> Tensor:
        """eps [B, 3, 64, 64] float32 for z_t [B, 3, 64, 64] at integer t [B] under embeddings [B, 77, D]."""
        z_t = z_t.to(self.device)
        if z_t.dim() != 4 or z_t.shape[1] != self.channels:
            raise ValueError(f"z_t must be [B, {self.channels}, h, w], got {tuple(z_t.shape)}")
        batch = z_t.shape[0]
        t = t.to(self.device).long().reshape(-1).expand(batch)
        text = embeddings.to(self.device, self.dtype)
        if not self.camera_conditioned:
            output = self.unet(z_t.to(self.dtype), t, encoder_hidden_states=text).sample
        elif cameras is None:
            with without_camera_embedding(self.unet) as unet:
                output = unet(z_t.to(self.dtype), t, encoder_hidden_states=text).sample
        else:
            output = self.unet(z_t.to(self.dtype), t, encoder_hidden_states=text,
                               class_labels=self.camera_labels(cameras, batch)).sample
        output = output[:, : self.channels].float()  # drop the learned-variance channels
        return to_epsilon(output, z_t.float(), self._alphas64[t], self.prediction_type)

    def camera_labels(self, cameras: Cameras, batch: int) -> Float[Tensor, "B 16"]:
        """MVDream camera conditions [batch, 16] of ``cameras`` (batch / len(cameras) copies, in order)."""
        if batch % len(cameras):
            raise ValueError(f"{batch} images to score for {len(cameras)} cameras: the batch must be whole copies")
        return mvdream_camera(cameras).to(self.device, self.dtype).repeat(batch // len(cameras), 1)

    def predict_with_adapter(self, z_t: Tensor, t: Tensor, embeddings: Tensor, class_embedding: torch.nn.Module,
                             class_labels: Tensor) -> Tensor:
        """Raw eps output [B, 3, 64, 64] float32 with the LoRA enabled and ``class_embedding(class_labels)``
        added to the time embedding (learned-variance channels dropped); with gradients unless under no_grad.
        A camera-conditioned UNet adds its own camera embedding of the same cameras (``class_labels`` are
        camera-to-world matrices [B, 16], :func:`~dreamengine.guidance.particle_score.camera_condition`)."""
        t = t.to(self.device).long().reshape(-1).expand(z_t.shape[0])
        if self.camera_conditioned:
            class_embedding = WithTeacherCamera(self.unet.class_embedding, class_embedding)
        output = self._adapter_output(z_t.to(self.device, self.dtype), t, embeddings, class_embedding, class_labels)
        return output[:, : self.channels].float()

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "revision": self.revision, "prediction_type": self.prediction_type,
                "dtype": str(self.dtype).replace("torch.", ""), "resolution": self.resolution,
                "camera_conditioned": self.camera_conditioned}


class WithTeacherCamera(torch.nn.Module):
    """VSD's class embedding plus the camera-conditioned teacher's own camera embedding, both of one camera:
    ``labels`` [B, 16] are camera-to-world matrices; the teacher's embedding gets them as MVDream cameras
    (translation scaled to unit length), rows of zeros (a dropped camera) stay zeros."""

    def __init__(self, teacher_embedding: torch.nn.Module, adapter_embedding: torch.nn.Module) -> None:
        super().__init__()
        self.teacher_embedding, self.adapter_embedding = teacher_embedding, adapter_embedding

    def forward(self, labels: Float[Tensor, "B 16"]) -> Float[Tensor, "B D"]:
        camera = normalize_camera(labels).to(self.teacher_embedding.linear_1.weight.dtype)
        return self.teacher_embedding(camera) + self.adapter_embedding(labels)
