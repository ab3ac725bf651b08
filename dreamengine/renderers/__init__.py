"""Renderers: pure functions over tensors (``volume.render_volume`` marches a field callback,
``splat.render_splats`` takes ``SplatTensors``, ``raster.render_mesh`` takes ``MeshTensors``), and the renderer
objects a run uses, one per scene type: ``scene.name`` -> class. Every choice is listed here.

A renderer object is built as ``Class(cfg.render, scene.radius, device)`` (:func:`dreamengine.build.build_scenes`),
is called with ``scene.render_inputs()`` and holds only renderer state (the volume renderer's occupancy grid).
Renderers never import scenes.
"""

from dreamengine.renderers.raster import RasterRenderer
from dreamengine.renderers.splat import SplatRenderer
from dreamengine.renderers.volume import VolumeRenderer

RENDERERS = {"nerf": VolumeRenderer, "gaussians": SplatRenderer, "mesh": RasterRenderer}

__all__ = ["RENDERERS", "RasterRenderer", "SplatRenderer", "VolumeRenderer"]
