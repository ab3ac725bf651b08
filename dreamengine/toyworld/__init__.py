"""The toy world: procedural objects, their analytic renderer and ground-truth metrics."""

from dreamengine.toyworld.metrics import mask_iou, psnr, sample_points_in_bound, volumetric_iou
from dreamengine.toyworld.objects import ToyObject
from dreamengine.toyworld.render import render_toy
from dreamengine.toyworld.vocabulary import all_objects, parse_prompt, split_view, vocabulary

__all__ = [
    "ToyObject",
    "all_objects",
    "mask_iou",
    "parse_prompt",
    "psnr",
    "render_toy",
    "sample_points_in_bound",
    "split_view",
    "volumetric_iou",
    "vocabulary",
]
