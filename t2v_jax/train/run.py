"""The whole training run of one cascade stage from an experiment config (what `t2v-train` calls).

`train_and_evaluate(config, workdir)` builds the diffusion task of `config.stage`
(`t2v_jax.train.task`) and runs the model-agnostic loop (`t2v_jax.train.loop.train`) on it,
resuming from `workdir` when it holds a usable checkpoint. Importable from a notebook.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from t2v_jax import configlib
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
    """
    train_cfg = configlib.from_config(state_lib.TrainConfig, config.get("train", {}), "train")
    if train_cfg.distributed_init and not jax.distributed.is_initialized():
        jax.distributed.initialize()
    return loop.train(
        config, workdir, task_lib.diffusion_task(config), devices=devices, on_metrics=on_metrics
    )
