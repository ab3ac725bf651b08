"""Writing and reading meshes: GLB (with metadata), OBJ and PLY.

Axes. DreamEngine's world is Z-up (``dreamengine/core/cameras.py``). glTF is Y-up by specification, and
OBJ files are read as Y-up by most tools (Blender's default import, three.js, model-viewer), so GLB and
OBJ files are written in a Y-up frame: world ``(x, y, z)`` is stored as ``(x, z, -y)`` (a rotation by
-90 degrees about X, so winding and outward normals are preserved and the object's front still faces +X).
PLY files keep the world frame unchanged: they are our analysis format (metrics against the toy
world's ground truth, which lives in world coordinates). ``load_mesh`` undoes the rotation for GLB and OBJ,
so ``load_mesh(save_mesh(mesh, ...))`` returns world coordinates for every format.

Units. ``save_mesh(..., scale=s)`` multiplies coordinates by ``s`` (file units, meters, per scene unit) and
records ``meters_per_scene_unit: s`` with the metadata; ``load_mesh`` divides it out again, so it always
returns scene units.

Appearance. A mesh with vertex colors is written with them (COLOR_0 in GLB, which glTF defines as linear: the
sRGB colors are converted, and converted back by ``load_mesh``; PLY keeps sRGB values). A textured mesh
(``trimesh.visual.TextureVisuals`` with a :class:`trimesh.visual.material.PBRMaterial`, as made by
:mod:`dreamengine.export.texture`) becomes a glTF metallic-roughness material with embedded PNG textures
(sampled with trilinear mipmapping, clamped at the edges), or an OBJ with an MTL file and PNG files next to
it: ``NAME.mtl``, ``NAME.png`` (base color) and, when the material has a metallic-roughness texture,
``NAME_roughness.png`` and ``NAME_metallic.png`` (MTL's PBR extension: ``Pr``/``Pm``, ``map_Pr``/``map_Pm``).
Vertex normals are computed on positions welded across UV seams, so seams do not show in the shading.

Metadata (prompt, seed, method, teacher, ...) goes to the glTF ``asset.extras`` object in a GLB, and to
comment lines in OBJ (``# key: value``) and PLY (``comment key: value``) headers.
"""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from trimesh.exchange.gltf import export_glb

from dreamengine.core.files import atomic_write
from dreamengine.errors import ExportError
from dreamengine.export.color import convert_vertex_colors, linear_to_srgb, srgb_to_linear
from dreamengine.version import __version__

FORMATS = ("glb", "obj", "ply")  # written and read
READ_FORMATS = (*FORMATS, "stl", "off")  # read too (STL and OFF hold the shape only; Z-up, as in 3D printing)
MetadataValue = str | int | float | bool
SCALE_KEY = "meters_per_scene_unit"
# glTF sampler: linear magnification, trilinear (mipmapped) minification, clamp to edge in both directions.
TEXTURE_SAMPLER = {"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}

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
              metadata: dict[str, MetadataValue] | None = None, scale: float = 1.0) -> Path:
    """Write ``mesh`` (world frame, Z-up) to ``path`` atomically and return the path.

    Args:
        mesh: the mesh; vertex colors or a texture with a PBR material, if any, are written.
        path: destination; missing parent folders are created. A textured OBJ also writes its MTL and PNG
            files next to it (see the module docstring).
        format: "glb", "obj" or "ply"; default: the file's suffix.
        metadata: flat dict of str/int/float/bool values (see the module docstring for where it goes).
        scale: file units (meters) per scene unit; recorded as ``meters_per_scene_unit`` when not 1.

    Every file is written to a temporary file in the same folder and moved into place with ``os.replace``,
    so a reader never sees a half-written file (an OBJ's side files are written before the OBJ itself).
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
    if not (np.isfinite(scale) and scale > 0):
        raise ExportError(f"mesh scale must be a positive number, got {scale}")
    if scale != 1.0:
        metadata = {**metadata, SCALE_KEY: float(scale)}

    if fmt == "glb":
        files = {path: _glb_bytes(mesh, metadata, scale)}
    elif fmt == "obj":
        files = _obj_files(mesh, path, metadata, scale)
    else:
        files = {path: _ply_bytes(mesh, metadata, scale)}
    for destination, data in files.items():  # the main file last
        atomic_write(destination, data)
    return path


def load_mesh(path: str | os.PathLike) -> trimesh.Trimesh:
    """Read a GLB, OBJ, PLY, STL or OFF file as one ``trimesh.Trimesh`` in the world frame (Z-up).

    All meshes in the file are concatenated; vertex colors stored next to a material in a GLB become
    ordinary vertex colors. Raises ExportError for a missing file, an unsupported or unreadable file,
    or a file with no triangles.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"mesh file not found: {path}")
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in READ_FORMATS:
        raise ExportError(f"cannot read {path}: unsupported suffix {path.suffix!r}; use one of "
                          f"{', '.join('.' + f for f in READ_FORMATS)}")
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
    if fmt == "glb":
        convert_vertex_colors(loaded, linear_to_srgb)  # COLOR_0 is linear in glTF; DreamEngine works in sRGB
    if fmt in ("glb", "obj"):
        loaded.apply_transform(Y_UP_TO_Z_UP)
    scale = _recorded_scale(path, fmt)
    if scale != 1.0:
        loaded.apply_scale(1.0 / scale)
    return loaded


def _recorded_scale(path: Path, fmt: str) -> float:
    """The ``meters_per_scene_unit`` a file records (1.0 when it records none)."""
    value: object = 1.0
    if fmt == "glb":
        with open(path, "rb") as handle:
            header = handle.read(20)
            if len(header) == 20 and header[:4] == b"glTF" and header[16:20] == b"JSON":
                tree = json.loads(handle.read(struct.unpack_from("<I", header, 12)[0]))
                value = tree.get("asset", {}).get("extras", {}).get(SCALE_KEY, 1.0)
    elif fmt in ("obj", "ply"):
        prefix = b"# " if fmt == "obj" else b"comment "
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
        for line in head.splitlines():
            if line.startswith(prefix + SCALE_KEY.encode() + b":"):
                value = line.split(b":", 1)[1].strip().decode()
                break
    try:
        scale = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ExportError(f"{path} records {SCALE_KEY} = {value!r}, which is not a number") from None
    if not (np.isfinite(scale) and scale > 0):
        raise ExportError(f"{path} records {SCALE_KEY} = {scale}; it must be a positive number")
    return scale


def _colors_to_vertex_visual(geometry: trimesh.parent.Geometry) -> None:
    """trimesh keeps a GLB's COLOR_0 as ``visual.vertex_attributes["color"]`` when the primitive also has a
    material; make them plain vertex colors (the material is our constant one, see _glb_bytes)."""
    visual = getattr(geometry, "visual", None)
    if not isinstance(geometry, trimesh.Trimesh) or visual is None or visual.kind == "vertex":
        return
    colors = getattr(visual, "vertex_attributes", {}).get("color")
    if colors is not None and len(colors) == len(geometry.vertices):
        geometry.visual = trimesh.visual.ColorVisuals(mesh=geometry, vertex_colors=colors)


def _y_up_copy(mesh: trimesh.Trimesh, scale: float = 1.0) -> trimesh.Trimesh:
    """The mesh rotated to Y-up and scaled, with seam-independent vertex normals."""
    converted = mesh.copy()
    if mesh.visual.kind == "vertex":
        converted.visual = trimesh.visual.ColorVisuals(mesh=converted, vertex_colors=mesh.visual.vertex_colors.copy())
    converted.apply_transform(Z_UP_TO_Y_UP)
    if scale != 1.0:
        converted.apply_scale(scale)
    converted.vertex_normals = welded_vertex_normals(converted)
    return converted


def welded_vertex_normals(mesh: trimesh.Trimesh) -> np.ndarray:
    """Area-weighted unit vertex normals [V, 3], treating vertices at the same position as one (a textured
    mesh is split along its UV seams; per-copy normals would show the seams in the shading)."""
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    _, weld = np.unique(vertices, axis=0, return_inverse=True)
    weld = weld.reshape(-1)
    triangles = vertices[np.asarray(mesh.faces)]
    face_normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])  # 2 * area
    summed = np.zeros((int(weld.max()) + 1, 3))
    np.add.at(summed, weld[np.asarray(mesh.faces)].reshape(-1), np.repeat(face_normals, 3, axis=0))
    length = np.linalg.norm(summed, axis=1, keepdims=True)
    # A vertex whose faces cancel out (or have no area) gets an arbitrary unit normal: glTF requires unit length.
    normals = np.divide(summed, length, out=np.tile([0.0, 1.0, 0.0], (len(summed), 1)), where=length > 1e-30)
    return normals[weld]


def _glb_bytes(mesh: trimesh.Trimesh, metadata: dict[str, MetadataValue], scale: float = 1.0) -> bytes:
    """GLB with normals, COLOR_0 (if the mesh has vertex colors) or textures, a material and ``asset.extras``."""

    def finish_tree(tree: dict) -> None:
        tree["asset"]["generator"] = f"DreamEngine {__version__} (trimesh {trimesh.__version__})"
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
        if tree.get("textures"):
            tree["samplers"] = [dict(TEXTURE_SAMPLER)]
            for texture in tree["textures"]:
                texture["sampler"] = 0

    converted = _y_up_copy(mesh, scale)
    convert_vertex_colors(converted, srgb_to_linear)  # COLOR_0 is linear in glTF
    return export_glb(converted.scene(), include_normals=True, tree_postprocessor=finish_tree)


def _set_view_target(tree: dict, accessor_index: int, target: int) -> None:
    view = tree["accessors"][accessor_index].get("bufferView")
    if view is not None:
        tree["bufferViews"][view]["target"] = target


def _comment_lines(metadata: dict[str, MetadataValue], prefix: str) -> str:
    lines = [f"{prefix}{key}: {value}" for key, value in metadata.items()]
    return "".join(" ".join(line.splitlines()) + "\n" for line in lines)


def _obj_files(mesh: trimesh.Trimesh, path: Path, metadata: dict[str, MetadataValue],
               scale: float = 1.0) -> dict[Path, bytes]:
    """{file: content} for an OBJ (last) and, for a textured mesh, its MTL and PNG files."""
    header = f"DreamEngine {__version__}, Y-up"
    converted = _y_up_copy(mesh, scale)
    material = getattr(converted.visual, "material", None)
    if converted.visual.kind != "texture" or material is None:
        text = trimesh.exchange.obj.export_obj(converted, include_color=True, include_normals=True, header=header)
        return {path: (_comment_lines(metadata, "# ") + text).encode("utf-8")}

    stem = path.stem
    material = material.copy()
    material.name = stem  # trimesh names the base-color PNG after the material
    converted.visual.material = material
    text, side_files = trimesh.exchange.obj.export_obj(
        converted, include_color=False, include_normals=True, include_texture=True, return_texture=True,
        mtl_name=f"{stem}.mtl", header=header)
    files = {path.parent / name: data for name, data in side_files.items() if not name.endswith(".mtl")}
    mtl = side_files[f"{stem}.mtl"].decode("utf-8").rstrip("\n") + "\n"
    if isinstance(material, trimesh.visual.material.PBRMaterial):
        metallic = 1.0 if material.metallicFactor is None else float(material.metallicFactor)
        roughness = 1.0 if material.roughnessFactor is None else float(material.roughnessFactor)
        mtl += f"Pr {roughness:.6f}\nPm {metallic:.6f}\n"
        packed = material.metallicRoughnessTexture
        if packed is not None:
            channels = np.asarray(packed.convert("RGB"))
            for key, channel, suffix in (("map_Pr", 1, "roughness"), ("map_Pm", 2, "metallic")):
                buffer = io.BytesIO()
                Image.fromarray(channels[..., channel]).save(buffer, format="PNG")
                files[path.parent / f"{stem}_{suffix}.png"] = buffer.getvalue()
                mtl += f"{key} {stem}_{suffix}.png\n"
    files[path.parent / f"{stem}.mtl"] = mtl.encode("utf-8")
    files[path] = (_comment_lines(metadata, "# ") + text).encode("utf-8")
    return files


def _ply_bytes(mesh: trimesh.Trimesh, metadata: dict[str, MetadataValue], scale: float = 1.0) -> bytes:
    if scale != 1.0:
        mesh = mesh.copy()
        mesh.apply_scale(scale)
    data = trimesh.exchange.ply.export_ply(mesh, encoding="binary")
    # The header is ASCII lines; comments may follow the "format" line (the second line).
    first, second, rest = data.split(b"\n", 2)
    comments = _comment_lines({"generator": f"DreamEngine {__version__}", "up_axis": "Z",
                               **metadata}, "comment ")
    return b"\n".join([first, second, comments.encode("utf-8") + rest])
