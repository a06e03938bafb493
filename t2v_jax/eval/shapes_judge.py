"""The pixel-only judge of moving-shapes videos: the object's colour, shape and motion direction.

It sees nothing but the frames (no model, no caption, no labels) and knows only the vocabulary of
the `shapes` data (t2v_jax.data.render): the 8 palette colours, the 3 shapes and the 4 directions.

  background  the per-channel median of all pixels (the object covers a small part of a frame)
  foreground  pixels whose RGB distance from the background exceeds `FOREGROUND_DISTANCE`; per
              frame only the largest 4-connected blob is kept (speckles and a second object of a
              generated video do not move the measurements)
  colour      the object's colour is the per-channel median of the blob's most saturated
              ("core") pixels over all frames; the verdict is the palette colour nearest to it in
              CIELAB (`t2v_jax.eval.colour`), or none when even that one is more than
              `COLOUR_MAX_DELTA_E` away: a red-orange is red (delta E 6) or nothing, never orange
              (39); the delta E to every palette colour is reported as well
  shape       each frame's soft coverage (alpha: the pixel's position along background -> colour)
              is compared with the three shapes rendered at the same area and centroid; the shape
              with the least total L1 error over all frames wins (a template fit is much more
              robust at 3-6 pixel radii than bounding-box fill ratios)
  motion      least-squares slope of the coverage centroid over the frames: the dominant axis and
              its sign give left / right / up / down
  objects     per frame, the foreground's 4-connected components of at least
              `MIN_OBJECT_FRACTION` of the frame (speckles are not objects); the video's count is
              the most common per-frame count
  cut off     a frame whose blob touches an edge of the frame and is shorter across that edge
              than along it (every shape is as tall as it is wide, so a whole object touching an
              edge keeps both extents; one pushed past the edge loses the one across it; the
              exception: the upward triangle cut by the bottom edge is a smaller whole triangle)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from t2v_jax.data import render
from t2v_jax.eval.colour import delta_e

# RGB distance (0..441) from the background above which a pixel belongs to an object: every
# palette colour is > 200 away from every background, so this keeps pixels >~30% covered.
FOREGROUND_DISTANCE = 60.0
# Core pixels for the colour: at least this fraction of the blob's largest distance.
CORE_FRACTION = 0.8
# CIELAB distance beyond which the object's colour is no palette colour: under half the
# palette's closest pair (blue-purple, 29) plus room for a dulled or slightly blurred render
# (a render darkened by 15% is 14 from its colour; red-orange (237, 57, 33) is 39 from orange).
COLOUR_MAX_DELTA_E = 25.0
# A connected foreground component counts as an object from this fraction of the frame's area:
# the smallest training object (radius 0.18 of the frame) covers ~10%.
MIN_OBJECT_FRACTION = 0.02
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


def _count_objects(mask: np.ndarray) -> int:
    """Number of 4-connected components of a bool [H, W] mask that are big enough to be objects."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    return int(np.sum(sizes >= MIN_OBJECT_FRACTION * mask.size))


def _edges_and_cut(blob: np.ndarray) -> tuple[bool, bool]:
    """(touches an edge, cut off by an edge) for one frame's bool [H, W] blob."""
    if not blob.any():
        return False, False
    rows, cols = np.nonzero(blob)
    height, width = blob.shape
    tall = rows.max() - rows.min() + 1
    wide = cols.max() - cols.min() + 1
    on_row_edge = rows.min() == 0 or rows.max() == height - 1
    on_col_edge = cols.min() == 0 or cols.max() == width - 1
    # Antialiased edges below the foreground threshold shave up to ~1.5 pixels off an extent
    # (a triangle's apex most), hence the tolerance.
    short = lambda across, along: across < along - max(1.5, 0.15 * along)
    cut = (on_row_edge and short(tall, wide)) or (on_col_edge and short(wide, tall))
    return bool(on_row_edge or on_col_edge), bool(cut)


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
      dict with 'colour' (str or None), 'object_rgb' (float [3], the core pixels' median; NaN
      without an object), 'delta_e' ({palette colour: CIELAB distance from object_rgb}),
      'shape_errors' ({shape: mean L1 error per pixel}), 'centroids' (float [T, 2] (y, x) in
      pixels, NaN where a frame has no object), 'velocity' (float [2], pixels per frame, NaN
      without two frames with an object), 'foreground' (float, mean fraction of pixels in the
      kept blob), 'objects_per_frame' (int [T]), 'num_objects' (int, the most common per-frame
      count), 'touches_edge' and 'cut_off' (bool [T], see the module docstring).
    """
    video = _check_video(video).astype(np.float64)  # [T, H, W, 3]
    frames, height, width, _ = video.shape
    background = np.median(video.reshape(-1, 3), axis=0)  # [3]
    distance = np.linalg.norm(video - background, axis=-1)  # [T, H, W]
    foreground = distance > FOREGROUND_DISTANCE
    blobs = np.stack([_largest_blob(f) for f in foreground])  # [T, H, W]
    per_frame = np.array([_count_objects(f) for f in foreground], np.int64)  # [T]
    edges = np.array([_edges_and_cut(b) for b in blobs], bool).reshape(frames, 2)
    result = {
        "colour": None,
        "object_rgb": np.full(3, np.nan),
        "delta_e": {},
        "shape_errors": {},
        "centroids": np.full((frames, 2), np.nan),
        "velocity": np.full(2, np.nan),
        "foreground": float(blobs.mean()),
        "objects_per_frame": per_frame,
        # Ties go to the larger count, so a second object in half the frames is not hidden.
        "num_objects": int(
            np.flatnonzero(np.bincount(per_frame) == np.bincount(per_frame).max())[-1]
        ),
        "touches_edge": edges[:, 0],
        "cut_off": edges[:, 1],
    }
    if not blobs.any():
        return result

    blob_distance = np.where(blobs, distance, 0.0)
    core = blob_distance >= CORE_FRACTION * blob_distance.max()  # [T, H, W]
    object_rgb = np.median(video[core], axis=0)  # [3]
    distances = delta_e(object_rgb, _PALETTE)  # [8]
    colour_index = int(np.argmin(distances))
    result["object_rgb"] = object_rgb
    result["delta_e"] = dict(zip(render.COLOUR_NAMES, distances.tolist(), strict=True))
    if distances[colour_index] <= COLOUR_MAX_DELTA_E:
        result["colour"] = render.COLOUR_NAMES[colour_index]

    # Coverage along background -> the nearest colour, kept within one pixel of each frame's blob
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
    return verdict(measure_video(video))


def verdict(measurements: dict) -> dict[str, str | None]:
    """The colour / shape / motion verdict (`judge_video`'s result) of `measure_video`'s output."""
    m = measurements
    shape = min(m["shape_errors"], key=m["shape_errors"].get) if m["shape_errors"] else None
    return {"colour": m["colour"], "shape": shape, "motion": _direction(m["velocity"])}


def judge_videos(videos: np.ndarray) -> list[dict[str, str | None]]:
    """`judge_video` of each video of uint8 [N, T, H, W, 3]."""
    videos = np.asarray(videos)
    if videos.ndim != 5:
        raise ValueError(f"videos: expected uint8 [N, T, H, W, 3], got shape {videos.shape}")
    return [judge_video(v) for v in videos]
