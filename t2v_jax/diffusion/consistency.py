"""Data consistency for super-resolution: keep each step's x0 estimate true to the input.

A spatial SR stage is given y = D x, the low-resolution input made from the truth x by a known
linear degradation D: "bicubic", Pillow's antialiased bicubic shrink (the one `t2v-upsample`,
`tools/eval_sr.py` and the `low_res_filter = "bicubic"` training data use), or "box", the area
average of `low_res_filter = "box"` (the demo's SR stages; D^+ then repeats each low-resolution
pixel over its block, so the projection sets every block's mean to the input's). The model only sees
y through its conditioning, so a sample may drift from it: too dark, shifted colours, blurred
edges in the wrong place. Projecting every step's x0 estimate onto {x : D x = y},

    x0 <- x0 + D^+ (y - D x0),       D^+ = D^T (D D^T)^-1,

replaces the part of x0 that D sees (its low frequencies) by the input's and keeps the part D
cannot see (the detail the model adds), as in range-null-space decomposition samplers (Wang et
al. 2022, DDNM). D is separable, D = D_h (x) D_w, so D^+ = D_h^+ (x) D_w^+ and each is a small
matrix applied along one axis. The samplers take it as `project_x0` (samplers.sample_steps).

A temporal SR stage's input is every k-th frame of the truth (`t2v_jax.data.pipeline`: `low_res
= video[::k]`), so D selects frames, D^+ = D^T, and the projection ("frames") puts the input's
frames back in their places and leaves the model's frames between them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("none", "bicubic", "box", "frames")
SPATIAL_MODES = ("bicubic", "box")  # the ones a spatial SR stage takes; "frames": temporal SR


def check_mode(mode: str, name: str = "data_consistency") -> None:
    if mode not in MODES:
        raise ValueError(f"{name}: {mode!r} is not one of {', '.join(MODES)}")


@functools.lru_cache(maxsize=32)
def bicubic_matrix(size: int, low_size: int) -> np.ndarray:
    """[low_size, size] float64: Pillow's bicubic resize of one axis from `size` to `low_size`.

    Read off Pillow itself (the resize of a float "F" image of impulses, which Pillow computes
    without rounding), so it is the exact operator the data and the user's input went through.
    """
    from PIL import Image

    if not 1 <= low_size <= size:
        raise ValueError(f"bicubic_matrix: need 1 <= low_size <= size, got {low_size}, {size}")
    impulses = Image.fromarray(np.eye(size, dtype=np.float32), mode="F")  # row i = e_i
    rows = np.asarray(impulses.resize((low_size, size), Image.Resampling.BICUBIC))
    return rows.T.astype(np.float64)  # column i = D e_i


@functools.lru_cache(maxsize=32)
def box_matrix(size: int, low_size: int) -> np.ndarray:
    """[low_size, size] float64: the area average of one axis from `size` to `low_size`."""
    if low_size < 1 or size % low_size:
        raise ValueError(f"box_matrix: size {size} is not a multiple of low_size {low_size}")
    factor = size // low_size
    return np.kron(np.eye(low_size), np.full((1, factor), 1.0 / factor))


def _matrix(kind: str, size: int, low_size: int) -> np.ndarray:
    if kind not in SPATIAL_MODES:
        raise ValueError(f"data consistency: {kind!r} is not one of {', '.join(SPATIAL_MODES)}")
    return (bicubic_matrix if kind == "bicubic" else box_matrix)(size, low_size)


@functools.lru_cache(maxsize=32)
def _pinv(kind: str, size: int, low_size: int) -> np.ndarray:
    d = _matrix(kind, size, low_size)
    return d.T @ np.linalg.inv(d @ d.T)  # [size, low_size]


def degrade(x: jax.Array, low_hw: tuple[int, int], kind: str = "bicubic") -> jax.Array:
    """D x: [..., H, W, C] -> [..., h, w, C] by the `kind` matrices (float, no rounding)."""
    h, w = low_hw
    dh = jnp.asarray(_matrix(kind, x.shape[-3], h), x.dtype)
    dw = jnp.asarray(_matrix(kind, x.shape[-2], w), x.dtype)
    return jnp.einsum("hH,...HWc,wW->...hwc", dh, x, dw)


def project(x0: jax.Array, low: jax.Array, kind: str = "bicubic") -> jax.Array:
    """x0 + D^+ (low - D x0): the point of {x : D x = low} nearest to x0.

    Args:
      x0: [..., H, W, C] the estimate (any leading axes, e.g. [B, T]); for "frames"
        [..., T, H, W, C].
      low: [..., h, w, C] the low-resolution input, same leading axes and data range; for
        "frames" [..., t, H, W, C] with T a multiple of t.
      kind: the degradation D, "bicubic", "box" or "frames" (every T // t-th frame).
    """
    if kind == "frames":
        frames, low_frames = x0.shape[-4], low.shape[-4]
        if low_frames < 1 or frames % low_frames or x0.shape[-3:] != low.shape[-3:]:
            raise ValueError(
                f"data consistency 'frames': x0 {x0.shape} is not a whole number of input "
                f"{low.shape}'s frames of the same size"
            )
        return x0.at[..., :: frames // low_frames, :, :, :].set(low.astype(x0.dtype))
    h, w = low.shape[-3], low.shape[-2]
    residual = low.astype(x0.dtype) - degrade(x0, (h, w), kind)
    ph = jnp.asarray(_pinv(kind, x0.shape[-3], h), x0.dtype)
    pw = jnp.asarray(_pinv(kind, x0.shape[-2], w), x0.dtype)
    return x0 + jnp.einsum("Hh,...hwc,Ww->...HWc", ph, residual, pw)
