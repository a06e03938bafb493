"""The T5 encoder (T5 1.0, T5 1.1 / Flan-T5, mT5, umT5) as a Flax linen module.

The numbers match Hugging Face's PyTorch `T5EncoderModel` / `UMT5EncoderModel`: RMS norm without
mean or bias, no 1/sqrt(d_kv) scaling of attention logits, bucketed bidirectional relative
position biases (in the first layer, or in every layer for umT5), tanh-approximate GELU for the
gated feed-forward, and masked keys pushed to the dtype's minimum.

Parameter tree (all float32, each with logical axis names from `t2v_jax.axes`):

    token_embedder/embedding            [vocab, d_model]        (VOCAB, EMBED)
    layers_{i}/pre_attention_norm/scale [d_model]               (EMBED,)
    layers_{i}/attention/query|key|value [d_model, heads, d_kv] (EMBED, HEADS, KV)
    layers_{i}/attention/out            [heads, d_kv, d_model]  (HEADS, KV, EMBED)
    layers_{i}/attention/rel_bias       [buckets, heads]        (REL_POS, HEADS)  layer 0 only,
                                                                 or every layer for umT5
    layers_{i}/pre_mlp_norm/scale       [d_model]               (EMBED,)
    layers_{i}/mlp/wi (relu) or wi_0 + wi_1 (gated-gelu) [d_model, d_ff] (EMBED, MLP)
    layers_{i}/mlp/wo                   [d_ff, d_model]         (MLP, EMBED)
    final_norm/scale                    [d_model]               (EMBED,)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax import axes

_FEED_FORWARD = ("relu", "gated-gelu")
_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Shape and numerics of a T5 encoder.

    Attributes:
      vocab_size: rows of the token embedding (>= the tokenizer's vocabulary).
      d_model: width of the residual stream.
      d_kv: per-head width of queries, keys and values (heads * d_kv need not equal d_model).
      d_ff: hidden width of the feed-forward block.
      num_layers: encoder layers.
      num_heads: attention heads.
      relative_attention_num_buckets: relative-position buckets (half per direction).
      relative_attention_max_distance: distance beyond which positions share the last bucket.
      layer_norm_epsilon: epsilon of the RMS norms.
      feed_forward_proj: "relu" (T5 1.0) or "gated-gelu" (T5 1.1, Flan-T5, mT5, umT5).
      per_layer_relative_bias: umT5 has its own relative bias table in every layer.
      dtype: compute dtype of the matmuls ("float32" or "bfloat16"); params stay float32, and
        norms, softmax and the residual stream run in float32 either way.
    """

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: Literal["relu", "gated-gelu"] = "gated-gelu"
    per_layer_relative_bias: bool = False
    dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"T5Config.{name} must be a positive int, got {value!r}")
        buckets = self.relative_attention_num_buckets
        if not isinstance(buckets, int) or buckets < 4 or buckets % 2:
            raise ValueError(
                f"T5Config.relative_attention_num_buckets must be an even int >= 4, got {buckets!r}"
            )
        # The log-spaced buckets start at buckets // 4 (half per direction, half of that exact).
        if self.relative_attention_max_distance <= buckets // 4:
            raise ValueError(
                "T5Config.relative_attention_max_distance must exceed "
                f"relative_attention_num_buckets // 4 = {buckets // 4}, "
                f"got {self.relative_attention_max_distance!r}"
            )
        if not self.layer_norm_epsilon > 0:
            raise ValueError(
                f"T5Config.layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}"
            )
        if self.feed_forward_proj not in _FEED_FORWARD:
            raise ValueError(
                f"T5Config.feed_forward_proj must be one of {_FEED_FORWARD}, "
                f"got {self.feed_forward_proj!r}"
            )
        if self.dtype not in _DTYPES:
            raise ValueError(f"T5Config.dtype must be one of {_DTYPES}, got {self.dtype!r}")

    @classmethod
    def from_hf_dict(cls, config_json: Mapping[str, Any], dtype: str = "float32") -> T5Config:
        """Builds a config from a Hugging Face `config.json` of a t5, mt5 or umt5 model.

        Raises:
          ValueError: for another model type, a feed-forward variant other than relu /
            gated-gelu, or missing fields (each error names the field).
        """
        model_type = config_json.get("model_type", "t5")
        if model_type not in ("t5", "mt5", "umt5"):
            raise ValueError(
                f"config.json: model_type must be 't5', 'mt5' or 'umt5', got {model_type!r}"
            )
        # HF's defaults differ per model type when the field is absent.
        default_ff = "relu" if model_type == "t5" else "gated-gelu"
        feed_forward = config_json.get("feed_forward_proj", default_ff)
        if feed_forward not in _FEED_FORWARD:
            raise ValueError(
                f"config.json: feed_forward_proj must be one of {_FEED_FORWARD}, got "
                f"{feed_forward!r}"
            )
        missing = [
            k
            for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
            if k not in config_json
        ]
        if missing:
            raise ValueError(f"config.json: missing field(s) {', '.join(missing)}")
        return cls(
            vocab_size=config_json["vocab_size"],
            d_model=config_json["d_model"],
            d_kv=config_json["d_kv"],
            d_ff=config_json["d_ff"],
            num_layers=config_json["num_layers"],
            num_heads=config_json["num_heads"],
            relative_attention_num_buckets=config_json.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=config_json.get("relative_attention_max_distance", 128),
            layer_norm_epsilon=float(config_json.get("layer_norm_epsilon", 1e-6)),
            feed_forward_proj=feed_forward,
            per_layer_relative_bias=model_type == "umt5",
            dtype=dtype,
        )

    def has_relative_bias(self, layer: int) -> bool:
        """Whether layer `layer` owns a relative-position bias table."""
        return self.per_layer_relative_bias or layer == 0


@functools.lru_cache(maxsize=16)
def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 bucket of every (query, key) pair, as int32 [length, length].

    Computed on the host at trace time (the length is static), in float32 like the reference:
    offsets below num_buckets // 4 get their own bucket, larger ones share log-spaced buckets up
    to max_distance, and keys after the query use the upper half of the buckets.
    """
    position = np.arange(length, dtype=np.int64)
    relative = position[None, :] - position[:, None]  # key - query, [Lq, Lk]
    half = num_buckets // 2
    buckets = (relative > 0).astype(np.int64) * half
    distance = np.abs(relative)
    max_exact = half // 2
    # max(distance, 1) keeps log() finite where the exact branch is taken anyway.
    ratio = np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact)
    log_ratio = np.log(ratio) / np.float32(math.log(max_distance / max_exact))
    large = max_exact + (log_ratio * np.float32(half - max_exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    buckets += np.where(distance < max_exact, distance, large)
    return buckets.astype(np.int32)


def _param(module: nn.Module, name: str, names: tuple[str, ...], shape, std: float) -> jax.Array:
    init = nn.initializers.normal(std) if std > 0 else nn.initializers.ones
    return module.param(name, nn.with_logical_partitioning(init, names), shape, jnp.float32)


def _rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    x = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return scale * (x * jax.lax.rsqrt(variance + eps))


class TokenEmbedder(nn.Module):
    """Token embedding table (shared with the decoder in HF checkpoints; not scaled)."""

    vocab_size: int
    d_model: int

    @nn.compact
    def __call__(self, token_ids: jax.Array) -> jax.Array:
        """token_ids int32 [B, L] -> float32 [B, L, D]."""
        embedding = _param(
            self, "embedding", (axes.VOCAB, axes.EMBED), (self.vocab_size, self.d_model), 1.0
        )
        return jnp.take(embedding, token_ids, axis=0)


class RMSNorm(nn.Module):
    """T5's layer norm: scale by the root mean square, no mean subtraction, no bias."""

    d_model: int
    eps: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _param(self, "scale", (axes.EMBED,), (self.d_model,), 0.0)
        return _rms_norm(x, scale, self.eps)


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with T5's unscaled logits."""

    config: T5Config
    has_relative_bias: bool

    @nn.compact
    def __call__(
        self, x: jax.Array, key_bias: jax.Array, position_bias: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        """x [B, L, D] (compute dtype); key_bias [B, 1, 1, L] float32 (0 or the dtype min);
        position_bias [1, H, L, L] float32 from an earlier layer, or None for layer 0.
        Returns ([B, L, D] float32, the position bias this layer used)."""
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        d, h, k = cfg.d_model, cfg.num_heads, cfg.d_kv
        # Mesh-TensorFlow's init (also HF's): query gets the 1/sqrt(d_kv) that the logits lack.
        w_q = _param(self, "query", (axes.EMBED, axes.HEADS, axes.KV), (d, h, k), (d * k) ** -0.5)
        w_k = _param(self, "key", (axes.EMBED, axes.HEADS, axes.KV), (d, h, k), d**-0.5)
        w_v = _param(self, "value", (axes.EMBED, axes.HEADS, axes.KV), (d, h, k), d**-0.5)
        w_o = _param(self, "out", (axes.HEADS, axes.KV, axes.EMBED), (h, k, d), (h * k) ** -0.5)
        length = x.shape[1]
        if self.has_relative_bias:
            table = _param(
                self,
                "rel_bias",
                (axes.REL_POS, axes.HEADS),
                (cfg.relative_attention_num_buckets, h),
                d**-0.5,
            )
            buckets = relative_position_buckets(
                length, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
            )
            position_bias = jnp.take(table, jnp.asarray(buckets), axis=0)  # [L, L, H]
            position_bias = jnp.transpose(position_bias, (2, 0, 1))[None]  # [1, H, L, L]
        elif position_bias is None:
            raise ValueError("SelfAttention without its own bias needs the first layer's bias")
        q = jnp.einsum("bld,dhk->blhk", x, w_q.astype(dtype))  # [B, L, H, K]
        key = jnp.einsum("bld,dhk->blhk", x, w_k.astype(dtype))
        value = jnp.einsum("bld,dhk->blhk", x, w_v.astype(dtype))
        logits = jnp.einsum("bqhk,bshk->bhqs", q, key)  # [B, H, Lq, Lk]; no 1/sqrt(d_kv)
        # Softmax in float32: a bf16 logit grid loses the small relative-bias differences.
        logits = logits.astype(jnp.float32) + position_bias + key_bias
        weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
        attended = jnp.einsum("bhqs,bshk->bqhk", weights, value)  # [B, L, H, K]
        out = jnp.einsum("blhk,hkd->bld", attended, w_o.astype(dtype))  # [B, L, D]
        return out.astype(jnp.float32), position_bias


class FeedForward(nn.Module):
    """T5's MLP: relu (T5 1.0) or tanh-GELU-gated (T5 1.1 and later), no biases."""

    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, L, D] (compute dtype) -> [B, L, D] float32."""
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        d, f = cfg.d_model, cfg.d_ff
        if cfg.feed_forward_proj == "gated-gelu":
            wi_0 = _param(self, "wi_0", (axes.EMBED, axes.MLP), (d, f), d**-0.5)
            wi_1 = _param(self, "wi_1", (axes.EMBED, axes.MLP), (d, f), d**-0.5)
            gate = jax.nn.gelu(x @ wi_0.astype(dtype), approximate=True)  # HF "gelu_new"
            hidden = gate * (x @ wi_1.astype(dtype))  # [B, L, F]
        else:
            wi = _param(self, "wi", (axes.EMBED, axes.MLP), (d, f), d**-0.5)
            hidden = jax.nn.relu(x @ wi.astype(dtype))
        wo = _param(self, "wo", (axes.MLP, axes.EMBED), (f, d), f**-0.5)
        return (hidden @ wo.astype(dtype)).astype(jnp.float32)


class EncoderLayer(nn.Module):
    """Pre-norm self-attention and feed-forward, each added to the float32 residual stream."""

    config: T5Config
    has_relative_bias: bool

    @nn.compact
    def __call__(
        self, x: jax.Array, key_bias: jax.Array, position_bias: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        """x [B, L, D] float32 -> ([B, L, D] float32, position bias [1, H, L, L])."""
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        normed = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, name="pre_attention_norm")(x)
        attended, position_bias = SelfAttention(cfg, self.has_relative_bias, name="attention")(
            normed.astype(dtype), key_bias, position_bias
        )
        x = x + attended
        normed = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, name="pre_mlp_norm")(x)
        x = x + FeedForward(cfg, name="mlp")(normed.astype(dtype))
        return x, position_bias


class T5Encoder(nn.Module):
    """The T5 encoder stack: token ids and mask -> contextual embeddings.

    A pure function of (params, token ids, mask). Padded positions still get outputs (they
    attend to the unmasked tokens) but nothing attends to them; a fully masked row gives a
    finite, meaningless output (uniform attention), never NaN.
    """

    config: T5Config

    @nn.compact
    def __call__(self, token_ids: jax.Array, mask: jax.Array) -> jax.Array:
        """token_ids int32 [B, L], mask bool [B, L] -> embeddings [B, L, D] in the compute dtype."""
        cfg = self.config
        if token_ids.ndim != 2 or mask.shape != token_ids.shape:
            raise ValueError(
                f"token_ids and mask must both be [batch, length]; got {token_ids.shape} and "
                f"{mask.shape}"
            )
        x = TokenEmbedder(cfg.vocab_size, cfg.d_model, name="token_embedder")(token_ids)
        # HF adds finfo(dtype).min; adding it to a finite logit stays finite, and a fully masked
        # row becomes a uniform softmax rather than 0/0.
        key_bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]
        position_bias = None
        for i in range(cfg.num_layers):
            x, position_bias = EncoderLayer(cfg, cfg.has_relative_bias(i), name=f"layers_{i}")(
                x, key_bias, position_bias
            )
        x = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, name="final_norm")(x)
        return x.astype(jnp.dtype(cfg.dtype))  # [B, L, D]
