"""Reference images (dreamengine/images.py): every odd input either works or stops with a clear message."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamengine.errors import ImageFileError
from dreamengine.images import load_reference_image, read_image

WHITE = (1.0, 1.0, 1.0)


def _disk(height: int, width: int, center: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    return ((rows + 0.5 - center[0]) ** 2 + (cols + 0.5 - center[1]) ** 2) <= radius**2


def _rgba_disk(path: Path, height: int = 80, width: int = 120, color=(200, 30, 30)) -> np.ndarray:
    inside = _disk(height, width, (30, 40), 15)
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[inside] = (*color, 255)
    Image.fromarray(rgba, "RGBA").save(path)
    return inside


def _bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    rows, cols = torch.nonzero(mask[..., 0] > 0.5, as_tuple=True)
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def test_rgba_alpha_is_the_mask_and_the_object_is_recentered(tmp_path):
    path = tmp_path / "disk.png"
    _rgba_disk(path)
    ref = load_reference_image(path, 64, 64, WHITE, fill=0.5)
    assert ref.mask_method == "alpha" and ref.rgb.shape == (64, 64, 3) and ref.mask.shape == (64, 64, 1)
    top, bottom, left, right = _bbox(ref.mask)
    assert abs((bottom - top) - 32) <= 2 and abs((right - left) - 32) <= 2  # longer side = fill * size
    assert abs((top + bottom) / 2 - 32) <= 1 and abs((left + right) / 2 - 32) <= 1  # centered
    inside = ref.mask[..., 0] > 0.99
    red = torch.tensor([200 / 255, 30 / 255, 30 / 255])
    torch.testing.assert_close(ref.rgb[inside], red.expand(int(inside.sum()), 3), atol=1e-4, rtol=0)
    outside = ref.mask[..., 0] == 0
    torch.testing.assert_close(ref.rgb[outside], torch.ones(int(outside.sum()), 3))  # the run's background


def test_rgb_on_a_plain_background_is_masked_by_color(tmp_path):
    inside = _disk(64, 64, (32, 32), 14)
    rgb = np.full((64, 64, 3), (20, 200, 40), dtype=np.uint8)  # a green screen
    rgb[inside] = (10, 10, 220)
    Image.fromarray(rgb, "RGB").save(tmp_path / "plain.png")
    ref = load_reference_image(tmp_path / "plain.png", 64, 64, WHITE, center=False)
    assert ref.mask_method == "color"
    assert float(((ref.mask[..., 0] > 0.5) == torch.from_numpy(inside)).float().mean()) > 0.99
    # the object keeps its color and the background becomes the run's
    assert torch.allclose(ref.rgb[~torch.from_numpy(inside)], torch.ones(3), atol=1e-5)


def test_busy_background_without_alpha_says_how_to_give_a_mask(tmp_path, monkeypatch):
    noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise, "RGB").save(tmp_path / "busy.png")
    monkeypatch.setitem(sys.modules, "rembg", None)  # as if rembg were not installed
    with pytest.raises(ImageFileError, match="rembg") as error:
        load_reference_image(tmp_path / "busy.png", 32, 32, WHITE)
    assert "alpha" in str(error.value)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "I;16", "RGB-jpeg", "RGBA-webp"])
def test_other_modes_and_formats_work(tmp_path, mode):
    inside = _disk(48, 48, (24, 24), 12)
    if mode == "I;16":
        gray = np.where(inside, 20000, 65535).astype(np.uint16)
        image, suffix = Image.fromarray(gray), ".png"
        assert image.mode.startswith("I;16")
    elif mode in ("L", "P"):
        gray = np.where(inside, 40, 255).astype(np.uint8)
        image, suffix = Image.fromarray(gray, "L"), ".png"
        image = image.convert("P") if mode == "P" else image
    elif mode == "LA":
        la = np.stack([np.full((48, 48), 90, np.uint8), np.where(inside, 255, 0).astype(np.uint8)], axis=2)
        image, suffix = Image.fromarray(la, "LA"), ".png"
    elif mode == "RGB-jpeg":
        rgb = np.full((48, 48, 3), 255, np.uint8)
        rgb[inside] = (30, 30, 200)
        image, suffix = Image.fromarray(rgb, "RGB"), ".jpg"
    else:
        rgba = np.zeros((48, 48, 4), np.uint8)
        rgba[inside] = (30, 200, 30, 255)
        image, suffix = Image.fromarray(rgba, "RGBA"), ".webp"
    path = tmp_path / f"image{suffix}"
    image.save(path, lossless=True) if suffix == ".webp" else image.save(path)
    ref = load_reference_image(path, 32, 32, WHITE, center=False)
    truth = torch.from_numpy(_disk(32, 32, (16, 16), 8))
    assert float(((ref.mask[..., 0] > 0.5) == truth).float().mean()) > 0.97
    if mode == "I;16":  # 16-bit values are read at full depth (20000 / 65535, not clipped to 255)
        assert abs(float(ref.rgb[16, 16, 0]) - 20000 / 65535) < 0.02


def test_tiny_corrupt_missing_and_empty_images_stop_with_a_message(tmp_path):
    Image.fromarray(np.zeros((12, 40, 4), np.uint8), "RGBA").save(tmp_path / "tiny.png")
    with pytest.raises(ImageFileError, match="at least 16 pixels"):
        read_image(tmp_path / "tiny.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(ImageFileError, match="corrupt or not an image"):
        read_image(tmp_path / "corrupt.png")
    with pytest.raises(ImageFileError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    empty = np.zeros((32, 32, 4), np.uint8)
    empty[..., :3] = 128
    empty[0, 0, 3] = 10  # transparent everywhere (a non-trivial alpha, but no object)
    Image.fromarray(empty, "RGBA").save(tmp_path / "empty.png")
    with pytest.raises(ImageFileError, match="mask is empty"):
        load_reference_image(tmp_path / "empty.png", 32, 32, WHITE)


def test_small_non_square_and_border_touching_images_work(tmp_path):
    rgba = np.zeros((20, 36, 4), np.uint8)
    rgba[5:20, 10:30] = (250, 200, 0, 255)  # touches the bottom border
    Image.fromarray(rgba, "RGBA").save(tmp_path / "small.png")
    with pytest.warns(UserWarning, match="touches the image border"):
        ref = load_reference_image(tmp_path / "small.png", 48, 48, WHITE)
    assert ref.rgb.shape == (48, 48, 3) and any("border" in note for note in ref.notes)
    top, bottom, left, right = _bbox(ref.mask)
    assert abs((right - left) - 0.8 * 48) <= 2  # the longer side (width) fills 80% after recentering
    with pytest.warns(UserWarning, match="touches the image border"):
        padded = load_reference_image(tmp_path / "small.png", 36, 36, WHITE, center=False)
    assert any("padded" in note for note in padded.notes)
    assert _bbox(padded.mask)[0] >= 8  # padded to a square: the image sits in the middle rows


def test_the_input_file_is_never_modified(tmp_path):
    path = tmp_path / "disk.png"
    _rgba_disk(path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    load_reference_image(path, 32, 32, WHITE)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
