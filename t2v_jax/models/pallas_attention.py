"""Pallas splash attention (the TPU flash-attention kernel) behind the U-Net's attention blocks.

The kernel takes one example's q [H, S, D], k/v [H, S', D] and an optional pair of segment-id
vectors; it is vmapped over the batch here and, given a mesh, run under `shard_map` with the
batch over (`data`, `fsdp`) and heads over `tensor` (a Pallas call is opaque to the SPMD
partitioner, which would otherwise gather its operands onto every chip); with a video's frames
split over `fsdp`, each chip's frames or its frames' queries (`_specs`). Lengths are padded
up to the kernel's 128-lane blocks: padded keys get a segment id no query has; padded queries
copy the last real query's id (so no row is empty) and are sliced off. Off TPU the same kernel
runs in Pallas interpret mode, which is how its numerics are tested on CPU.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

BLOCK = 128  # the kernel's kv compute block must be a multiple of the 128 TPU lanes
_PAD_SEGMENT = -1  # padded keys: a segment id no query carries


def supported(
    q: jax.Array, k: jax.Array, *, bias: jax.Array | None, mask: jax.Array | None
) -> bool:
    """Whether `splash` applies: no additive bias, no boolean mask, sequences worth a block.

    Queries shorter than a block (temporal attention over 8-16 frames, 8x8 spatial maps) would
    be mostly padding; XLA's fused attention is the better program for them.
    """
    return bias is None and mask is None and q.shape[1] >= BLOCK and k.shape[1] >= 1


def _pad_to_block(x: jax.Array, axis: int, mode: str = "constant", value: int = 0) -> jax.Array:
    pad = -x.shape[axis] % BLOCK
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    if mode == "edge":
        return jnp.pad(x, widths, mode="edge")
    return jnp.pad(x, widths, constant_values=value)


def _block(length: int) -> int:
    return next(b for b in (512, 256, BLOCK) if length % b == 0)


def _kernel(heads: int, q_len: int, kv_len: int, interpret: bool):
    # Imported here: the Pallas TPU ops cost ~0.3 s to import, and most processes never use them.
    from jax.experimental.pallas.ops.tpu import splash_attention as splash_lib

    bq, bkv = _block(q_len), _block(kv_len)
    sizes = splash_lib.BlockSizes(
        block_q=bq, block_kv=bkv, block_kv_compute=bkv,
        block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
        block_q_dq=bq, block_kv_dq=bkv,
    )  # fmt: skip
    mask = splash_lib.MultiHeadMask([splash_lib.FullMask((q_len, kv_len))] * heads)
    return splash_lib.make_splash_mha(
        mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )


def _local(q, k, v, q_seg, kv_seg, *, interpret: bool):
    """One shard: q [n, S, h, D], k/v [n, S', h, D], segments [n, S] / [n, S'] -> [n, S, h, D]."""
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

    kernel = _kernel(q.shape[2], q.shape[1], k.shape[1], interpret)
    heads_first = lambda x: x.transpose(0, 2, 1, 3)  # [n, h, S, D]

    def one(qi, ki, vi, qs, ks):
        return kernel(qi, ki, vi, segment_ids=SegmentIds(q=qs, kv=ks))

    out = jax.vmap(one)(heads_first(q), heads_first(k), heads_first(v), q_seg, kv_seg)
    return heads_first(out)


def splash(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segments: tuple[jax.Array, jax.Array] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    interpret: bool = False,
    frames_split: bool = False,
) -> jax.Array:
    """Softmax(q k^T / sqrt(D)) v with the splash kernel. q [N, S, H, D], k/v [N, S', H, D].

    segments: (q_seg [N, S], kv_seg [N, S'] non-negative ints); a query attends to the keys of
    its own segment only. None: every query sees every key. frames_split: the activations'
    frames are split over `fsdp` (`Pipeline(video_sharding="frames")`; see `_specs`).
    """
    n, s, h, d = q.shape
    s_kv = k.shape[1]
    if segments is None:
        segments = (jnp.zeros((n, s), jnp.int32), jnp.zeros((n, s_kv), jnp.int32))
    q_seg, kv_seg = (x.astype(jnp.int32) for x in segments)
    # The kernel does not scale the logits; XLA's attention scales by 1/sqrt(D).
    q = _pad_to_block(q * jnp.asarray(1.0 / math.sqrt(d), q.dtype), 1)
    k, v = _pad_to_block(k, 1), _pad_to_block(v, 1)
    q_seg = _pad_to_block(q_seg, 1, mode="edge")
    kv_seg = _pad_to_block(kv_seg, 1, value=_PAD_SEGMENT)
    local = functools.partial(_local, interpret=interpret)
    if mesh is not None and mesh.size > 1:
        qs, kvs, q_segs, kv_segs = _specs(mesh, n, q.shape[1], h, frames_split)
        local = jax.shard_map(
            local, mesh=mesh, in_specs=(qs, kvs, kvs, q_segs, kv_segs), out_specs=qs,
            check_vma=False,
        )  # fmt: skip
    return local(q, k, v, q_seg, kv_seg)[:, :s]


def _specs(mesh: jax.sharding.Mesh, n: int, s: int, h: int, frames_split: bool) -> tuple:
    """shard_map specs (q / out, k / v, q segments, kv segments) for q [N, S (padded), H, D].

    The batch N goes over (`data`, `fsdp`), heads over `tensor`. With frames split over `fsdp`,
    per-frame (spatial) attention has N = frames x batch folded frames-major
    (`layers.merge_frames`), so N goes over (`fsdp`, `data`) in that order; joint space-time and
    cross attention have N = the batch and a frames-major sequence, so their queries' sequence
    goes over `fsdp` (each chip its own frames' queries, against every key). An axis that does
    not divide its dimension (or leaves a query shard shorter than a block) is not used.
    """
    size = lambda axes: math.prod(mesh.shape[a] for a in axes)
    heads = "tensor" if h % mesh.shape["tensor"] == 0 else None
    batch, seq = ("data", "fsdp"), None
    if frames_split:
        batch = ("fsdp", "data")
        if n % size(batch):
            batch = ("data",)
            seq = "fsdp" if s % (mesh.shape["fsdp"] * BLOCK) == 0 else None
    batch = batch if n % size(batch) == 0 else None
    return P(batch, seq, heads, None), P(batch, None, heads, None), P(batch, seq), P(batch, None)
