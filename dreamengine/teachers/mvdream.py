"""MVDreamTeacher: MVDream (Shi et al. 2023, ``bytedance/MVDream``), a multi-view diffusion model, frozen.

MVDream is Stable Diffusion 2.1-base's UNet with two additions (``mvdream/ldm/modules/diffusionmodules/
openaimodel.py``, ``MultiViewUNetModel.forward``; ``mvdream/ldm/modules/attention.py``, ``BasicTransformerBlock3D``):

* a camera embedding: each view's flattened 4x4 camera-to-world matrix goes through ``Linear(16, 1280)``, SiLU,
  ``Linear(1280, 1280)`` and is added to the timestep embedding. Here it is the diffusers UNet's "projection"
  class embedding, fed with :func:`mvdream_camera` as ``class_labels``;
* self-attention across views: every transformer block's self-attention sees the tokens of all n = 4 views of
  one object (:class:`~dreamengine.teachers.multiview_attention.MultiViewAttnProcessor` on every attention layer).

Everything else (VAE, text encoder, encode / decode / embed) is Stable Diffusion's, so this teacher is a
:class:`~dreamengine.teachers.stable_diffusion.StableDiffusionTeacher` whose ``predict_noise`` passes the cameras.
Weights: :mod:`dreamengine.teachers.mvdream_weights` (the original checkpoint or a diffusers folder).

Camera convention (MVDream-threestudio, ``multiview_diffusion_guidance.py``, ``get_camera_cond``): the camera is
threestudio's OpenGL camera-to-world matrix in its Z-up world, which is this engine's ``Cameras.c2w`` (same
look-at construction, azimuth 0 on +X), with the translation scaled to unit length (``mvdream/camera_utils.py``,
``normalize_camera``), flattened row by row. MVDream's own sampler (``camera_utils.get_camera``) builds the same
matrices in a Y-up world and turns them Z-up with ``convert_opengl_to_blender``; its azimuth a is this engine's
azimuth a - 90 degrees (its default ``--camera_azim 90`` is our front view, azimuth 0). ``tests/teachers/
test_mvdream.py`` checks both against hand-computed matrices.

A batch scored with cameras holds whole groups of ``views_per_group`` consecutive views (one object each), and the
copies of a batch that guidance methods concatenate (conditional, unconditional) repeat the cameras; without
cameras every image is scored alone and without a camera embedding, as MVDream's UNet does with ``camera=None``
(``num_frames = 1``). Settings: :class:`~dreamengine.config.MVDreamTeacherConfig`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from dreamengine.config.teachers import MVDreamTeacherConfig
from dreamengine.core.cameras import Cameras
from dreamengine.core.protocols import TeacherContext
from dreamengine.errors import ConfigError
from dreamengine.teachers.multiview_attention import install_multiview_attention
from dreamengine.teachers.mvdream_weights import load_mvdream_pipeline
from dreamengine.teachers.stable_diffusion import (
    ModelNotFoundError,
    StableDiffusionTeacher,
    resolve_dtype,
    teacher_device,
    to_epsilon,
)

CAMERA_DIM = 16


def mvdream_camera(cameras: Cameras) -> Float[Tensor, "B 16"]:
    """MVDream's camera condition of each camera: its OpenGL camera-to-world matrix (Z-up world) with the
    translation scaled to unit length (MVDream's ``normalize_camera``), flattened row-major, [B, 16]."""
    return normalize_camera(cameras.c2w.reshape(len(cameras), CAMERA_DIM))


def normalize_camera(c2w: Float[Tensor, "B 16"]) -> Float[Tensor, "B 16"]:
    """Flattened camera-to-world matrices with the translation scaled to unit length (a zero one stays zero)."""
    matrices = c2w.reshape(-1, 4, 4).clone()
    translation = matrices[:, :3, 3]
    matrices[:, :3, 3] = translation / (translation.norm(dim=-1, keepdim=True) + 1e-8)
    return matrices.reshape(-1, CAMERA_DIM)


def camera_inputs(unet: torch.nn.Module) -> int | None:
    """Input width of the UNet's projection class embedding (MVDream's camera: 16), None without one."""
    linear = getattr(getattr(unet, "class_embedding", None), "linear_1", None)
    return int(linear.in_features) if linear is not None else None


@contextmanager
def without_camera_embedding(unet: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``unet`` with its camera (class) embedding removed: MVDream called with ``camera=None``."""
    embedding = unet.class_embedding
    unet.class_embedding = None
    try:
        yield unet
    finally:
        unet.class_embedding = embedding


class MVDreamTeacher(StableDiffusionTeacher):
    """A frozen MVDream model (implements :class:`dreamengine.core.protocols.Teacher`; a multi-view teacher).

    Args:
        model: the original checkpoint file, a hub repo holding it, or a diffusers folder
            (:func:`~dreamengine.teachers.mvdream_weights.load_mvdream_pipeline`).
        checkpoint_file: the checkpoint's name inside a hub repo (None: the repo is a diffusers folder).
        base_model: SD 2.1-base (repo or folder) whose tokenizer and text encoder go with a checkpoint file.
        original_config: the original model YAML (None: MVDream's sd-v2-base.yaml values).
        views_per_group: n, the views of one object that attend to each other (4).
        revision, device, dtype, channels_last, cpu_offload, resolution: as for StableDiffusionTeacher.
        pipeline: an already built pipeline (its UNet with the camera class embedding) instead of loading one.
    """

    def __init__(self, model: str, checkpoint_file: str | None = "sd-v2.1-base-4view.pt",
                 base_model: str = "stabilityai/stable-diffusion-2-1-base", original_config: str | None = None,
                 revision: str | None = None, device: str | torch.device = "cpu", dtype: str = "auto",
                 channels_last: bool = False, cpu_offload: bool = False, resolution: int | None = None,
                 views_per_group: int = 4, pipeline: Any | None = None) -> None:
        if int(views_per_group) < 1:
            raise ConfigError(f"teacher.views_per_group must be >= 1, got {views_per_group}")
        if pipeline is None:
            torch_dtype = resolve_dtype(dtype, torch.device(device))
            pipeline = load_mvdream_pipeline(str(model), checkpoint_file, base_model, original_config, revision,
                                             torch_dtype)
        if camera_inputs(pipeline.unet) != CAMERA_DIM:
            raise ModelNotFoundError(f"teacher model {model} has no MVDream camera embedding (its UNet needs a "
                                     f"'projection' class embedding of {CAMERA_DIM} inputs): it is a single-view "
                                     "model; use teacher.name=stable-diffusion for it, or give MVDream's checkpoint")
        super().__init__(str(model), revision=revision, device=device, dtype=dtype, channels_last=channels_last,
                         cpu_offload=cpu_offload, resolution=resolution, pipeline=pipeline)
        self.views_per_group = int(views_per_group)
        install_multiview_attention(self.unet)

    @classmethod
    def from_config(cls, cfg: MVDreamTeacherConfig, context: TeacherContext) -> MVDreamTeacher:
        """The teacher of ``teacher.name: mvdream`` on ``teacher.device`` (null: the run's device)."""
        return cls(cfg.model, checkpoint_file=cfg.checkpoint_file, base_model=cfg.base_model,
                   original_config=cfg.original_config, revision=cfg.revision,
                   device=teacher_device(cfg.device, context.device), dtype=cfg.dtype,
                   channels_last=cfg.channels_last, cpu_offload=cfg.cpu_offload, resolution=cfg.resolution,
                   views_per_group=cfg.views_per_group)

    @torch.no_grad()
    def predict_noise(self, z_t: Tensor, t: Int[Tensor, " B"], embeddings: Tensor,
                      cameras: Cameras | None = None) -> Tensor:
        """eps [B, 4, h, w] float32 for z_t [B, 4, h, w] at t [B] under embeddings [B, L, D]; with ``cameras``
        (B / copies of them, in whole groups of ``views_per_group``) the views of each group are denoised
        jointly, camera-conditioned; without, each image alone and without camera embedding."""
        if z_t.dim() != 4:
            raise ValueError(f"z_t must be [B, 4, h, w], got {tuple(z_t.shape)}")
        batch = z_t.shape[0]
        t = t.to(self.device).long().reshape(-1).expand(batch)
        sample = z_t.to(self.device, self.dtype)
        if self.channels_last:
            sample = sample.contiguous(memory_format=torch.channels_last)
        text = embeddings.to(self.device, self.dtype)
        if cameras is None:
            with without_camera_embedding(self.unet) as unet:
                output = unet(sample, t, encoder_hidden_states=text).sample
        else:
            views = self.views_per_group
            if len(cameras) % views or batch % len(cameras):
                raise ValueError(f"MVDream scores whole groups of {views} views: got {batch} latents for "
                                 f"{len(cameras)} cameras; set camera.views_per_group={views} and camera.batch_size "
                                 f"to a multiple of {views}")
            camera = mvdream_camera(cameras).to(self.device, self.dtype).repeat(batch // len(cameras), 1)
            output = self.unet(sample, t, encoder_hidden_states=text, class_labels=camera,
                               cross_attention_kwargs={"num_views": views}).sample
        return to_epsilon(output.float(), z_t.float().to(self.device), self._alphas64[t], self.prediction_type)

    def add_lora_adapter(self, rank: int, alpha: float, adapter_name: str = "vsd") -> dict[str, torch.nn.Parameter]:
        """VSD's LoRA would replace MVDream's camera embedding: refused."""
        raise ConfigError("guidance.name=vsd does not work with teacher.name=mvdream (its LoRA score model would take "
                          "the place of MVDream's camera embedding); use guidance.name=mvdream-sds or sds")

    def describe(self) -> dict[str, Any]:
        """What a run manifest records about this teacher."""
        return {**super().describe(), "views_per_group": self.views_per_group}


__all__ = ["CAMERA_DIM", "MVDreamTeacher", "camera_inputs", "mvdream_camera", "normalize_camera",
           "without_camera_embedding"]
