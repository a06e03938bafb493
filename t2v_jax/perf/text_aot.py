"""The sampling pipeline's text-encoder program (T5), lowered from shapes for an ahead-of-time compile.

`Pipeline.sample` encodes the prompts with the `TextEncoder`'s jitted forward before any stage
runs, and the encoder's params stay on the device while the stages sample. For the paper's
T5-XXL (4.76B params, 17.7 GiB in fp32) that is a program of its own and a resident share of
every chip's memory, so the pre-flight compiles it beside the stages' samplers.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2v_jax import pipeline_sharding, sharding
from t2v_jax.text.t5 import T5Config, T5Encoder

# T5 v1.1 XXL's encoder (google/t5-v1_1-xxl config.json), the text tower of Imagen and Imagen
# Video; params float32 as `load_t5` keeps them, compute float32 (`load_t5`'s default dtype).
T5_XXL = T5Config(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    feed_forward_proj="gated-gelu",
)  # fmt: skip

TEXT_ENCODERS = {"t5-xxl": T5_XXL}


def abstract_t5_params(config: T5Config) -> Any:
    """The encoder's (unboxed) params as ShapeDtypeStructs: nothing is allocated."""
    tokens, mask = jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool)
    boxed = jax.eval_shape(T5Encoder(config).init, jax.random.key(0), tokens, mask)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nn.unbox(boxed["params"]))


def lower_text_encoder(
    config: T5Config, mesh: jax.sharding.Mesh, batch: int, length: int, sharded: bool
) -> Any:
    """The encoder's forward as `TextEncoder` runs it, lowered for `mesh` from shapes.

    `TextEncoder._forward`: `apply` on (token ids int32 [B, L], mask bool [B, L]), the output
    cast to float32 [B, L, D]. Params are replicated, or split as `Pipeline` splits them
    (`pipeline_sharding.t5_param_shardings`); the batch over the batch axes.
    """
    module = T5Encoder(config)

    def forward(params, token_ids, mask):
        return module.apply({"params": params}, token_ids, mask).astype(jnp.float32)

    params = (
        pipeline_sharding.t5_param_shardings(config, mesh) if sharded else sharding.replicated(mesh)
    )
    batch_sharded = sharding.batch_sharding(mesh, 2)
    fn = jax.jit(forward, in_shardings=(params, batch_sharded, batch_sharded))
    sds = jax.ShapeDtypeStruct
    ids, mask = sds((batch, length), jnp.int32), sds((batch, length), jnp.bool_)
    return fn.lower(abstract_t5_params(config), ids, mask)


def resident_param_bytes(config: T5Config, mesh: jax.sharding.Mesh, sharded: bool) -> int:
    """Bytes of the encoder's params one device keeps while the stages sample."""
    abstract = abstract_t5_params(config)
    if not sharded:
        return pipeline_sharding.tree_bytes(abstract)
    shardings = pipeline_sharding.t5_param_shardings(config, mesh)
    leaves = zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings), strict=True)
    return sum(
        pipeline_sharding.tree_bytes(jax.ShapeDtypeStruct(sh.shard_shape(x.shape), x.dtype))
        for x, sh in leaves
    )
