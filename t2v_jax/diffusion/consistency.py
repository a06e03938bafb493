"""Data consistency for spatial super-resolution: keep each step's x0 estimate true to the input.

A spatial SR stage is given y = D x, the low-resolution input made from the truth x by a known
linear degradation D (here Pillow's antialiased bicubic shrink, the one `t2v-upsample`,
`tools/eval_sr.py` and the `low_res_filter = "bicubic"` training data use). The model only sees
y through its conditioning, so a sample may drift from it: too dark, shifted colours, blurred
edges in the wrong place. Projecting every step's x0 estimate onto {x : D x = y},

    x0 <- x0 + D^+ (y - D x0),       D^+ = D^T (D D^T)^-1,

replaces the part of x0 that D sees (its low frequencies) by the input's and keeps the part D
cannot see (the detail the model adds), as in range-null-space decomposition samplers (Wang et
al. 2022, DDNM). D is separable, D = D_h (x) D_w, so D^+ = D_h^+ (x) D_w^+ and each is a small
matrix applied along one axis. The samplers take it as `project_x0` (samplers.sample_steps).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("none", "bicubic")


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
def _pinv(size: int, low_size: int) -> np.ndarray:
    d = bicubic_matrix(size, low_size)
    return d.T @ np.linalg.inv(d @ d.T)  # [size, low_size]


def degrade(x: jax.Array, low_hw: tuple[int, int]) -> jax.Array:
    """D x: [..., H, W, C] -> [..., h, w, C] by the bicubic matrices (float, no rounding)."""
    h, w = low_hw
    dh = jnp.asarray(bicubic_matrix(x.shape[-3], h), x.dtype)
    dw = jnp.asarray(bicubic_matrix(x.shape[-2], w), x.dtype)
    return jnp.einsum("hH,...HWc,wW->...hwc", dh, x, dw)


def project(x0: jax.Array, low: jax.Array) -> jax.Array:
    """x0 + D^+ (low - D x0): the point of {x : D x = low} nearest to x0.

    Args:
      x0: [..., H, W, C] the estimate (any leading axes, e.g. [B, T]).
      low: [..., h, w, C] the low-resolution input, same leading axes and data range.
    """
    h, w = low.shape[-3], low.shape[-2]
    residual = low.astype(x0.dtype) - degrade(x0, (h, w))
    ph = jnp.asarray(_pinv(x0.shape[-3], h), x0.dtype)
    pw = jnp.asarray(_pinv(x0.shape[-2], w), x0.dtype)
    return x0 + jnp.einsum("Hh,...hwc,Ww->...HWc", ph, residual, pw)
