"""Caches frozen-T5 caption embeddings on disk (ragged float16 tokens) for training without T5.

Only the unmasked tokens of each caption are stored, concatenated into one [N_tokens, D] float16
array with offsets [N + 1] (caption i owns rows offsets[i]:offsets[i+1]); the mask of a caption
is always a prefix of its row, so padding is rebuilt on lookup. One safetensors file holds it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from t2v_jax.text.tokenizer import check_prompts

_FORMAT = "t2v_jax.embedding_cache"
_FP16_MAX = float(np.finfo(np.float16).max)


@dataclasses.dataclass(frozen=True)
class EmbeddingCache:
    """Ragged caption embeddings: rows of `embeddings` [N_tokens, D] float16 split by `offsets`.

    Attributes:
      embeddings: float16 [N_tokens, D], the unmasked tokens of every caption, in order.
      offsets: int64 [N + 1], caption i is embeddings[offsets[i]:offsets[i + 1]].
      truncated: bool [N], whether caption i was cut to max_length.
      max_length: L that lookups pad to (the encoder's max_length).
    """

    embeddings: np.ndarray
    offsets: np.ndarray
    truncated: np.ndarray
    max_length: int

    def __post_init__(self):
        if self.embeddings.ndim != 2:
            raise ValueError(f"embeddings must be [N_tokens, D], got {self.embeddings.shape}")
        lengths = np.diff(self.offsets)
        if (
            self.offsets.ndim != 1
            or self.offsets[0] != 0
            or self.offsets[-1] != len(self.embeddings)
            or (lengths < 0).any()
            or (lengths > self.max_length).any()
        ):
            raise ValueError(
                "offsets must rise from 0 to len(embeddings) in steps of at most max_length"
            )
        if self.truncated.shape != lengths.shape:
            raise ValueError(f"truncated must be [{len(lengths)}], got {self.truncated.shape}")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def d_model(self) -> int:
        """Embedding width D."""
        return self.embeddings.shape[1]

    def lookup(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Captions `indices` -> (float32 [B, max_length, D] zero-padded, bool mask [B, max_length])."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1 or ((indices < 0) | (indices >= len(self))).any():
            raise ValueError(f"indices must be a 1-D array of ints in [0, {len(self)})")
        emb = np.zeros((len(indices), self.max_length, self.d_model), np.float32)
        mask = np.zeros((len(indices), self.max_length), bool)
        for row, i in enumerate(indices):
            start, end = self.offsets[i], self.offsets[i + 1]
            emb[row, : end - start] = self.embeddings[start:end]
            mask[row, : end - start] = True
        return emb, mask

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingCache:
        """Reads a file written by `save_embedding_cache`."""
        with safe_open(os.fspath(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path}: not an embedding cache (format {meta.get('format')!r})")
        return cls(
            embeddings=tensors["embeddings"],
            offsets=tensors["offsets"],
            truncated=tensors["truncated"].astype(bool),
            max_length=int(meta["max_length"]),
        )


def encode_captions(encoder, captions: Sequence[str], batch_size: int = 32) -> EmbeddingCache:
    """Encodes every caption once with `encoder` (a TextEncoder) into an EmbeddingCache.

    Raises:
      ValueError: for bad captions, or an embedding too large for float16.
    """
    captions = check_prompts(captions, "captions")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    pieces, lengths, truncated = [], [], []
    for start in range(0, len(captions), batch_size):
        emb, mask, cut = encoder.encode_with_info(captions[start : start + batch_size])
        emb, mask = np.asarray(emb), np.asarray(mask)
        for row in range(len(emb)):
            n = int(mask[row].sum())
            if not mask[row, :n].all():
                raise ValueError("encoder masks must be a prefix of each row to cache them")
            pieces.append(emb[row, :n])
            lengths.append(n)
        truncated.append(cut)
    tokens = np.concatenate(pieces)
    if np.abs(tokens).max(initial=0.0) > _FP16_MAX:
        raise ValueError("caption embeddings exceed the float16 range; cannot cache as float16")
    return EmbeddingCache(
        embeddings=tokens.astype(np.float16),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        truncated=np.concatenate(truncated),
        max_length=encoder.max_length,
    )


def save_embedding_cache(path: str | os.PathLike, cache: EmbeddingCache) -> None:
    """Writes `cache` to one safetensors file at `path`."""
    save_file(
        {
            "embeddings": np.ascontiguousarray(cache.embeddings),
            "offsets": np.ascontiguousarray(cache.offsets),
            "truncated": cache.truncated.astype(np.uint8),
        },
        os.fspath(path),
        metadata={"format": _FORMAT, "version": "1", "max_length": str(cache.max_length)},
    )
