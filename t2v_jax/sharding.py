"""Device meshes, logical-axis rules, and the NamedShardings they give params and batches.

This is what `pjit` became: arrays carry `NamedSharding`s over a `Mesh` with the axes
`data`, `fsdp` and `tensor`, and `jax.jit` partitions the program from them. Parameters are
annotated with logical axis names (`t2v_jax.axes`); a short rule table, which is config data,
maps each logical name to mesh axes. Pure data parallelism is the mesh (data=N, fsdp=1, tensor=1).

Axis types: `jax.make_mesh` now defaults to Explicit axes (shardings in the types). t2v_jax uses
Auto axes on purpose: shardings are given at the `jit` boundary and as constraints, and the
compiler propagates the rest, which is the pjit model the rest of the code is written for.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from t2v_jax import axes
from t2v_jax.configlib import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated). The batch is split over
# `data` and `fsdp` (FSDP is data parallel for activations); parameters are split over `fsdp`
# along their widest feature axis and over `tensor` along heads / MLP / output channels.
# Activations between U-Net blocks keep their channels split over `tensor` (act_channels), so a
# tensor-parallel mesh does not gather every block's output (and its remat copy) on each device.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (axes.BATCH, ("data", "fsdp")),
    (axes.FRAMES, None),
    (axes.HEIGHT, None),
    (axes.WIDTH, None),
    (axes.LENGTH, None),
    (axes.ACT_CHANNELS, "tensor"),
    (axes.EMBED, "fsdp"),
    (axes.CONV_IN, "fsdp"),
    (axes.CONV_OUT, "tensor"),
    (axes.CHANNELS, None),
    (axes.CONV_SPACE, None),
    (axes.CONV_TIME, None),
    (axes.HEADS, "tensor"),
    (axes.KV, None),
    (axes.MLP, "tensor"),
    (axes.VOCAB, "tensor"),
    (axes.REL_POS, None),
    (axes.NORM, None),
    (axes.LAYERS, None),
)

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes; exactly one may be -1, meaning "all remaining devices"."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """Concrete (data, fsdp, tensor) sizes for `num_devices` devices."""
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        for name, size in sizes.items():
            if size == 0 or size < -1:
                raise ConfigError(f"mesh.{name}: must be a positive int or -1, got {size}")
        free = [name for name, size in sizes.items() if size == -1]
        if len(free) > 1:
            raise ConfigError(f"mesh: at most one axis may be -1, got {', '.join(free)}")
        fixed = math.prod(size for size in sizes.values() if size != -1)
        if free:
            if num_devices % fixed:
                raise ConfigError(
                    f"mesh: {num_devices} devices are not divisible by the fixed axes "
                    f"({' x '.join(f'{n}={s}' for n, s in sizes.items() if s != -1)} = {fixed})"
                )
            sizes[free[0]] = num_devices // fixed
        elif fixed != num_devices:
            raise ConfigError(
                f"mesh: data*fsdp*tensor = {fixed} but {num_devices} devices are available; "
                "set one axis to -1 to use the rest"
            )
        return sizes["data"], sizes["fsdp"], sizes["tensor"]


def make_mesh(config: MeshConfig | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """Builds the (data, fsdp, tensor) mesh over `devices` (default: all global devices)."""
    config = config or MeshConfig()
    devices = list(jax.devices() if devices is None else devices)
    shape = config.resolve(len(devices))
    try:
        device_array = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
        # Topology-aware placement is an optimisation; fake CPU devices and odd subsets have no
        # topology, so fall back to the given order.
        device_array = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_from_config(rules: Iterable[Sequence[Any]] | None) -> Rules:
    """Validates a rule table from config data (a list of [logical_name, mesh_axes] pairs)."""
    if rules is None:
        return DEFAULT_RULES
    out = []
    for i, rule in enumerate(rules):
        if len(rule) != 2:
            raise ConfigError(
                f"sharding.rules[{i}]: expected [logical_name, mesh_axes], got {rule}"
            )
        name, target = rule
        if name not in axes.ALL:
            raise ConfigError(
                f"sharding.rules[{i}]: unknown logical axis {name!r}; known: {', '.join(axes.ALL)}"
            )
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        for t in targets:
            if t not in MESH_AXES:
                raise ConfigError(
                    f"sharding.rules[{i}]: unknown mesh axis {t!r} for {name!r}; "
                    f"mesh axes are {', '.join(MESH_AXES)}"
                )
        out.append((name, target if isinstance(target, str) or target is None else tuple(target)))
    return tuple(out)


def logical_to_spec(
    logical_axes: Sequence[str | None], rules: Rules, shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
) -> PartitionSpec:  # fmt: skip
    """Maps one array's logical axis names to a mesh PartitionSpec.

    A mesh axis is used at most once per array (the first logical axis that claims it wins, as in
    flax/t5x). With `shape` and `mesh`, a dimension that the mesh axes do not divide evenly is
    replicated instead (and logged), so small models still run on big meshes.
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(logical_axes):
        if name is not None and name not in table:
            raise ValueError(f"logical axis {name!r} has no sharding rule; add it to the rules")
        target = table.get(name) if name is not None else None
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        targets = tuple(t for t in targets if t not in used)
        if targets and shape is not None and mesh is not None:
            size = math.prod(mesh.shape[t] for t in targets)
            if shape[dim] % size:
                log.info("replicating dim %d (%s, size %d) over %s", dim, name, shape[dim], targets)
                targets = ()
        used.update(targets)
        spec.append(None if not targets else targets[0] if len(targets) == 1 else targets)
    return PartitionSpec(*spec)


def _is_boxed(x: Any) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def logical_shardings(tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """NamedShardings for a (possibly abstract) tree whose leaves are `nn.LogicallyPartitioned`.

    Returns a tree of the *unboxed* structure, i.e. matching `nn.unbox(tree)`, so it can be given
    to `jax.jit(..., out_shardings=...)` for an init function that unboxes its output. Leaves
    without logical names are replicated; `unnamed_params(tree)` lists them for tests.
    """

    def one(leaf):
        if _is_boxed(leaf):
            value = leaf.value
            spec = logical_to_spec(leaf.names, rules, getattr(value, "shape", None), mesh)
        else:
            spec = PartitionSpec()
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, tree, is_leaf=_is_boxed)


def unnamed_params(tree: Any) -> list[str]:
    """Paths of leaves that carry no logical axis names (should be empty for our models)."""
    missing = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_boxed)[0]:
        if not _is_boxed(leaf):
            missing.append(jax.tree_util.keystr(path))
    return missing


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Sharding of an array whose leading axis is the (global) batch."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_divisor(mesh: Mesh) -> int:
    """The global batch must be a multiple of this (the devices the batch is split over)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def shard_host_batch(batch: Any, mesh: Mesh) -> Any:
    """Turns this process's slice of the global batch into global sharded jax.Arrays.

    On one host this is a device_put with the batch sharding; on a pod every process passes its
    own rows and `jax.make_array_from_process_local_data` assembles the global array without
    any host seeing the whole batch.
    """

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)

    return jax.tree.map(one, batch)
