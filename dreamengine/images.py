"""Reference images for image-to-3D (``dreamengine generate --image REF.png``): reading, masking, framing.

What is accepted (anything else stops before any work with an :class:`~dreamengine.errors.ImageFileError` saying
what to do):

* PNG, JPEG, WebP (anything Pillow reads), any size from :data:`MIN_SIDE` pixels up, square or not;
  8- or 16-bit, RGB, RGBA, grayscale (with or without alpha) and palette images (converted to RGB(A)).
* The object's mask: the alpha channel when the image has a non-trivial one (``image.mask: alpha``); for an
  image without transparency, the pixels that differ from a plain background color (``color``: the color of the
  image's border, which must be nearly uniform); else ``rembg`` when the user installed it (``rembg``). ``auto``
  picks the first that applies; ``none`` takes the whole image (a visual prompt that is not reconstructed). An
  empty mask is refused; a mask touching the border works (with a warning: the
  object is probably cut off, and the unseen part is left to the guidance).
* Framing (``image.recenter``, as DreamGaussian's and threestudio's preprocessing do): the object's bounding box
  is centered and scaled so that its longer side is ``image.fill`` of the image side, on a square canvas. Without
  recentering (toy-world renders, which are framed like the run already) a non-square image is padded to a square
  with the background. The result is resized to the training render size (area filter).
* A depth map of the image (``image.depth_path``, optional; for the reference-view depth losses): a grayscale PNG
  or TIFF (8/16-bit or float) or a ``.npy`` array, the image's size, depth or disparity at any scale (the losses
  fit scale and shift). It is framed and resized with the image; only the object's pixels are used. A color-mapped
  visualization, another size, non-finite values or a constant map are refused.

The input files are never modified.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from dreamengine.errors import ImageFileError

MIN_SIDE = 16  # pixels: smaller images carry too little to reconstruct from
MASK_METHODS = ("auto", "alpha", "color", "rembg", "none")
MASK_HELP = ("give an RGBA PNG whose alpha channel is the object's mask, or an image on a plain background, or "
             "install rembg (pip install rembg) to cut the object out automatically")


@dataclass
class ReferenceImage:
    """A reference image ready for the reference-view losses and the image-conditioned teacher."""

    rgb: Float[Tensor, "H W 3"]  # in [0, 1], the object composited over ``background``
    mask: Float[Tensor, "H W 1"]  # in [0, 1]
    foreground: Float[Tensor, "H W 3"]  # the object's own colors (not multiplied by the mask)
    source: str  # the file it was read from
    mask_method: str  # alpha | color | rembg
    original_size: tuple[int, int]  # (height, width) of the file
    notes: list[str] = field(default_factory=list)  # what was done to it (converted, padded, ...)
    depth: Float[Tensor, "H W 1"] | None = None  # the depth map's values (image.depth_path), None without one

    def composite(self, background: Float[Tensor, "H W 3"]) -> Float[Tensor, "H W 3"]:
        """The object over another background (threestudio: gt_rgb * mask + bg * (1 - mask))."""
        return self.foreground * self.mask + (1.0 - self.mask) * background


def read_image(path: str | Path) -> tuple[np.ndarray, bool, list[str]]:
    """(rgba [H, W, 4] float32 in [0, 1], whether it has a non-trivial alpha, notes) of an image file."""
    from PIL import Image, UnidentifiedImageError

    source = Path(path).expanduser()
    if not source.is_file():
        raise ImageFileError(f"image {source} does not exist (or is not a file); give the path of a PNG, JPEG or "
                             "WebP image")
    notes: list[str] = []
    try:
        with Image.open(source) as image:
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / 32-bit grayscale
                gray = np.asarray(image, dtype=np.float64)
                top = 65535.0 if mode.startswith("I;16") or gray.max() > 255 else 255.0
                gray = np.clip(gray / top, 0.0, 1.0).astype(np.float32)
                rgba = np.concatenate([np.repeat(gray[..., None], 3, axis=2), np.ones_like(gray)[..., None]], axis=2)
                notes.append(f"{mode} grayscale converted to RGB")
            else:
                if mode not in ("RGB", "RGBA"):
                    notes.append(f"{mode} image converted to RGB{'A' if _has_alpha_mode(image) else ''}")
                converted = image.convert("RGBA" if _has_alpha_mode(image) else "RGB")
                array = np.asarray(converted, dtype=np.float32) / 255.0
                if array.shape[2] == 3:
                    array = np.concatenate([array, np.ones_like(array[..., :1])], axis=2)
                rgba = array
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageFileError(f"could not read image {source} ({type(error).__name__}: {error}); it is corrupt or "
                             "not an image: give a PNG, JPEG or WebP file") from None
    height, width = rgba.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ImageFileError(f"image {source} is {width}x{height} pixels; it needs at least {MIN_SIDE} pixels per "
                             "side (upscale it first, or give a larger image)")
    if not np.isfinite(rgba).all():
        raise ImageFileError(f"image {source} holds non-finite values")
    has_alpha = bool((rgba[..., 3] < 1.0 - 1e-6).any())
    return rgba, has_alpha, notes


def _has_alpha_mode(image: object) -> bool:
    mode = getattr(image, "mode", "")
    return mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info)  # type: ignore[attr-defined]


def read_depth(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """The depth (or disparity) map [H, W] float32 of a reference image of ``shape`` (H, W) (module docstring)."""
    from PIL import Image, UnidentifiedImageError

    source = Path(path).expanduser()
    help_text = ("give the reference image's depth or disparity map (e.g. from DPT or Depth Anything) as a grayscale "
                 "PNG / TIFF or a .npy array of the image's size")
    if not source.is_file():
        raise ImageFileError(f"depth map {source} does not exist (or is not a file); {help_text}")
    try:
        if source.suffix.lower() == ".npy":
            depth = np.load(source, allow_pickle=False)
        else:
            with Image.open(source) as image:
                image.load()
                depth = np.asarray(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageFileError(f"could not read depth map {source} ({type(error).__name__}: {error}); "
                             f"{help_text}") from None
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 2:  # gray + alpha: the gray channel
        depth = depth[..., 0]
    elif depth.ndim == 3 and depth.shape[2] in (3, 4):  # a gray image saved as RGB(A) is fine, a color map is not
        if not (np.array_equal(depth[..., 0], depth[..., 1]) and np.array_equal(depth[..., 0], depth[..., 2])):
            raise ImageFileError(f"depth map {source} is a color image (a color-mapped visualization?); {help_text}")
        depth = depth[..., 0]
    depth = np.squeeze(depth)
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.number):
        raise ImageFileError(f"depth map {source} has shape {depth.shape} ({depth.dtype}); {help_text}")
    if depth.shape != tuple(shape):
        raise ImageFileError(f"depth map {source} is {depth.shape[1]}x{depth.shape[0]} pixels but the image is "
                             f"{shape[1]}x{shape[0]}; {help_text}")
    depth = depth.astype(np.float64)
    if not np.isfinite(depth).all():
        raise ImageFileError(f"depth map {source} holds non-finite values (NaN or inf); {help_text}")
    if np.ptp(depth) <= 0.0:
        raise ImageFileError(f"depth map {source} is constant: it holds no depth; {help_text}")
    return depth.astype(np.float32)


def border_color(rgb: np.ndarray, width: int = 2) -> tuple[np.ndarray, float]:
    """(median color of the image's border pixels [3], their largest per-channel spread (90th percentile of
    distances to it))."""
    border = np.concatenate([rgb[:width].reshape(-1, 3), rgb[-width:].reshape(-1, 3), rgb[:, :width].reshape(-1, 3),
                             rgb[:, -width:].reshape(-1, 3)])
    color = np.median(border, axis=0)
    spread = float(np.percentile(np.abs(border - color).max(axis=1), 90))
    return color, spread


def rembg_mask(rgb: np.ndarray) -> np.ndarray:
    """The object's mask [H, W] in [0, 1] from rembg (imported only here; the user installs it)."""
    from PIL import Image
    from rembg import remove

    cut = remove(Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8)))
    return np.asarray(cut.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0


def foreground_mask(rgba: np.ndarray, has_alpha: bool, method: str, tolerance: float,
                    source: str) -> tuple[np.ndarray, str]:
    """(mask [H, W] in [0, 1], the method used); see the module docstring for ``auto``."""
    if method not in MASK_METHODS:
        raise ImageFileError(f"image.mask must be one of {', '.join(MASK_METHODS)}, got {method!r}")
    rgb = rgba[..., :3]
    if method == "none":  # the whole image is the prompt (a visual prompt for an IP-Adapter): no mask
        return np.ones(rgb.shape[:2], dtype=np.float32), "none"
    if method == "alpha" or (method == "auto" and has_alpha):
        if not has_alpha:
            raise ImageFileError(f"image.mask=alpha but image {source} has no transparency; {MASK_HELP}")
        return rgba[..., 3], "alpha"
    if method in ("auto", "color"):
        color, spread = border_color(rgb)
        if spread <= tolerance:
            distance = np.abs(rgb - color).max(axis=2)
            # a soft edge one tolerance wide, so anti-aliased borders keep partial coverage
            return np.clip((distance - 0.5 * tolerance) / (0.5 * tolerance), 0.0, 1.0), "color"
        if method == "color":
            raise ImageFileError(f"image {source}: its border is not one plain color (spread {spread:.2f} > "
                                 f"image.background_tolerance {tolerance}), so the background cannot be told "
                                 f"apart by color; {MASK_HELP}")
    try:
        import rembg  # noqa: F401
    except ImportError:
        raise ImageFileError(f"image {source} has no alpha channel and no plain background; {MASK_HELP}") from None
    return rembg_mask(rgb), "rembg"


def recenter(rgba: np.ndarray, mask: np.ndarray, fill: float, extra: np.ndarray | None = None) -> np.ndarray:
    """The object's bounding box centered on a square canvas, its longer side ``fill`` of the canvas side;
    returns [S, S, 4 + k] (rgb, mask, then the k channels of ``extra`` [H, W, k]) with zeros outside the image."""
    rows, cols = np.nonzero(mask > 0.5)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    box = max(bottom - top, right - left)
    side = max(int(np.ceil(box / fill)), 1)
    channels = [rgba[..., :3], mask[..., None], *([extra] if extra is not None else [])]
    crop = np.concatenate([c[top:bottom, left:right] for c in channels], axis=2)
    canvas = np.zeros((side, side, crop.shape[2]), dtype=np.float32)
    y0 = (side - (bottom - top)) // 2
    x0 = (side - (right - left)) // 2
    canvas[y0:y0 + bottom - top, x0:x0 + right - left] = crop
    return canvas


def pad_square(rgb_mask: np.ndarray) -> np.ndarray:
    """[H, W, C] (rgb, mask, any further channels) centered on a square canvas of side max(H, W), zeros (mask 0)
    in the padding."""
    height, width = rgb_mask.shape[:2]
    side = max(height, width)
    canvas = np.zeros((side, side, rgb_mask.shape[2]), dtype=np.float32)
    y0, x0 = (side - height) // 2, (side - width) // 2
    canvas[y0:y0 + height, x0:x0 + width] = rgb_mask
    return canvas


def load_reference_image(path: str | Path, height: int, width: int, background: tuple[float, float, float],
                         mask_method: str = "auto", tolerance: float = 0.1, center: bool = True,
                         fill: float = 0.8, depth_path: str | Path | None = None) -> ReferenceImage:
    """Read, mask and frame a reference image (module docstring) at ``height`` x ``width``, with its depth map
    framed the same way when ``depth_path`` is given."""
    source = str(Path(path).expanduser())
    rgba, has_alpha, notes = read_image(source)
    depth = read_depth(depth_path, rgba.shape[:2])[..., None] if depth_path is not None else None
    if not 0.1 <= fill <= 1.0:
        raise ImageFileError(f"image.fill must be in [0.1, 1], got {fill}")
    mask, method = foreground_mask(rgba, has_alpha, mask_method, tolerance, source)
    if float((mask > 0.5).sum()) < 4:
        raise ImageFileError(f"image {source}: its mask is empty ({method}): no object found. {MASK_HELP[0].upper()}"
                             f"{MASK_HELP[1:]}")
    hard = mask > 0.5
    if method != "none" and (hard[0].any() or hard[-1].any() or hard[:, 0].any() or hard[:, -1].any()):
        message = f"image {source}: the object touches the image border, so it is probably cut off"
        notes.append(message)
        warnings.warn(message + "; the missing part is left to the guidance", stacklevel=2)
    original = rgba.shape[:2]
    if center:
        framed = recenter(rgba, mask, fill, depth)
        notes.append(f"recentered, object fills {fill:.0%} of the side")
    else:
        framed = pad_square(np.concatenate([rgba[..., :3], mask[..., None], *([depth] if depth is not None else [])],
                                           axis=2))
        if original[0] != original[1]:
            notes.append(f"padded from {original[1]}x{original[0]} to a square")
    tensor = torch.from_numpy(framed).permute(2, 0, 1)[None]  # [1, 4, S, S]
    rgb_mask = tensor[:, :3] * tensor[:, 3:4]  # premultiplied, so resizing does not bleed the background in
    size = (int(height), int(width))
    mode = "area" if framed.shape[0] >= max(size) else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    resized_rgb = F.interpolate(rgb_mask, size=size, mode=mode, **kwargs)[0].permute(1, 2, 0)
    resized_mask = F.interpolate(tensor[:, 3:4], size=size, mode=mode, **kwargs)[0].permute(1, 2, 0).clamp(0, 1)
    resized_depth = None
    if depth is not None:  # premultiplied by the mask as the colors are, then divided by the resized mask
        summed = F.interpolate(tensor[:, 4:5] * tensor[:, 3:4], size=size, mode=mode, **kwargs)[0].permute(1, 2, 0)
        resized_depth = torch.where(resized_mask > 1e-6, summed / resized_mask.clamp(min=1e-6),
                                    torch.zeros_like(summed))
    foreground = resized_rgb / resized_mask.clamp(min=1e-6)
    foreground = torch.where(resized_mask > 1e-6, foreground, torch.zeros_like(foreground)).clamp(0, 1)
    bg = torch.tensor(background, dtype=torch.float32).view(1, 1, 3)
    return ReferenceImage(rgb=(resized_rgb + (1.0 - resized_mask) * bg).clamp(0, 1), mask=resized_mask,
                          foreground=foreground, source=source, mask_method=method,
                          original_size=(original[0], original[1]), notes=notes, depth=resized_depth)


__all__ = ["MASK_METHODS", "MIN_SIDE", "ReferenceImage", "border_color", "foreground_mask", "load_reference_image",
           "pad_square", "read_depth", "read_image", "recenter"]
