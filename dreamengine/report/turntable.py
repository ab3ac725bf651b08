"""Turntable: the trained scene rendered along an orbit, written as MP4 (H.264), GIF and a thumbnail.

The renderer is a callback, ``render(cameras, H, W) -> RenderOut`` (``rgb`` [B, H, W, 3] in [0, 1]), the
same contract :func:`dreamengine.evaluate.evaluate_renders` uses, so any scene type with a renderer (NeRF
today, Gaussians or meshes later) gets a turntable without this module knowing about it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dreamengine.core.cameras import Cameras, CameraSampler
from dreamengine.core.render import RenderOut
from dreamengine.errors import DreamEngineError

RenderFn = Callable[[Cameras, int, int], RenderOut]

DEFAULT_FRAMES = 36
DEFAULT_SIZE = 128  # pixels per side (a multiple of 16, what H.264 encoders want)
DEFAULT_ELEVATION = 15.0  # degrees; the previews' orbit elevation
SECONDS_PER_TURN = 3.0
MP4_NAME, GIF_NAME, THUMBNAIL_NAME = "turntable.mp4", "turntable.gif", "thumbnail.png"


def check_turntable_settings(num_frames: int | None, size: int | None) -> None:
    """Raise a :class:`DreamEngineError` for frame counts or sizes the video cannot have (None: not given)."""
    if num_frames is not None and num_frames < 2:
        raise DreamEngineError(f"a turntable needs at least 2 frames, got {num_frames}; try --frames {DEFAULT_FRAMES}")
    if size is not None and (size < 16 or size % 16):
        nearest = max(16, 16 * round(size / 16))
        raise DreamEngineError(f"the turntable size must be a multiple of 16 pixels (H.264 encodes 16x16 blocks), "
                               f"got {size}; try --size {nearest}")


def orbit(sampler: CameraSampler, num_frames: int = DEFAULT_FRAMES,
          elevation_deg: float = DEFAULT_ELEVATION) -> Cameras:
    """``num_frames`` cameras one full turn around the object, starting at its front (azimuth 0)."""
    return sampler.orbit(num_frames, elevation_deg=elevation_deg, start_azimuth_deg=0.0)


def turntable_fps(num_frames: int) -> int:
    """Frames per second that play one turn in about :data:`SECONDS_PER_TURN` (6 to 30 fps)."""
    return int(min(30, max(6, round(num_frames / SECONDS_PER_TURN))))


@torch.no_grad()
def render_frames(render: RenderFn, cameras: Cameras, height: int, width: int, chunk: int = 4) -> np.ndarray:
    """Render ``cameras`` ``chunk`` views at a time (bounded memory).

    Returns:
        frames: uint8 [N, H, W, 3].
    """
    frames = []
    for start in range(0, len(cameras), chunk):
        rgb = render(cameras[start:start + chunk], height, width).rgb  # [b, H, W, 3]
        frames.append((rgb.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8))
    return np.concatenate(frames, axis=0)


def write_mp4(frames: np.ndarray, path: Path, fps: int) -> Path:
    """H.264 (yuv420p, faststart) through imageio-ffmpeg's bundled ffmpeg; plays in every browser.

    Args:
        frames: uint8 [N, H, W, 3], H and W multiples of 16.
    """
    import imageio.v2 as imageio

    writer = imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                pixelformat="yuv420p", macro_block_size=16, ffmpeg_log_level="error",
                                output_params=["-movflags", "+faststart"])
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()
    return path


def write_gif(frames: np.ndarray, path: Path, fps: int) -> Path:
    """Looping GIF (frames uint8 [N, H, W, 3]); GIF delays are whole 10 ms units, so the rate is approximate."""
    import imageio.v3 as iio

    iio.imwrite(path, frames, extension=".gif", duration=round(1000 / fps), loop=0)
    return path


def make_turntable(render: RenderFn, sampler: CameraSampler, out_dir: Path, num_frames: int = DEFAULT_FRAMES,
                   size: int = DEFAULT_SIZE, elevation_deg: float = DEFAULT_ELEVATION,
                   fps: int | None = None) -> dict[str, Path]:
    """Render one orbit with ``render`` and write ``out_dir``/turntable.mp4, turntable.gif and thumbnail.png
    (the front view). ``fps`` defaults to :func:`turntable_fps`.

    Returns:
        {"mp4": path, "gif": path, "thumbnail": path}
    """
    import imageio.v3 as iio

    check_turntable_settings(num_frames, size)
    frames = render_frames(render, orbit(sampler, num_frames, elevation_deg), size, size)
    fps = fps or turntable_fps(num_frames)
    out_dir.mkdir(parents=True, exist_ok=True)
    thumbnail = out_dir / THUMBNAIL_NAME
    iio.imwrite(thumbnail, frames[0])
    return {"mp4": write_mp4(frames, out_dir / MP4_NAME, fps), "gif": write_gif(frames, out_dir / GIF_NAME, fps),
            "thumbnail": thumbnail}
