"""How faithful an exported mesh is to the scene it came from.

The exported file is read back (:func:`~dreamengine.export.load_mesh`, so whatever went wrong in writing it
shows), rendered with :func:`~dreamengine.renderers.raster.render_mesh` from held-out cameras, and compared
with the scene's own renders from the same cameras: PSNR of the images and IoU of the masks (opacity > 0.5),
with the toy world's metrics (:mod:`dreamengine.toyworld.metrics`).

The scene's renders should use 'albedo' shading (what the texture stores) and the same ``background`` as
passed here, so that background pixels compare equal.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from dreamengine.core.cameras import Cameras, cameras_from_spherical
from dreamengine.core.render import RenderOut
from dreamengine.export.mesh_io import load_mesh
from dreamengine.renderers.raster import mesh_tensors_from_trimesh, render_mesh
from dreamengine.toyworld.metrics import mask_iou, psnr


def fidelity_cameras(distance: float = 2.5, fovy_deg: float = 40.0, num_views: int = 8,
                     elevation_deg: float = 20.0) -> Cameras:
    """``num_views`` orbit views at ``elevation_deg`` (azimuths offset by half a step from 0, so they fall
    between the usual training and export views) plus one from above and one from below."""
    step = 360.0 / num_views
    azimuth = torch.cat([0.5 * step + torch.arange(num_views) * step, torch.tensor([30.0, 210.0])])
    elevation = torch.cat([torch.full((num_views,), elevation_deg), torch.tensor([70.0, -30.0])])
    count = num_views + 2
    return cameras_from_spherical(elevation, azimuth, torch.full((count,), distance), torch.full((count,), fovy_deg))


@torch.no_grad()
def export_fidelity(mesh_path: str | os.PathLike, render: Callable[[Cameras, int, int], RenderOut],
                    cameras: Cameras, height: int, width: int, background: Callable[[torch.Tensor], torch.Tensor],
                    device: torch.device | str = "cpu") -> dict[str, Any]:
    """Render the exported mesh file and the scene from ``cameras`` and compare them.

    Args:
        mesh_path: a .glb, .obj or .ply file written by the exporter.
        render: the scene's renderer, ``render(cameras, height, width) -> RenderOut`` (albedo shading).
        background: the background the scene's renders use (directions [..., 3] -> rgb [..., 3]).
        device: where the mesh is rendered.
    Returns:
        {"psnr": dB, "mask_iou": in [0, 1], "views": B, "resolution": [H, W]}; PSNR and IoU are means over the
        views (:func:`~dreamengine.toyworld.metrics.psnr`, :func:`~dreamengine.toyworld.metrics.mask_iou`).
    """
    mesh = mesh_tensors_from_trimesh(load_mesh(mesh_path), device)
    ours = render_mesh(mesh, cameras.to(device), height, width, background=background)
    theirs = render(cameras, height, width)
    return {"psnr": psnr(ours.rgb.cpu().clamp(0.0, 1.0), theirs.rgb.cpu().clamp(0.0, 1.0)),
            "mask_iou": mask_iou(ours.opacity.cpu(), theirs.opacity.cpu()),
            "views": len(cameras), "resolution": [height, width]}


__all__ = ["export_fidelity", "fidelity_cameras"]
