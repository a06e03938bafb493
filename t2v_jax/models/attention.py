"""Attention blocks of the video U-Net: spatial self-, temporal self- and text cross-attention.

A fourth, joint space-time self-attention, lets every pixel of every frame attend to all the
others (for coarse levels, where a moving object's displacement must be related across frames).
All are pre-norm residual blocks around one dispatch function, `attention`, so one switch picks
the kernel: XLA everywhere, cuDNN flash attention on GPU, Pallas splash attention on TPU for the
spatial, space-time and cross blocks (temporal attention, with its relative-position bias over
a few frames, stays on XLA). Spatial attention mixes the
pixels of one frame, temporal attention the frames at one pixel (with a learned relative-position
bias over frame offsets and the frame mask), cross-attention lets every pixel read the text.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from t2v_jax import axes
from t2v_jax.models import pallas_attention, platform
from t2v_jax.models.layers import (
    GroupNorm,
    LayerNorm,
    default_init,
    frames_split,
    merge_frames,
    param,
    sinusoidal_embedding,
    unmerge_frames,
)
from t2v_jax.models.remat import MATMUL_OUTPUT

Dtype = Any


ATTENTION_IMPLS = ("xla", "cudnn", "pallas", "auto")


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    segments: tuple[jax.Array, jax.Array] | None = None,
    impl: str = "xla",
) -> jax.Array:
    """Multi-head attention. q [N, S, H, D], k/v [N, S', H, D] -> [N, S, H, D].

    bias / mask broadcast to [N, H, S, S']; a mask entry False removes that key. `segments`
    (q_seg [N, S], kv_seg [N, S'] ints) is the other way to mask: a query sees exactly the keys
    of its own segment id; it is the only mask the Pallas kernel takes.

    `impl`: "xla"; "cudnn" (GPU); "pallas" (TPU splash attention, in interpret mode off TPU;
    needs no bias or mask and S, S' multiples of 128 after padding; raises otherwise); "auto":
    the platform being compiled for decides (`platform.target_platform()`, not the host's
    backend): Pallas on TPU where it applies and the mesh is known (one chip, or a
    `compile_target` mesh), cuDNN on GPU for bf16/fp16 without bias or mask, XLA otherwise.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl: {impl!r} is not one of {', '.join(ATTENTION_IMPLS)}")
    target = platform.target_platform()
    if impl == "auto":
        # On several chips the kernel must run under shard_map, which needs the mesh; without
        # one (a caller that did not enter `compile_target(..., mesh)`) XLA is the safe choice.
        mesh_known = platform.target_mesh() is not None or jax.device_count() == 1
        if (
            target == "tpu"
            and mesh_known
            and pallas_attention.supported(q, k, bias=bias, mask=mask)
        ):
            impl = "pallas"
        elif (
            target == "gpu"
            and q.dtype in (jnp.bfloat16, jnp.float16)
            and bias is None
            and mask is None
            and segments is None
        ):
            impl = "cudnn"
        else:
            impl = "xla"
    if impl == "pallas":
        if not pallas_attention.supported(q, k, bias=bias, mask=mask):
            raise ValueError(
                "attention_impl='pallas': needs no bias or boolean mask and query/key lengths "
                f"that are multiples of {pallas_attention.BLOCK} (keys may be padded), got "
                f"q {q.shape}, k {k.shape}, bias={bias is not None}, mask={mask is not None}"
            )
        return pallas_attention.splash(
            q, k, v, segments=segments, mesh=platform.target_mesh(), interpret=target != "tpu",
            frames_split=frames_split(),
        )  # fmt: skip
    if segments is not None:
        q_seg, kv_seg = segments
        seg_mask = (q_seg[:, :, None] == kv_seg[:, None, :])[:, None]  # [N, 1, S, S']
        mask = seg_mask if mask is None else mask & seg_mask
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
        return checkpoint_name(y + bias.astype(self.dtype), MATMUL_OUTPUT)  # remat="save_dots"


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
        return checkpoint_name(y + bias.astype(self.dtype), MATMUL_OUTPUT)  # remat="save_dots"


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
        y = merge_frames(y.reshape(b, t, h * w, c))  # [B*T, HW, C]: frames are independent
        q, k, v = (
            _Projection(self.heads, d, self.dtype, name=n)(y) for n in ("query", "key", "value")
        )
        o = attention(q, k, v, impl=self.impl)  # [B*T, HW, heads, d]
        o = _OutProjection(c, self.dtype, name="out")(o)
        return x.astype(self.dtype) + unmerge_frames(o, b, t).reshape(b, t, h, w, c)


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
        # Key segment 1 for the null token and real tokens, 0 for padding; every query is in
        # segment 1 (a segment pair is the mask form every attention kernel takes).
        kv_seg = jnp.concatenate([jnp.ones((b, 1), bool), text_mask.astype(bool)], axis=1)
        q_seg = jnp.ones((b, t * h * w), jnp.int32)
        o = attention(q, k, v, segments=(q_seg, kv_seg.astype(jnp.int32)), impl=self.impl)
        # o: [B, THW, heads, d]
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
        segments = None
        if frame_mask is not None:
            # Segment 0: the video frames of an example; an image frame f is its own segment
            # f + 1. Equal ids <=> both frames are video frames, or it is the same frame.
            frame_of = jnp.repeat(jnp.arange(t), h * w)  # [THW]
            fm = frame_mask.astype(bool)[:, frame_of]  # [B, THW]
            seg = jnp.where(fm, 0, frame_of[None] + 1).astype(jnp.int32)
            segments = (seg, seg)
        o = attention(q, k, v, segments=segments, impl=self.impl)  # [B, THW, heads, d]
        o = _OutProjection(c, self.dtype, zero_init=True, name="out")(o)
        return x.astype(self.dtype) + o.reshape(b, t, h, w, c)
