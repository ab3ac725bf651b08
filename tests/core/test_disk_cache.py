"""The on-disk tensor cache: hit, miss, a corrupt or wrong-shaped entry (recomputed and rewritten, a warning
and no traceback), distinct settings -> distinct entries, and a folder that cannot be written."""

from __future__ import annotations

import warnings

import pytest
import torch

from dreamengine.core import disk_cache
from dreamengine.core.disk_cache import cache_root, cached, settings_key


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMENGINE_CACHE", str(tmp_path))
    return tmp_path


def counting(value: float):
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.full((2, 3), value)}

    return compute, calls


def test_miss_then_hit(cache):
    assert cache_root() == cache
    compute, calls = counting(1.5)
    first = cached("kind", "thing", {"a": 1}, {"x": (2, 3)}, compute)
    files = list((cache / "kind").glob("thing-*.safetensors"))
    assert len(files) == 1 and not list((cache / "kind").glob(".*.tmp"))  # atomic: no temporary left behind
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = cached("kind", "thing", {"a": 1}, {"x": (2, 3)}, compute)
    assert calls == [1]
    assert torch.equal(first["x"], second["x"])


def test_different_settings_are_different_entries(cache):
    compute, calls = counting(2.0)
    cached("kind", "thing", {"a": 1}, {"x": (2, 3)}, compute)
    cached("kind", "thing", {"a": 2}, {"x": (2, 3)}, compute)
    assert calls == [1, 1]
    assert len(list((cache / "kind").glob("*.safetensors"))) == 2
    assert settings_key({"a": 1, "b": [1.0]}) == settings_key({"b": [1.0], "a": 1})
    assert settings_key({"a": 1}) != settings_key({"a": 1.5})


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong shape", "not finite"])
def test_corrupt_entry_is_recomputed_with_a_warning(cache, damage):
    compute, calls = counting(3.0)
    cached("kind", "thing", {"a": 1}, {"x": (2, 3)}, compute)
    path = next((cache / "kind").glob("*.safetensors"))
    if damage == "garbage":
        path.write_bytes(b"\x00not a safetensors file" * 10)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    else:
        from safetensors.torch import save_file

        bad = torch.zeros(5) if damage == "wrong shape" else torch.full((2, 3), float("nan"))
        save_file({"x": bad}, str(path))
    with pytest.warns(UserWarning, match="unreadable"):
        again = cached("kind", "thing", {"a": 1}, {"x": (2, 3)}, compute)
    assert calls == [1, 1]
    assert torch.equal(again["x"], torch.full((2, 3), 3.0))
    with warnings.catch_warnings():  # ... and rewritten: the next call is a clean hit
        warnings.simplefilter("error")
        cached("kind", "thing", {"a": 1}, {"x": (2, 3)}, compute)
    assert calls == [1, 1]


def test_unwritable_folder_still_computes(cache, monkeypatch):
    blocker = cache / "blocked"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("DREAMENGINE_CACHE", str(blocker))
    monkeypatch.setattr(disk_cache, "_unwritable", set())
    compute, calls = counting(4.0)
    with pytest.warns(UserWarning, match="could not write the cache"):
        out = cached("kind", "thing", {"a": 1}, {"x": (2, 3)}, compute)
    assert torch.equal(out["x"], torch.full((2, 3), 4.0))
    with warnings.catch_warnings():  # one warning per folder, not one per value
        warnings.simplefilter("error")
        cached("kind", "thing", {"a": 1}, {"x": (2, 3)}, compute)
    assert calls == [1, 1]
