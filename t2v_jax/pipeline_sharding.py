"""Where a `Pipeline` keeps its parameters on the mesh: replicated, or sharded by logical axis names.

Replicated parameters (every device holds all of a stage's fp32 weights) are the fastest to
sample with, but the 5.6B-parameter paper base alone is ~21 GiB per device, more than a v5e's
16 GiB. Sharded sampling splits each parameter like FSDP training does (`sharding.DEFAULT_RULES`:
the widest feature axis over the batch devices, heads / MLP / output channels over `tensor`)
and lets the compiler gather each layer's weights where they are used (ZeRO-3 style). The
batch devices are `data` x `fsdp` here, not `fsdp` alone: a sampling mesh is usually pure data
parallelism, and sampling has no optimizer state that would make `data` replicas useful.

`param_sharding="auto"` (the `Pipeline` default) keeps replicated parameters where they fit
and shards a stage whose replicated program would not fit the device: decided from the
compiled program's memory analysis before any parameter is moved, so only on backends that
report their capacity (TPU / GPU); on CPU "auto" is "replicated".
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2v_jax import sharding
from t2v_jax.configlib import check_choice
from t2v_jax.models.config import UNetConfig
from t2v_jax.models.unet3d import VideoUNet

PARAM_SHARDING_MODES = ("auto", "replicated", "sharded")

log = logging.getLogger(__name__)


def check_mode(value: Any) -> str:
    """Validates a `param_sharding` argument ("auto", "replicated" or "sharded")."""
    return check_choice("param_sharding", value, PARAM_SHARDING_MODES)


def sampling_rules(rules: sharding.Rules = sharding.DEFAULT_RULES) -> sharding.Rules:
    """`rules` with every parameter axis that goes to `fsdp` split over `data` x `fsdp` instead."""
    from t2v_jax import axes

    def widen(name, target):
        if name != axes.BATCH and target == "fsdp":
            return name, ("data", "fsdp")
        return name, target

    return tuple(widen(name, target) for name, target in rules)


def unet_init_fn(
    model: UNetConfig, frames: int, height: int, width: int, text_dim: int
) -> Callable[[jax.Array], Any]:
    """`rng -> variables` of a stage's `VideoUNet` (boxed: leaves carry logical axis names).

    The dummy inputs are made inside the function, so under `jit` / `eval_shape` nothing of a
    paper SR stage's size (ssr3: 128 x 768 x 1280 frames) is allocated.
    """
    b = 1

    def init(rng):
        x = jnp.zeros((b, frames, height, width, model.in_channels))  # [B, T, H, W, C]
        kwargs = {"guidance_weight": jnp.ones((b,))} if model.guidance_input else {}
        if model.cond_channels:
            kwargs.update(
                cond_video=jnp.zeros((b, frames, height, width, model.cond_channels)),
                cond_log_snr=jnp.zeros((b,)),
            )
        text = jnp.zeros((b, 1, text_dim)), jnp.ones((b, 1), bool)  # [B, L, D], [B, L]
        return VideoUNet(model).init(rng, x, jnp.zeros((b,)), *text, **kwargs)

    return init


def _smallest_shards(boxed: Any, mesh: jax.sharding.Mesh) -> Any:
    """Per param, the sampling rules' sharding, or the training rules' where that splits finer.

    A width that `data` x `fsdp` does not divide would be replicated whole by the sampling rules
    (`sharding.logical_to_spec`); over `fsdp` alone it may still split.
    """
    wide = sharding.logical_shardings(boxed, mesh, sampling_rules())
    narrow = sharding.logical_shardings(boxed, mesh, sharding.DEFAULT_RULES)
    size = lambda x, sh: math.prod(sh.shard_shape(x.shape))
    pick = lambda x, a, b: a if size(x, a) <= size(x, b) else b
    return jax.tree.map(pick, nn.unbox(boxed), wide, narrow)


@functools.lru_cache(maxsize=32)
def _unet_shardings(model: UNetConfig, frames: int, height: int, width: int, mesh) -> Any:
    init = unet_init_fn(model, frames, height, width, model.text_dim)
    return _smallest_shards(jax.eval_shape(init, jax.random.key(0))["params"], mesh)


def param_shardings(model: UNetConfig, stage: Any, mesh: jax.sharding.Mesh, sharded: bool) -> Any:
    """A stage's params' shardings: replicated, or split by their logical axis names.

    `stage` is the stage's `StageConfig` (its frames / height / width size the init's shapes).
    The sharded tree is built from shapes only (`eval_shape` of the init) and cached.
    """
    if not sharded:
        return sharding.replicated(mesh)
    return _unet_shardings(model, stage.frames, stage.height, stage.width, mesh)


def t5_param_shardings(config: Any, mesh: jax.sharding.Mesh) -> Any:
    """NamedShardings of a `T5Encoder`'s (unboxed) params for sharded sampling, from shapes only."""
    from t2v_jax.text.t5 import T5Encoder

    tokens, mask = jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool)
    boxed = jax.eval_shape(T5Encoder(config).init, jax.random.key(0), tokens, mask)["params"]
    return _smallest_shards(boxed, mesh)


def tree_bytes(tree: Any) -> int:
    """Bytes of a tree of arrays (or ShapeDtypeStructs), all of it, as one replica holds it."""
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def place_text_encoder(
    encoder: Any, mesh: jax.sharding.Mesh, mode: str, capacity: int | None
) -> bool:
    """Shards a `TextEncoder`'s params over `mesh` when `mode` asks for it; True if it did.

    "auto" shards when the device reports its capacity and the replicated encoder would take
    more than half of it (its activations are small next to its weights; the stages' params
    need the rest). A T5-XXL encoder (4.76B params, 17.7 GiB in fp32) is sharded on a 16 GiB v5e,
    replicated on a 95 GiB v5p. The encoder object is updated in place (its jitted forward
    follows its params' shardings).
    """
    if mode == "replicated" or not hasattr(encoder, "config"):
        return False
    size = tree_bytes(encoder.params)
    if mode == "auto" and (capacity is None or size <= capacity // 2):
        return False
    encoder.params = jax.device_put(encoder.params, t5_param_shardings(encoder.config, mesh))
    log.info(
        "text encoder: %.2f GiB of params sharded over the mesh (param_sharding=%r)",
        size / 2**30,
        mode,
    )
    return True


def choose_stage_sharding(
    name: str, mode: str, capacity: int | None, replicated_bytes: Callable[[], int | None],
    num_devices: int,
) -> bool:  # fmt: skip
    """Whether a stage samples with sharded params (True) or replicated ones (False).

    Args:
      name: the stage's name, for the log line.
      mode: the Pipeline's `param_sharding`.
      capacity: the device's memory in bytes, None where the backend does not say (CPU).
      replicated_bytes: compiles the stage's program with replicated params (from shapes
        only) and returns its per-device bytes; called only by "auto" with a known capacity.
      num_devices: the mesh's size; on one device there is nothing to shard over.
    """
    check_mode(mode)  # also when set as an attribute of a Pipeline after construction
    if mode != "auto":
        return mode == "sharded"
    if capacity is None or num_devices == 1:
        return False
    needed = replicated_bytes()
    if needed is None or needed <= capacity:
        return False
    log.info(
        "stage %s: with replicated params sampling needs %.2f GiB per device but the device has "
        "%.2f GiB; sampling with param_sharding='sharded' (params split over the mesh)",
        name,
        needed / 2**30,
        capacity / 2**30,
    )
    return True


def refused_bytes(error: Exception) -> int:
    """The bytes a compile the TPU compiler refused for lack of HBM said it needs; re-raises others.

    On a real TPU (and for a TPU topology) XLA does not return a program bigger than the chip:
    `compile()` raises RESOURCE_EXHAUSTED ("... the total memory required for HLO temporaries
    (21.97G) exceeds available HBM (15.75G)", measured: the paper base's replicated sampler on
    v5e). Callers that compile only to measure treat that as "does not fit".
    """
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text:
        raise error
    match = re.search(r"required for [^(]*\(([0-9.]+)([KMGT])\)", text)
    if match is None:
        return 2**62  # refused without a figure: more than any device
    return int(float(match[1]) * 1024 ** "KMGT".index(match[2]) * 1024)


def hint(placement: str | None, num_devices: int) -> str:
    """The end of a does-not-fit message: the knob that shards params, if they were replicated."""
    if placement != "replicated" or num_devices == 1:
        return ""
    return "; or param_sharding='sharded' (the stage's params split over the mesh)"
