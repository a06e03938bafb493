"""Process setup of a multi-host run: distributed init, host agreement, "process 0 writes" helpers.

A pod run is N copies of the same `t2v-train` command, one per host. Each copy must call
`jax.distributed.initialize` before JAX touches a device, so that `jax.devices()` lists every
chip of the slice and arrays can span hosts. `initialize(mode)` decides whether to:

  "auto"  initialise when the environment says this is one process of several: JAX's own
          `JAX_COORDINATOR_ADDRESS` with `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` (a local pod of
          N processes is N copies of the same command with these set), or a multi-host Cloud TPU
          slice (`TPU_WORKER_HOSTNAMES` lists several workers; JAX then detects the rest itself);
  "on"    always initialise (the environment or JAX's cluster detection must supply the rest);
  "off"   never; a multi-host environment then raises instead of running as unconnected hosts.

On CPU the cross-process collectives go through gloo (XLA:CPU has no other), chosen here before
the backend starts. Preemption on a pod is host-agreed by JAX's preemption sync manager, which
`jax.distributed.initialize` starts and which owns SIGTERM from then on (see `train/loop.py`).
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Literal

import jax
import numpy as np

log = logging.getLogger(__name__)

Mode = Literal["auto", "on", "off"]
MODES = ("auto", "on", "off")
ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# How long a process waits for the coordinator (and the others) to come up.
DEFAULT_TIMEOUT_S = 300


class DistributedError(RuntimeError):
    """The processes of a multi-host run cannot be connected, or disagree about their setup."""


def _env_triple() -> tuple[str, int, int] | None:
    """(coordinator, num_processes, process_id) from the environment; None if none is set."""
    values = {name: os.environ.get(name) for name in ENV_VARS}
    given = [name for name, value in values.items() if value]
    if not given:
        return None
    missing = [name for name in ENV_VARS if name not in given]
    if missing:
        raise DistributedError(
            f"{', '.join(given)} set but {', '.join(missing)} not: a local multi-process run "
            f"needs all of {', '.join(ENV_VARS)}"
        )
    try:
        count, index = int(values["JAX_NUM_PROCESSES"]), int(values["JAX_PROCESS_ID"])
    except ValueError as e:
        raise DistributedError(f"JAX_NUM_PROCESSES / JAX_PROCESS_ID must be integers: {e}") from e
    if not 0 <= index < count:
        raise DistributedError(f"JAX_PROCESS_ID={index} must be in [0, JAX_NUM_PROCESSES={count})")
    return values["JAX_COORDINATOR_ADDRESS"], count, index


def tpu_worker_count() -> int:
    """Hosts of this Cloud TPU slice as the TPU VM environment names them (1 if not a TPU VM)."""
    hostnames = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return max(1, len([h for h in hostnames.split(",") if h.strip()]))


def _cpu_only() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
    return platforms.strip().lower() == "cpu"


def initialize(mode: Mode = "auto", *, timeout_s: int = DEFAULT_TIMEOUT_S) -> bool:
    """Connects this process to the others of its run when `mode` (see the module docstring) asks.

    Must run before anything queries JAX devices. Returns whether the distributed runtime is
    initialised afterwards (also True when it already was).

    Raises:
      ValueError: `mode` is not one of "auto", "on", "off".
      DistributedError: the environment is half set, names a multi-host run while mode is "off",
        or the coordinator did not answer within `timeout_s` (the message names its address).
    """
    if mode not in MODES:
        raise ValueError(f"train.distributed_init={mode!r}; must be one of {MODES}")
    if jax.distributed.is_initialized():
        return True
    triple = _env_triple()
    tpu_hosts = tpu_worker_count()
    multi_host = (triple is not None and triple[1] > 1) or tpu_hosts > 1
    if mode == "off":
        if multi_host:
            raise DistributedError(
                "train.distributed_init='off' but this is one process of a multi-host run "
                f"({'JAX_NUM_PROCESSES=' + str(triple[1]) if triple else f'{tpu_hosts} TPU workers'}"
                "): every host would train alone; use 'auto' or 'on'"
            )
        return False
    if mode == "auto" and not multi_host:
        return False
    if triple is not None and _cpu_only():
        # XLA:CPU's cross-process collectives; must be chosen before the backend starts.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {"initialization_timeout": timeout_s}
    if triple is not None:
        address, count, index = triple
        kwargs.update(coordinator_address=address, num_processes=count, process_id=index)
        if index != 0:
            # JAX aborts the whole process (no Python exception) when it cannot register with
            # the coordinator in time; probing the port first gives an error that says why.
            _wait_for_coordinator(address, timeout_s)
    else:
        address = "auto-detected"
    log.info("jax.distributed.initialize(%s)", kwargs)
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # the runtime's errors are plain RuntimeErrors / XlaRuntimeErrors
        raise DistributedError(
            f"could not join the distributed run through coordinator {address} within "
            f"{timeout_s} s ({type(e).__name__}: {str(e).splitlines()[0][:300]}); check that "
            "process 0 is running and the address is reachable from this host"
        ) from e
    return True


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Waits until the coordinator's port accepts a connection; DistributedError after timeout_s."""
    import socket
    import time

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"JAX_COORDINATOR_ADDRESS={address!r}: expected HOST:PORT")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"could not join the distributed run through coordinator {address} within "
                    f"{timeout_s} s ({e}); check that process 0 is running and the address is "
                    "reachable from this host"
                ) from e
            time.sleep(0.5)


def is_primary() -> bool:
    """Whether this is process 0, the one that writes shared files, logs and TensorBoard."""
    return jax.process_index() == 0


_barrier_counts: dict[str, int] = {}
BARRIER_TIMEOUT_S = 3600


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Blocks until every process reaches the barrier `name` (a no-op on one process).

    A barrier of the coordination service, not a device collective: it runs no program, and
    processes may arrive up to `timeout_s` apart (compiles and dataset builds take minutes).
    Every process must pass the same names in the same order.
    """
    if jax.process_count() == 1:
        return
    count = _barrier_counts[name] = _barrier_counts.get(name, 0) + 1
    _client().wait_at_barrier(f"t2v_{name}_{count}", int(timeout_s * 1000))


def compile_together(jitted, *args, name: str):
    """`jitted` compiled for `args`, returned once every process has compiled its copy.

    The first run of a program sets up its cross-host collectives, and on CPU (gloo) a
    collective group must assemble within 30 s; hosts that finish compiling minutes apart
    (a cache hit on one, a compile on another) would fail there. One process: `jitted`.
    """
    if jax.process_count() == 1:
        return jitted
    compiled = jitted.lower(*args).compile()
    barrier(name)
    return compiled


def _client():
    from jax._src import distributed as jax_distributed  # the client has no public API

    return jax_distributed.global_state.client


def _exchange(name: str, value: str, timeout_s: float = BARRIER_TIMEOUT_S) -> list[str]:
    """Every process's `value` for this round of `name`, in process order.

    Through the coordination service's key-value store, not a device collective: nothing is
    compiled, and processes may arrive minutes apart (a device all-gather on CPU must assemble
    within gloo's 30 s, and a host that skipped a collective the others ran would mismatch).
    """
    count = _barrier_counts[name] = _barrier_counts.get(name, 0) + 1
    key = f"t2v/{name}/{count}"
    client = _client()
    client.key_value_set(f"{key}/{jax.process_index()}", value)
    timeout_ms = int(timeout_s * 1000)
    return [
        client.blocking_key_value_get(f"{key}/{i}", timeout_ms) for i in range(jax.process_count())
    ]


def all_agree(value: bool, name: str = "agree") -> bool:
    """True on every process iff `value` is True on every process.

    Every process must call it the same number of times with the same `name`s, in order.
    """
    if jax.process_count() == 1:
        return bool(value)
    return all(v == "1" for v in _exchange(name, "1" if value else "0"))


def same_on_all_hosts(value: np.ndarray, name: str = "same") -> bool:
    """Whether host array `value` is byte-identical on every process (compares digests)."""
    if jax.process_count() == 1:
        return True
    import hashlib

    digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
    return len(set(_exchange(name, digest))) == 1


def to_host(tree):
    """Numpy copies of `tree`'s arrays on this host, also of arrays that span several hosts.

    `jax.device_get` refuses an array with shards on other hosts; a replicated one is read from
    a local replica, a sharded one is gathered (every process must call this together then).
    """

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def check_shared_directory(path) -> None:
    """Raises unless a file that process 0 writes under `path` is visible to every process.

    A pod's workdir must be storage all hosts share (a bucket, NFS): orbax writes one
    checkpoint jointly, and a host writing to its own disk would silently keep a partial copy.
    `path` is an `etils.epath.Path` (or str); a no-op on one process.
    """
    if jax.process_count() == 1:
        return
    from t2v_jax import paths

    directory = paths.as_path(path)
    # Process 0 picks the name, so the others look for exactly what it wrote.
    token = _exchange("shared_check_token", uuid.uuid4().hex if is_primary() else "")[0]
    marker = directory / f".shared_check_{token}"
    if is_primary():
        directory.mkdir(parents=True, exist_ok=True)
        marker.write_text("written by process 0")
    barrier("shared_check_written")
    visible = marker.exists()
    everyone = all_agree(visible, "shared_check_seen")
    if is_primary():
        marker.unlink()
    if not everyone:
        raise DistributedError(
            f"workdir {directory} is not shared by all {jax.process_count()} processes "
            f"(process {jax.process_index()} {'sees' if visible else 'does not see'} the file "
            "process 0 wrote there): give every host the same bucket or network path"
        )
