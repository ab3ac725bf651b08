"""Ground-truth metrics: mask IoU and PSNR on images, volumetric IoU on occupancy samples."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _per_image(x: Tensor) -> Tensor:
    """[B, ...] -> [B, D] (a trailing channel of masks is flattened with the pixels)."""
    return x.reshape(x.shape[0], -1)


def mask_iou(pred: Tensor, gt: Tensor, threshold: float = 0.5) -> float:
    """Mean over the batch of the IoU of masks binarized at ``threshold`` (pixel on if value > threshold).

    Args:
        pred, gt: [B, H, W, 1] or [B, H, W], values in [0, 1].
    An image where both masks are empty counts as IoU 1.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"mask_iou: shapes differ, {tuple(pred.shape)} vs {tuple(gt.shape)}")
    a, b = _per_image(pred > threshold), _per_image(gt > threshold)
    intersection = (a & b).sum(dim=1).double()
    union = (a | b).sum(dim=1).double()
    iou = torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))
    return float(iou.mean())


def psnr(pred: Tensor, gt: Tensor) -> float:
    """Mean over the batch of per-image PSNR in dB for images [B, ...] in [0, 1]; inf if identical."""
    if pred.shape != gt.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(pred.shape)} vs {tuple(gt.shape)}")
    mse = ((_per_image(pred).double() - _per_image(gt).double()) ** 2).mean(dim=1)
    values = [math.inf if m == 0 else -10.0 * math.log10(m) for m in mse.tolist()]
    return sum(values) / len(values)


def volumetric_iou(inside_pred: Tensor, inside_gt: Tensor) -> float:
    """IoU of two occupancy samples, bool [N] each, taken at the same points; 1 if both are empty."""
    if inside_pred.shape != inside_gt.shape:
        raise ValueError(f"volumetric_iou: shapes differ, {tuple(inside_pred.shape)} vs "
                         f"{tuple(inside_gt.shape)}")
    a, b = inside_pred.bool(), inside_gt.bool()
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def sample_points_in_bound(n: int, radius: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points [n, 3] uniformly distributed in the ball of ``radius`` around the origin (CPU)."""
    direction = torch.randn(n, 3, generator=generator)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    r = radius * torch.rand(n, 1, generator=generator) ** (1.0 / 3.0)
    return direction * r
