"""The pixel-only judge of moving-shapes videos: the object's colour, shape and motion direction.

It sees nothing but the frames (no model, no caption, no labels) and knows only the vocabulary of
the `shapes` data (t2v_jax.data.render): the 8 palette colours, the 3 shapes and the 4 directions.

  background  the per-channel median of all pixels (the object covers a small part of a frame)
  foreground  pixels whose RGB distance from the background exceeds `FOREGROUND_DISTANCE`; per
              frame only the largest 4-connected blob is kept (speckles and a second object of a
              generated video do not move the measurements)
  colour      the palette colour c whose segment background -> c passes nearest to the mean of
              the blob's most saturated ("core") pixels; a segment rather than the point c,
              because a low-res model blurs edges and darkens colours toward the background
  shape       each frame's soft coverage (alpha: the pixel's position along background -> colour)
              is compared with the three shapes rendered at the same area and centroid; the shape
              with the least total L1 error over all frames wins (a template fit is much more
              robust at 3-6 pixel radii than bounding-box fill ratios)
  motion      least-squares slope of the coverage centroid over the frames: the dominant axis and
              its sign give left / right / up / down
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from t2v_jax.data import render

# RGB distance (0..441) from the background above which a pixel belongs to an object: every
# palette colour is > 200 away from every background, so this keeps pixels >~30% covered.
FOREGROUND_DISTANCE = 60.0
# Core pixels for the colour: at least this fraction of the blob's largest distance.
CORE_FRACTION = 0.8
_PALETTE = np.array([render.COLOURS[c] for c in render.COLOUR_NAMES], np.float64)  # [8, 3]
# A white template on black gives coverage as value / 245 (white is (245, 245, 245)).
_TEMPLATE_COLOUR = "white"
_TEMPLATE_VALUE = float(render.COLOURS[_TEMPLATE_COLOUR][0])
# Area of each shape in units of r**2 (render._coverage): the circle pi r^2, the square has the
# circle's area by construction, the triangle (base 2r, height 2r) 2 r^2.
_AREA_PER_R2 = {"circle": np.pi, "square": 4 * 0.886**2, "triangle": 2.0}
# Vertical offset of the coverage centroid from the shape's nominal centre, in units of r: the
# upward triangle's centroid lies a third of its height (2r) below the apex, i.e. r/3 below centre.
_CENTROID_OFFSET = {"circle": 0.0, "square": 0.0, "triangle": 1.0 / 3.0}


def _check_video(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video: expected uint8 [T, H, W, 3], got shape {video.shape}")
    if video.dtype != np.uint8:
        raise ValueError(f"video: expected dtype uint8, got {video.dtype}")
    if min(video.shape[:3]) < 1:
        raise ValueError(f"video: every dimension must be >= 1, got shape {video.shape}")
    return video


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a bool [H, W] mask (all False if none)."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes))


def _segment_residual(pixel: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Distance of `pixel` [3] to each segment background -> palette colour: float [8]."""
    direction = _PALETTE - background  # [8, 3]
    rel = pixel - background  # [3]
    alpha = np.clip(direction @ rel / np.sum(direction**2, axis=-1), 0.0, 1.0)  # [8]
    return np.linalg.norm(rel[None] - alpha[:, None] * direction, axis=-1)


def _template(shape: str, area: float, cy: float, cx: float, height: int, width: int):
    """Coverage float [H, W] in [0, 1] of `shape` with the given area and centroid (pixels)."""
    scale = min(height, width)
    r = np.sqrt(area / _AREA_PER_R2[shape])
    spec = render.ShapeSpec(
        _TEMPLATE_COLOUR,
        shape,
        "none",
        y=(cy - _CENTROID_OFFSET[shape] * r) / height,
        x=cx / width,
        size=max(r / scale, 1e-6),
    )
    frame = render.render_video([spec], 1, height, width, (0, 0, 0))[0, :, :, 0]
    return frame.astype(np.float64) / _TEMPLATE_VALUE


def measure_video(video: np.ndarray) -> dict:
    """The judge's measurements of one video (what `judge_video` decides from).

    Args:
      video: uint8 [T, H, W, 3].

    Returns:
      dict with 'colour' (str or None), 'shape_errors' ({shape: mean L1 error per pixel}),
      'centroids' (float [T, 2] (y, x) in pixels, NaN where a frame has no object),
      'velocity' (float [2], pixels per frame, NaN without two frames with an object) and
      'foreground' (float, mean fraction of pixels in the kept blob).
    """
    video = _check_video(video).astype(np.float64)  # [T, H, W, 3]
    frames, height, width, _ = video.shape
    background = np.median(video.reshape(-1, 3), axis=0)  # [3]
    distance = np.linalg.norm(video - background, axis=-1)  # [T, H, W]
    blobs = np.stack([_largest_blob(d > FOREGROUND_DISTANCE) for d in distance])  # [T, H, W]
    result = {
        "colour": None,
        "shape_errors": {},
        "centroids": np.full((frames, 2), np.nan),
        "velocity": np.full(2, np.nan),
        "foreground": float(blobs.mean()),
    }
    if not blobs.any():
        return result

    blob_distance = np.where(blobs, distance, 0.0)
    core = blob_distance >= CORE_FRACTION * blob_distance.max()  # [T, H, W]
    core_colour = video[core].mean(axis=0)  # [3]
    colour_index = int(np.argmin(_segment_residual(core_colour, background)))
    result["colour"] = render.COLOUR_NAMES[colour_index]

    # Coverage along background -> the judged colour, kept within one pixel of each frame's blob
    # so that antialiased edge pixels (below the foreground threshold) still count.
    direction = _PALETTE[colour_index] - background
    alpha = np.clip((video - background) @ direction / np.sum(direction**2), 0.0, 1.0)
    near = np.stack([ndimage.binary_dilation(b) for b in blobs])
    alpha = np.where(near, alpha, 0.0)  # [T, H, W]

    ys = np.arange(height, dtype=np.float64) + 0.5
    xs = np.arange(width, dtype=np.float64) + 0.5
    errors = dict.fromkeys(render.SHAPES, 0.0)
    judged = 0
    for t in range(frames):
        area = alpha[t].sum()
        if not blobs[t].any() or area <= 0:
            continue
        cy = float((alpha[t].sum(axis=1) * ys).sum() / area)
        cx = float((alpha[t].sum(axis=0) * xs).sum() / area)
        result["centroids"][t] = (cy, cx)
        for shape in render.SHAPES:
            fit = _template(shape, area, cy, cx, height, width)
            errors[shape] += float(np.abs(fit - alpha[t]).sum())
        judged += 1
    result["shape_errors"] = {s: e / (judged * height * width) for s, e in errors.items()}

    seen = ~np.isnan(result["centroids"][:, 0])
    if seen.sum() >= 2:
        t = np.arange(frames, dtype=np.float64)[seen]
        t = t - t.mean()
        pos = result["centroids"][seen]  # [n, 2]
        result["velocity"] = (t @ (pos - pos.mean(axis=0))) / (t @ t)
    return result


def _direction(velocity: np.ndarray) -> str | None:
    vy, vx = velocity
    if np.isnan(vy) or (vy == 0 and vx == 0):
        return None
    if abs(vx) >= abs(vy):
        return "right" if vx > 0 else "left"
    return "down" if vy > 0 else "up"


def judge_video(video: np.ndarray) -> dict[str, str | None]:
    """Colour, shape and motion direction of the main object of a video, from its pixels alone.

    Args:
      video: uint8 [T, H, W, 3] (e.g. one output of `Pipeline.sample`).

    Returns:
      {'colour': a name of render.COLOURS, 'shape': one of render.SHAPES, 'motion': one of
      'left'/'right'/'up'/'down'}; a value is None when the video shows no object (or, for the
      motion, fewer than two frames show one).

    Raises:
      ValueError: `video` is not uint8 [T, H, W, 3].
    """
    m = measure_video(video)
    shape = min(m["shape_errors"], key=m["shape_errors"].get) if m["shape_errors"] else None
    return {"colour": m["colour"], "shape": shape, "motion": _direction(m["velocity"])}


def judge_videos(videos: np.ndarray) -> list[dict[str, str | None]]:
    """`judge_video` of each video of uint8 [N, T, H, W, 3]."""
    videos = np.asarray(videos)
    if videos.ndim != 5:
        raise ValueError(f"videos: expected uint8 [N, T, H, W, 3], got shape {videos.shape}")
    return [judge_video(v) for v in videos]
