"""Writing and reading videos: .mp4 (ffmpeg from the imageio-ffmpeg wheel), .gif/.webp (Pillow), .png grids.

Videos are uint8 `[T, H, W, 3]` arrays (float arrays in [-1, 1] are converted). Files are written
to a temporary name beside the target and renamed into place, so a failed write never leaves a
half-written file, and an existing file is never replaced unless `overwrite=True`.
"""

from __future__ import annotations

import math
import os
import pathlib
import tempfile

import numpy as np

SUFFIXES = (".mp4", ".gif", ".webp", ".png")


def to_uint8(video: np.ndarray) -> np.ndarray:
    """uint8 frames from uint8 or from floats in [-1, 1] (the models' range)."""
    video = np.asarray(video)
    if video.dtype == np.uint8:
        return video
    if not np.issubdtype(video.dtype, np.floating):
        raise ValueError(f"video: expected uint8 or float frames, got dtype {video.dtype}")
    return np.clip(np.round((video + 1.0) * 127.5), 0, 255).astype(np.uint8)


def check_output_path(path: str | os.PathLike, *, overwrite: bool = False) -> pathlib.Path:
    """Validates an output path before any work is done; returns it as a Path.

    Raises:
      ValueError: unsupported suffix, missing or unwritable folder, or an existing file without
        `overwrite`.
    """
    path = pathlib.Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(
            f"out: unsupported video suffix {path.suffix or '(none)'!r} in {str(path)!r}; "
            f"use one of {', '.join(SUFFIXES)}"
        )
    folder = path.parent if str(path.parent) else pathlib.Path(".")
    if not folder.is_dir():
        raise ValueError(f"out: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"out: folder {str(folder)!r} is not writable")
    if path.exists() and not overwrite:
        raise ValueError(f"out: {str(path)!r} already exists; pass overwrite=True to replace it")
    return path


def frame_grid(video: np.ndarray, columns: int | None = None) -> np.ndarray:
    """Tiles frames `[T, H, W, 3]` into one image `[rows*H, columns*W, 3]` (row-major, black pad)."""
    t, h, w, c = video.shape
    columns = columns or min(t, 8)
    rows = math.ceil(t / columns)
    grid = np.zeros((rows * columns, h, w, c), video.dtype)
    grid[:t] = video
    grid = grid.reshape(rows, columns, h, w, c).transpose(0, 2, 1, 3, 4)  # [rows, H, cols, W, C]
    return grid.reshape(rows * h, columns * w, c)


def write_video(
    video: np.ndarray, path: str | os.PathLike, fps: float = 8.0, *, overwrite: bool = False
) -> pathlib.Path:
    """Writes one video `[T, H, W, 3]` to `path`; the format is chosen by the suffix.

    .mp4: H.264 (yuv420p, so odd sizes are padded by one edge pixel); .gif / .webp: lossless-ish
    animations via Pillow; .png: a grid of all frames (8 per row).

    Returns:
      The path written.
    """
    video = to_uint8(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video: expected [T, H, W, 3], got shape {video.shape}")
    if not (isinstance(fps, int | float) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps: expected a positive number, got {fps!r}")
    path = check_output_path(path, overwrite=overwrite)
    suffix = path.suffix.lower()
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix=f".{path.stem}.", dir=path.parent or ".")
    os.close(fd)
    try:
        if suffix == ".mp4":
            _write_mp4(video, tmp, fps)
        elif suffix in (".gif", ".webp"):
            _write_animation(video, tmp, fps, suffix)
        else:
            from PIL import Image

            Image.fromarray(frame_grid(video)).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _write_mp4(video: np.ndarray, path: str, fps: float) -> None:
    import imageio_ffmpeg

    _, h, w, _ = video.shape
    # yuv420p halves chroma resolution, so H.264 needs even sizes.
    video = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    writer = imageio_ffmpeg.write_frames(
        path,
        (video.shape[2], video.shape[1]),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        quality=9,  # near-lossless: tiny videos are judged by their colours
        macro_block_size=1,  # never rescale frames
        ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in video:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def _write_animation(video: np.ndarray, path: str, fps: float, suffix: str) -> None:
    from PIL import Image

    frames = [Image.fromarray(f) for f in video]
    kwargs = {"lossless": True} if suffix == ".webp" else {"disposal": 2}
    frames[0].save(
        path,
        format="WEBP" if suffix == ".webp" else "GIF",
        save_all=True,
        append_images=frames[1:],
        duration=max(1, round(1000 / fps)),
        loop=0,
        **kwargs,
    )


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Reads a video file back as uint8 `[T, H, W, 3]` (.mp4 and others via ffmpeg; .gif/.webp via Pillow)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"path: no such file {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix in (".gif", ".webp"):
        from PIL import Image, ImageSequence

        with Image.open(path) as image:
            return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(image)])
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
    if not frames:
        raise ValueError(f"path: {str(path)!r} holds no decodable frames")
    return np.stack(frames)
