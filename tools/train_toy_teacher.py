"""Train a small *learned* text-to-image diffusion model of the toy world and save it as a diffusers folder.

What it builds
    A pixel-space (32x32 RGB, no VAE) diffusers ``UNet2DConditionModel`` conditioned on a small
    ``transformers.CLIPTextModel`` by cross-attention (lowest resolution level and mid block) and, as in IF, by
    the attention-pooled text added to the time embedding (``addition_embed_type="text"``). The text encoder
    reads prompts through the real CLIP tokenizer (CLIP's BPE vocabulary, rebuilt offline by
    ``tests/tiny_sd.py``). Both are trained jointly from scratch on renders of the toy world, with Stable
    Diffusion's noise schedule (scaled_linear, betas 0.00085..0.012, 1000 steps, epsilon prediction).
    The result is saved as a DeepFloyd-IF-style pixel-space pipeline folder (``model_index.json`` naming
    ``IFPipeline``; ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``; fp16 safetensors), so
    ``IFPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None, watermarker=None,
    requires_safety_checker=False)`` and ``dreamengine.teachers.deepfloyd_if.DeepFloydIFTeacher`` load it, and
    ``dreamengine generate ... teacher.name=deepfloyd-if teacher.model=FOLDER`` distils through it.
    The text is encoded as IF does: padded to 77 tokens, the padding masked out of the text encoder's attention,
    the UNet attending to all 77 hidden states. The UNet predicts eps only (3 output channels, no learned
    variance): ``IFPipeline.__call__`` assumes IF's 6-channel output, so sample with :func:`sample_images` (or
    the ``evaluate`` command), not with the pipeline's ``__call__``.

Camera conditioning (``--camera``; the shipped ``toy-learned-camera``)
    The UNet also gets MVDream's camera embedding: diffusers' "projection" class embedding of the view's
    16-number camera (``dreamengine.teachers.mvdream.mvdream_camera``: the camera-to-world matrix with unit-length
    translation), added to the time embedding, its last layer zero-initialised. ``--camera-drop`` of the samples
    train without it (the embedding's output zeroed: the no-camera mode the teacher uses when scored without
    cameras). ``--init FOLDER`` starts from a saved model's weights (fine-tuning the text-only model; the new
    embedding then starts by adding nothing), ``--camera-lr-scale`` multiplies the embedding's learning rate.
    How toy-learned-camera was made: its README.md.

Data
    Every toy-world object (8 colors x 5 shapes + 6 view-asymmetric objects) rendered by
    ``dreamengine.toyworld.render_toy`` from random cameras: elevation uniform in [-15, 75] degrees, azimuth
    uniform, distance 2.5, fovy 40, white background, 32x32 with 2x supersampling (the framing of the exact
    toy teacher's bank and of the engine's training views). Rendering on the fly would cost about a third of
    the step time on one CPU thread, so a pool of ``--pool-views`` random views per object is rendered up front
    and ``--refresh-views`` slots of one object (round robin) are re-rendered from fresh random cameras every
    ``--refresh-every`` steps, which keeps adding new views at about 1% of the run time.
    Prompts: the empty prompt with probability ``--cond-drop`` (the classifier-free unconditional branch); else
    the object's canonical name ("a red cube") with probability ``--plain-prob``; else the name with the view
    suffix of the camera's direction label ("a red cube, side view"; labels from
    ``direction_labels(cameras, 45, 45, 60)`` as in the engine's prompt processor).

Schedule
    AdamW (lr ``--lr``, weight decay 0.01, linear warmup over ``--warmup`` steps, then cosine decay to 10%),
    timesteps uniform in [0, 1000), eps MSE weighted by min-SNR-gamma (``--min-snr``, 0 = plain MSE), gradient
    clipping at 1, EMA of both networks' weights (``--ema``, exported). The run is sized by wall clock:
    ``--minutes`` is the budget of the whole run (pool rendering included) and the cosine decay follows the
    elapsed fraction of it, so the learning rate reaches its floor when the budget is spent whatever the
    machine's speed (``--steps`` caps the step count too). Checkpoints (``--work``/checkpoint.pt, written
    atomically every ``--checkpoint-every`` steps and on SIGTERM/SIGINT) make a killed run resumable: rerun the
    same command. The log (``--work``/training-log.txt) has the mean loss every ``--log-every`` steps, speed,
    elapsed time, and an EMA validation loss on fixed held-out renders at every checkpoint.

Run (one CPU thread; about an hour)
    OMP_NUM_THREADS=1 python tools/train_toy_teacher.py train --minutes 58 \\
        --work /tmp/learned_teacher/run2 --out dreamengine/models/toy-learned
    python tools/train_toy_teacher.py export --work /tmp/learned_teacher/run2 --out dreamengine/models/toy-learned
    OMP_NUM_THREADS=1 python tools/train_toy_teacher.py evaluate --model dreamengine/models/toy-learned \\
        --samples 4 --guidance 7.5 --sheet /tmp/learned_teacher/samples.png

``evaluate`` samples every object with classifier-free guidance (ancestral DDPM, 100 steps, as IF samples;
``--sampler ddim`` for DDIM; a camera-conditioned model at random training cameras, and then also scored by the
RMS error to the true render at the sample's camera against other cameras) and reports how often a sample's
nearest (L2) entry of the exact toy teacher's bank belongs to the prompted object (per shape, per color), and
for the view-asymmetric objects how often a "<name>, <view> view" sample's nearest entry is that object seen
from that view.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dreamengine.core.cameras import cameras_from_spherical, direction_labels  # noqa: E402
from dreamengine.teachers.mvdream import CAMERA_DIM, mvdream_camera, without_camera_embedding  # noqa: E402
from dreamengine.toyworld import all_objects, render_toy  # noqa: E402
from dreamengine.toyworld.objects import ToyObject  # noqa: E402

RESOLUTION = 32
SUPERSAMPLE = 2
DISTANCE = 2.5
FOVY_DEG = 40.0
ELEVATION_RANGE = (-15.0, 75.0)
VIEW_THRESHOLDS = (45.0, 45.0, 60.0)  # front, back, overhead (the prompt processor's defaults)
VIEWS = ("front", "side", "back", "overhead")
MAX_TOKENS = 77  # IFPipeline and DeepFloydIFTeacher pad and truncate prompts to 77 tokens
NUM_TRAIN_TIMESTEPS = 1000


@dataclass
class ModelConfig:
    """Sizes of the two networks (recorded in the checkpoint; ``--unet-channels`` etc. set them)."""

    unet_channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: int = 1  # cross-attention in the lowest this-many resolution levels (and the mid block)
    attention_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 4
    text_heads: int = 4
    text_time_embedding: bool = True  # IF-style: attention-pooled text added to the time embedding of every block
    camera: bool = False  # MVDream-style camera embedding (16 -> time embedding, diffusers' "projection" class)


# -- models ----------------------------------------------------------------------------------------------------


def build_tokenizer() -> Any:
    """The real CLIP tokenizer (CLIP's BPE vocabulary, 49408 ids), with CLIP's 77-token length."""
    from tests.tiny_sd import clip_bpe_merges, tiny_tokenizer

    if clip_bpe_merges() is None:
        raise SystemExit("CLIP's BPE vocabulary is not available (no open_clip_torch package, no cached wheel and "
                         "no network): see clip_bpe_file in tests/tiny_sd.py")
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = MAX_TOKENS
    return tokenizer


def build_models(cfg: ModelConfig, tokenizer: Any) -> tuple[Any, Any]:
    """(UNet2DConditionModel in pixel space, CLIPTextModel), freshly initialised."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    levels = len(cfg.unet_channels)
    plain = levels - cfg.attention_levels
    down = ("DownBlock2D",) * plain + ("CrossAttnDownBlock2D",) * cfg.attention_levels
    up = ("CrossAttnUpBlock2D",) * cfg.attention_levels + ("UpBlock2D",) * plain
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION, in_channels=3, out_channels=3, block_out_channels=tuple(cfg.unet_channels),
        layers_per_block=1, down_block_types=down, up_block_types=up, cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.attention_heads, norm_num_groups=min(16, cfg.unet_channels[0]),
        **({"addition_embed_type": "text", "addition_embed_type_num_heads": cfg.text_heads}
           if cfg.text_time_embedding else {}),
        **({"class_embed_type": "projection", "projection_class_embeddings_input_dim": CAMERA_DIM}
           if cfg.camera else {}))
    if cfg.camera:  # starts adding nothing: a text-only model it is initialised from keeps its behaviour
        torch.nn.init.zeros_(unet.class_embedding.linear_2.weight)
        torch.nn.init.zeros_(unet.class_embedding.linear_2.bias)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    return unet, text_encoder


def build_scheduler() -> Any:
    """Stable Diffusion's DDPM noise schedule (pixel-space sampling clips x0 to [-1, 1])."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         num_train_timesteps=NUM_TRAIN_TIMESTEPS, prediction_type="epsilon")


def tokenize(tokenizer: Any, prompts: list[str]) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask), each [P, 77], exactly as IFPipeline / DeepFloydIFTeacher tokenize."""
    tokens = tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                       add_special_tokens=True, return_tensors="pt")
    return tokens.input_ids, tokens.attention_mask


def encode_text(text_encoder: Any, ids: Tensor, mask: Tensor) -> Tensor:
    """Hidden states [P, 77, D] with the padding masked out of attention (as the IF teacher does)."""
    return text_encoder(ids, attention_mask=mask)[0]


class EMA:
    """Exponential moving average of a list of modules' parameters (decay warmed up as (1+n)/(10+n))."""

    def __init__(self, modules: list[torch.nn.Module], decay: float) -> None:
        self.decay = decay
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for shadow, param in zip(self.shadow, self.params, strict=True):
            shadow.lerp_(param.detach(), 1.0 - decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live and the averaged weights (call twice to swap back)."""
        for shadow, param in zip(self.shadow, self.params, strict=True):
            tmp = param.detach().clone()
            param.copy_(shadow)
            shadow.copy_(tmp)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for shadow, saved in zip(self.shadow, state["shadow"], strict=True):
            shadow.copy_(saved)
        self.updates = int(state["updates"])


# -- data -------------------------------------------------------------------------------------------------------


def random_views(obj: ToyObject, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``count`` renders of ``obj`` from random cameras: (uint8 images [n, 3, 32, 32], view indices [n],
    MVDream camera conditions [n, 16])."""
    elevation = ELEVATION_RANGE[0] + (ELEVATION_RANGE[1] - ELEVATION_RANGE[0]) * torch.rand(count, generator=generator)
    azimuth = -180.0 + 360.0 * torch.rand(count, generator=generator)
    cameras = cameras_from_spherical(elevation, azimuth, torch.full((count,), DISTANCE),
                                     torch.full((count,), FOVY_DEG))
    rgb = render_toy(obj, cameras, RESOLUTION, RESOLUTION, background=(1.0, 1.0, 1.0), supersample=SUPERSAMPLE)["rgb"]
    images = (rgb.permute(0, 3, 1, 2) * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)
    labels = direction_labels(cameras, *VIEW_THRESHOLDS)
    return images, torch.tensor([VIEWS.index(label) for label in labels]), mvdream_camera(cameras).float()


class ViewPool:
    """Pre-rendered random views of every object, partly refreshed during training.

    ``images`` [O, V, 3, 32, 32] uint8, ``views`` [O, V] direction-label indices into :data:`VIEWS`,
    ``cameras`` [O, V, 16] their MVDream camera conditions.
    """

    def __init__(self, objects: list[ToyObject], images: Tensor, views: Tensor, cameras: Tensor,
                 next_object: int = 0) -> None:
        self.objects, self.images, self.views, self.cameras = objects, images, views, cameras
        self.next_object = next_object

    @classmethod
    def render(cls, objects: list[ToyObject], views_per_object: int, generator: torch.Generator) -> ViewPool:
        rendered = [random_views(obj, views_per_object, generator) for obj in objects]
        return cls(objects, *(torch.stack([r[k] for r in rendered]) for k in range(3)))

    def refresh(self, count: int, generator: torch.Generator) -> None:
        """Re-render ``count`` random slots of the next object (round robin) from new random cameras."""
        index = self.next_object
        self.next_object = (index + 1) % len(self.objects)
        slots = torch.randperm(self.images.shape[1], generator=generator)[:count]
        images, views, cameras = random_views(self.objects[index], len(slots), generator)
        self.images[index, slots] = images
        self.views[index, slots] = views
        self.cameras[index, slots] = cameras

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(images [B, 3, 32, 32] float in [-1, 1], object indices [B], view indices [B], cameras [B, 16]);
        objects uniform."""
        objects = torch.randint(0, self.images.shape[0], (batch,), generator=generator)
        slots = torch.randint(0, self.images.shape[1], (batch,), generator=generator)
        images = self.images[objects, slots].float() / 127.5 - 1.0
        return images, objects, self.views[objects, slots], self.cameras[objects, slots]


def prompt_table(objects: list[ToyObject]) -> list[str]:
    """Every training prompt: "" first, then per object its name and the name with each view suffix."""
    prompts = [""]
    for obj in objects:
        prompts.append(obj.name)
        prompts.extend(f"{obj.name}, {view} view" for view in VIEWS)
    return prompts


def prompt_indices(objects: Tensor, views: Tensor, cond_drop: float, plain_prob: float,
                   generator: torch.Generator) -> Tensor:
    """Row of :func:`prompt_table` per sample: "" with probability cond_drop, else plain name with
    probability plain_prob, else name + view suffix."""
    base = 1 + objects * (1 + len(VIEWS))
    u = torch.rand(objects.shape[0], generator=generator)
    drop = u < cond_drop
    plain = (u >= cond_drop) & (u < cond_drop + (1.0 - cond_drop) * plain_prob)
    index = torch.where(plain, base, base + 1 + views)
    return torch.where(drop, torch.zeros_like(index), index)


# -- training ---------------------------------------------------------------------------------------------------


def learning_rate(args: argparse.Namespace, step: int, progress: float) -> float:
    """Linear warmup over ``--warmup`` steps, then cosine from lr to lr/10 over the run's progress in [0, 1]."""
    warm = min(1.0, (step + 1) / max(1, args.warmup))
    cosine = 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return args.lr * warm * cosine


@contextmanager
def camera_dropout(unet: Any, keep: Tensor | None) -> Iterator[None]:
    """While active, the camera embedding's output is zeroed on the rows where ``keep`` [B] is 0: those samples
    train the model's no-camera mode (the teacher scores without cameras by removing the embedding)."""
    if keep is None or getattr(unet, "class_embedding", None) is None:
        yield
        return
    handle = unet.class_embedding.register_forward_hook(lambda _m, _i, out: out * keep.view(-1, 1).to(out.dtype))
    try:
        yield
    finally:
        handle.remove()


def diffusion_loss(unet: Any, text_encoder: Any, alphas: Tensor, x0: Tensor, ids: Tensor, mask: Tensor,
                   t: Tensor, noise: Tensor, min_snr: float, cameras: Tensor | None = None,
                   camera_keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(min-SNR-weighted eps MSE used for training, plain eps MSE) of one batch; ``cameras`` [B, 16] feed a
    camera-conditioned UNet (``camera_keep`` [B]: 0 where the camera is dropped)."""
    alpha = alphas[t].view(-1, 1, 1, 1)
    z_t = alpha.sqrt() * x0 + (1.0 - alpha).sqrt() * noise
    unique, inverse = torch.unique(ids, dim=0, return_inverse=True)
    unique_mask = torch.zeros(unique.shape[0], mask.shape[1], dtype=mask.dtype)
    unique_mask[inverse] = mask
    hidden = encode_text(text_encoder, unique, unique_mask)[inverse]
    with camera_dropout(unet, camera_keep):
        eps = unet(z_t, t, encoder_hidden_states=hidden, class_labels=cameras).sample
    per_sample = (eps - noise).pow(2).mean(dim=(1, 2, 3))
    if min_snr > 0:
        snr = alpha.view(-1) / (1.0 - alpha.view(-1))
        weight = snr.clamp(max=min_snr) / snr
    else:
        weight = torch.ones_like(per_sample)
    return (weight * per_sample).mean(), per_sample.mean().detach()


def initialise_from(unet: Any, text_encoder: Any, folder: Path) -> None:
    """Load a saved model folder's UNet and text encoder weights (fine-tuning); a camera embedding the folder's
    UNet lacks keeps its zero initialisation."""
    from safetensors.torch import load_file

    unet_state = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    missing, unexpected = unet.load_state_dict({k: v.float() for k, v in unet_state.items()}, strict=False)
    if unexpected or any(not key.startswith("class_embedding.") for key in missing):
        hint = "; a camera-conditioned folder needs --camera" if any("class_embedding" in k for k in unexpected) else ""
        raise SystemExit(f"--init {folder}: its UNet does not match the model options (missing {missing}, "
                         f"unexpected {unexpected}){hint}")
    text_state = load_file(str(folder / "text_encoder" / "model.safetensors"))
    missing, unexpected = text_encoder.load_state_dict({k: v.float() for k, v in text_state.items()}, strict=False)
    if missing or unexpected:
        raise SystemExit(f"--init {folder}: its text encoder does not match the model options (missing {missing}, "
                         f"unexpected {unexpected})")


def save_atomic(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def format_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Log:
    """Appends lines to ``training-log.txt`` and echoes them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        with self.path.open("a") as handle:
            handle.write(line + "\n")


def validation_batch(objects: list[ToyObject], tokenizer: Any, seed: int = 1234) -> dict[str, Tensor]:
    """Fixed held-out renders (cameras never in the pool), prompts with view suffixes, noise and timesteps."""
    generator = torch.Generator().manual_seed(seed)
    images, object_index, view_index, cameras = [], [], [], []
    for index, obj in enumerate(objects):
        rendered, views, camera = random_views(obj, 2, generator)
        images.append(rendered)
        view_index.append(views)
        cameras.append(camera)
        object_index += [index, index]
    x0 = torch.cat(images).float() / 127.5 - 1.0
    prompts = prompt_table(objects)
    rows = prompt_indices(torch.tensor(object_index), torch.cat(view_index), 0.0, 0.0, generator)
    ids, mask = tokenize(tokenizer, [prompts[int(r)] for r in rows])
    t = torch.linspace(20, NUM_TRAIN_TIMESTEPS - 20, x0.shape[0]).long()
    return {"x0": x0, "ids": ids, "mask": mask, "t": t, "noise": torch.randn(x0.shape, generator=generator),
            "cameras": torch.cat(cameras)}


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = Log(work / "training-log.txt")
    checkpoint_path = work / "checkpoint.pt"
    start_wall = time.perf_counter()

    tokenizer = build_tokenizer()
    cfg = ModelConfig(unet_channels=tuple(args.unet_channels), attention_levels=args.attention_levels,
                      text_hidden=args.text_hidden, text_layers=args.text_layers,
                      text_time_embedding=not args.no_text_time_embedding, camera=args.camera)
    resume = checkpoint_path.exists() and not args.fresh
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=False) if resume else None
    if state is not None:
        cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["model_config"].items()})
    torch.manual_seed(args.seed)
    unet, text_encoder = build_models(cfg, tokenizer)
    if state is None and args.init:  # fine-tuning: the optimizer and the average start at the loaded weights
        initialise_from(unet, text_encoder, Path(args.init))
    params = list(unet.parameters()) + list(text_encoder.parameters())
    camera_params = list(unet.class_embedding.parameters()) if cfg.camera else []
    camera_ids = {id(p) for p in camera_params}
    groups = [{"params": [p for p in params if id(p) not in camera_ids], "lr_scale": 1.0}]
    if camera_params:  # a camera embedding added to a trained model learns faster than the model is changed
        groups.append({"params": camera_params, "lr_scale": args.camera_lr_scale})
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.01, foreach=True)
    ema = EMA([unet, text_encoder], args.ema)
    generator = torch.Generator().manual_seed(args.seed)
    objects = all_objects()
    if state is not None:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        generator.set_state(state["generator"])
        pool = ViewPool(objects, state["pool_images"], state["pool_views"], state["pool_cameras"],
                        int(state["pool_next"]))
        step, elapsed_before = int(state["step"]), float(state["elapsed"])
        log(f"# resumed from {checkpoint_path} at step {step} ({format_time(elapsed_before)} trained before)")
    else:
        (work / "training-log.txt").write_text("")
        step, elapsed_before = 0, 0.0
        counts = {"unet": sum(p.numel() for p in unet.parameters()),
                  "text_encoder": sum(p.numel() for p in text_encoder.parameters())}
        log(f"# train_toy_teacher: {json.dumps(vars(args))}")
        log(f"# model: {json.dumps(asdict(cfg))}; parameters: unet {counts['unet'] / 1e6:.2f}M, "
            f"text encoder {counts['text_encoder'] / 1e6:.2f}M (token table "
            f"{text_encoder.get_input_embeddings().weight.numel() / 1e6:.2f}M)")
        t0 = time.perf_counter()
        pool = ViewPool.render(objects, args.pool_views, generator)
        log(f"# pool: {len(objects)} objects x {args.pool_views} random views rendered in "
            f"{time.perf_counter() - t0:.0f} s; refresh {args.refresh_views} views of one object every "
            f"{args.refresh_every} steps")

    prompts = prompt_table(objects)
    all_ids, all_mask = tokenize(tokenizer, prompts)
    alphas = build_scheduler().alphas_cumprod.float()
    validation = validation_batch(objects, tokenizer)
    budget = 60.0 * args.minutes

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - start_wall

    def progress() -> float:
        by_time = elapsed() / budget if budget > 0 else 0.0
        by_steps = step / args.steps if args.steps else 0.0
        return max(by_time, by_steps)

    def validate() -> float:
        ema.swap()
        unet.eval()
        text_encoder.eval()
        with torch.no_grad():
            _, loss = diffusion_loss(unet, text_encoder, alphas, validation["x0"], validation["ids"],
                                     validation["mask"], validation["t"], validation["noise"], 0.0,
                                     validation["cameras"] if cfg.camera else None)
        unet.train()
        text_encoder.train()
        ema.swap()
        return float(loss)

    def save() -> None:
        save_atomic({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                     "optimizer": optimizer.state_dict(), "ema": ema.state_dict(), "generator": generator.get_state(),
                     "pool_images": pool.images, "pool_views": pool.views, "pool_cameras": pool.cameras,
                     "pool_next": pool.next_object,
                     "step": step, "elapsed": elapsed(), "model_config": asdict(cfg)}, checkpoint_path)

    stop = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    unet.train()
    text_encoder.train()
    sums, count, window_start, window_step = [0.0, 0.0], 0, time.perf_counter(), step
    while progress() < 1.0 and stop["signal"] is None:
        lr = learning_rate(args, step, progress())
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        x0, obj_index, view_index, cameras = pool.sample(args.batch_size, generator)
        rows = prompt_indices(obj_index, view_index, args.cond_drop, args.plain_prob, generator)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (args.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        keep = (torch.rand(args.batch_size, generator=generator) >= args.camera_drop).float() if cfg.camera else None
        loss, plain = diffusion_loss(unet, text_encoder, alphas, x0, all_ids[rows], all_mask[rows], t, noise,
                                     args.min_snr, cameras if cfg.camera else None, keep)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.update()
        step += 1
        sums[0] += float(loss.detach())
        sums[1] += float(plain)
        count += 1
        if args.refresh_every and step % args.refresh_every == 0:
            pool.refresh(args.refresh_views, generator)
        if step % args.log_every == 0:
            rate = (step - window_step) * args.batch_size / (time.perf_counter() - window_start)
            log(f"step {step:6d}  loss {sums[1] / count:.4f}  weighted {sums[0] / count:.4f}  lr {lr:.2e}  "
                f"img/s {rate:5.1f}  elapsed {format_time(elapsed())}")
            sums, count, window_start, window_step = [0.0, 0.0], 0, time.perf_counter(), step
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            log(f"# step {step}: EMA validation loss {validate():.4f}; checkpoint written")
            save()
        if args.steps and step >= args.steps:
            break
    save()
    if stop["signal"] is not None:
        log(f"# stopped by signal {stop['signal']} at step {step}; rerun the same command to resume")
        return
    log(f"# done: step {step}, EMA validation loss {validate():.4f}, {format_time(elapsed())} elapsed")
    export(work, Path(args.out))
    log(f"# exported the EMA weights to {args.out}")
    (Path(args.out) / "training-log.txt").write_text((work / "training-log.txt").read_text())


# -- export -----------------------------------------------------------------------------------------------------


def export(work: Path, out: Path) -> None:
    """Write the checkpoint's EMA weights as an fp16 IFPipeline folder."""
    from diffusers import IFPipeline

    state = torch.load(work / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["model_config"].items()})
    tokenizer = build_tokenizer()
    unet, text_encoder = build_models(cfg, tokenizer)
    unet.load_state_dict(state["unet"])
    text_encoder.load_state_dict(state["text_encoder"])
    ema = EMA([unet, text_encoder], state["ema"]["decay"])
    ema.load_state_dict(state["ema"])
    ema.swap()  # the averaged weights are the ones shipped
    pipe = IFPipeline(tokenizer=tokenizer, text_encoder=text_encoder.half(), unet=unet.half(),
                      scheduler=build_scheduler(), safety_checker=None, feature_extractor=None, watermarker=None,
                      requires_safety_checker=False)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    # transformers records the saved dtype (float16) as the default load dtype, while diffusers loads the UNet
    # in float32 unless told otherwise: a bare from_pretrained would mix the two. Ask for float32 by default.
    config_path = out / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float32"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # The fast tokenizer's JSON is written indented (3.6 MB); the same JSON without whitespace is half the size.
    tokenizer_path = out / "tokenizer" / "tokenizer.json"
    tokenizer_path.write_text(json.dumps(json.loads(tokenizer_path.read_text()), separators=(",", ":")))


# -- sampling and evaluation ------------------------------------------------------------------------------------


def load_folder(folder: str) -> Any:
    """The saved model as an ``IFPipeline`` in float32 (the way the IF teacher loads it on a CPU)."""
    from diffusers import IFPipeline

    return IFPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None, feature_extractor=None,
                                      watermarker=None, requires_safety_checker=False)


@torch.no_grad()
def sample_images(pipe: Any, prompts: list[str], guidance: float, steps: int, generator: torch.Generator,
                  sampler: str = "ddpm", batch: int = 64, cameras: Tensor | None = None) -> Tensor:
    """Classifier-free-guided samples [P, 3, 32, 32] in [-1, 1] from the pipeline's own UNet, text encoder and
    noise schedule. ``sampler``: "ddpm" (ancestral, the folder's DDPMScheduler as IF samples; x0 clipped to
    [-1, 1]) or "ddim" (deterministic, eta 0, x0 clipped). This small, briefly trained model samples far better
    with the stochastic sampler: DDIM accumulates its errors (see README.md). ``cameras`` [P, 16]: MVDream
    cameras for a camera-conditioned model (both branches get them); None samples it without its camera
    embedding."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if sampler == "ddpm":
        scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    elif sampler == "ddim":
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=True, set_alpha_to_one=False,
                                              steps_offset=1, timestep_spacing="leading")
    else:
        raise ValueError(f"sampler must be ddpm or ddim, got {sampler!r}")
    scheduler.set_timesteps(steps)
    size = int(pipe.unet.config.sample_size)
    uncond = encode_text(pipe.text_encoder, *tokenize(pipe.tokenizer, [""]))
    extra = {"generator": generator} if sampler == "ddpm" else {}
    out = []
    with without_camera_embedding(pipe.unet) if cameras is None else nullcontext(pipe.unet) as unet:
        for start in range(0, len(prompts), batch):
            chunk = prompts[start:start + batch]
            cond = encode_text(pipe.text_encoder, *tokenize(pipe.tokenizer, chunk))
            hidden = torch.cat([uncond.expand(len(chunk), -1, -1), cond])
            labels = None if cameras is None else cameras[start:start + batch].repeat(2, 1)
            x = torch.randn(len(chunk), 3, size, size, generator=generator)
            for t in scheduler.timesteps:
                eps_u, eps_c = unet(torch.cat([x, x]), t, encoder_hidden_states=hidden,
                                    class_labels=labels).sample[:, :3].chunk(2)
                x = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, x, **extra).prev_sample
            out.append(x.clamp(-1.0, 1.0))
    return torch.cat(out)


def contact_sheet(images: Tensor, objects: list[ToyObject], per_object: int, path: Path) -> None:
    """Save samples [O * n, 3, 32, 32] as a PNG: one cell of n samples per object, shapes x colors, then the
    asymmetric objects on the last row."""
    from PIL import Image

    grid_side = math.ceil(math.sqrt(per_object))
    cell = grid_side * RESOLUTION + 4
    colors = sorted({o.color_name for o in objects if o.color_name}, key=[o.color_name for o in objects].index)
    shapes = sorted({o.noun for o in objects if o.color_name}, key=[o.noun for o in objects].index)
    rows = len(shapes) + 1
    sheet = torch.full((3, rows * cell, len(colors) * cell), 0.6)
    others = 0
    for index, obj in enumerate(objects):
        if obj.color_name:
            row, col = shapes.index(obj.noun), colors.index(obj.color_name)
        else:
            row, col, others = len(shapes), others, others + 1
        for k in range(per_object):
            y = row * cell + 2 + (k // grid_side) * RESOLUTION
            x = col * cell + 2 + (k % grid_side) * RESOLUTION
            sheet[:, y:y + RESOLUTION, x:x + RESOLUTION] = (images[index * per_object + k] + 1.0) / 2.0
    array = (sheet.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
    image = Image.fromarray(array)
    image.resize((image.width * 2, image.height * 2), Image.NEAREST).save(path)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Sample every object and score each sample by the object of its nearest toy-teacher bank entry."""
    from dreamengine.teachers.toyworld import ToyWorldTeacher

    torch.set_num_threads(args.threads)
    pipe = load_folder(args.model)
    objects = all_objects()
    generator = torch.Generator().manual_seed(args.seed)
    prompts = [obj.name for obj in objects for _ in range(args.samples)]
    start = time.perf_counter()
    camera_model = getattr(pipe.unet, "class_embedding", None) is not None
    views, truths = None, None
    if camera_model:  # sample each at a random training camera; compare with the truth there and elsewhere
        rendered = [random_views(obj, 2 * args.samples, generator) for obj in objects]
        views = torch.cat([r[2][: args.samples] for r in rendered])
        truths = torch.stack([torch.cat([r[0][: args.samples], r[0][args.samples:]]) for r in rendered])
    images = sample_images(pipe, prompts, args.guidance, args.steps, generator, args.sampler, cameras=views)
    teacher = ToyWorldTeacher(resolution=RESOLUTION, distance=DISTANCE, fovy_deg=FOVY_DEG)
    bank = teacher.bank_images().flatten(1)
    distance = torch.cdist(images.flatten(1), bank)
    nearest_object = [teacher.objects[int(teacher.bank_object[i])] for i in distance.argmin(dim=1)]
    prompted = [obj for obj in objects for _ in range(args.samples)]
    correct = [a.name == b.name for a, b in zip(prompted, nearest_object, strict=True)]

    def fraction(selected: list[int]) -> float:
        return sum(correct[i] for i in selected) / max(1, len(selected))

    groups: dict[str, list[int]] = {}
    for i, obj in enumerate(prompted):
        groups.setdefault(f"shape:{obj.noun}" if obj.color_name else "asymmetric objects", []).append(i)
        if obj.color_name:
            groups.setdefault(f"color:{obj.color_name}", []).append(i)
    colored = [i for i, obj in enumerate(prompted) if obj.color_name]
    result: dict[str, Any] = {
        "guidance": args.guidance, "sampler": args.sampler, "steps": args.steps, "samples_per_object": args.samples,
        "overall": fraction(list(range(len(prompted)))),
        "color_correct": sum(prompted[i].color_name == nearest_object[i].color_name for i in colored) / len(colored),
        "shape_correct": sum(prompted[i].noun == nearest_object[i].noun for i in colored) / len(colored),
        "groups": {name: fraction(index) for name, index in sorted(groups.items())},
        "per_object": {obj.name: fraction(list(range(k * args.samples, (k + 1) * args.samples)))
                       for k, obj in enumerate(objects)},
        "nearest_distance_mean": float(distance.min(dim=1).values.mean()),
        **(camera_consistency(images, truths, args.samples) if truths is not None else {}),
        "sampling_seconds": time.perf_counter() - start,
    }
    if args.view_samples:
        result["view_accuracy"] = view_accuracy(pipe, teacher, args, generator)
    if args.sheet:
        Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(images, objects, args.samples, Path(args.sheet))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def camera_consistency(images: Tensor, truths: Tensor, per_object: int) -> dict[str, float]:
    """For a camera-conditioned model's samples [O * n, 3, 32, 32], each drawn at a random camera: the RMS error
    to the true render at that camera and to true renders of the same object at other random cameras (truths
    [O, 2n, 3, 32, 32] uint8: the sampled cameras first). Below 1, their ratio says the camera is followed."""
    truth = truths.float() / 127.5 - 1.0
    samples = images.reshape(truth.shape[0], per_object, *images.shape[1:])
    own = (samples - truth[:, :per_object]).pow(2).mean(dim=(2, 3, 4)).sqrt().mean()
    other = (samples - truth[:, per_object:]).pow(2).mean(dim=(2, 3, 4)).sqrt().mean()
    return {"rms_to_own_camera_truth": float(own), "rms_to_other_camera_truth": float(other),
            "camera_ratio": float(own / other)}


def view_accuracy(pipe: Any, teacher: Any, args: argparse.Namespace, generator: torch.Generator) -> dict[str, float]:
    """For the view-asymmetric objects: the fraction of samples of "<name>, <view> view" whose nearest bank
    entry is that object seen from a view with that label."""
    objects = [obj for obj in teacher.objects if obj.asymmetric]
    cases = [(obj, view) for obj in objects for view in VIEWS for _ in range(args.view_samples)]
    images = sample_images(pipe, [f"{obj.name}, {view} view" for obj, view in cases], args.guidance, args.steps,
                           generator, args.sampler)
    nearest = torch.cdist(images.flatten(1), teacher.bank_images().flatten(1)).argmin(dim=1)
    names = [o.name for o in teacher.objects]
    hits: dict[str, list[bool]] = {view: [] for view in VIEWS}
    for (obj, view), i in zip(cases, nearest.tolist(), strict=True):
        hits[view].append(names[int(teacher.bank_object[i])] == obj.name and teacher.bank_labels[i] == view)
    return {view: sum(v) / len(v) for view, v in hits.items()}


# -- command line -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train", help="train (resumes from --work/checkpoint.pt), then export to --out")
    run.add_argument("--work", default="/tmp/learned_teacher/run", help="checkpoint and log folder")
    run.add_argument("--out", default=str(REPO / "dreamengine" / "models" / "toy-learned"))
    run.add_argument("--minutes", type=float, default=58.0, help="wall-clock budget of the whole run")
    run.add_argument("--steps", type=int, default=0, help="stop after this many steps too (0: no cap)")
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--lr", type=float, default=1e-3)
    run.add_argument("--warmup", type=int, default=200)
    run.add_argument("--min-snr", type=float, default=5.0)
    run.add_argument("--ema", type=float, default=0.999)
    run.add_argument("--cond-drop", type=float, default=0.12)
    run.add_argument("--plain-prob", type=float, default=0.25)
    run.add_argument("--pool-views", type=int, default=160, help="random views per object in the pool")
    run.add_argument("--refresh-every", type=int, default=20)
    run.add_argument("--refresh-views", type=int, default=40)
    run.add_argument("--unet-channels", type=int, nargs="+", default=[32, 64, 64])
    run.add_argument("--attention-levels", type=int, default=1)
    run.add_argument("--text-hidden", type=int, default=64)
    run.add_argument("--text-layers", type=int, default=4)
    run.add_argument("--no-text-time-embedding", action="store_true",
                     help="condition through cross-attention only (no pooled text in the time embedding)")
    run.add_argument("--camera", action="store_true",
                     help="condition the UNet on the camera too (MVDream's 16-number camera, a projection class "
                          "embedding added to the time embedding)")
    run.add_argument("--camera-drop", type=float, default=0.1,
                     help="probability of training a sample without its camera (the no-camera mode)")
    run.add_argument("--camera-lr-scale", type=float, default=1.0,
                     help="learning-rate factor of the camera embedding (fine-tuning a text-only model: 10)")
    run.add_argument("--init", default="", help="start from this saved model folder's weights (fine-tuning)")
    run.add_argument("--log-every", type=int, default=50)
    run.add_argument("--checkpoint-every", type=int, default=250)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--threads", type=int, default=1)
    run.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    out = commands.add_parser("export", help="write --work/checkpoint.pt's EMA weights as a diffusers folder")
    out.add_argument("--work", default="/tmp/learned_teacher/run")
    out.add_argument("--out", default=str(REPO / "dreamengine" / "models" / "toy-learned"))
    check = commands.add_parser("evaluate", help="sample every object and score against the toy teacher's bank")
    check.add_argument("--model", default=str(REPO / "dreamengine" / "models" / "toy-learned"))
    check.add_argument("--samples", type=int, default=4, help="samples per object")
    check.add_argument("--view-samples", type=int, default=2, help="per asymmetric object and view (0: skip)")
    check.add_argument("--guidance", type=float, default=7.5)
    check.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm")
    check.add_argument("--steps", type=int, default=100, help="sampling steps")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--threads", type=int, default=1)
    check.add_argument("--sheet", default="", help="contact sheet PNG path")
    check.add_argument("--json", default="", help="write the results here too")
    args = parser.parse_args(argv)
    if args.command == "train":
        train(args)
    elif args.command == "export":
        export(Path(args.work), Path(args.out))
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
