"""What a teacher is conditioned on, per training view."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class PromptBatch:
    """Conditioning for a batch of B views (made by :class:`dreamengine.prompts.PromptProcessor`).
    ``neg``/``neg_weights`` are set only with Perp-Neg."""

    cond: Tensor  # [B, ...] embedding of the (view-dependent) prompt per view
    uncond: Tensor  # [B, ...] embedding of the negative prompt
    texts: list[str]  # the prompt text used for each view (its direction label's text under Perp-Neg)
    neg: Tensor | None = None  # [B, K, ...] Perp-Neg negative embeddings per view
    neg_weights: Tensor | None = None  # [B, K] their weights w_i (<= 0 with the default curves)
    plain: Tensor | None = None  # [B, ...] embedding of the prompt itself, without view phrases (VSD's score model)


__all__ = ["PromptBatch"]
