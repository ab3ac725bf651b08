"""The bottom layer: the data that flows through one optimization step, and the interfaces of its parts.

Nothing here imports anything else of DreamEngine except :mod:`dreamengine.errors`; every other layer may
import it (docs/architecture.md has the layer table). Import from the submodules:

* :mod:`~dreamengine.core.cameras`: ``Cameras``, ``CameraSampler``, view-direction labels;
* :mod:`~dreamengine.core.render`: ``RenderOut``, the tensors renderers take (``MeshTensors``,
  ``SplatTensors``) and ``render_fixed``;
* :mod:`~dreamengine.core.background`: ``Background`` and point lights;
* :mod:`~dreamengine.core.conditioning`: ``PromptBatch``, what a teacher is conditioned on per view;
* :mod:`~dreamengine.core.protocols`: ``Field``, ``Scene``, ``Renderer``, ``Teacher``, ``Guidance``,
  ``GuidanceOut``;
* :mod:`~dreamengine.core.files`: atomic writes; :mod:`~dreamengine.core.backends`: optional CUDA libraries.
"""
