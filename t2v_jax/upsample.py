"""Upsampling a lower stage's video to a super-resolution stage's shape (training and sampling).

Imagen Video's SR stages condition on the previous stage's output brought to their own size:
bilinear interpolation in space for spatial SR, frame repetition in time for temporal SR. The
trainer (from the low-res half of a training pair) and the cascade (from the previous stage's
samples) both call this, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp

UpsampleKind = Literal["spatial", "temporal", "spatiotemporal"]
KINDS = ("spatial", "temporal", "spatiotemporal")


SPATIAL_METHODS = ("bilinear", "nearest")
TEMPORAL_METHODS = ("repeat", "interpolate")


def upsample_video(
    low: jax.Array,
    target_shape: Sequence[int],
    kind: UpsampleKind,
    *,
    spatial_method: Literal["bilinear", "nearest"] = "bilinear",
    temporal_method: Literal["repeat", "interpolate"] = "repeat",
) -> jax.Array:
    """Brings `low` [B, t, h, w, C] to [B, T, H, W, C].

    Args:
      low: the low-resolution video [B, t, h, w, C].
      target_shape: (T, H, W) of the output.
      kind: "spatial" (t == T; every frame resized), "temporal" (h, w == H, W; more frames) or
        "spatiotemporal" (both).
      spatial_method: "bilinear" (Imagen Video) or "nearest" resizing of frames.
      temporal_method: "repeat" (each frame T // t times, Imagen Video) or "interpolate" (linear
        blend of neighbouring frames, half-frame centres as in image resizing).

    Raises:
      ValueError: for an unknown kind, a rank other than 5, a dimension the kind may not change
        but that differs, or a frame count T that is not a multiple of t.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if spatial_method not in SPATIAL_METHODS:
        raise ValueError(
            f"spatial_method must be one of {', '.join(SPATIAL_METHODS)}, got {spatial_method!r}"
        )
    if temporal_method not in TEMPORAL_METHODS:
        raise ValueError(
            f"temporal_method must be one of {', '.join(TEMPORAL_METHODS)}, got {temporal_method!r}"
        )
    if low.ndim != 5:
        raise ValueError(f"low must be [B, T, H, W, C], got shape {low.shape}")
    frames, height, width = (int(d) for d in target_shape)
    _, t, h, w, c = low.shape
    if kind == "spatial" and t != frames:
        raise ValueError(f"spatial upsampling keeps the frame count; got {t} -> {frames} frames")
    if kind == "temporal" and (h, w) != (height, width):
        raise ValueError(
            f"temporal upsampling keeps the frame size; got {h}x{w} -> {height}x{width}"
        )
    if frames % t:
        raise ValueError(f"target frames {frames} must be a multiple of the input frames {t}")
    x = low
    if frames != t and temporal_method == "repeat":
        x = jnp.repeat(x, frames // t, axis=1)  # [B, T, h, w, C]
    elif frames != t:
        x = jax.image.resize(x, (x.shape[0], frames, h, w, c), "linear")  # [B, T, h, w, C]
    if (height, width) != (h, w):
        # Upsampling only (antialias matters for downsampling), per frame; half-pixel centres as
        # in every image library, so a constant image stays constant.
        x = jax.image.resize(x, (x.shape[0], frames, height, width, c), spatial_method)
    return x  # [B, T, H, W, C]
