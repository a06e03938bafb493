"""Host-side numpy video transforms: resize, cover-resize + centre crop, box downsampling, crops."""

from __future__ import annotations

import numpy as np
from PIL import Image


def box_downsample(video: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area (box-filter) downsample by integer factors.

    Args:
      video: float [..., H, W, C] with H % height == 0 and W % width == 0.

    Returns:
      float32 [..., height, width, C]: each output pixel is the mean of its fh x fw input block.
    """
    *lead, h, w, c = video.shape
    if h % height or w % width:
        raise ValueError(f"box_downsample: {h}x{w} is not an integer multiple of {height}x{width}")
    fh, fw = h // height, w // width
    # Summing the fh*fw strided sub-grids is ~3x faster than a mean over a 6-D reshape, whose
    # reduction runs over non-adjacent axes.
    out = np.zeros((*lead, height, width, c), np.float32)
    for i in range(fh):
        for j in range(fw):
            out += video[..., i::fh, j::fw, :]
    return out / np.float32(fh * fw)


def bicubic_resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [..., h, w, 3] -> uint8 [..., height, width, 3] by Pillow's bicubic filter.

    Pillow widens the filter when it shrinks (antialiased), so this is also the usual "bicubic
    downsample" that super-resolution work degrades its inputs with.
    """
    if frames.dtype != np.uint8:
        raise ValueError(f"bicubic_resize: frames must be uint8, got {frames.dtype}")
    lead = frames.shape[:-3]
    flat = frames.reshape(-1, *frames.shape[-3:])
    if flat.shape[1:3] == (height, width):
        return frames
    out = np.stack(
        [
            np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BICUBIC))
            for f in flat
        ]
    )
    return out.reshape(*lead, height, width, frames.shape[-1])


def resize_video(video: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes every frame to (height, width).

    Integer downsampling factors use the exact box filter (so a low-res clip is the area average
    of the full-res one); other factors use PIL's antialiased bicubic per frame.

    Args:
      video: uint8 or float [T, H, W, C].

    Returns:
      [T, height, width, C], same dtype as `video`.
    """
    t, h, w, c = video.shape
    if (h, w) == (height, width):
        return video
    if h % height == 0 and w % width == 0:
        out = box_downsample(video, height, width)
        return np.round(out).astype(np.uint8) if video.dtype == np.uint8 else out
    if video.dtype == np.uint8:
        return bicubic_resize(video, height, width)
    # Float frames: PIL's "F" mode is single channel, so resize each channel separately.
    out = np.empty((t, height, width, c), np.float32)
    for i in range(t):
        for j in range(c):
            img = Image.fromarray(np.ascontiguousarray(video[i, :, :, j], np.float32), mode="F")
            out[i, :, :, j] = np.asarray(img.resize((width, height), Image.Resampling.BICUBIC))
    return out


def fit_video(video: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes so the frame covers (height, width), keeping the aspect ratio, then centre crops.

    Args:
      video: uint8 or float [T, H, W, C].

    Returns:
      [T, height, width, C], same dtype.
    """
    _, h, w, _ = video.shape
    scale = max(height / h, width / w)
    # Round to the nearest size that still covers the target (floating error can give 63.999).
    rh = max(height, round(h * scale))
    rw = max(width, round(w * scale))
    resized = resize_video(video, rh, rw)
    top, left = (rh - height) // 2, (rw - width) // 2
    return resized[:, top : top + height, left : left + width]


def random_crop(
    video: np.ndarray, height: int, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[int, int]]:
    """A random (height, width) window of every frame (the same window for all frames).

    Returns:
      (crop [T, height, width, C], (top, left)).
    """
    _, h, w, _ = video.shape
    if height > h or width > w:
        raise ValueError(f"random_crop: crop {height}x{width} is larger than the frame {h}x{w}")
    top = int(rng.integers(h - height + 1))
    left = int(rng.integers(w - width + 1))
    return video[:, top : top + height, left : left + width], (top, left)
