"""The training state pytree, the optimizer, and creating the state already sharded on a mesh."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from t2v_jax import sharding


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and loop settings of one stage (`config.train`).

    Fields:
      batch_size: global batch (all hosts together); a multiple of the mesh's data*fsdp times
        `grad_accum_steps`.
      grad_accum_steps: split each step's batch into this many microbatches, run one after
        another (a `lax.scan`) and average their gradients before the one optimizer update:
        activation memory of batch_size / grad_accum_steps examples for the optimisation of the
        whole batch (e.g. under one example per chip on a big slice). The microbatches draw
        their noise from `fold_in(step key, i)`, so a run's randomness depends on this setting.
      num_steps: total train steps (batches consumed, skipped ones included).
      learning_rate: peak learning rate of AdamW.
      warmup_steps: linear warmup from 0 to the peak.
      lr_schedule: "cosine" (decay to `end_learning_rate_factor * peak` at num_steps) or
        "constant" (after warmup).
      end_learning_rate_factor: final / peak learning rate for the cosine schedule.
      weight_decay: AdamW decoupled weight decay, applied to matrices/kernels only (not to biases
        and norm scales, whose decay only hurts).
      adam_b1, adam_b2, adam_eps: AdamW moments.
      grad_clip_norm: global-norm clipping threshold; 0 disables clipping.
      ema_decay: EMA of the params used for sampling; 0 makes the EMA a copy of the params.
      max_consecutive_skips: stop (non-zero exit) after this many non-finite steps in a row.
      train_text_encoder: with token ids in the batch, train the T5 encoder jointly (its params
        join the trained params); otherwise it is frozen.
      cond_noise_min_t, cond_noise_max_t: SR stages: range of the time t to which the upsampled
        low-res conditioning is noised during training (noise conditioning augmentation; the
        text dropout for guidance lives in `diffusion.loss.text_dropout`).
      distributed_init: "auto" connects the processes of a multi-host run (a Cloud TPU slice
        of several hosts, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set)
        with `jax.distributed.initialize`, "on" always does, "off" never does (and refuses a
        multi-host environment). See `t2v_jax.distributed`.
      init_from: warm start: a workdir of an earlier run whose newest usable checkpoint gives
        the initial params, EMA params and frozen params, matched by path (the model may have
        gained blocks, which keep their init; every saved parameter must fit this model). The
        optimizer, the step count and the data position start fresh; that directory is only
        read. Used only when this run's own workdir has no checkpoint yet: a resumed run
        continues from its own.
    """

    batch_size: int = 8
    grad_accum_steps: int = 1
    num_steps: int = 1000
    learning_rate: float = 1e-4
    warmup_steps: int = 100
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    end_learning_rate_factor: float = 0.0
    weight_decay: float = 0.0
    adam_b1: float = 0.9
    adam_b2: float = 0.99
    adam_eps: float = 1e-8
    grad_clip_norm: float = 1.0
    ema_decay: float = 0.9999
    max_consecutive_skips: int = 10
    train_text_encoder: bool = False
    cond_noise_min_t: float = 0.0
    cond_noise_max_t: float = 0.5
    distributed_init: Literal["auto", "on", "off"] = "auto"
    init_from: str | None = None

    def __post_init__(self):
        for name in ("batch_size", "grad_accum_steps", "num_steps", "max_consecutive_skips"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(
                f"train.batch_size={self.batch_size} must be a multiple of "
                f"train.grad_accum_steps={self.grad_accum_steps}"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.cond_noise_min_t <= self.cond_noise_max_t <= 1.0:
            raise ValueError(
                "train.cond_noise_min_t <= train.cond_noise_max_t must lie in [0, 1], got "
                f"{self.cond_noise_min_t}, {self.cond_noise_max_t}"
            )
        if self.grad_clip_norm < 0:
            raise ValueError(f"train.grad_clip_norm must be >= 0, got {self.grad_clip_norm}")


class TrainState(flax.struct.PyTreeNode):
    """Everything a resumed run needs besides the data iterator position.

    `step` counts consumed batches (skipped non-finite steps included), so the data position,
    the step RNG `fold_in(rng, step)` and the checkpoint step all agree; the optimizer's own
    count only advances on applied updates. `frozen` holds parameters that are used but not
    trained (a frozen T5 encoder), or an empty dict.
    """

    step: jax.Array  # int32 []
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array  # uint32 [2], the run's base key; never advanced (steps fold in `step`)
    frozen: Any
    skipped_steps: jax.Array  # int32 [], non-finite steps skipped so far
    consecutive_skips: jax.Array  # int32 [], non-finite steps in a row up to now


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Warmup + cosine or constant schedule, indexed by the number of applied updates."""
    if cfg.lr_schedule == "constant":
        warmup = optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
        if cfg.warmup_steps == 0:
            return optax.constant_schedule(cfg.learning_rate)
        return optax.join_schedules(
            [warmup, optax.constant_schedule(cfg.learning_rate)], [cfg.warmup_steps]
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if cfg.warmup_steps else cfg.learning_rate,
        peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.num_steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * cfg.end_learning_rate_factor,
    )


def _decay_mask(params: Any) -> Any:
    return jax.tree.map(lambda x: x.ndim > 1, params)


def make_optimizer(cfg: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with global-norm clipping; returns (optimizer, learning-rate schedule)."""
    schedule = learning_rate_schedule(cfg)
    adamw = optax.adamw(
        schedule,
        b1=cfg.adam_b1,
        b2=cfg.adam_b2,
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        mask=_decay_mask,
    )
    if cfg.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), adamw), schedule
    return adamw, schedule


InitParamsFn = Callable[[jax.Array], tuple[Any, Any]]


def make_init_fn(
    init_params: InitParamsFn, optimizer: optax.GradientTransformation
) -> Callable[[jax.Array], TrainState]:
    """The state initialiser: `init(rng) -> TrainState` with boxed (logically named) params.

    Args:
      init_params: `rng -> (trainable params, frozen params)`, both trees of
        `nn.LogicallyPartitioned` leaves as linen's `init` returns them (frozen may be {}).
      optimizer: its state is built from the boxed params, so it inherits their logical names
        and shards like them.
    """

    def init(rng: jax.Array) -> TrainState:
        params_rng, state_rng = jax.random.split(rng)
        params, frozen = init_params(params_rng)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            # A real copy: the EMA must not alias the params buffers, which the step donates.
            ema_params=jax.tree.map(jnp.copy, params),
            opt_state=optimizer.init(params),
            rng=state_rng,
            frozen=frozen,
            skipped_steps=jnp.zeros((), jnp.int32),
            consecutive_skips=jnp.zeros((), jnp.int32),
        )

    return init


def state_shardings(
    init: Callable[[jax.Array], TrainState], mesh: Mesh, rules: sharding.Rules
) -> tuple[TrainState, TrainState]:
    """Abstract state and NamedShardings, from shapes only (nothing is allocated).

    Returns:
      (abstract, shardings): `abstract` is the unboxed TrainState of `jax.ShapeDtypeStruct`s that
      carry their target sharding (what orbax restores onto); `shardings` the matching
      NamedSharding tree (for `jit` in/out shardings).
    """
    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
    shardings = sharding.logical_shardings(boxed, mesh, rules)
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        nn.unbox(boxed),
        shardings,
    )
    return abstract, shardings


def create_train_state(
    init: Callable[[jax.Array], TrainState], seed: int, mesh: Mesh, rules: sharding.Rules
) -> tuple[TrainState, TrainState]:
    """Creates the state directly in its sharded layout: no full copy on one device first.

    Returns:
      (state, shardings) where shardings is the NamedSharding tree of the state.
    """
    _, shardings = state_shardings(init, mesh, rules)
    rng = jax.random.PRNGKey(seed)  # uint32 [2]: orbax and JSON friendly, unlike typed keys
    make = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)
    return make(rng), shardings
