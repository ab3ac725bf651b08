"""The standard 3D Gaussian Splatting PLY file (the layout of the original 3DGS code, read by splat viewers).

One ``vertex`` element, binary little-endian, one float32 property each, in this order:

    x y z                 mean (world frame, Z-up: no axis change, unlike our GLB/OBJ files)
    nx ny nz              zeros (unused; the original code writes them)
    f_dc_0 f_dc_1 f_dc_2  degree-0 SH coefficient of R, G, B
    f_rest_0 ...          the other 3 * ((d + 1)^2 - 1) SH coefficients, channel-major: all of R's
                          coefficients 1..K-1, then G's, then B's (3DGS transposes [N, K-1, 3] to [N, 3, K-1])
    opacity               logit of the opacity (the stored parameter, before the sigmoid)
    scale_0 scale_1 scale_2   log of the scales (before the exp)
    rot_0 rot_1 rot_2 rot_3   quaternion (w, x, y, z) as stored: not normalized (renderers normalize it)

These are exactly :class:`~dreamengine.scenes.gaussians.GaussianScene`'s parameters, so a round trip is
lossless (float32). Files are written atomically. Reading accepts extra vertex properties of any standard
PLY scalar type (ignored) and raises :class:`~dreamengine.errors.ExportError` for anything else.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dreamengine.core.files import atomic_write
from dreamengine.errors import ExportError

PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "<i2", "int16": "<i2",
             "ushort": "<u2", "uint16": "<u2", "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
             "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8"}
BASE_FIELDS = (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)])
TAIL_FIELDS = (["opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])
MAX_HEADER_BYTES = 1 << 16


def property_names(num_rest: int) -> list[str]:
    """PLY property names for ``num_rest`` higher-order SH coefficients per channel."""
    return BASE_FIELDS + [f"f_rest_{i}" for i in range(3 * num_rest)] + TAIL_FIELDS


def splat_ply_bytes(tensors: dict[str, Tensor]) -> bytes:
    """Encode Gaussians (keys means [N, 3], quats [N, 4], log_scales [N, 3], logit_opacities [N],
    sh_dc [N, 1, 3], sh_rest [N, K - 1, 3]) as a 3DGS PLY file."""
    means = tensors["means"].detach().cpu().float()
    n, num_rest = means.shape[0], tensors["sh_rest"].shape[1]
    columns = [
        means, torch.zeros(n, 3),
        tensors["sh_dc"].detach().cpu().float().reshape(n, 3),
        tensors["sh_rest"].detach().cpu().float().transpose(1, 2).reshape(n, 3 * num_rest),
        tensors["logit_opacities"].detach().cpu().float().reshape(n, 1),
        tensors["log_scales"].detach().cpu().float(),
        tensors["quats"].detach().cpu().float(),
    ]
    data = torch.cat(columns, dim=1).numpy().astype("<f4")
    names = property_names(num_rest)
    header = ["ply", "format binary_little_endian 1.0", "comment written by dreamengine",
              f"element vertex {n}"] + [f"property float {name}" for name in names] + ["end_header"]
    return ("\n".join(header) + "\n").encode("ascii") + data.tobytes()


def write_splat_ply(tensors: dict[str, Tensor], path: str | os.PathLike) -> Path:
    """Write Gaussians atomically: ``tensors`` holds the stored (unconstrained) parameters 'means', 'quats',
    'log_scales', 'logit_opacities', 'sh_dc', 'sh_rest' (``GaussianScene.splat_tensors()``)."""
    if tensors["means"].shape[0] == 0:
        raise ExportError(f"refusing to write a splat file with no Gaussians to {path}")
    return atomic_write(path, splat_ply_bytes(tensors))


def _parse_header(raw: bytes, path: Path) -> tuple[int, list[tuple[str, str]], int]:
    """(vertex count, [(name, numpy dtype)], header length in bytes)."""
    end = raw.find(b"end_header\n", 0, MAX_HEADER_BYTES)
    if not raw.startswith(b"ply\n") or end < 0:
        raise ExportError(f"{path} is not a PLY file (no 'ply' magic or no 'end_header' line)")
    lines = raw[:end].decode("ascii", errors="replace").splitlines()
    count, properties, in_vertex = -1, [], False
    for line in lines[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and words[1:2] != ["binary_little_endian"]:
            raise ExportError(f"{path}: format {' '.join(words[1:])} is not supported; 3DGS files are "
                              "binary_little_endian")
        elif words[0] == "element":
            if words[1] != "vertex" or count >= 0:
                raise ExportError(f"{path}: unexpected element {words[1]!r}; a 3DGS file has one 'vertex' "
                                  "element (is this a mesh PLY?)")
            count, in_vertex = int(words[2]), True
        elif words[0] == "property":
            if not in_vertex or words[1] == "list" or words[1] not in PLY_TYPES:
                raise ExportError(f"{path}: unsupported property line {line!r}")
            properties.append((words[2], PLY_TYPES[words[1]]))
    if count < 0:
        raise ExportError(f"{path}: no 'element vertex' line in the header")
    return count, properties, end + len(b"end_header\n")


def read_splat_ply(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a 3DGS PLY file into float32 tensors (the keys of :func:`splat_ply_bytes`)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"splat file {path} does not exist; pass the path of a 3DGS .ply file")
    raw = path.read_bytes()
    count, properties, offset = _parse_header(raw, path)
    names = [name for name, _ in properties]
    num_rest_total = sum(1 for name in names if name.startswith("f_rest_"))
    num_rest = num_rest_total // 3
    if num_rest_total % 3 or (num_rest + 1) not in (1, 4, 9, 16):
        raise ExportError(f"{path}: {num_rest_total} f_rest properties; expected 0, 9, 24 or 45 (SH degree 0-3)")
    missing = [name for name in property_names(num_rest) if name not in names and name[0] != "n"]
    if missing:
        raise ExportError(f"{path}: missing vertex properties {missing}; is this a 3D Gaussian Splatting file?")
    dtype = np.dtype(properties)
    if len(raw) - offset < count * dtype.itemsize:
        raise ExportError(f"{path} is truncated: {count} vertices need {count * dtype.itemsize} bytes, "
                          f"found {len(raw) - offset}")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)

    def stack(fields: list[str]) -> Tensor:
        return torch.from_numpy(np.stack([data[f].astype(np.float32) for f in fields], axis=-1).copy())

    rest = stack([f"f_rest_{i}" for i in range(3 * num_rest)]) if num_rest else torch.zeros(count, 0)
    tensors = {
        "means": stack(["x", "y", "z"]),
        "sh_dc": stack([f"f_dc_{i}" for i in range(3)]).view(count, 1, 3),
        "sh_rest": rest.view(count, 3, num_rest).transpose(1, 2).contiguous(),
        "logit_opacities": stack(["opacity"]).view(count),
        "log_scales": stack([f"scale_{i}" for i in range(3)]),
        "quats": stack([f"rot_{i}" for i in range(4)]),
    }
    if not all(bool(torch.isfinite(value).all()) for value in tensors.values()):
        raise ExportError(f"{path} holds non-finite values (NaN or inf)")
    return tensors


__all__ = ["property_names", "read_splat_ply", "splat_ply_bytes", "write_splat_ply"]
