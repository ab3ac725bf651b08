"""The 3DGS PLY writer and reader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamengine.config.scenes import GaussiansConfig
from dreamengine.errors import ExportError
from dreamengine.export.splat_ply import property_names, read_splat_ply, splat_ply_bytes, write_splat_ply
from dreamengine.scenes.gaussians import GaussianScene


def random_scene(n: int, degree: int) -> GaussianScene:
    scene = GaussianScene(GaussiansConfig(num_points=n, sh_degree=degree))
    gen = torch.Generator().manual_seed(degree)
    with torch.no_grad():
        for param in scene.parameters_by_name().values():
            param.copy_(torch.randn(param.shape, generator=gen))
    return scene


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_round_trip_is_lossless(tmp_path: Path, degree: int) -> None:
    scene = random_scene(50, degree)
    path = write_splat_ply(scene.splat_tensors(), tmp_path / "out" / "scene.ply")
    loaded = read_splat_ply(path)
    for name in ("means", "quats", "log_scales", "logit_opacities", "sh_dc", "sh_rest"):
        assert torch.equal(loaded[name], getattr(scene, name).detach()), name
    # as an init, with the same degree: every parameter equal
    init = GaussianScene(GaussiansConfig(init="ply", init_path=str(path), sh_degree=degree))
    for name, param in init.parameters_by_name().items():
        assert torch.equal(param, scene.parameters_by_name()[name]), name
    assert list(tmp_path.joinpath("out").iterdir()) == [path]  # no temporary file left behind


def test_layout_matches_3dgs(tmp_path: Path) -> None:
    """Header order and channel-major f_rest, decoded independently with numpy."""
    scene = random_scene(4, 2)
    raw = splat_ply_bytes({name: getattr(scene, name) for name in
                           ("means", "quats", "log_scales", "logit_opacities", "sh_dc", "sh_rest")})
    header, body = raw.split(b"end_header\n", 1)
    lines = header.decode().splitlines()
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"] and "element vertex 4" in lines
    names = [line.split()[2] for line in lines if line.startswith("property float ")]
    assert names == property_names(8)
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[-8:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    table = np.frombuffer(body, dtype="<f4").reshape(4, len(names))
    column = {name: table[:, i] for i, name in enumerate(names)}
    rest = scene.sh_rest.detach().numpy()  # [N, 8, 3]
    assert np.array_equal(column["f_rest_0"], rest[:, 0, 0])  # red, coefficient 1
    assert np.array_equal(column["f_rest_7"], rest[:, 7, 0])  # red, coefficient 8
    assert np.array_equal(column["f_rest_8"], rest[:, 0, 1])  # green, coefficient 1
    assert np.array_equal(column["f_rest_23"], rest[:, 7, 2])  # blue, coefficient 8
    assert np.array_equal(column["opacity"], scene.logit_opacities.detach().numpy())
    assert np.array_equal(column["rot_0"], scene.quats.detach().numpy()[:, 0])  # w first
    assert not column["nx"].any()


def test_init_from_ply_changes_degree(tmp_path: Path) -> None:
    path = write_splat_ply(random_scene(10, 1).splat_tensors(), tmp_path / "a.ply")
    higher = GaussianScene(GaussiansConfig(init="ply", init_path=str(path), sh_degree=3))
    assert higher.sh_rest.shape == (10, 15, 3) and not bool(higher.sh_rest[:, 3:].any())
    lower = GaussianScene(GaussiansConfig(init="ply", init_path=str(path), albedo_only=True))
    assert lower.sh_rest.shape == (10, 0, 3)


def test_reader_accepts_extra_properties(tmp_path: Path) -> None:
    names = property_names(0)
    header = ("ply\nformat binary_little_endian 1.0\nelement vertex 2\n"
              + "".join(f"property float {n}\n" for n in names) + "property uchar red\nend_header\n")
    dtype = np.dtype([(n, "<f4") for n in names] + [("red", "u1")])
    data = np.zeros(2, dtype=dtype)
    data["x"] = [1.0, 2.0]
    data["opacity"] = [0.5, -0.5]
    data["rot_0"] = 1.0
    path = tmp_path / "extra.ply"
    path.write_bytes(header.encode() + data.tobytes())
    loaded = read_splat_ply(path)
    assert loaded["means"][:, 0].tolist() == [1.0, 2.0]
    assert loaded["logit_opacities"].tolist() == [0.5, -0.5]
    assert math.isclose(float(loaded["quats"][0, 0]), 1.0)


@pytest.mark.parametrize("content,match", [
    (b"hello", "not a PLY"),
    (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n", "binary_little_endian"),
    (b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nend_header\n", "missing"),
    (b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nelement face 1\nend_header\n", "face"),
])
def test_reader_rejects_bad_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.ply"
    path.write_bytes(content)
    with pytest.raises(ExportError, match=match):
        read_splat_ply(path)


def test_reader_rejects_truncated_and_missing(tmp_path: Path) -> None:
    path = write_splat_ply(random_scene(5, 0).splat_tensors(), tmp_path / "t.ply")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ExportError, match="truncated"):
        read_splat_ply(path)
    with pytest.raises(ExportError, match="does not exist"):
        read_splat_ply(tmp_path / "nothing.ply")
