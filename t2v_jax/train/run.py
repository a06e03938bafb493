"""The whole training run of one cascade stage from an experiment config (what `t2v-train` calls).

`train_and_evaluate(config, workdir)` builds the diffusion task of `config.stage`
(`t2v_jax.train.task`) and runs the model-agnostic loop (`t2v_jax.train.loop.train`) on it,
resuming from `workdir` when it holds a usable checkpoint. Importable from a notebook.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from t2v_jax import configlib, distributed
from t2v_jax.train import loop
from t2v_jax.train import state as state_lib
from t2v_jax.train import task as task_lib


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    devices: Sequence[Any] | None = None,
    on_metrics: loop.MetricsCallback | None = None,
) -> loop.TrainResult:
    """Trains the stage described by `config` in `workdir` (resuming if possible).

    The stage (base / tsr / ssr), model, text tower, diffusion settings and data all come from
    `config`; see `configs/tiny.py` for the sections. `devices` defaults to all devices;
    `on_metrics(step, metrics)` is called after every step (see `loop.train`).

    On a pod every host calls this with the same config; `setup_process` (called here, a no-op
    once done) first connects the hosts when `config.train.distributed_init` asks.
    """
    setup_process(config)
    return loop.train(
        config, workdir, task_lib.diffusion_task(config), devices=devices, on_metrics=on_metrics
    )


def setup_process(config: ml_collections.ConfigDict) -> bool:
    """Connects this process to the others of a multi-host run per `train.distributed_init`.

    Call before anything touches JAX devices (the CLI does it first). Returns whether the run
    is distributed. Raises `t2v_jax.distributed.DistributedError` for a half-set environment,
    an unreachable coordinator, or a multi-host environment with distributed_init="off".
    """
    train_cfg = configlib.from_config(state_lib.TrainConfig, config.get("train", {}), "train")
    return distributed.initialize(train_cfg.distributed_init)


def validate(
    config: ml_collections.ConfigDict, *, num_devices: int, num_processes: int = 1
) -> loop.Task:
    """Every check the trainer makes of `config` before it reads data or compiles.

    For a run on `num_devices` chips in `num_processes` hosts: the task's sections (stage,
    model, text, diffusion, data; `diffusion_task` builds no data and compiles nothing while
    in-loop sampling is off) and the loop's (train, checkpoint, log, mesh, batch split). Needs
    no devices, so a pod config can be checked on a laptop. Returns the task.
    """
    task = task_lib.diffusion_task(config)
    loop.check_config(config, num_devices, num_processes)
    return task
