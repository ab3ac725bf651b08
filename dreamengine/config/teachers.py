"""Teacher settings (``teacher:`` in a config, chosen by ``teacher.name``). See ``dreamengine/teachers/``."""

from __future__ import annotations

from dataclasses import dataclass, field

from dreamengine.errors import ConfigError


@dataclass
class ToyWorldTeacherConfig:
    """The exact toy-world teacher. Its bank is rendered with the run's camera distance, field of view
    and background (camera.distance_range / camera.fovy_range midpoints, render.background_color), so
    the teacher's images are framed exactly like the renders it scores."""

    name: str = "toyworld"
    resolution: int = 32  # side of the teacher's pixel space; renders are resized to it
    elevations: list[float] = field(default_factory=lambda: [-15.0, 0.0, 15.0, 30.0, 45.0, 60.0, 75.0])
    azimuth_step: float = 15.0  # degrees between bank views


@dataclass
class ToyWorldOracleConfig:
    """The toy world's oracle (teachers/toyworld_oracle.py): it knows the true image from every camera, so
    guiding with it is multi-view reconstruction against ground truth. The ceiling of bench/ceiling.py."""

    name: str = "toyworld-oracle"
    resolution: int = 32  # side of the teacher's pixel space; renders are resized to it


@dataclass
class ToyImageTeacherConfig:
    """The exact image-conditioned toy teacher (Zero123's toy twin, teachers/toy_image.py): (reference view,
    target view) pairs of one toy object on the bank's view grid. Framed like the run, as the text toy teacher."""

    name: str = "toyworld-image"
    resolution: int = 32  # side of the teacher's pixel space; renders are resized to it
    elevations: list[float] = field(default_factory=lambda: [-15.0, 0.0, 15.0, 30.0, 45.0, 60.0, 75.0])
    azimuth_step: float = 15.0  # degrees between bank views
    objects: list[str] = field(default_factory=list)  # canonical object names in its world; empty: every object
    reference_sigma: float = 0.1  # std of the reference image's noise in the model, [-1, 1] pixel units
    camera_sigma_deg: float = 7.5  # std of the relative camera's noise in the model, degrees


@dataclass
class StableDiffusionTeacherConfig:
    """A Stable Diffusion 1.x / 2.x model in diffusers format (see teachers/stable_diffusion.py).

    Offline use: on a connected machine run ``hf download REPO --local-dir DIR`` and set ``model: DIR``.
    """

    name: str = "stable-diffusion"
    model: str = "stabilityai/stable-diffusion-2-1-base"  # Hugging Face repo id or local diffusers folder
    revision: str | None = None  # hub branch / tag / commit (null: main); recorded in the run manifest
    device: str | None = None  # the teacher's device (cuda:1, cpu, ...); null: the run's device
    dtype: str = "auto"  # auto (float16 on CUDA, float32 on CPU) | float16 | bfloat16 | float32
    channels_last: bool = True  # UNet in channels-last memory format (faster on recent GPUs)
    attention_slicing: bool = False  # compute attention in slices: less memory, slower
    enable_xformers: bool = False  # xformers attention (needs the xformers package; SDPA is the default)
    cpu_offload: bool = False  # keep weights on the CPU and move each part to the GPU when used (CUDA only)
    resolution: int | None = None  # renders are resized to this; null: the model's own (512 for SD 2.1-base)
    # visual prompts (TV-3DG's VPCSM, VP3D): an IP-Adapter loaded with diffusers' load_ip_adapter; null: none
    ip_adapter: str | None = None  # repo id or folder, e.g. h94/IP-Adapter
    ip_adapter_subfolder: str = "models"
    ip_adapter_weight_name: str = "ip-adapter_sd15.safetensors"
    ip_adapter_scale: float = 1.0  # strength of the image prompt in the cross-attention


@dataclass
class DeepFloydIFTeacherConfig:
    """DeepFloyd IF stage I: 64x64 pixel-space diffusion with a T5-XXL text encoder (teachers/deepfloyd_if.py).

    The hub repository is gated: accept the license on huggingface.co, then ``hf auth login``.
    """

    name: str = "deepfloyd-if"
    model: str = "DeepFloyd/IF-I-XL-v1.0"  # Hugging Face repo id or local diffusers folder
    revision: str | None = None  # hub branch / tag / commit (null: main)
    variant: str | None = None  # weight variant, "fp16" for the hub's half-precision files (null: default files)
    device: str | None = None  # the teacher's device; null: the run's device
    dtype: str = "auto"  # auto (float16 on CUDA, float32 on CPU) | float16 | bfloat16 | float32
    cpu_offload: bool = False  # T5-XXL alone is about 10 GB in float16 (CUDA only)
    resolution: int | None = None  # renders are resized to this; null: the model's own (64 for IF stage I)


@dataclass
class ToyWorldMultiViewTeacherConfig:
    """The exact multi-view toy-world teacher (teachers/toyworld_multiview.py): it denoises groups of
    ``views_per_group`` views jointly. Its data are sets of views of one object at one bank elevation with
    azimuths 360 / views_per_group degrees apart; a prompt selects the object's sets, and the cameras weight
    each set by a Gaussian kernel of width ``camera_width`` on the angles between the requested views and the
    set's views. The bank is framed like the single-view toy teacher's (camera.framing(), background)."""

    name: str = "toyworld-multiview"
    views_per_group: int = 4  # views denoised together (MVDream: 4); camera.views_per_group must equal it
    # degrees: the kernel exp(-mean_k angle_k^2 / (2 width^2)) on the angles between requested and set views. Narrow
    # enough that the cameras, not the image likelihood, say which views a group shows (teachers/toyworld_multiview.py
    # has the measurements); null: the cameras are ignored (no camera conditioning)
    camera_width: float | None = 1.0
    resolution: int = 32  # side of the teacher's pixel space; renders are resized to it
    elevations: list[float] = field(default_factory=lambda: [-15.0, 0.0, 15.0, 30.0, 45.0, 60.0, 75.0])
    azimuth_step: float = 15.0  # degrees between bank views; must divide 360 / views_per_group

    def __post_init__(self) -> None:
        if self.views_per_group < 1:
            raise ConfigError(f"teacher.views_per_group must be >= 1, got {self.views_per_group}")
        if self.camera_width is not None and not self.camera_width > 0:
            raise ConfigError(f"teacher.camera_width must be > 0 degrees (or null: no camera conditioning), got "
                              f"{self.camera_width}")
        turn = 360.0 / self.views_per_group
        if self.azimuth_step > 0 and abs(turn / self.azimuth_step - round(turn / self.azimuth_step)) > 1e-6:
            raise ConfigError(f"teacher.azimuth_step ({self.azimuth_step} degrees) must divide 360 / "
                              f"teacher.views_per_group = {turn:g} degrees, so that every view of a set is a bank view")


@dataclass
class MVDreamTeacherConfig:
    """MVDream (Shi et al. 2023): Stable Diffusion 2.1-base's UNet with a camera embedding and self-attention across
    the 4 views of an object (teachers/mvdream.py). ``model`` is one of

    * the original checkpoint, a file (``sd-v2.1-base-4view.pt``, LDM key names; converted on load), or a Hugging Face
      repo holding it (``MVDream/MVDream`` with ``checkpoint_file``); the tokenizer and text encoder then come from
      ``base_model`` (MVDream-threestudio's prompt processor uses SD 2.1-base's, which MVDream kept frozen);
    * a local diffusers folder (``model_index.json``; its UNet has a 16 -> 1280 "projection" class embedding, the
      camera MLP), e.g. one written by ``python tools/convert_mvdream.py``.

    Offline: ``hf download MVDream/MVDream sd-v2.1-base-4view.pt --local-dir DIR`` and ``hf download
    stabilityai/stable-diffusion-2-1-base --local-dir SD21`` on a connected machine, then
    ``teacher.model=DIR/sd-v2.1-base-4view.pt teacher.base_model=SD21``.
    """

    name: str = "mvdream"
    model: str = "MVDream/MVDream"  # checkpoint file, hub repo holding it, or local diffusers folder
    checkpoint_file: str | None = "sd-v2.1-base-4view.pt"  # the file inside a hub repo (null: a diffusers repo)
    base_model: str = "stabilityai/stable-diffusion-2-1-base"  # tokenizer + text encoder for a checkpoint file
    # the original model's YAML (MVDream's mvdream/configs/sd-v2-base.yaml format); null: that file's settings
    original_config: str | None = None
    revision: str | None = None  # hub branch / tag / commit of ``model`` (null: main)
    device: str | None = None  # the teacher's device; null: the run's device
    dtype: str = "auto"  # auto (float16 on CUDA, float32 on CPU) | float16 | bfloat16 | float32
    channels_last: bool = True  # UNet in channels-last memory format (CUDA only)
    cpu_offload: bool = False  # keep weights on the CPU and move each part to the GPU when used (CUDA only)
    resolution: int | None = None  # renders are resized to this; null: the model's own (256 for MVDream)
    views_per_group: int = 4  # views that attend to each other (MVDream-threestudio's n_view)

    def __post_init__(self) -> None:
        if self.views_per_group < 1:
            raise ConfigError(f"teacher.views_per_group must be >= 1, got {self.views_per_group}")


@dataclass
class Zero123TeacherConfig:
    """Zero123 / Zero123-XL / Stable Zero123 (teachers/zero123.py): novel views conditioned on the reference image.

    ``model``: a diffusers-layout folder or repo (the layout of kxic/zero123-xl), or an original checkpoint file
    (stable_zero123.ckpt). Offline use: ``hf download kxic/zero123-xl --local-dir DIR`` elsewhere, then
    ``teacher.model=DIR``.
    """

    name: str = "zero123"
    model: str = "kxic/zero123-xl"
    variant: str = "zero123"  # zero123 | stable-zero123 (the camera vector's 4th entry: d_radius | reference polar)
    image_encoder: str = "openai/clip-vit-large-patch14"  # CLIP image encoder for checkpoint files (frozen ViT-L/14)
    revision: str | None = None  # hub branch / tag / commit (null: main)
    device: str | None = None  # the teacher's device; null: the run's device
    dtype: str = "auto"  # auto (float16 on CUDA, float32 on CPU) | float16 | bfloat16 | float32
    resolution: int = 256  # Zero123's image side; renders and the reference are resized to it


TEACHER_CONFIGS = {"toyworld": ToyWorldTeacherConfig, "toyworld-oracle": ToyWorldOracleConfig,
                   "stable-diffusion": StableDiffusionTeacherConfig,
                   "deepfloyd-if": DeepFloydIFTeacherConfig, "toyworld-multiview": ToyWorldMultiViewTeacherConfig,
                   "mvdream": MVDreamTeacherConfig, "toyworld-image": ToyImageTeacherConfig,
                   "zero123": Zero123TeacherConfig}

