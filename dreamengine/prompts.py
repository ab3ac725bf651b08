"""Prompt processing: view-dependent prompts, the negative (unconditional) branch, Perp-Neg, an embedding cache.

For each training view the processor picks a direction label from the camera (front / side / back /
overhead, thresholds as in guidance-math.md §6) and returns the teacher's embedding of that direction's
prompt, together with the embedding of the negative prompt, which is the unconditional branch of
classifier-free guidance (``""`` when no negative prompt is set), and the embedding of the prompt itself
without a view phrase (``plain``: VSD's particle score model is conditioned on it).

Direction prompts: suffix style ``"a cat, side view"`` (threestudio's default) or prefix style
``"side view of a cat"`` (``"backside view of ..."`` for the back), or a full text per direction given in
``prompt_front`` / ``prompt_side`` / ``prompt_back`` / ``prompt_overhead``.

Azimuth interpolation (``view_interpolation: true``, LucidDreamer's and PlacidDreamer's train.py): the
conditional embedding is ``r front + (1 - r) side`` for ``|azimuth| < 90`` (``r = 1 - |azi|/90``) and
``r side + (1 - r) back`` behind (``r = 2 - |azi|/90``), with no overhead label, instead of one direction's.

Perp-Neg (``perp_neg: true``, guidance-math.md §6): the positive embedding interpolates the front/side or
side/back embeddings by azimuth, and each view carries two negative embeddings with weights
``-f(r)``, ``f(r) = a exp(-b r) + c``; the guidance combines them with :mod:`dreamengine.guidance.perp_neg`.

Embeddings are computed once per direction at construction. Teachers with an ``embedding_key`` (real text
encoders) have them cached on disk, one safetensors file per (model, prompt), written atomically.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from dreamengine.config.prompts import PromptConfig
from dreamengine.core.cameras import Cameras, direction_labels, wrap_azimuth
from dreamengine.core.conditioning import PromptBatch
from dreamengine.core.files import atomic_path
from dreamengine.core.protocols import Teacher
from dreamengine.errors import PromptError

DIRECTIONS = ("front", "side", "back", "overhead")
PREFIX_WORDS = {"front": "front view of", "side": "side view of", "back": "backside view of",
                "overhead": "overhead view of"}


def view_prompt(prompt: str, direction: str, style: str = "suffix") -> str:
    """``"{prompt}, {direction} view"`` (suffix) or ``"{direction} view of {prompt}"`` (prefix, back: backside)."""
    if style == "prefix":
        return f"{PREFIX_WORDS[direction]} {prompt}"
    return f"{prompt}, {direction} view"


def direction_prompts(prompt: str, cfg: PromptConfig) -> list[str]:
    """The text for each of :data:`DIRECTIONS`, overrides first."""
    overrides = {"front": cfg.prompt_front, "side": cfg.prompt_side, "back": cfg.prompt_back,
                 "overhead": cfg.prompt_overhead}
    return [overrides[d] if overrides[d] else view_prompt(prompt, d, cfg.view_prompt_style) for d in DIRECTIONS]


def shifted_exp_decay(coefficients: list[float], r: Tensor) -> Tensor:
    """``a exp(-b r) + c`` for coefficients (a, b, c), elementwise on r."""
    a, b, c = (float(v) for v in coefficients)
    return a * torch.exp(-b * r) + c


def azimuth_mix(azimuth_deg: Tensor) -> tuple[Tensor, Tensor]:
    """Azimuth-interpolated view embedding coefficients (LucidDreamer train.py, PlacidDreamer; Perp-Neg's positive).

    Args: azimuth_deg [B] (any range; wrapped to (-180, 180]).
    Returns: mix [B, 4] float64 over DIRECTIONS (front, side, back, overhead; overhead always 0) and r [B]:
    |azi| < 90: r = 1 - |azi|/90, r front + (1 - r) side; otherwise r = 2 - |azi|/90, r side + (1 - r) back.
    """
    azimuth = wrap_azimuth(azimuth_deg.detach().double().cpu()).abs()
    front_half = azimuth < 90.0
    r = torch.where(front_half, 1.0 - azimuth / 90.0, 2.0 - azimuth / 90.0)
    mix = torch.zeros(azimuth.shape[0], 4, dtype=torch.float64)
    mix[:, 0] = torch.where(front_half, r, 0.0)
    mix[:, 1] = torch.where(front_half, 1.0 - r, r)
    mix[:, 2] = torch.where(front_half, 0.0, 1.0 - r)
    return mix, r


def perp_neg_weights(azimuth_deg: Tensor, overhead: Tensor, cfg: PromptConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Perp-Neg's per-view mixing (guidance-math.md §6, threestudio's curves).

    Args: azimuth_deg [B] (any range; wrapped to (-180, 180]), overhead [B] bool.
    Returns:
        pos_mix [B, 4]: coefficients of the positive embedding over DIRECTIONS (front, side, back, overhead);
        neg_index [B, 2]: which DIRECTIONS embeddings are the two negatives;
        neg_weights [B, 2]: their weights (0 for overhead views).
    |azi| < 90: r = 1 - |azi|/90, positive r front + (1-r) side, negatives [front, side] with [-f_fs(r), -f_sf(1-r)].
    otherwise:  r = 2 - |azi|/90, positive r side + (1-r) back, negatives [side, front] with [-f_sb(r), -f_fsb(r)].
    """
    pos_mix, r = azimuth_mix(azimuth_deg)
    front_half = wrap_azimuth(azimuth_deg.detach().double().cpu()).abs() < 90.0
    front, side = DIRECTIONS.index("front"), DIRECTIONS.index("side")
    neg_index = torch.where(front_half[:, None], torch.tensor([front, side]), torch.tensor([side, front]))
    neg_weights = torch.stack([
        torch.where(front_half, -shifted_exp_decay(cfg.perp_neg_f_fs, r), -shifted_exp_decay(cfg.perp_neg_f_sb, r)),
        torch.where(front_half, -shifted_exp_decay(cfg.perp_neg_f_sf, 1.0 - r),
                    -shifted_exp_decay(cfg.perp_neg_f_fsb, r)),
    ], dim=1)
    overhead = overhead.cpu().bool()
    pos_mix[overhead] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    neg_weights[overhead] = 0.0
    return pos_mix, neg_index.long(), neg_weights


def default_cache_dir() -> Path:
    """``$DREAMENGINE_CACHE/embeddings`` if the variable is set, else ``~/.cache/dreamengine/embeddings``."""
    root = os.environ.get("DREAMENGINE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "dreamengine") / "embeddings"


class EmbeddingCache:
    """On-disk text embeddings keyed by (model key, prompt): one safetensors file each, written atomically
    (temporary file + rename), so concurrent runs can share a folder. Unreadable files are rebuilt."""

    def __init__(self, folder: Path, model_key: str) -> None:
        self.folder = Path(folder).expanduser()
        self.model_key = model_key

    def path(self, text: str) -> Path:
        digest = hashlib.sha256(f"{self.model_key}\n{text}".encode()).hexdigest()[:40]
        return self.folder / f"text-{digest}.safetensors"

    def load(self, text: str) -> Tensor | None:
        """The cached embedding of ``text`` [...] (CPU), or None when absent or unreadable (with a warning)."""
        from safetensors import safe_open

        path = self.path(text)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                if meta.get("model") != self.model_key or meta.get("prompt") != text:
                    raise ValueError("its model or prompt does not match")
                tensor = handle.get_tensor("embedding")
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError("it holds non-finite values")
        except Exception as error:  # any unreadable file is rebuilt
            warnings.warn(f"embedding cache file {path} is unreadable ({error}); recomputing it", stacklevel=2)
            return None
        return tensor

    def save(self, text: str, tensor: Tensor) -> None:
        from safetensors.torch import save_file

        try:
            with atomic_path(self.path(text)) as tmp:
                save_file({"embedding": tensor.detach().cpu().contiguous()}, str(tmp),
                          metadata={"model": self.model_key, "prompt": text})
        except OSError as error:
            warnings.warn(f"could not write the embedding cache in {self.folder} ({error}); set "
                          "prompt_processor.cache_dir to a writable folder or cache_embeddings=false", stacklevel=2)

    def embed(self, teacher: Teacher, texts: list[str]) -> Tensor:
        """``teacher.embed(texts)`` [P, ...], reading and writing the cache; one teacher call for the misses."""
        found = {text: self.load(text) for text in dict.fromkeys(texts)}
        missing = [text for text, tensor in found.items() if tensor is None]
        if missing:
            fresh = teacher.embed(missing)
            for text, tensor in zip(missing, fresh, strict=True):
                self.save(text, tensor)
                found[text] = tensor
        device = torch.device(getattr(teacher, "device", "cpu"))
        return torch.stack([found[text].to(device) for text in texts])


class PromptProcessor:
    """Turns a prompt into per-view :class:`PromptBatch` for a teacher."""

    def __init__(self, teacher: Teacher, prompt: str, cfg: PromptConfig) -> None:
        prompt = prompt.strip()
        if not prompt:
            raise PromptError("the prompt is empty: give a text prompt, for example: dreamengine generate 'a red cube'")
        self.prompt = prompt
        self.cfg = cfg
        texts = direction_prompts(prompt, cfg) if cfg.view_dependent else [prompt]
        key = getattr(teacher, "embedding_key", None)
        self.cache = None
        if cfg.cache_embeddings and key:
            self.cache = EmbeddingCache(Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(), key)
        all_texts = [*texts, cfg.negative_prompt, prompt]
        with torch.no_grad():
            embeddings = self.cache.embed(teacher, all_texts) if self.cache else teacher.embed(all_texts)
        self.texts = texts
        self.cond_embeddings = embeddings[:-2]  # [D, ...] one per direction (or one)
        self.uncond_embedding = embeddings[-2:-1]  # [1, ...]
        self.plain_embedding = embeddings[-1:]  # [1, ...] the prompt without view phrases

    def direction_index(self, cameras: Cameras) -> Tensor:
        """Index into :data:`DIRECTIONS` per camera [B] (all 0 without view-dependent prompts)."""
        if not self.cfg.view_dependent:
            return torch.zeros(len(cameras), dtype=torch.long)
        labels = direction_labels(cameras, self.cfg.front_threshold, self.cfg.back_threshold,
                                  self.cfg.overhead_threshold)
        return torch.tensor([DIRECTIONS.index(label) for label in labels])

    def __call__(self, cameras: Cameras) -> PromptBatch:
        index = self.direction_index(cameras)
        texts = [self.texts[i] for i in index.tolist()]
        uncond = self.uncond_embedding.expand(len(cameras), *self.uncond_embedding.shape[1:])
        plain = self.plain_embedding.expand(len(cameras), *self.plain_embedding.shape[1:])
        table = self.cond_embeddings
        if self.cfg.view_interpolation and not self.cfg.perp_neg:  # LucidDreamer: front/side/back by azimuth
            mix, _ = azimuth_mix(cameras.azimuth)
            flat = table.reshape(len(DIRECTIONS), -1)
            cond = (mix.to(flat) @ flat).reshape(len(cameras), *table.shape[1:])
            return PromptBatch(cond=cond, uncond=uncond, texts=texts, plain=plain)
        if not self.cfg.perp_neg:
            return PromptBatch(cond=table[index.to(table.device)], uncond=uncond, texts=texts, plain=plain)
        overhead = cameras.elevation.detach().cpu() > self.cfg.overhead_threshold
        pos_mix, neg_index, neg_weights = perp_neg_weights(cameras.azimuth, overhead, self.cfg)
        flat = table.reshape(len(DIRECTIONS), -1)
        cond = (pos_mix.to(flat) @ flat).reshape(len(cameras), *table.shape[1:])
        neg = table[neg_index.to(table.device)]  # [B, 2, ...]
        return PromptBatch(cond=cond, uncond=uncond, texts=texts, neg=neg,
                           neg_weights=neg_weights.to(table.device, table.dtype), plain=plain)


__all__ = ["DIRECTIONS", "EmbeddingCache", "PromptProcessor", "azimuth_mix", "direction_prompts",
           "perp_neg_weights", "shifted_exp_decay", "view_prompt"]
