"""Writing and reading meshes: GLB (with metadata), OBJ and PLY.

Axes. DreamEngine's world is Z-up (``dreamengine/cameras.py``). glTF is Y-up by specification, and
OBJ files are read as Y-up by most tools (Blender's default import, three.js, model-viewer), so GLB and
OBJ files are written in a Y-up frame: world ``(x, y, z)`` is stored as ``(x, z, -y)`` (a rotation by
-90 degrees about X, so winding and outward normals are preserved and the object's front still faces +X).
PLY files keep the world frame unchanged: they are our analysis format (metrics against the toy
world's ground truth, which lives in world coordinates). ``load_mesh`` undoes the rotation for GLB and OBJ,
so ``load_mesh(save_mesh(mesh, ...))`` returns world coordinates for every format.

Metadata (prompt, seed, method, teacher, ...) goes to the glTF ``asset.extras`` object in a GLB, and to
comment lines in OBJ (``# key: value``) and PLY (``comment key: value``) headers.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import trimesh
from trimesh.exchange.gltf import export_glb

import dreamengine
from dreamengine.errors import ExportError

FORMATS = ("glb", "obj", "ply")
MetadataValue = str | int | float | bool

# Proper rotation taking world (x, y, z) to Y-up (x, z, -y); its inverse is its transpose.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0, 0.0],
                         [0.0, 0.0, 1.0, 0.0],
                         [0.0, -1.0, 0.0, 0.0],
                         [0.0, 0.0, 0.0, 1.0]])
Y_UP_TO_Z_UP = Z_UP_TO_Y_UP.T

ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963  # glTF bufferView.target values

# Vertex colors (COLOR_0) multiply the base color, so white keeps them as they are. A NeRF's albedo is
# diffuse: not metallic, fully rough.
VERTEX_COLOR_MATERIAL = {
    "name": "dreamengine_vertex_color",
    "pbrMetallicRoughness": {"baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0,
                             "roughnessFactor": 1.0},
}


def save_mesh(mesh: trimesh.Trimesh, path: str | os.PathLike, format: str | None = None,
              metadata: dict[str, MetadataValue] | None = None) -> Path:
    """Write ``mesh`` (world frame, Z-up) to ``path`` atomically and return the path.

    Args:
        mesh: the mesh; vertex colors, if any, are written (COLOR_0 in GLB).
        path: destination; missing parent folders are created.
        format: "glb", "obj" or "ply"; default: the file's suffix.
        metadata: flat dict of str/int/float/bool values (see the module docstring for where it goes).

    The file is written to a temporary file in the same folder and moved into place with ``os.replace``,
    so a reader never sees a half-written file.
    """
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise ExportError(f"unknown mesh format {fmt!r} for {path}; use one of {', '.join(FORMATS)}")
    metadata = {key: value.item() if isinstance(value, np.generic) else value  # numpy scalars -> Python
                for key, value in (metadata or {}).items()}
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, MetadataValue):
            raise ExportError(f"mesh metadata must map str to str/int/float/bool; got {key!r}: {value!r}")
    if len(mesh.faces) == 0:
        raise ExportError(f"refusing to write an empty mesh (no faces) to {path}")

    if fmt == "glb":
        data = _glb_bytes(mesh, metadata)
    elif fmt == "obj":
        data = _obj_bytes(mesh, metadata)
    else:
        data = _ply_bytes(mesh, metadata)
    _write_atomic(path, data)
    return path


def load_mesh(path: str | os.PathLike) -> trimesh.Trimesh:
    """Read a GLB, OBJ or PLY file as one ``trimesh.Trimesh`` in the world frame (Z-up).

    All meshes in the file are concatenated; vertex colors stored next to a material in a GLB become
    ordinary vertex colors. Raises ExportError for a missing file, an unsupported or unreadable file,
    or a file with no triangles.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"mesh file not found: {path}")
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ExportError(f"cannot read {path}: unsupported suffix {path.suffix!r}; use one of "
                          f"{', '.join('.' + f for f in FORMATS)}")
    try:
        loaded = trimesh.load(str(path), file_type=fmt, process=False)
        if isinstance(loaded, trimesh.Scene):
            for geometry in loaded.geometry.values():
                _colors_to_vertex_visual(geometry)
            loaded = loaded.to_mesh()  # applies the node transforms, concatenates
    except Exception as err:  # trimesh raises many kinds of errors for a corrupt file
        raise ExportError(f"cannot read {path} as a {fmt.upper()} mesh ({type(err).__name__}: {err}); "
                          "the file is corrupt or not a mesh") from err
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise ExportError(f"{path} contains no triangles; it is not a mesh or it is empty")
    _colors_to_vertex_visual(loaded)
    if fmt in ("glb", "obj"):
        loaded.apply_transform(Y_UP_TO_Z_UP)
    return loaded


def _colors_to_vertex_visual(geometry: trimesh.parent.Geometry) -> None:
    """trimesh keeps a GLB's COLOR_0 as ``visual.vertex_attributes["color"]`` when the primitive also has a
    material; make them plain vertex colors (the material is our constant one, see _glb_bytes)."""
    visual = getattr(geometry, "visual", None)
    if not isinstance(geometry, trimesh.Trimesh) or visual is None or visual.kind == "vertex":
        return
    colors = getattr(visual, "vertex_attributes", {}).get("color")
    if colors is not None and len(colors) == len(geometry.vertices):
        geometry.visual = trimesh.visual.ColorVisuals(mesh=geometry, vertex_colors=colors)


def _y_up_copy(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    converted = mesh.copy()
    converted.apply_transform(Z_UP_TO_Y_UP)
    return converted


def _glb_bytes(mesh: trimesh.Trimesh, metadata: dict[str, MetadataValue]) -> bytes:
    """GLB with normals, COLOR_0 (if the mesh has vertex colors), a material and ``asset.extras``."""

    def finish_tree(tree: dict) -> None:
        tree["asset"]["generator"] = f"DreamEngine {dreamengine.__version__} (trimesh {trimesh.__version__})"
        tree["asset"]["extras"] = dict(metadata)
        for gltf_mesh in tree.get("meshes", []):
            for primitive in gltf_mesh["primitives"]:
                if "material" not in primitive:
                    tree.setdefault("materials", []).append(dict(VERTEX_COLOR_MATERIAL))
                    primitive["material"] = len(tree["materials"]) - 1
                # bufferView targets: optional in glTF, but they let loaders upload the views directly
                # (without them the Khronos validator gives the hint BUFFER_VIEW_TARGET_MISSING).
                for accessor in primitive["attributes"].values():
                    _set_view_target(tree, accessor, ARRAY_BUFFER)
                if "indices" in primitive:
                    _set_view_target(tree, primitive["indices"], ELEMENT_ARRAY_BUFFER)

    converted = _y_up_copy(mesh)
    converted.vertex_normals  # noqa: B018 -- computed from the (rotated) faces, exported as NORMAL
    return export_glb(converted.scene(), include_normals=True, tree_postprocessor=finish_tree)


def _set_view_target(tree: dict, accessor_index: int, target: int) -> None:
    view = tree["accessors"][accessor_index].get("bufferView")
    if view is not None:
        tree["bufferViews"][view]["target"] = target


def _comment_lines(metadata: dict[str, MetadataValue], prefix: str) -> str:
    lines = [f"{prefix}{key}: {value}" for key, value in metadata.items()]
    return "".join(" ".join(line.splitlines()) + "\n" for line in lines)


def _obj_bytes(mesh: trimesh.Trimesh, metadata: dict[str, MetadataValue]) -> bytes:
    text = trimesh.exchange.obj.export_obj(_y_up_copy(mesh), include_color=True, include_normals=True,
                                           header=f"DreamEngine {dreamengine.__version__}, Y-up")
    return (_comment_lines(metadata, "# ") + text).encode("utf-8")


def _ply_bytes(mesh: trimesh.Trimesh, metadata: dict[str, MetadataValue]) -> bytes:
    data = trimesh.exchange.ply.export_ply(mesh, encoding="binary")
    # The header is ASCII lines; comments may follow the "format" line (the second line).
    first, second, rest = data.split(b"\n", 2)
    comments = _comment_lines({"generator": f"DreamEngine {dreamengine.__version__}", "up_axis": "Z",
                               **metadata}, "comment ")
    return b"\n".join([first, second, comments.encode("utf-8") + rest])


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; a model file is meant to be shared
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
