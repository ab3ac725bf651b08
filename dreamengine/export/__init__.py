"""Scene -> asset: marching cubes, cleanup, UVs and texture baking (or vertex colors), GLB/OBJ/PLY files.

Typical use (``scene.density``: [N, 3] -> [N]; ``scene.albedo``: [N, 3] -> [N, 3] in [0, 1])::

    mesh = extract_mesh(scene.density, radius=1.0, resolution=128, threshold=25.0)
    mesh = clean_mesh(mesh, target_faces=100_000, max_hole_edges=30)
    mesh = texture_mesh(mesh, scene.albedo, size=1024)  # or color_vertices(mesh, scene.albedo)
    save_mesh(mesh, run_dir / "final/model.glb", "glb", {"prompt": "a red cube", "seed": 0}, scale=0.7)

``scene_export.export_scene`` runs these steps from an ``ExportConfig``; ``fidelity.export_fidelity``
compares an exported file with the scene it came from.
"""

from dreamengine.export.cleanup import clean_mesh
from dreamengine.export.color import color_vertices
from dreamengine.export.marching import extract_mesh
from dreamengine.export.mesh_io import load_mesh, save_mesh
from dreamengine.export.texture import texture_mesh, unwrap_uv

__all__ = ["extract_mesh", "clean_mesh", "color_vertices", "texture_mesh", "unwrap_uv", "save_mesh", "load_mesh"]
