"""The training loop of one stage: data, sharded step, checkpoints, metrics, samples, preemption.

`train(config, workdir, task)` always resumes from `workdir` when a usable checkpoint is there
(`t2v_jax.train.run.train_and_evaluate` is the whole run of a diffusion stage, what `t2v-train`
calls). The loop is model-agnostic: a `Task` says how to create params, what the
loss is, where batches come from and how to draw samples, so tests can drive it with a stand-in.

On a pod every host runs this same loop on its own rows of each global batch. Process 0 alone
writes TensorBoard, sample images and console metrics; checkpoints are written jointly. The
workdir is an `epath` path (gs:// stays a URL) that all hosts must share, which is checked.

Files under the workdir:
  checkpoints/          orbax steps (state, per-host data position, config)
  checkpoints_corrupt/  steps found unusable on restore (kept for inspection)
  tensorboard/          tensorboardX events: scalars and sample frame grids
  samples/step_N.png    EMA samples, one row per sample, one column per frame
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from etils import epath

from t2v_jax import configlib, distributed, paths, sharding
from t2v_jax.models import platform
from t2v_jax.train import checkpoint as ckpt_lib
from t2v_jax.train import state as state_lib
from t2v_jax.train import step as step_lib
from t2v_jax.video_io import frame_grid, to_uint8

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LogConfig:
    """Metrics and samples (`config.log`).

    Fields:
      every_steps: write scalars to TensorBoard and the console every this many steps.
      sample_every_steps: draw samples with the EMA params every this many steps (0: never).
      num_samples: videos per sample round.
      sample_steps: denoising steps per sample.
      prompts: captions to sample (cycled to num_samples); empty means the first captions the
        task provides.
    """

    every_steps: int = 50
    sample_every_steps: int = 0
    num_samples: int = 2
    sample_steps: int = 16
    prompts: tuple[str, ...] = ()

    def __post_init__(self):
        if self.every_steps < 1:
            raise ValueError(f"log.every_steps must be >= 1, got {self.every_steps}")
        if self.sample_every_steps < 0 or self.num_samples < 1 or self.sample_steps < 1:
            raise ValueError(
                "log.sample_every_steps must be >= 0 and log.num_samples, log.sample_steps >= 1"
            )


class DataIterator(Protocol):
    """What the loop needs of a data iterator: this host's batches and a checkpointable position.

    `get_state()` must describe the position after the batches already returned (JSON data or
    bytes), so that `set_state` on a fresh iterator continues with the exact next batch.
    """

    def __next__(self) -> dict[str, np.ndarray]: ...

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything stage-specific the loop needs.

    Attributes:
      init_params: `rng -> (trainable, frozen)` boxed param trees (see `state.make_init_fn`).
      loss_fn: `(params, frozen, rng, batch) -> (loss, aux)` (see `step.make_train_step`).
      make_iterator: `() -> DataIterator` over this host's per-host batches of numpy arrays.
      sample_fn: optional `(ema_params, frozen, rng, num_samples) -> float [N, T, H, W, 3]` in
        [-1, 1], run every `log.sample_every_steps`.
      warm_start: optional `state -> state` applied to a fresh state (no checkpoint in the
        workdir), e.g. a distillation student starting from its teacher's params.
    """

    init_params: state_lib.InitParamsFn
    loss_fn: step_lib.LossFn
    make_iterator: Callable[[], DataIterator]
    sample_fn: Callable[[Any, Any, jax.Array, int], np.ndarray] | None = None
    warm_start: Callable[[state_lib.TrainState], state_lib.TrainState] | None = None


MetricsCallback = Callable[[int, dict[str, float]], None]
"""`(step, {metric name: value})`, called by `train` after every step (see its docstring)."""


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient; training stopped."""


@dataclasses.dataclass
class TrainResult:
    """How a run ended.

    Attributes:
      state: the final train state.
      status: "completed" (num_steps reached) or "preempted" (SIGTERM / preemption sync point).
      step: the step the state is at (saved in the workdir).
      resumed_from: the checkpoint step this call restored, None when it started fresh.
      steps_run: how many train steps this call executed (step - resumed_from, or step).
      stopped_by: why a preempted run stopped: "SIGTERM" (this process's own signal) or "the
        preemption sync point" (JAX's, agreed by every host of a distributed run); else None.
    """

    state: state_lib.TrainState
    status: str
    step: int
    resumed_from: int | None = None
    steps_run: int = 0
    stopped_by: str | None = None


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks at step boundaries (main thread only).

    Only for a process that is not part of a distributed run: there JAX's preemption sync
    manager owns SIGTERM and tells every host to stop at the same step (`reached_preemption`);
    a per-host flag would let the host that got the signal leave the loop alone and hang the
    others in the next step's collectives.
    """

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self) -> _SigtermFlag:
        if (
            threading.current_thread() is threading.main_thread()
            and not jax.distributed.is_initialized()
        ):
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self.raised = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _Metrics:
    """Console + TensorBoard scalars and images (TensorBoard on process 0 only)."""

    def __init__(self, workdir: epath.Path, global_batch: int):
        self.global_batch = global_batch
        self.writer = None
        self.primary = distributed.is_primary()
        if self.primary:
            from tensorboardX import SummaryWriter  # only the writing process needs it

            paths.register_tensorboard_schemes()
            self.writer = SummaryWriter(str(workdir / "tensorboard"))
        self._last_time = time.perf_counter()
        self._last_step: int | None = None

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        if self._last_step is not None and step > self._last_step:
            steps_per_s = (step - self._last_step) / (now - self._last_time)
            metrics = dict(metrics, steps_per_s=steps_per_s,
                           examples_per_s=steps_per_s * self.global_batch)  # fmt: skip
        self._last_time, self._last_step = now, step
        if self.primary:
            log.info("step %d: %s", step, ", ".join(f"{k}={v:.5g}" for k, v in metrics.items()))
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"train/{name}", value, step)
            self.writer.flush()

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        if self.writer is not None:
            self.writer.add_image(name, image, step, dataformats="HWC")
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _write_samples(workdir: epath.Path, step: int, videos: np.ndarray) -> np.ndarray:
    """One row per sample, one column per frame; returns the uint8 grid (written by process 0)."""
    videos = to_uint8(np.asarray(videos))  # [N, T, H, W, 3]
    rows = [frame_grid(v, columns=v.shape[0]) for v in videos]
    grid = np.concatenate(rows, axis=0)
    if distributed.is_primary():
        from PIL import Image

        folder = workdir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"step_{step}.png").open("wb") as f:
            Image.fromarray(grid).save(f, format="PNG")
    return grid


def _mesh_and_rules(config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None):
    mesh_cfg = configlib.from_config(sharding.MeshConfig, config.mesh, "mesh")
    mesh = sharding.make_mesh(mesh_cfg, devices)
    rules = sharding.rules_from_config(config.sharding.rules if "sharding" in config else None)
    if all(mesh.shape[axis] > 1 for axis in ("data", "fsdp", "tensor")) and (
        platform.platform_of(mesh) == "cpu"
    ):
        log.warning(
            "mesh %s: data, fsdp and tensor are all > 1, where XLA:CPU has computed wrong U-Net "
            "gradients (docs/architecture.md, Sharding); use at most two of them",
            dict(mesh.shape),
        )
    return mesh, rules


def check_config(
    config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1
) -> tuple[state_lib.TrainConfig, ckpt_lib.CheckpointConfig, LogConfig]:
    """The loop's own checks of `config` for a run on `num_devices` devices in `num_processes`.

    Parses the train / checkpoint / log / mesh / sharding sections and checks that the global
    batch splits over the mesh's batch axes and over the hosts. Touches no device and no file,
    so a pod config can be checked anywhere (`t2v_jax.train.run.validate`).

    Raises:
      t2v_jax.configlib.ConfigError: a section is malformed or the mesh does not fit.
      ValueError: the global batch does not split over the mesh / processes.
    """
    train_cfg = configlib.from_config(state_lib.TrainConfig, config.get("train", {}), "train")
    ckpt_cfg = configlib.from_config(
        ckpt_lib.CheckpointConfig, config.get("checkpoint", {}), "checkpoint"
    )
    log_cfg = configlib.from_config(LogConfig, config.get("log", {}), "log")
    mesh_cfg = configlib.from_config(sharding.MeshConfig, config.get("mesh", {}), "mesh")
    data, fsdp, _ = mesh_cfg.resolve(num_devices)
    sharding.rules_from_config(config.sharding.rules if "sharding" in config else None)
    accum = train_cfg.grad_accum_steps
    if train_cfg.batch_size % (data * fsdp * accum):
        raise ValueError(
            f"train.batch_size={train_cfg.batch_size} must be a multiple of the mesh's "
            f"data*fsdp={data * fsdp}"
            + (f" times train.grad_accum_steps={accum}" if accum > 1 else "")
        )
    if train_cfg.batch_size % num_processes:
        raise ValueError(
            f"train.batch_size={train_cfg.batch_size} must split over {num_processes} hosts"
        )
    return train_cfg, ckpt_cfg, log_cfg


def train(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    task: Task,
    *,
    devices: Sequence[Any] | None = None,
    on_metrics: MetricsCallback | None = None,
) -> TrainResult:
    """Runs (or resumes) training of `task` in `workdir` up to `config.train.num_steps`.

    Returns on completion or after saving on SIGTERM / a preemption sync point. The mesh is
    `config.mesh` over `devices` (default: all devices). `on_metrics(step, metrics)`, if given,
    is called on the host after every step with that step's scalars as floats (loss, grad_norm,
    learning_rate, ...), e.g. for a live loss plot in a notebook; metrics are read one step late,
    so the call for step N comes while step N+1 runs.

    Raises:
      NonFiniteTrainingError: `train.max_consecutive_skips` steps in a row were non-finite; the
        newest checkpoint (saved before the streak's state, params unchanged by skips) is kept.
      ValueError: the global batch does not split over the mesh / processes.
      t2v_jax.configlib.ConfigError: the mesh does not fit the devices.
      t2v_jax.distributed.DistributedError: the hosts of a pod do not share `workdir`.
    """
    devices = list(jax.devices() if devices is None else devices)
    train_cfg, ckpt_cfg, log_cfg = check_config(config, len(devices), jax.process_count())
    mesh, rules = _mesh_and_rules(config, devices)
    workdir = paths.as_path(workdir)
    if distributed.is_primary():
        workdir.mkdir(parents=True, exist_ok=True)
    distributed.check_shared_directory(workdir)

    optimizer, schedule = state_lib.make_optimizer(train_cfg)
    init = state_lib.make_init_fn(task.init_params, optimizer)
    abstract, shardings = state_lib.state_shardings(init, mesh, rules)
    ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", ckpt_cfg)
    data = task.make_iterator()
    restored = ckpt.restore_latest(abstract)
    resumed_from = None if restored is None else restored.step
    if restored is not None:
        state = restored.state
        data.set_state(restored.data_state)
        log.info("resumed from %s at step %d", ckpt.directory, restored.step)
    else:
        state, _ = state_lib.create_train_state(init, config.get("seed", 0), mesh, rules)
        if train_cfg.init_from:
            stage_name = config.stage.get("name") if "stage" in config else None
            state = _warm_start(state, train_cfg.init_from, ckpt_cfg, stage_name)
        elif task.warm_start is not None:
            state = task.warm_start(state)
        else:
            log.info("no checkpoint in %s; starting from scratch", ckpt.directory)
    config_json = configlib.to_dict(config)
    step_fn = step_lib.make_train_step(
        task.loss_fn, optimizer, schedule, train_cfg.ema_decay, train_cfg.grad_accum_steps
    )
    jitted = None
    metrics_out = _Metrics(workdir, train_cfg.batch_size)
    step = start_step = int(distributed.to_host(state.step))
    pending: tuple[int, Any] | None = None  # metrics of the previous step, read one step late
    status, stopped_by = "completed", None

    def drain(pending):
        # Read metrics one step late, so the host is already queueing the next step while
        # the device finishes this one (no pipeline bubble from the transfer).
        done_step, metrics = pending
        host = {k: float(v) for k, v in distributed.to_host(metrics).items()}
        if host["consecutive_skips"] >= train_cfg.max_consecutive_skips:
            ckpt.close()
            metrics_out.close()
            raise NonFiniteTrainingError(
                f"{int(host['consecutive_skips'])} consecutive non-finite steps up to step "
                f"{done_step} (train.max_consecutive_skips={train_cfg.max_consecutive_skips}); "
                f"stopped, keeping the last checkpoint (steps {ckpt.all_steps()})"
            )
        if host["skipped"]:
            log.warning("step %d: non-finite loss or gradient, step skipped", done_step)
        if done_step % log_cfg.every_steps == 0 or done_step == train_cfg.num_steps:
            metrics_out.scalars(done_step, host)
        if on_metrics is not None:
            on_metrics(done_step, host)

    # Models traced inside pick their kernels ("auto" conv / attention) for the mesh's platform
    # and pin their activations by the config's logical-axis rules (layers.constrain).
    target = platform.compile_target(platform.platform_of(mesh), mesh)
    with _SigtermFlag() as sigterm, target, nn.logical_axis_rules(rules):
        while step < train_cfg.num_steps:
            batch = sharding.shard_host_batch(next(data), mesh)
            if jitted is None:
                jitted = step_lib.jit_train_step(step_fn, shardings, batch, mesh)
                jitted = distributed.compile_together(jitted, state, batch, name="train_step")
            state, metrics = jitted(state, batch)
            step += 1
            if pending is not None:
                drain(pending)
            pending = (step, metrics)
            if ckpt.should_save(step):
                # Inside a streak of non-finite steps, saving would rotate the last good
                # checkpoint out (keep N) for no gain: skipped steps leave the params unchanged.
                if int(distributed.to_host(state.consecutive_skips)):
                    log.warning("step %d: not saving inside a run of non-finite steps", step)
                else:
                    ckpt.save(step, state, data.get_state(), config_json)
            if (
                task.sample_fn is not None
                and log_cfg.sample_every_steps
                and step % log_cfg.sample_every_steps == 0
            ):
                videos = task.sample_fn(
                    state.ema_params, state.frozen, jax.random.PRNGKey(step), log_cfg.num_samples
                )
                grid = _write_samples(workdir, step, distributed.to_host(videos))
                # The hosts run one SPMD sampler; different videos mean they compiled different
                # programs (e.g. host-local constants), which a pod run must not do.
                if not distributed.same_on_all_hosts(grid):
                    log.warning("step %d: the in-loop samples differ between hosts", step)
                metrics_out.image(step, "samples/ema", grid)
            if sigterm.raised or ckpt.reached_preemption(step):
                status = "preempted"
                stopped_by = "SIGTERM" if sigterm.raised else "the preemption sync point"
                break
        if pending is not None:
            drain(pending)
        ckpt.save(step, state, data.get_state(), config_json, force=True)
        ckpt.close()
    metrics_out.close()
    if status == "preempted":
        log.warning("preempted by %s: saved step %d to %s; exiting cleanly", stopped_by, step,
                    ckpt.directory)  # fmt: skip
    return TrainResult(state=state, status=status, step=step, resumed_from=resumed_from,
                       steps_run=step - start_step, stopped_by=stopped_by)  # fmt: skip


_WARM_FIELDS = ("params", "ema_params", "frozen")


def _warm_start(
    state: state_lib.TrainState,
    init_from: str,
    ckpt_cfg: ckpt_lib.CheckpointConfig,
    stage_name: str | None = None,
) -> state_lib.TrainState:
    """`state` with params, EMA params and frozen params from `init_from`'s newest checkpoint,
    or from the stage named `stage_name` of a pipeline saved there (`Pipeline.save`: its params
    start both the params and the EMA params, its text encoder the T5).

    Matched by parameter path: every saved parameter must exist in `state` with the same shape
    (nothing trained is silently dropped); parameters the saved run did not have (new blocks)
    keep their fresh initialisation and are listed in the log.
    """
    if (paths.as_path(init_from) / "pipeline.json").exists():
        saved = _pipeline_subtrees(state, init_from, stage_name)
        return _merge_warm(state, saved, init_from, f"the pipeline {init_from}", None)
    directory = paths.as_path(init_from) / "checkpoints"
    if not directory.is_dir():
        raise ValueError(
            f"train.init_from={init_from!r}: no checkpoints/ directory (and no saved pipeline) there"
        )
    source = ckpt_lib.Checkpointer(directory, ckpt_cfg, read_only=True)
    fields = tuple(f.name for f in dataclasses.fields(state_lib.TrainState))
    try:
        found = source.restore_latest_subtrees(fields, _WARM_FIELDS)
    finally:
        source.close()
    if found is None:
        raise ValueError(
            f"train.init_from={init_from!r}: no usable checkpoint there "
            f"(newest failure: {source.last_error})"
        )
    step, saved = found
    return _merge_warm(state, saved, init_from, str(directory), step)


def _merge_warm(state, saved, init_from: str, source: str, step: int | None):
    merged, fresh = {}, set()
    for name in _WARM_FIELDS:
        merged[name], new = _merge_by_path(getattr(state, name), saved[name], init_from, name)
        fresh.update(new)
    log.info("warm start: %s from %s%s; step, optimizer and data start fresh%s",
             ", ".join(_WARM_FIELDS), source, "" if step is None else f" at step {step}",
             f"; {len(fresh)} new parameters keep their init: {sorted(fresh)}" if fresh else "")  # fmt: skip
    return state.replace(**merged)


def _pipeline_subtrees(state, init_from: str, stage_name: str | None) -> dict[str, Any]:
    """{params, ema_params, frozen} subtrees from stage `stage_name` of a saved pipeline: its
    (shipped, EMA) U-Net params wherever `state` holds "unet", its text encoder wherever "text"."""
    from t2v_jax.pipeline_store import load_pipeline  # the saved-pipeline format

    pipeline = load_pipeline(init_from)
    # stage_name is this config's stage.name.
    stage = pipeline.stage_named(stage_name, f"train.init_from={init_from!r}: the pipeline there")
    weights = {
        "unet": stage.params,
        "text": pipeline.text_encoder.params,
    }
    return {
        name: {key: weights[key] for key in getattr(state, name) if key in weights}
        for name in _WARM_FIELDS
    }


def _merge_by_path(target: Any, saved: Any, init_from: str, name: str) -> tuple[Any, set[str]]:
    """`target` with every leaf that `saved` holds at the same path (same shape required)."""
    keystr = jax.tree_util.keystr
    saved_leaves = {keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
    paths, treedef = jax.tree_util.tree_flatten_with_path(target)
    leaves, fresh = [], set()
    for path, leaf in paths:
        key = keystr(path)
        if key not in saved_leaves:
            fresh.add(key)
            leaves.append(leaf)
            continue
        value = saved_leaves.pop(key)
        if tuple(value.shape) != tuple(leaf.shape):
            raise ValueError(
                f"train.init_from={init_from!r}: {name}{key} has shape {tuple(value.shape)} "
                f"there but {tuple(leaf.shape)} in this model"
            )
        value = distributed.to_host(value).astype(leaf.dtype)
        # Every host holds the whole value; each places the shards its own devices hold (a
        # plain device_put of a host array onto a sharding that spans hosts is not that).
        leaves.append(jax.make_array_from_callback(value.shape, leaf.sharding, value.__getitem__))
    if saved_leaves:
        raise ValueError(
            f"train.init_from={init_from!r}: this model has no place for {name} "
            f"{sorted(saved_leaves)[:5]}{' ...' if len(saved_leaves) > 5 else ''}; a warm start "
            "never drops trained parameters"
        )
    return jax.tree_util.tree_unflatten(treedef, leaves), fresh
