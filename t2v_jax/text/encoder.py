"""TextEncoder: prompts -> (embeddings [B, L, D], mask [B, L]) with a jitted, fixed-shape T5."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax import paths
from t2v_jax.text import convert
from t2v_jax.text.t5 import T5Config, T5Encoder
from t2v_jax.text.tokenizer import Tokenizer, check_prompts, load_tokenizer


def _batch_bucket(n: int, batch_size: int) -> int:
    """Smallest power of two >= n, capped at batch_size (bounds the number of compiles)."""
    return min(batch_size, 1 << max(0, (n - 1).bit_length()))


class TextEncoder:
    """A frozen T5 encoder with its tokenizer.

    Prompts are tokenized to exactly `max_length` tokens and encoded in chunks of at most
    `batch_size`, each padded to a power of two, so at most log2(batch_size) + 1 shapes are ever
    compiled. Outputs are float32 whatever the compute dtype.

    Args:
      config: the encoder architecture (its `dtype` is the compute dtype).
      params: the `T5Encoder` parameter tree (plain arrays; numpy is moved to the device once).
      tokenizer: a `ByteTokenizer` or `HFT5Tokenizer` (anything with the Tokenizer interface).
      max_length: tokens per prompt (T5 was trained with 512; Imagen used 128).
      batch_size: largest batch one compiled call takes.
    """

    def __init__(
        self,
        config: T5Config,
        params: Any,
        tokenizer: Tokenizer,
        max_length: int = 128,
        batch_size: int = 32,
    ):
        for name, value in (("max_length", max_length), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} ids but the encoder's vocab_size is "
                f"{config.vocab_size}"
            )
        self.config = config
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.module = T5Encoder(config)
        self.params = jax.tree.map(jnp.asarray, params)
        self._encode_tokens = jax.jit(self._forward)

    def _forward(self, params: Any, token_ids: jax.Array, mask: jax.Array) -> jax.Array:
        out = self.module.apply({"params": params}, token_ids, mask)
        return out.astype(jnp.float32)  # [B, L, D]

    @classmethod
    def init_random(
        cls,
        config: T5Config,
        tokenizer: Tokenizer,
        rng: jax.Array,
        max_length: int = 128,
        batch_size: int = 32,
    ) -> TextEncoder:
        """A randomly initialised encoder (for tests and for text towers trained here)."""
        tokens = jnp.zeros((1, 1), jnp.int32)
        variables = jax.jit(T5Encoder(config).init)(rng, tokens, jnp.ones((1, 1), bool))
        params = jax.tree.map(
            lambda x: x.value if hasattr(x, "value") else x,
            variables["params"],
            is_leaf=lambda x: hasattr(x, "names"),
        )
        return cls(config, params, tokenizer, max_length, batch_size)

    @property
    def d_model(self) -> int:
        """Width D of the embeddings."""
        return self.config.d_model

    def encode_tokens(self, token_ids: jax.Array, mask: jax.Array) -> jax.Array:
        """The jitted encoder on already tokenized input: int32 [B, L], bool [B, L] -> [B, L, D]."""
        return self._encode_tokens(self.params, token_ids, mask)

    def encode_with_info(self, prompts: Sequence[str]) -> tuple[jax.Array, jax.Array, np.ndarray]:
        """prompts -> (embeddings float32 [B, L, D], mask bool [B, L], truncated bool [B]).

        Warns (UserWarning) when prompts were longer than max_length and got cut.
        """
        return self._encode(prompts, stacklevel=3)

    def _encode(
        self, prompts: Sequence[str], stacklevel: int
    ) -> tuple[jax.Array, jax.Array, np.ndarray]:
        prompts = check_prompts(prompts)
        ids, mask, truncated = self.tokenizer.tokenize(prompts, self.max_length)
        if truncated.any():
            warnings.warn(
                f"{int(truncated.sum())} of {len(prompts)} prompt(s) exceeded max_length="
                f"{self.max_length} tokens and were truncated",
                stacklevel=stacklevel,
            )
        chunks = []
        for start in range(0, len(prompts), self.batch_size):
            chunk_ids = ids[start : start + self.batch_size]
            n = len(chunk_ids)
            pad = _batch_bucket(n, self.batch_size) - n
            chunk_mask = mask[start : start + self.batch_size]
            if pad:
                chunk_ids = np.concatenate([chunk_ids, np.zeros((pad, self.max_length), np.int32)])
                chunk_mask = np.concatenate([chunk_mask, np.zeros((pad, self.max_length), bool)])
            chunks.append(self.encode_tokens(chunk_ids, chunk_mask)[:n])
        emb = chunks[0] if len(chunks) == 1 else jnp.concatenate(chunks)
        return emb, jnp.asarray(mask), truncated

    def encode(self, prompts: Sequence[str]) -> tuple[jax.Array, jax.Array]:
        """prompts -> (embeddings float32 [B, L, D], mask bool [B, L]); warns on truncation."""
        emb, mask, _ = self._encode(prompts, stacklevel=3)
        return emb, mask

    def null_embedding(self) -> tuple[jax.Array, jax.Array]:
        """The encoding of the empty prompt "": ([1, L, D], [1, L]), e.g. for CFG's null text."""
        return self.encode([""])

    def save(self, path: str | os.PathLike) -> None:
        """Writes the t2v_jax checkpoint format (params, config, tokenizer) that load_t5 reads."""
        path = os.fspath(path)
        params = jax.tree.map(np.asarray, self.params)
        convert.save_flax_checkpoint(path, self.config, params)
        self.tokenizer.save(path)


def load_t5(
    path: str | os.PathLike, dtype: str = "float32", max_length: int = 128, batch_size: int = 32
) -> TextEncoder:
    """Loads a T5 encoder and its tokenizer from a folder (safetensors only).

    `path` is either a Hugging Face folder (config.json, model.safetensors or sharded
    model-*-of-*.safetensors + index, tokenizer files) or a folder written by
    `t2v-convert-t5` / `TextEncoder.save`. Pickle-only folders are refused unopened.

    Args:
      path: the folder; a URL (gs://...) is copied to a local cache first
        (`t2v_jax.paths.stage_local`).
      dtype: compute dtype, "float32" or "bfloat16" (params are float32 either way).
      max_length: tokens per prompt; every encode returns exactly this many.
      batch_size: largest batch one compiled call takes.

    Raises:
      FileNotFoundError: missing folder, config or weights.
      t2v_jax.text.convert.CheckpointError (a ValueError): pickle-only weights, or keys,
        shapes or dtypes that do not match the config (all listed, nothing loaded).
    """
    path = paths.stage_local(path)
    config, params = convert.read_checkpoint(path, dtype=dtype)
    tokenizer = load_tokenizer(path)
    return TextEncoder(config, params, tokenizer, max_length=max_length, batch_size=batch_size)
