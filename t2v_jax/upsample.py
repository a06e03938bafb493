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


def upsample_video(
    low: jax.Array, target_shape: Sequence[int], kind: UpsampleKind
) -> jax.Array:  # fmt: skip
    """Brings `low` [B, t, h, w, C] to [B, T, H, W, C].

    Args:
      low: the low-resolution video [B, t, h, w, C].
      target_shape: (T, H, W) of the output.
      kind: "spatial" (t == T; bilinear resize of every frame), "temporal" (h, w == H, W; each
        frame repeated T // t times) or "spatiotemporal" (both).

    Raises:
      ValueError: for an unknown kind, a rank other than 5, a dimension the kind may not change
        but that differs, or a frame count T that is not a multiple of t.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
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
    if frames != t:
        x = jnp.repeat(x, frames // t, axis=1)  # [B, T, h, w, C]
    if (height, width) != (h, w):
        # Upsampling only (antialias matters for downsampling), per frame; half-pixel centres as
        # in every image library, so a constant image stays constant.
        x = jax.image.resize(x, (x.shape[0], frames, height, width, c), "bilinear")
    return x  # [B, T, H, W, C]
