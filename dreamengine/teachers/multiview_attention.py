"""MVDream's cross-view self-attention as a diffusers attention processor.

In MVDream's UNet (``bytedance/MVDream``, ``mvdream/ldm/modules/attention.py``, ``BasicTransformerBlock3D``)
every transformer block's *self*-attention sees the tokens of all views of one object: the hidden states of the
n views, [(b n), L, C], are regrouped to [b, (n L), C] before ``attn1`` and back after it; the cross-attention to
the text (``attn2``) and the feed-forward stay per view. :class:`MultiViewAttnProcessor` does exactly that
around a diffusers processor (``AttnProcessor2_0`` by default), so a stock ``UNet2DConditionModel`` with it on
every attention layer is MVDream's network. The number of views comes with each call through the UNet's
``cross_attention_kwargs={"num_views": n}``; with ``num_views = 1`` (the default) it is the plain processor.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor


class MultiViewAttnProcessor:
    """Self-attention across the ``num_views`` consecutive samples of each group; everything else per sample.

    Args:
        processor: the diffusers processor that computes the attention itself (None: ``AttnProcessor2_0``).
    """

    def __init__(self, processor: Any | None = None) -> None:
        if processor is None:
            from diffusers.models.attention_processor import AttnProcessor2_0

            processor = AttnProcessor2_0()
        self.processor = processor

    def __call__(self, attn: Any, hidden_states: Float[Tensor, "B L C"], encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None,
                 num_views: int = 1) -> Float[Tensor, "B L C"]:
        """``attn``'s output for hidden states [B, L, C]; self-attention (no ``encoder_hidden_states``) over the
        tokens of each group of ``num_views`` samples together (B a multiple of it)."""
        if num_views == 1 or encoder_hidden_states is not None:
            return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if hidden_states.dim() != 3 or hidden_states.shape[0] % num_views:
            raise ValueError(f"multi-view attention needs hidden states [B, L, C] with B a multiple of {num_views} "
                             f"views, got {tuple(hidden_states.shape)}")
        if attention_mask is not None:
            raise ValueError("multi-view self-attention does not take an attention mask")
        batch, tokens, channels = hidden_states.shape
        joined = hidden_states.reshape(batch // num_views, num_views * tokens, channels)  # [b, (n L), C]
        out = self.processor(attn, joined, None, None, temb)
        return out.reshape(batch, tokens, channels)


def install_multiview_attention(unet: torch.nn.Module) -> None:
    """Put a :class:`MultiViewAttnProcessor` on every attention layer of a diffusers UNet (self-attention then
    spans the views of a group when the UNet is called with ``cross_attention_kwargs={"num_views": n}``)."""
    unet.set_attn_processor(MultiViewAttnProcessor())


__all__ = ["MultiViewAttnProcessor", "install_multiview_attention"]
