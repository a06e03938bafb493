"""Remat policies: what a VideoUNet block keeps from its forward pass for the backward pass.

`UNetConfig.remat` names one policy; `remat_block` wraps a block class with it. Every block is
rematerialised as a unit (its inputs are always kept), the policy decides which of its
intermediates are kept too:

  none       keep everything (no remat): fastest, most memory.
  full       keep nothing but the block's inputs; the backward pass reruns the whole block.
  save_dots  keep the outputs of the block's convs and dense projections (tagged `MATMUL_OUTPUT`
             by the layers), rerun only the cheap elementwise ops (GroupNorm, SiLU, FiLM,
             residual adds) and the attention core (scores / softmax, whose [.., N, N]
             intermediates are the largest tensors of an attention block).
  offload    the same tensors as save_dots, moved to pinned host memory after the forward pass
             and fetched back for the backward pass: device memory close to "full" without the
             recompute of the matmuls, at the cost of host transfers. Needs a backend with a
             "pinned_host" memory space (TPU, GPU and XLA:CPU have one); elsewhere tracing raises
             ValueError naming `remat`.

Why tags rather than `jax.checkpoint_policies.dots_with_no_batch_dims_saveable`: that policy
looks only at `dot_general`, so it misses the U-Net's convolutions (`conv_general_dilated`, or a
custom-gradient call under `spatial_conv_impl="conv_gemm_grad"`), which hold most of the FLOPs;
`checkpoint_dots` does see convs but also keeps the attention's batched score matmuls, whose
outputs grow with the square of the sequence. Tagging the layer outputs picks exactly the
expensive-to-recompute, linear-in-size tensors, whatever kernel computes them, and the same tag
drives both save_dots and offload.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from t2v_jax.models import platform

REMAT_POLICIES = ("none", "full", "save_dots", "offload")

# The checkpoint name (`jax.ad_checkpoint.checkpoint_name`) of conv and projection outputs.
MATMUL_OUTPUT = "matmul_output"


def canonical_remat(value: str | bool) -> str:
    """A policy name from a `remat` setting; True / False (older configs) mean full / none."""
    if isinstance(value, bool):
        return "full" if value else "none"
    if value not in REMAT_POLICIES:
        raise ValueError(
            f"remat: expected one of {', '.join(REMAT_POLICIES)} (or a bool: True = full, "
            f"False = none), got {value!r}"
        )
    return value


def _has_pinned_host() -> bool | None:
    """Whether the compile target's devices have a pinned host memory space (None: unknown)."""
    mesh = platform.target_mesh()
    device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
    try:
        kinds = {m.kind for m in device.addressable_memories()}
    except (AttributeError, NotImplementedError, RuntimeError, jax.errors.JaxRuntimeError):
        return None  # devices of an AOT topology description: let the compiler decide
    return "pinned_host" in kinds


def checkpoint_policy(policy: str) -> Callable[..., Any] | None:
    """The `jax.checkpoint` policy for a (canonical, not "none") remat policy name."""
    if policy == "full":
        return None  # jax.checkpoint's default: save nothing but the inputs
    if policy == "save_dots":
        return jax.checkpoint_policies.save_only_these_names(MATMUL_OUTPUT)
    if policy == "offload":
        if _has_pinned_host() is False:
            raise ValueError(
                f"remat: 'offload' needs a backend with a pinned_host memory space, and "
                f"{platform.target_platform()} devices have none; use 'save_dots' or 'full'"
            )
        return jax.checkpoint_policies.save_and_offload_only_these_names(
            names_which_can_be_saved=(),
            names_which_can_be_offloaded=(MATMUL_OUTPUT,),
            offload_src="device",
            offload_dst="pinned_host",
        )
    raise ValueError(f"remat: no checkpoint policy for {policy!r}")


def remat_block(cls: type[nn.Module], policy: str) -> type[nn.Module]:
    """`cls` rematerialised in the backward pass under `policy` (unchanged for "none")."""
    if policy == "none":
        return cls
    return nn.remat(cls, policy=checkpoint_policy(policy))
