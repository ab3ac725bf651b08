"""The evaluation's ground truth from the disk cache is exactly what is computed without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamengine import evaluate
from dreamengine.core.cameras import cameras_from_spherical
from dreamengine.toyworld import parse_prompt, render_toy


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMENGINE_CACHE", str(tmp_path))
    return tmp_path / evaluate.TRUTH_CACHE


def cameras(elevation: float = 20.0):
    return cameras_from_spherical(torch.tensor([elevation, elevation]), torch.tensor([0.0, 90.0]),
                                  torch.tensor([2.5, 2.5]), torch.tensor([40.0, 40.0]))


def test_true_renders_hit_miss_and_keys(cache, monkeypatch):
    cube = parse_prompt("a red cube")
    direct = render_toy(cube, cameras(), 12, 12, background=(1.0, 1.0, 1.0), supersample=2)
    first = evaluate.true_renders(cube, repr(cube), cameras(), 12, (1.0, 1.0, 1.0))
    assert len(list(cache.glob("renders-*.safetensors"))) == 1
    monkeypatch.setattr(evaluate, "render_toy", lambda *a, **k: pytest.fail("a hit must not render"))
    second = evaluate.true_renders(cube, repr(cube), cameras(), 12, (1.0, 1.0, 1.0))
    for out in (first, second):
        assert torch.equal(out["rgb"], direct["rgb"]) and torch.equal(out["mask"], direct["mask"])
    monkeypatch.undo()
    monkeypatch.setenv("DREAMENGINE_CACHE", str(cache.parent))
    sphere = parse_prompt("a green sphere")  # another object, cameras, size or background: another entry
    evaluate.true_renders(sphere, repr(sphere), cameras(), 12, (1.0, 1.0, 1.0))
    evaluate.true_renders(cube, repr(cube), cameras(30.0), 12, (1.0, 1.0, 1.0))
    evaluate.true_renders(cube, repr(cube), cameras(), 16, (1.0, 1.0, 1.0))
    evaluate.true_renders(cube, repr(cube), cameras(), 12, (0.0, 0.0, 0.0))
    assert len(list(cache.glob("renders-*.safetensors"))) == 5


def test_true_shape_cached_equals_computed_and_survives_corruption(cache, monkeypatch):
    monkeypatch.setattr(evaluate, "TRUE_MESH_RESOLUTION", 40)  # seconds, not tens of seconds
    torus = parse_prompt("a yellow torus")
    inside, points, shape = evaluate.true_shape(torus, 24, 500, 0)
    truth = evaluate.true_mesh(torus, 40)
    expected_inside = truth.voxelized(2.0 / 24).fill().is_filled(evaluate.voxel_centers(24))
    assert np.array_equal(inside.numpy(), expected_inside)
    assert shape == evaluate.topology(truth) and shape["euler_characteristic"] == 0
    path = next(cache.glob("shape-*.safetensors"))
    path.write_bytes(b"corrupt")
    with pytest.warns(UserWarning, match="unreadable"):
        again = evaluate.true_shape(torus, 24, 500, 0)
    assert torch.equal(again[0], inside) and np.array_equal(again[1], points) and again[2] == shape
    evaluate.true_shape(torus, 24, 500, 1)  # another seed: another entry
    assert len(list(cache.glob("shape-*.safetensors"))) == 2
