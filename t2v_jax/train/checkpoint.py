"""Orbax checkpoints of a run: state + per-host data iterator position + config, verified on restore.

One checkpoint step holds three items written together (committed atomically by orbax: a step
directory only appears under its final name once every item is written):

  state  the TrainState (orbax StandardSave; restored onto whatever mesh is current)
  data   each process's data-iterator state, `process_{i}-of-{n}.json` (every host reads its
         own shard, so every host saves its own position)
  meta   JSON: the experiment config, the step, and a fingerprint of every state leaf

On restore the fingerprints are recomputed from the restored arrays. A step that fails to read
(truncated or missing file, unreadable metadata) or whose values do not match (flipped bytes
that decompress) on any host is moved aside to `<dir>_corrupt/` with a warning naming the reason, and the
previous step is tried. A `read_only` Checkpointer (another run's directory, e.g. the source of
a warm start) never writes, cleans up or moves anything: unusable steps are only skipped.

On a pod the hosts decide together: a step is used only if it restored on every host, so a
failure seen by some hosts moves every host on to the previous step (no host is left waiting
in a barrier the others never reach).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from t2v_jax import distributed

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Checkpointing of one run (`config.checkpoint`).

    Fields:
      every_steps: save when the step count is a multiple of this (and at the end / on SIGTERM).
      keep: how many of the newest steps to keep.
      async_save: write in a background thread; the step loop only waits for the device-to-host
        copy.
      async_timeout_s: a background save not committed within this many seconds fails (and the
        next save raises). Orbax's default, 20 min, failed a 52 MB save on a 2-core host shared
        with other jobs, where the commit took 77 min; a late checkpoint beats a lost one.
    """

    every_steps: int = 1000
    keep: int = 3
    async_save: bool = True
    async_timeout_s: int = 4 * 3600

    def __post_init__(self):
        if self.every_steps < 1:
            raise ValueError(f"checkpoint.every_steps must be >= 1, got {self.every_steps}")
        if self.keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1, got {self.keep}")
        if self.async_timeout_s < 1:
            raise ValueError(f"checkpoint.async_timeout_s must be >= 1, got {self.async_timeout_s}")


# ---------------------------------------------------------------------------------------------
# The per-process data-iterator item.


class DataStateHandler(ocp.CheckpointHandler):
    """Writes/reads this process's iterator state as `process_{i}-of-{n}.json` in the item dir.

    The state is whatever the iterator's `get_state()` returns: JSON data, or bytes (grain's
    DataLoader), which are stored base64-encoded.
    """

    def _path(self, directory: epath.Path) -> epath.Path:
        return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    def save(self, directory: epath.Path, args: DataStateSave) -> None:
        state = args.state
        if isinstance(state, bytes):
            record = {"kind": "bytes", "value": base64.b64encode(state).decode("ascii")}
        else:
            record = {"kind": "json", "value": state}
        directory.mkdir(parents=True, exist_ok=True)
        self._path(directory).write_text(json.dumps(record))

    def restore(self, directory: epath.Path, args: DataStateRestore | None = None) -> Any:
        del args
        path = self._path(directory)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: the checkpoint was written by a different number of "
                "processes, or is incomplete"
            )
        record = json.loads(path.read_text())
        if record["kind"] == "bytes":
            return base64.b64decode(record["value"])
        return record["value"]

    def metadata(self, directory: epath.Path) -> None:
        del directory

    def finalize(self, directory: epath.Path) -> None:
        del directory

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass


# ---------------------------------------------------------------------------------------------
# Fingerprints.


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
    """A position-weighted wrapping uint32 sum of the leaf's bits (exact under any sharding)."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        bits = x.astype(jnp.uint32)
    elif x.dtype.itemsize == 4:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize == 2:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    elif x.dtype.itemsize == 1:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
    else:  # 8-byte types split into two uint32 words
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    bits = bits.reshape(-1)
    # Odd multipliers per position make swapped or shifted values change the sum too.
    weights = jnp.arange(bits.shape[0], dtype=jnp.uint32) * jnp.uint32(2654435761) + 1
    return jnp.sum(bits * weights, dtype=jnp.uint32)


@jax.jit
def _fingerprints(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.stack([_leaf_fingerprint(x) for x in leaves]) if leaves else jnp.zeros(0)


def fingerprint(tree: Any) -> list[int]:
    """One uint32 fingerprint per leaf of `tree`, computed on device, as Python ints."""
    return [int(v) for v in distributed.to_host(_fingerprints(tree))]


# ---------------------------------------------------------------------------------------------
# The manager.


@dataclasses.dataclass
class Restored:
    """What `Checkpointer.restore_latest` returns."""

    step: int
    state: Any
    data_state: Any
    meta: dict


class Checkpointer:
    """Saves and restores a run's checkpoints under `directory` (one orbax CheckpointManager)."""

    ITEMS = ("state", "data", "meta")

    def __init__(
        self, directory: str | os.PathLike, cfg: CheckpointConfig, *, read_only: bool = False
    ):
        self.directory = epath.Path(directory)
        self.cfg = cfg
        self.read_only = read_only
        self.last_error: str | None = None  # why the newest unusable step failed to restore
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep,
            save_interval_steps=cfg.every_steps,
            enable_async_checkpointing=cfg.async_save,
            async_options=ocp.AsyncOptions(timeout_secs=cfg.async_timeout_s),
            # Leftovers of a save that was killed before it committed are never used; remove
            # them so they do not pile up (not in someone else's directory).
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_names=self.ITEMS,
            item_handlers={"data": DataStateHandler()},
            options=options,
        )

    def all_steps(self) -> list[int]:
        """Committed steps, oldest first."""
        return sorted(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether the save interval asks for a checkpoint at `step` (a multiple of every_steps)."""
        return step > 0 and step % self.cfg.every_steps == 0

    def reached_preemption(self, step: int) -> bool:
        """Multi-host preemption sync point: True on every host at the same step once JAX's
        preemption service has seen a SIGTERM (needs `jax.distributed.initialize()`)."""
        return self.manager.reached_preemption(step)

    def save(
        self, step: int, state: Any, data_state: Any, config: dict, *, force: bool = False
    ) -> bool:
        """Saves `state` (whose step is `step`), the data position and the config.

        Returns whether a save was started (interval not reached, or step already saved: False).
        Returns once the arrays are copied off the device, so the caller may donate `state` to
        the next step while the files are written in the background.
        """
        if self.read_only:
            raise RuntimeError(f"checkpoints in {self.directory} were opened read-only")
        if step in self.manager.all_steps() or not (force or self.should_save(step)):
            return False
        meta = {
            "step": step,
            "fingerprints": fingerprint(state),
            "config": config,
            "time": time.time(),
        }
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=DataStateSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore_latest(self, abstract_state: Any) -> Restored | None:
        """Restores the newest usable step onto the shardings of `abstract_state`.

        `abstract_state` is a tree of `jax.ShapeDtypeStruct`s with `.sharding` set (see
        `state.state_shardings`), so the arrays land directly in the current mesh layout even if
        another mesh saved them. Unusable steps are moved aside (see the module docstring).
        Returns None when there is no usable checkpoint.
        """
        for step in reversed(self.all_steps()):
            try:
                # The state (and its fingerprint, a program over arrays that may span hosts)
                # first, on every host alike; this host's own data position after, so that a
                # host missing only its file fails after the shared work, not inside it.
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
                meta = restored["meta"]
                if meta.get("step") != step:
                    raise ValueError(f"metadata names step {meta.get('step')}, not {step}")
                if fingerprint(restored["state"]) != meta["fingerprints"]:
                    raise ValueError(
                        "restored values do not match the fingerprints saved with them"
                    )
                # Read directly, not through the manager: orbax ends a restore with a barrier
                # that a host whose own file is missing would never reach.
                data = DataStateHandler().restore(self.directory / str(step) / "data")
                error = None
            # Any failure to read a step means the step is unusable, whatever layer (tensorstore,
            # JSON, orbax metadata) noticed it; the message is kept for the warning.
            except Exception as e:
                error = e
            if not distributed.all_agree(error is None, "checkpoint_restored"):
                self._unusable(step, error or RuntimeError("it failed to restore on another host"))
                continue
            return Restored(step, restored["state"], data, meta)
        return None

    def restore_latest_subtrees(
        self, fields: tuple[str, ...], wanted: tuple[str, ...]
    ) -> tuple[int, dict[str, Any]] | None:
        """The newest usable step's `wanted` state fields as saved, without a target structure.

        For warm starts of a model that gained or lost parameters since the save. `fields` is the
        state's field order (its per-leaf fingerprints are saved in that order); the wanted
        subtrees (nested dicts of arrays) are verified against their slice of the fingerprints.
        Unusable steps are handled as in `restore_latest`. Returns (step, {field: subtree}).
        """
        for step in reversed(self.all_steps()):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()
                    ),
                )
                raw, meta = restored["state"], restored["meta"]
                if meta.get("step") != step:
                    raise ValueError(f"metadata names step {meta.get('step')}, not {step}")
                start, out = 0, {}
                for name in fields:
                    subtree = raw.get(name, {})
                    count = len(jax.tree.leaves(subtree))
                    if name in wanted:
                        if fingerprint(subtree) != meta["fingerprints"][start : start + count]:
                            raise ValueError(f"restored {name} do not match their fingerprints")
                        out[name] = subtree
                    start += count
                if start != len(meta["fingerprints"]):
                    raise ValueError("the saved state does not have the expected fields")
                error = None
            except Exception as e:
                error = e
            if not distributed.all_agree(error is None, "checkpoint_restored"):
                self._unusable(step, error or RuntimeError("it failed to restore on another host"))
                continue
            return step, out
        return None

    def _unusable(self, step: int, error: Exception) -> None:
        """Records why `step` failed; moves it aside unless read-only (then it is only skipped)."""
        name = type(error).__name__
        self.last_error = f"step {step}: {name}: {str(error).splitlines()[0][:500]}"
        if self.read_only:
            log.warning("checkpoint %s is unusable (skipped)", self.last_error)
        else:
            self._quarantine(step, f"{name}: {error}")

    def _quarantine(self, step: int, reason: str) -> None:
        older = [s for s in self.all_steps() if s < step]
        fallback = f"falling back to step {older[-1]}" if older else "no older checkpoint left"
        target = epath.Path(f"{self.directory}_corrupt") / f"{step}-{int(time.time())}"
        log.warning(
            "checkpoint step %d in %s is unusable (%s); moved it to %s; %s",
            step, self.directory, reason.splitlines()[0][:500], target, fallback,
        )  # fmt: skip
        if distributed.is_primary():
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(target)
        distributed.barrier("checkpoint_quarantined")
        self.manager.reload()

    def wait(self) -> None:
        """Blocks until pending async saves are committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager's threads."""
        self.manager.wait_until_finished()
        self.manager.close()
