"""What is optimized: ``scene.name`` -> class. Every choice is listed here.

Each class implements :class:`dreamengine.core.protocols.Scene` (an ``nn.Module`` holding the parameters,
handing its renderer plain tensors through ``render_inputs()``) and is built from its config dataclass
(:mod:`dreamengine.config.scenes`) by :func:`dreamengine.build.build_scene`.
"""

from dreamengine.scenes.gaussians import GaussianScene
from dreamengine.scenes.mesh import MeshScene
from dreamengine.scenes.nerf import NeRFScene

SCENES = {"nerf": NeRFScene, "gaussians": GaussianScene, "mesh": MeshScene}

__all__ = ["SCENES", "GaussianScene", "MeshScene", "NeRFScene"]
