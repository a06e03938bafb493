"""The pure train step (loss, grads, clip, AdamW, EMA, NaN/Inf skip) and its sharded jit."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from t2v_jax import sharding
from t2v_jax.train.state import TrainState

# loss_fn(params, frozen, rng, batch) -> (scalar loss, aux dict of scalars)
LossFn = Callable[[Any, Any, jax.Array, Mapping[str, jax.Array]], tuple[jax.Array, Any]]
StepFn = Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def _if_finite(finite: jax.Array, update: Callable[[Any], Any], operands: Any) -> Any:
    # One lax.cond rather than a select per leaf: the old values still come back bit for bit,
    # and the compiled step does not repeat the finiteness test in every leaf's fused update
    # (at ~250 leaves x 4 trees that was a large share of the compile time).
    return jax.lax.cond(finite, update, lambda ops: ops[:-1], operands)


def _accumulated(grad_fn, params, frozen, rng, batch, steps: int):
    """((loss, aux), grads) averaged over `steps` microbatches of `batch`, one after another.

    Microbatch i holds rows i, i + steps, i + 2 * steps, ... of every batch entry: a batch
    sharded over its leading axis keeps each device's rows on that device (the [B] -> [B/steps,
    steps] reshape splits each device's contiguous block), so no microbatch needs a reshuffle.
    """

    def split(x):  # [B, ...] -> [steps, B / steps, ...]
        return jnp.moveaxis(x.reshape(x.shape[0] // steps, steps, *x.shape[1:]), 1, 0)

    def body(total, xs):
        i, microbatch = xs
        out = grad_fn(params, frozen, jax.random.fold_in(rng, i), microbatch)
        return jax.tree.map(jnp.add, total, out), None

    microbatches = jax.tree.map(split, batch)
    first = jax.tree.map(lambda x: x[0], microbatches)
    shapes = jax.eval_shape(grad_fn, params, frozen, rng, first)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(steps), microbatches))
    return jax.tree.map(lambda t: t / steps, total)


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    ema_decay: float,
    grad_accum_steps: int = 1,
) -> StepFn:
    """Builds `train_step(state, batch) -> (state, metrics)`, a pure function to jit.

    The step's randomness is `fold_in(state.rng, state.step)`, so a step's result depends only
    on (state, batch), never on how the run got there. A step whose loss or gradients are not
    finite returns the state unchanged except `step` (+1), `skipped_steps` (+1) and
    `consecutive_skips` (+1); a finite step resets `consecutive_skips` to 0.

    Metrics (scalars): loss, grad_norm (before clipping), learning_rate (of this update),
    skipped (0/1), skipped_steps, consecutive_skips, and the loss's aux scalars.

    With `grad_accum_steps` k > 1 the loss, aux and gradients are the means over k microbatches
    of batch / k examples (`train.grad_accum_steps`); k = 1 is the plain step, unchanged.
    """
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if grad_accum_steps == 1:
            (loss, aux), grads = grad_fn(state.params, state.frozen, rng, batch)
        else:
            (loss, aux), grads = _accumulated(
                grad_fn, state.params, state.frozen, rng, batch, grad_accum_steps
            )
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(operands):
            params, ema_params, opt_state, grads = operands
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return params, ema_update(ema_params, params, ema_decay), opt_state

        params, ema_params, opt_state = _if_finite(
            finite, update, (state.params, state.ema_params, state.opt_state, grads)
        )
        skipped = (~finite).astype(jnp.int32)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            ema_params=ema_params,
            opt_state=opt_state,
            skipped_steps=state.skipped_steps + skipped,
            consecutive_skips=jnp.where(finite, 0, state.consecutive_skips + 1),
        )
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            # The optimizer's count = applied updates = consumed steps minus skipped ones.
            "learning_rate": lr_schedule(state.step - state.skipped_steps),
            "skipped": skipped,
            "skipped_steps": new_state.skipped_steps,
            "consecutive_skips": new_state.consecutive_skips,
        }
        metrics.update({k: v for k, v in dict(aux or {}).items() if jnp.ndim(v) == 0})
        return new_state, metrics

    return train_step


def batch_shardings(batch_spec: Mapping[str, Any], mesh: Mesh) -> dict[str, Any]:
    """Batch-axis NamedShardings for every entry of a batch (arrays or ShapeDtypeStructs)."""
    return {k: sharding.batch_sharding(mesh, len(np.shape(v))) for k, v in batch_spec.items()}


def jit_train_step(
    train_step: StepFn, state_shardings: Any, batch_spec: Mapping[str, Any], mesh: Mesh
) -> Callable:
    """Jits the step once with explicit in/out shardings and the state donated.

    Donating the state lets XLA update params and optimizer moments in place (no second copy
    of the state in device memory); the caller must not touch the old state afterwards.
    """
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_shardings(batch_spec, mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
