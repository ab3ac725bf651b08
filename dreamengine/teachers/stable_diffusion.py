"""StableDiffusionTeacher: any Stable Diffusion 1.x / 2.x checkpoint in diffusers format, frozen.

Loaded with ``StableDiffusionPipeline.from_pretrained`` from a Hugging Face repo id
(``stabilityai/stable-diffusion-2-1-base``) or a local folder holding ``model_index.json``. Only the
VAE, UNet, tokenizer, text encoder and the scheduler's noise schedule are used:

    encode:  rgb [B, 3, H, W] in [0, 1] -> resize to the model resolution -> z = s (mean(VAE.enc(2 rgb - 1)) - shift)
    decode:  z -> VAE.dec(z / s + shift) -> rgb in [0, 1]
    embed:   prompts -> tokenizer (padded to model_max_length, truncated with a warning) -> text encoder
    predict_noise: UNet output under no_grad, converted to eps for "v_prediction" and "sample" models

For VSD (guidance/vsd.py) the teacher can carry a trainable LoRA (peft) on its UNet's attention projections:
``add_lora_adapter`` installs it *disabled*, so ``predict_noise`` stays the frozen teacher, and
``predict_with_adapter`` runs the UNet with it enabled and a camera embedding added to the time embedding.

``s`` is the VAE's ``scaling_factor`` (0.18215 for SD). The encoder uses the posterior mean rather than a
sample (threestudio samples; the posterior's std is tiny and the mean keeps encode deterministic).
Gradients flow from z back to the render through the frozen encoder.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from dreamengine.config.teachers import StableDiffusionTeacherConfig
from dreamengine.core.cameras import Cameras
from dreamengine.core.protocols import TeacherContext
from dreamengine.errors import ConfigError, DreamEngineError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float32": torch.float32, "fp32": torch.float32}


class ModelNotFoundError(DreamEngineError):
    """A teacher model that cannot be found or loaded (missing folder, offline hub, gated repo)."""


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on CUDA and float32 elsewhere; otherwise one of :data:`DTYPES`."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"teacher.dtype must be auto, float16, bfloat16 or float32; got {name!r}")
    return DTYPES[name]


def teacher_device(name: str | None, run_device: torch.device) -> torch.device:
    """The teacher's own device (``teacher.device``), or the run's device when it is null."""
    device = torch.device(name) if name else torch.device(run_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"teacher.device={name} was asked for but PyTorch sees no CUDA GPU; set "
                          "teacher.device=null (the run's device) or cpu")
    return device


BUILTIN_PREFIX = "builtin:"  # teacher.model=builtin:NAME: a model shipped inside the package (dreamengine/models/NAME)


def builtin_model(model: str) -> Path | None:
    """The folder of a model shipped with DreamEngine (``builtin:toy-learned``), None for any other name; raises
    ModelNotFoundError for an unknown built-in name."""
    if not model.startswith(BUILTIN_PREFIX):
        return None
    from importlib import resources

    name = model[len(BUILTIN_PREFIX):]
    folder = Path(str(resources.files("dreamengine") / "models" / name))
    if not name or "/" in name or "\\" in name or not (folder / "model_index.json").is_file():
        shipped = sorted(p.name for p in folder.parent.iterdir() if (p / "model_index.json").is_file()) \
            if folder.parent.is_dir() else []
        raise ModelNotFoundError(f"teacher.model={model!r} names no model shipped with DreamEngine; built-in models: "
                                 f"{', '.join(BUILTIN_PREFIX + n for n in shipped) or 'none'}")
    return folder


def looks_like_path(model: str) -> bool:
    """True for strings meant as folders (absolute, ./ ../ ~ prefixes, or existing on disk)."""
    return model.startswith(("/", "./", "../", "~", ".\\")) or Path(model).expanduser().exists() \
        or model.count("/") > 1 or "\\" in model


def fetch_hint(model: str, filename: str | None = None) -> str:
    """How to download ``model`` (a hub repo id; with ``filename``, that one file of it) elsewhere and use it."""
    what = f"{model} {filename}" if filename else model
    target = f"DIR/{filename}" if filename else "DIR"
    return (f"On a machine with internet access run `hf download {what} --local-dir DIR` (older "
            f"huggingface_hub: `huggingface-cli download {what} --local-dir DIR`), copy DIR here and set "
            f"teacher.model={target}.")


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def explain_load_failure(model: str, revision: str | None, error: Exception,
                         filename: str | None = None) -> ModelNotFoundError:
    """Turn a from_pretrained (or, with ``filename``, an ``hf_hub_download``) failure into one message: which model,
    where we looked, how to fetch it."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    names = {type(e).__name__ for e in _chain(error)}
    text = " ".join(str(e) for e in _chain(error)).lower()
    where = f"the Hugging Face cache {constants.HF_HUB_CACHE}"
    label = (f"{filename} of {model}" if filename else model) + (f" (revision {revision})" if revision else "")
    # RepositoryNotFoundError's own text says "private or gated repo", so the word alone is not enough.
    gated_text = "gated" in text.replace("private or gated", "")
    if any(isinstance(e, GatedRepoError) for e in _chain(error)) or gated_text:
        return ModelNotFoundError(
            f"teacher model {label} is {'in a' if filename else 'a'} gated repository: accept its license on "
            f"https://huggingface.co/{model} "
            "while logged in, then log in here with `hf auth login` (or set HF_TOKEN), or download it on a "
            f"machine that has access. {fetch_hint(model, filename)}")
    if any(isinstance(e, RevisionNotFoundError) for e in _chain(error)):
        return ModelNotFoundError(f"teacher model {model} has no revision {revision!r}; set teacher.revision to a "
                                  "branch, tag or commit of that repository (or null for main)")
    if any(isinstance(e, RepositoryNotFoundError) for e in _chain(error)):
        return ModelNotFoundError(f"teacher model {label} does not exist on the Hugging Face hub (or is private). "
                                  "Check the spelling of teacher.model, or point it at a local diffusers folder.")
    unreachable = ("offline", "not fully cached", "connect", "reach", "network", "timed out", "resolve host")
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or "LocalEntryNotFoundError" in names or \
        any(word in text for word in unreachable)
    if offline:
        return ModelNotFoundError(
            f"teacher model {label} is not in {where} and the hub cannot be reached (HF_HUB_OFFLINE="
            f"{os.environ.get('HF_HUB_OFFLINE', 'unset')}). {fetch_hint(model, filename)}")
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ModelNotFoundError(f"could not load teacher model {label} (looked in {where} and on the hub): "
                              f"{first_line}. {fetch_hint(model, filename)}")


def check_local_folder(model: str) -> Path:
    """The folder of a local model; raises ModelNotFoundError when it is missing or not a diffusers folder."""
    folder = Path(model).expanduser().resolve()
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"teacher model folder {folder} does not exist (teacher.model={model!r}). Point teacher.model at a "
            "diffusers folder (one holding model_index.json), or give a Hugging Face repo id such as "
            "stabilityai/stable-diffusion-2-1-base. "
            + fetch_hint("stabilityai/stable-diffusion-2-1-base"))
    if not (folder / "model_index.json").is_file():
        raise ModelNotFoundError(
            f"teacher model folder {folder} is not a diffusers model: it has no model_index.json. Download the "
            "whole repository (not single .ckpt/.safetensors files). "
            + fetch_hint("stabilityai/stable-diffusion-2-1-base"))
    return folder


@contextmanager
def quiet_loading():
    """Silence the libraries' progress bars and info logs while loading weights."""
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging
    except ImportError as error:
        raise DreamEngineError(f"the stable-diffusion teacher needs diffusers and transformers ({error}); "
                               "install them with: pip install 'dreamengine[sd]'") from None

    previous = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        diffusers_logging.set_verbosity(previous[0])
        transformers_logging.set_verbosity(previous[1])
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()


def load_pipeline(model: str, revision: str | None, dtype: torch.dtype, pipeline_class: str = "StableDiffusionPipeline",
                  **kwargs: Any) -> Any:
    """``diffusers.<pipeline_class>.from_pretrained`` with errors turned into :class:`ModelNotFoundError`.

    Safety checker and feature extractor are not loaded (a teacher never produces final images)."""
    builtin = builtin_model(model)
    if builtin is not None:
        source = str(builtin)
    else:
        source = str(check_local_folder(model)) if looks_like_path(model) else model
    try:
        with quiet_loading():  # transformers prints torchvision fallback notices on import
            import diffusers

            pipeline_type = getattr(diffusers, pipeline_class)
    except ImportError as error:
        raise DreamEngineError(f"the {pipeline_class} teacher needs diffusers and transformers ({error}); "
                               "install them with: pip install 'dreamengine[sd]'") from None
    try:
        with quiet_loading():
            return pipeline_type.from_pretrained(source, revision=revision, torch_dtype=dtype, safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False, **kwargs)
    except (OSError, ValueError, RuntimeError) as error:
        raise explain_load_failure(model, revision, error) from None
    except Exception as error:  # huggingface_hub's HTTP errors and friends
        if type(error).__module__.startswith(("huggingface_hub", "requests", "httpx")):
            raise explain_load_failure(model, revision, error) from None
        raise


def text_encoder_key(model: str, revision: str | None, max_tokens: int, text_encoder: torch.nn.Module) -> str:
    """Identifies a text encoder's weights for the embedding cache: model, revision and a hash of its token
    embedding table and final norm, so a folder overwritten with another model gets a new key."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(f"{model}|{revision}|{max_tokens}".encode())
    for tensor in (text_encoder.get_input_embeddings().weight,
                   *[p for n, p in text_encoder.named_parameters() if "final_layer_norm" in n]):
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return f"{model}@{revision or 'main'}#{digest.hexdigest()[:16]}"


def alphas_cumprod_from_scheduler(scheduler: Any) -> Tensor:
    """[T] float64 alphas_cumprod of any diffusers scheduler (rebuilt by DDPMScheduler from its config)."""
    values = getattr(scheduler, "alphas_cumprod", None)
    if values is None:
        from diffusers import DDPMScheduler

        values = DDPMScheduler.from_config(scheduler.config).alphas_cumprod
    return torch.as_tensor(values).to(torch.float64)


def to_epsilon(output: Tensor, z_t: Tensor, abar: Tensor, prediction_type: str) -> Tensor:
    """Convert a UNet output to eps. abar is [B] (float64 fine); all tensors [B, C, h, w].

    v-prediction: eps = sqrt(abar) v + sqrt(1 - abar) z_t.  sample: eps = (z_t - sqrt(abar) x0) / sqrt(1 - abar).
    """
    if prediction_type == "epsilon":
        return output
    a = abar.to(torch.float64).view(-1, 1, 1, 1)
    out64, z64 = output.to(torch.float64), z_t.to(torch.float64)
    if prediction_type == "v_prediction":
        eps = a.sqrt() * out64 + (1.0 - a).sqrt() * z64
    else:
        eps = (z64 - a.sqrt() * out64) / (1.0 - a).sqrt().clamp_min(1e-12)
    return eps.to(output.dtype)


LORA_TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]  # every attention projection (diffusers' names)


def add_lora_adapter(unet: torch.nn.Module, rank: int, alpha: float,
                     adapter_name: str) -> dict[str, torch.nn.Parameter]:
    """Install a peft LoRA (B initialised to zero) on ``unet``'s attention projections, then disable it.

    The LoRA weights are kept in float32 whatever the UNet's dtype (they are trained with AdamW; peft casts
    the activations). Returns the trainable parameters by name. Raises DreamEngineError when peft is missing
    or the UNet already has an adapter of that name (one VSD guidance per teacher).
    """
    try:
        from peft import LoraConfig
    except ImportError as error:
        raise DreamEngineError(f"VSD's LoRA needs peft ({error}); install it with: pip install 'dreamengine[sd]'") \
            from None
    if adapter_name in (getattr(unet, "peft_config", None) or {}):
        raise DreamEngineError(f"this teacher's UNet already has a LoRA named {adapter_name!r}: one VSD guidance "
                               "per teacher (build a new teacher for a second one)")
    unet.add_adapter(LoraConfig(r=int(rank), lora_alpha=float(alpha), init_lora_weights=True,
                                target_modules=list(LORA_TARGET_MODULES)), adapter_name=adapter_name)
    params = {name: param for name, param in unet.named_parameters() if f".{adapter_name}." in name}
    for param in params.values():
        param.data = param.data.float()
    disable_adapter(unet, params)
    return params


def disable_adapter(unet: torch.nn.Module, params: dict[str, torch.nn.Parameter]) -> None:
    """Switch the LoRA off. peft's ``disable_adapters`` also sets ``requires_grad=False`` on the adapter
    weights, which would drop the gradients of a backward pass that runs after the adapter was used; they are
    marked trainable again (a disabled adapter is not part of the teacher's own graph, so it gets no gradient)."""
    unet.disable_adapters()
    for param in params.values():
        param.requires_grad_(True)


@contextmanager
def adapter_enabled(unet: torch.nn.Module, params: dict[str, torch.nn.Parameter],
                    class_embedding: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``unet`` with its LoRA (weights ``params``) enabled and ``class_embedding`` installed as the UNet's class
    embedding (added to the time embedding: diffusers' ``class_labels`` path). Both are undone on exit, so
    the frozen teacher's own calls never see them."""
    previous = unet.class_embedding
    unet.enable_adapters()
    unet.class_embedding = class_embedding
    try:
        yield unet
    finally:
        unet.class_embedding = previous
        disable_adapter(unet, params)


class UNetLoraAdapter:
    """VSD's LoRA on a diffusers UNet teacher (``self.unet``, ``self.device``, ``self.dtype``,
    ``self.cpu_offload``): the methods the Stable Diffusion and DeepFloyd IF teachers share."""

    unet: Any
    device: torch.device
    dtype: torch.dtype
    cpu_offload: bool
    lora_parameters: dict[str, torch.nn.Parameter]

    @property
    def time_embedding_dim(self) -> int:
        """Width of the UNet's time embedding (1280 for SD), which a class embedding must match."""
        return int(self.unet.time_embedding.linear_2.out_features)

    def add_lora_adapter(self, rank: int, alpha: float, adapter_name: str = "vsd") -> dict[str, torch.nn.Parameter]:
        """Install a disabled LoRA on the UNet (see :func:`add_lora_adapter`); ``predict_noise`` is unaffected."""
        if self.cpu_offload:
            raise ConfigError("guidance.name=vsd trains a LoRA on the teacher's UNet, which does not work with "
                              "teacher.cpu_offload=true; set teacher.cpu_offload=false")
        self.lora_parameters = add_lora_adapter(self.unet, rank, alpha, adapter_name)
        return self.lora_parameters

    def _adapter_output(self, sample: Tensor, t: Tensor, embeddings: Tensor, class_embedding: torch.nn.Module,
                        class_labels: Tensor) -> Tensor:
        """The UNet's raw output with the LoRA and ``class_embedding(class_labels)`` enabled."""
        with adapter_enabled(self.unet, self.lora_parameters, class_embedding) as unet:
            return unet(sample, t, encoder_hidden_states=embeddings.to(self.device, self.dtype),
                        class_labels=class_labels.to(self.device)).sample


class StableDiffusionTeacher(UNetLoraAdapter):
    """A frozen SD 1.x / 2.x model (implements :class:`dreamengine.core.protocols.Teacher`).

    Args:
        model: Hugging Face repo id or local diffusers folder.
        revision: branch / tag / commit on the hub (None: main). Ignored by local folders.
        device: where the teacher runs (may differ from the scene's device).
        dtype: auto (float16 on CUDA, float32 elsewhere), float16, bfloat16 or float32.
        channels_last, attention_slicing, enable_xformers, cpu_offload: CUDA speed / memory switches
            (channels_last is ignored on a CPU).
        resolution: image side the renders are resized to; None: the UNet's sample_size x VAE factor.
        pipeline: an already built ``StableDiffusionPipeline`` to use instead of loading ``model``
            (benchmarks and tests; ``model`` is then only a name).
        ip_adapter, ip_adapter_subfolder, ip_adapter_weight_name, ip_adapter_scale: an IP-Adapter for image prompts
            (diffusers' ``load_ip_adapter``; :meth:`set_visual_prompt` sets the image). None: text only.
    """

    def __init__(self, model: str, revision: str | None = None, device: str | torch.device = "cpu",
                 dtype: str = "auto", channels_last: bool = False, attention_slicing: bool = False,
                 enable_xformers: bool = False, cpu_offload: bool = False, resolution: int | None = None,
                 pipeline: Any | None = None, ip_adapter: str | dict | None = None,
                 ip_adapter_subfolder: str = "models", ip_adapter_weight_name: str = "ip-adapter_sd15.safetensors",
                 ip_adapter_scale: float = 1.0) -> None:
        if not str(model).strip():
            raise ConfigError("teacher.model is empty: give a Hugging Face repo id "
                              "(stabilityai/stable-diffusion-2-1-base) or a local diffusers folder")
        self.model = str(model)
        self.revision = revision
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if cpu_offload and self.device.type != "cuda":
            raise ConfigError("teacher.cpu_offload=true needs a CUDA teacher device (teacher.device=cuda); "
                              "set teacher.cpu_offload=false on a CPU")
        pipe = pipeline if pipeline is not None else load_pipeline(self.model, revision, self.dtype)
        self.cpu_offload = bool(cpu_offload)
        self.lora_parameters: dict[str, torch.nn.Parameter] = {}  # VSD's LoRA, once added
        self.prediction_type = str(pipe.scheduler.config.get("prediction_type", "epsilon"))
        if self.prediction_type not in PREDICTION_TYPES:
            raise DreamEngineError(f"teacher model {model} predicts {self.prediction_type!r}; supported: "
                                   f"{', '.join(PREDICTION_TYPES)}")
        for part in (pipe.unet, pipe.vae, pipe.text_encoder):
            part.requires_grad_(False)
            part.eval()
        if cpu_offload:
            pipe.enable_model_cpu_offload(device=self.device)
        elif pipe.unet.dtype == self.dtype:  # loaded with torch_dtype: casting again makes diffusers warn
            pipe.to(self.device)
        else:
            pipe.to(self.device, self.dtype)
        self.channels_last = bool(channels_last) and self.device.type == "cuda"  # no gain on CPUs
        if self.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
        if attention_slicing:
            pipe.enable_attention_slicing()
        if enable_xformers:
            try:
                pipe.enable_xformers_memory_efficient_attention()
            except Exception as error:  # ImportError / ValueError when xformers or CUDA is missing
                raise ConfigError(f"teacher.enable_xformers=true failed ({str(error).splitlines()[0]}); install "
                                  "xformers for your CUDA torch or set teacher.enable_xformers=false "
                                  "(PyTorch's SDPA attention is used by default)") from None
        self.pipe = pipe
        self.unet, self.vae, self.text_encoder, self.tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
        self.vae_scale = int(getattr(pipe, "vae_scale_factor", 8))
        native = int(pipe.unet.config.sample_size) * self.vae_scale
        self.resolution = int(resolution) if resolution else native
        if self.resolution != native:
            warnings.warn(f"teacher.resolution={self.resolution} differs from {self.model}'s native {native} px; "
                          "set teacher.resolution=null to use the model's own (the quickstart config sets 32 for "
                          "the toy teacher: start from --config dreamfusion-sd instead)", stacklevel=2)
        if self.resolution % self.vae_scale:
            raise ConfigError(f"teacher.resolution must be a multiple of {self.vae_scale}; got {self.resolution}")
        self.scaling_factor = float(pipe.vae.config.scaling_factor)
        self.shift_factor = float(getattr(pipe.vae.config, "shift_factor", None) or 0.0)
        self._alphas64 = alphas_cumprod_from_scheduler(pipe.scheduler).to(self.device)
        self.alphas_cumprod = self._alphas64.float()  # [T]
        self.num_train_timesteps = int(self.alphas_cumprod.shape[0])
        # diffusers' DDIM/PNDM timesteps are index + steps_offset (SD's scheduler config: 1); LucidDreamer's family
        # indexes its timesteps through it (guidance/base.py lucid_timestep_range)
        self.steps_offset = int(pipe.scheduler.config.get("steps_offset", 0))
        self.max_tokens = int(self.tokenizer.model_max_length)
        self.embedding_key = text_encoder_key(self.model, revision, self.max_tokens, self.text_encoder)
        self.visual_prompt: Tensor | None = None  # [1, 1, D] CLIP image embedding of the image prompt (IP-Adapter)
        self._empty_embedding: Tensor | None = None
        if ip_adapter is not None:
            self.load_ip_adapter(ip_adapter, ip_adapter_subfolder, ip_adapter_weight_name, ip_adapter_scale)

    @classmethod
    def from_config(cls, cfg: StableDiffusionTeacherConfig, context: TeacherContext) -> StableDiffusionTeacher:
        """The teacher of ``teacher.name: stable-diffusion`` on ``teacher.device`` (null: the run's device)."""
        return cls(cfg.model, revision=cfg.revision, device=teacher_device(cfg.device, context.device),
                   dtype=cfg.dtype, channels_last=cfg.channels_last, attention_slicing=cfg.attention_slicing,
                   enable_xformers=cfg.enable_xformers, cpu_offload=cfg.cpu_offload, resolution=cfg.resolution,
                   ip_adapter=cfg.ip_adapter, ip_adapter_subfolder=cfg.ip_adapter_subfolder,
                   ip_adapter_weight_name=cfg.ip_adapter_weight_name, ip_adapter_scale=cfg.ip_adapter_scale)

    # -- Teacher protocol -------------------------------------------------------------------------

    def encode(self, rgb: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 4 h w"]:
        """rgb [B, 3, H, W] in [0, 1] -> latents [B, 4, res/8, res/8] float32 on the teacher device (differentiable)."""
        rgb = rgb.to(self.device)
        if tuple(rgb.shape[-2:]) != (self.resolution, self.resolution):
            rgb = F.interpolate(rgb, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        posterior = self.vae.encode((2.0 * rgb - 1.0).to(self.dtype)).latent_dist
        return ((posterior.mean - self.shift_factor) * self.scaling_factor).float()

    def decode(self, z: Tensor) -> Tensor:
        """latents [B, 4, h, w] -> rgb [B, 3, 8h, 8w] in [0, 1], float32."""
        image = self.vae.decode((z.to(self.device) / self.scaling_factor + self.shift_factor).to(self.dtype)).sample
        return ((image.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def embed(self, prompts: list[str]) -> Tensor:
        """Text encoder hidden states [P, max_tokens, D] (float32). Over-long prompts are truncated with a warning."""
        for prompt in prompts:
            count = len(self.tokenizer(prompt, truncation=False, verbose=False).input_ids)
            if count > self.max_tokens:
                warnings.warn(f"prompt '{prompt}' is {count} tokens long; the text encoder of {self.model} reads "
                              f"only {self.max_tokens} (start and end tokens included), so it is truncated",
                              stacklevel=2)
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.max_tokens, truncation=True,
                                return_tensors="pt")
        with torch.no_grad():
            hidden = self.text_encoder(tokens.input_ids.to(self.device))[0]
        return hidden.float()

    @torch.no_grad()
    def predict_noise(self, z_t: Tensor, t: Int[Tensor, " B"], embeddings: Tensor,
                      cameras: Cameras | None = None) -> Tensor:
        """eps [B, 4, h, w] float32 for z_t [B, 4, h, w] at integer t [B] under embeddings [B, L, D]."""
        z_t = z_t.to(self.device)
        t = t.to(self.device).long().reshape(-1).expand(z_t.shape[0])
        if z_t.dim() != 4:
            raise ValueError(f"z_t must be [B, 4, h, w], got {tuple(z_t.shape)}")
        sample = z_t.to(self.dtype)
        if self.channels_last:
            sample = sample.contiguous(memory_format=torch.channels_last)
        extra = {}
        if self.visual_prompt is None and getattr(self.unet.config, "encoder_hid_dim_type", None) == "ip_image_proj":
            raise ConfigError("this teacher has an IP-Adapter (teacher.ip_adapter) but no image prompt: give one with "
                              "set_visual_prompt, or set teacher.ip_adapter=null")
        if self.visual_prompt is not None:  # IP-Adapter: the image prompt beside the text
            extra["added_cond_kwargs"] = {"image_embeds": [self.image_prompt_rows(embeddings).to(self.dtype)]}
        output = self.unet(sample, t, encoder_hidden_states=embeddings.to(self.device, self.dtype), **extra).sample
        return to_epsilon(output.float(), z_t.float(), self._alphas64[t], self.prediction_type)

    # -- visual prompts (IP-Adapter) ---------------------------------------------------------------

    def load_ip_adapter(self, source: str | dict, subfolder: str, weight_name: str, scale: float) -> None:
        """Load an IP-Adapter with diffusers' ``load_ip_adapter`` (a repo id, a folder, or a state dict with
        ``image_proj`` / ``ip_adapter``; a state dict needs the pipeline's ``image_encoder`` already set)."""
        try:
            with quiet_loading():
                self.pipe.load_ip_adapter(source, subfolder=subfolder, weight_name=weight_name)
        except (OSError, ValueError) as error:
            if isinstance(source, dict):
                raise
            raise explain_load_failure(str(source), None, error) from None
        self.pipe.set_ip_adapter_scale(float(scale))
        self.pipe.to(self.device, self.dtype)
        self.unet.requires_grad_(False)

    @torch.no_grad()
    def set_visual_prompt(self, rgb: Float[Tensor, "3 H W"]) -> None:
        """The image prompt (in [0, 1]) for every conditioned row of :meth:`predict_noise`: its CLIP image embedding
        (the pipeline's image encoder, CLIP's resize and normalization)."""
        encoder = getattr(self.pipe, "image_encoder", None)
        if encoder is None:
            raise ConfigError("a visual prompt needs an IP-Adapter: set teacher.ip_adapter (e.g. h94/IP-Adapter)")
        size = int(encoder.config.image_size)
        image = F.interpolate(rgb.reshape(1, 3, *rgb.shape[-2:]).to(self.device).float(), size=(size, size),
                              mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.tensor((0.48145466, 0.4578275, 0.40821073), device=self.device).view(1, 3, 1, 1)
        std = torch.tensor((0.26862954, 0.26130258, 0.27577711), device=self.device).view(1, 3, 1, 1)
        self.visual_prompt = encoder(pixel_values=((image - mean) / std).to(self.dtype)).image_embeds.float()[:, None]

    def image_prompt_rows(self, embeddings: Tensor) -> Tensor:
        """[B, 1, D]: the image prompt for rows conditioned on a text, zeros for rows holding the empty text's
        embedding (the unconditional branch drops the image prompt too, as IP-Adapter pipelines do)."""
        if self._empty_embedding is None:
            self._empty_embedding = self.embed([""]).to(self.device)
        empty = (embeddings.to(self.device).float() - self._empty_embedding).flatten(1).abs().amax(dim=1) < 1e-5
        rows = self.visual_prompt.expand(embeddings.shape[0], -1, -1).clone()
        rows[empty] = 0.0
        return rows

    # -- VSD: a LoRA on this UNet ------------------------------------------------------------------

    def predict_with_adapter(self, z_t: Tensor, t: Tensor, embeddings: Tensor, class_embedding: torch.nn.Module,
                             class_labels: Tensor) -> Tensor:
        """Raw UNet output [B, 4, h, w] float32 (the model's ``prediction_type``) with the LoRA enabled and
        ``class_embedding(class_labels)`` [B, 16] -> [B, time_embedding_dim] added to the time embedding.

        Runs with gradients (towards the LoRA and ``class_embedding``) unless called under ``no_grad``.
        """
        t = t.to(self.device).long().reshape(-1).expand(z_t.shape[0])
        sample = z_t.to(self.device, self.dtype)
        if self.channels_last:
            sample = sample.contiguous(memory_format=torch.channels_last)
        return self._adapter_output(sample, t, embeddings, class_embedding, class_labels).float()

    # -- extras ------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What a run manifest records about this teacher."""
        return {"model": self.model, "revision": self.revision, "commit": self.commit_hash(),
                "prediction_type": self.prediction_type, "dtype": str(self.dtype).replace("torch.", ""),
                "resolution": self.resolution}

    def commit_hash(self) -> str | None:
        """The hub commit of the loaded snapshot (None for local folders)."""
        path = Path(str(self.pipe.config.get("_name_or_path", "")))
        return path.name if path.parent.name == "snapshots" else None
