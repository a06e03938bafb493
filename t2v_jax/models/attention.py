"""Attention blocks of the video U-Net: spatial self-, temporal self- and text cross-attention.

A fourth, joint space-time self-attention, lets every pixel of every frame attend to all the
others (for coarse levels, where a moving object's displacement must be related across frames).
All are pre-norm residual blocks around `jax.nn.dot_product_attention`, so one switch
picks the backend (XLA everywhere, cuDNN flash attention on GPU). Spatial attention mixes the
pixels of one frame, temporal attention the frames at one pixel (with a learned relative-position
bias over frame offsets and the frame mask), cross-attention lets every pixel read the text.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2v_jax import axes
from t2v_jax.models.layers import GroupNorm, LayerNorm, default_init, param, sinusoidal_embedding

Dtype = Any


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    impl: str = "xla",
) -> jax.Array:
    """Multi-head attention. q [N, S, H, D], k/v [N, S', H, D] -> [N, S, H, D].

    bias / mask broadcast to [N, H, S, S']; a mask entry False removes that key. `impl` is
    "xla", "cudnn", or "auto" (cuDNN on GPU for bf16/fp16 without bias or mask, else XLA).
    """
    if impl == "auto":
        cudnn_ok = (
            jax.default_backend() == "gpu"
            and q.dtype in (jnp.bfloat16, jnp.float16)
            and bias is None
            and mask is None
        )
        impl = "cudnn" if cudnn_ok else "xla"
    if impl not in ("xla", "cudnn"):
        raise ValueError(f"attention_impl: {impl!r} is not one of 'xla', 'cudnn', 'auto'")
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation=impl)


class _Projection(nn.Module):
    """x [..., E] -> [..., H, D] (q/k/v projection with named kernel [E, H, D])."""

    heads: int
    head_dim: int
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = param(
            self,
            "kernel",
            default_init,
            (x.shape[-1], self.heads, self.head_dim),
            (axes.EMBED, axes.HEADS, axes.KV),
        )
        bias = param(
            self, "bias", nn.initializers.zeros, (self.heads, self.head_dim), (axes.HEADS, axes.KV)
        )
        y = jnp.einsum("...e,ehd->...hd", x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


class _OutProjection(nn.Module):
    """[..., H, D] -> [..., C] with kernel [H, D, C]; zero-init where a block must start as identity."""

    features: int
    dtype: Dtype
    zero_init: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        heads, head_dim = x.shape[-2:]
        init = nn.initializers.zeros if self.zero_init else default_init
        kernel = param(
            self,
            "kernel",
            init,
            (heads, head_dim, self.features),
            (axes.HEADS, axes.KV, axes.EMBED),
        )
        bias = param(self, "bias", nn.initializers.zeros, (self.features,), (axes.CHANNELS,))
        y = jnp.einsum("...hd,hdc->...c", x, kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


class SpatialSelfAttention(nn.Module):
    """Self-attention among the H*W pixels of each frame: [B, T, H, W, C] -> same."""

    heads: int
    norm_groups: int
    dtype: Dtype = jnp.float32
    impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, h, w, c = x.shape
        d = c // self.heads
        y = GroupNorm(self.norm_groups, dtype=self.dtype, name="norm")(x)
        y = y.reshape(b * t, h * w, c)  # [B*T, HW, C]: frames are independent sequences
        q, k, v = (
            _Projection(self.heads, d, self.dtype, name=n)(y) for n in ("query", "key", "value")
        )
        o = attention(q, k, v, impl=self.impl)  # [B*T, HW, heads, d]
        o = _OutProjection(c, self.dtype, name="out")(o)
        return x.astype(self.dtype) + o.reshape(b, t, h, w, c)


class CrossAttention(nn.Module):
    """Every pixel attends to the text tokens: x [B, T, H, W, C], text [B, L, D], mask [B, L].

    A learned null key/value is always attendable, so padding tokens get exactly zero weight and
    a prompt whose mask is all False (e.g. the unconditional branch) still gives a finite output.
    """

    heads: int
    dtype: Dtype = jnp.float32
    impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, text: jax.Array, text_mask: jax.Array) -> jax.Array:
        b, t, h, w, c = x.shape
        d = c // self.heads
        y = LayerNorm(self.dtype, name="norm")(x).reshape(b, t * h * w, c)  # [B, THW, C]
        ctx = LayerNorm(self.dtype, axis_name=axes.EMBED, name="text_norm")(text)  # [B, L, D]
        q = _Projection(self.heads, d, self.dtype, name="query")(y)
        k = _Projection(self.heads, d, self.dtype, name="key")(ctx)  # [B, L, heads, d]
        v = _Projection(self.heads, d, self.dtype, name="value")(ctx)
        null = param(
            self,
            "null_kv",
            nn.initializers.normal(1.0),
            (2, self.heads, d),
            (axes.NORM, axes.HEADS, axes.KV),
        )
        null = jnp.broadcast_to(null.astype(self.dtype)[:, None, None], (2, b, 1, self.heads, d))
        k = jnp.concatenate([null[0], k], axis=1)  # [B, 1+L, heads, d]
        v = jnp.concatenate([null[1], v], axis=1)
        mask = jnp.concatenate([jnp.ones((b, 1), bool), text_mask.astype(bool)], axis=1)
        o = attention(q, k, v, mask=mask[:, None, None, :], impl=self.impl)  # [B, THW, heads, d]
        o = _OutProjection(c, self.dtype, name="out")(o)
        return x.astype(self.dtype) + o.reshape(b, t, h, w, c)


class TemporalSelfAttention(nn.Module):
    """Self-attention among the frames at each pixel, with a relative-position bias.

    x [B, T, H, W, C], frame_mask [B, T] bool or None. The output projection is zero-initialised
    (a fresh block is the identity, like the temporal convs). With a frame mask, a video frame
    attends only to the video frames of its example, and an image frame gets no update at all.
    """

    heads: int
    max_distance: int
    dtype: Dtype = jnp.float32
    impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, frame_mask: jax.Array | None = None) -> jax.Array:
        b, t, h, w, c = x.shape
        d = c // self.heads
        y = LayerNorm(self.dtype, name="norm")(x)
        y = y.transpose(0, 2, 3, 1, 4).reshape(b * h * w, t, c)  # [B*H*W, T, C]
        q, k, v = (
            _Projection(self.heads, d, self.dtype, name=n)(y) for n in ("query", "key", "value")
        )
        table = param(
            self,
            "rel_pos_bias",
            nn.initializers.zeros,
            (2 * self.max_distance + 1, self.heads),
            (axes.REL_POS, axes.HEADS),
        )
        pos = jnp.arange(t)
        offset = jnp.clip(pos[None, :] - pos[:, None], -self.max_distance, self.max_distance)
        bias = table[offset + self.max_distance].transpose(2, 0, 1)[None]  # [1, heads, T, T]
        mask = None
        if frame_mask is not None:
            fm = frame_mask.astype(bool)
            # Video frames see video frames; every frame sees itself, so no row is empty.
            allowed = (fm[:, :, None] & fm[:, None, :]) | jnp.eye(t, dtype=bool)[None]  # [B, T, T]
            mask = jnp.repeat(allowed, h * w, axis=0)[:, None]  # [B*H*W, 1, T, T]
        o = attention(q, k, v, bias=bias.astype(self.dtype), mask=mask, impl=self.impl)
        o = _OutProjection(c, self.dtype, zero_init=True, name="out")(o)  # [B*H*W, T, C]
        o = o.reshape(b, h, w, t, c).transpose(0, 3, 1, 2, 4)  # [B, T, H, W, C]
        if frame_mask is not None:
            o = o * frame_mask.astype(self.dtype)[:, :, None, None, None]
        return x.astype(self.dtype) + o


class SpaceTimeSelfAttention(nn.Module):
    """Joint self-attention over all T*H*W positions of a clip: [B, T, H, W, C] -> same.

    Temporal attention only compares a pixel with itself in other frames, so it cannot follow an
    object that moves; here a position can attend to where the object is in another frame. The
    queries and keys see sinusoidal frame, row and column positions through zero-initialised
    projections, and the output projection is zero-initialised, so a new block starts as the
    identity (it can be added to a trained model). With a frame mask, video frames attend to the
    video frames of their example and an image frame only to itself.
    """

    heads: int
    dtype: Dtype = jnp.float32
    impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, frame_mask: jax.Array | None = None) -> jax.Array:
        b, t, h, w, c = x.shape
        d = c // self.heads
        y = LayerNorm(self.dtype, name="norm")(x)
        position = jnp.zeros((t, h, w, c), self.dtype)
        for name, size, axis in (("frame", t, 0), ("row", h, 1), ("column", w, 2)):
            table = sinusoidal_embedding(jnp.arange(size), c)  # [size, C]
            kernel = param(self, f"{name}_position", nn.initializers.zeros, (c, c),
                           (axes.EMBED, axes.CHANNELS))  # fmt: skip
            shape = [1, 1, 1, c]
            shape[axis] = size
            position = position + (table @ kernel).astype(self.dtype).reshape(shape)
        y = (y + position[None]).reshape(b, t * h * w, c)  # [B, THW, C]
        q, k, v = (
            _Projection(self.heads, d, self.dtype, name=n)(y) for n in ("query", "key", "value")
        )
        mask = None
        if frame_mask is not None:
            frame_of = jnp.repeat(jnp.arange(t), h * w)  # [THW]
            fm = frame_mask.astype(bool)[:, frame_of]  # [B, THW]
            same_frame = frame_of[:, None] == frame_of[None, :]
            mask = ((fm[:, :, None] & fm[:, None, :]) | same_frame[None])[:, None]  # [B,1,THW,THW]
        o = attention(q, k, v, mask=mask, impl=self.impl)  # [B, THW, heads, d]
        o = _OutProjection(c, self.dtype, zero_init=True, name="out")(o)
        return x.astype(self.dtype) + o.reshape(b, t, h, w, c)
