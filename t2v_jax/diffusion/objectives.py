"""Training objective: v-prediction MSE with SNR weightings, text dropout and noise augmentation.

Loss weightings are written in v-space. With `x_hat = alpha z - sigma v_hat`, the v-loss equals
`(1 + SNR) * ||x - x_hat||^2`, so an x-space weight w_x(SNR) becomes `w_x / (1 + SNR)` here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp

from t2v_jax.diffusion import schedules

ModelFn = Callable[[Any, jax.Array, jax.Array, Mapping[str, Any]], jax.Array]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """How the diffusion loss samples noise levels, weights them and drops conditioning.

    Attributes:
      weighting: "v" (plain v-MSE; x-space weight 1 + SNR), "snr_trunc" (x-space weight
        max(SNR, 1), Salimans & Ho) or "min_snr" (x-space weight min(SNR, gamma), Hang et al.).
      min_snr_gamma: gamma of the "min_snr" weighting.
      text_dropout: probability that an example's text conditioning is replaced by the null
        embedding (classifier-free guidance training).
      low_discrepancy: draw the batch's t as u0 + i / B (mod 1) (VDM) instead of i.i.d. uniform.
    """

    weighting: Literal["v", "snr_trunc", "min_snr"] = "v"
    min_snr_gamma: float = 5.0
    text_dropout: float = 0.1
    low_discrepancy: bool = False

    def __post_init__(self):
        if self.weighting not in ("v", "snr_trunc", "min_snr"):
            raise ValueError(
                f"LossConfig.weighting: {self.weighting!r} is not one of 'v', 'snr_trunc', "
                "'min_snr'"
            )
        if self.min_snr_gamma <= 0:
            raise ValueError(f"LossConfig.min_snr_gamma must be > 0, got {self.min_snr_gamma}")
        if not 0.0 <= self.text_dropout <= 1.0:
            raise ValueError(f"LossConfig.text_dropout must be in [0, 1], got {self.text_dropout}")


def loss_weight(lam: jax.Array, cfg: LossConfig) -> jax.Array:
    """The v-space loss weight for log-SNR `lam` [B] (computed in log space, stable at +-20)."""
    lam = lam.astype(jnp.float32)
    if cfg.weighting == "v":
        return jnp.ones_like(lam)
    if cfg.weighting == "snr_trunc":
        # max(SNR, 1) / (1 + SNR) = sigmoid(|lambda|).
        return jax.nn.sigmoid(jnp.abs(lam))
    # min(SNR, gamma) / (1 + SNR).
    log_gamma = jnp.log(jnp.float32(cfg.min_snr_gamma))
    return jnp.exp(jnp.minimum(lam, log_gamma) + jax.nn.log_sigmoid(-lam))


def _is_key_batch(rng: jax.Array, batch: int) -> bool:
    typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
    return rng.ndim == (1 if typed else 2) and rng.shape[0] == batch


def example_keys(rng: jax.Array, batch: int) -> jax.Array:
    """[B] keys: `rng` itself if it is already a batch of B keys, else split(rng, B)."""
    return rng if _is_key_batch(rng, batch) else jax.random.split(rng, batch)


def drop_cond(
    rng: jax.Array, cond: Mapping[str, Any], null_cond: Mapping[str, Any], p: float
) -> dict[str, Any]:
    """Replaces, per example with probability p, the entries of `cond` named in `null_cond`.

    Each `null_cond` leaf is broadcast to the matching `cond` leaf, so a single null embedding
    [1, L, D] (or [L, D]) serves the whole batch. All entries of one example drop together.
    """
    missing = sorted(set(null_cond) - set(cond))
    if missing:
        raise ValueError(f"null_cond: keys {missing} are not in cond (cond has {sorted(cond)})")
    leaves = jax.tree.leaves({k: cond[k] for k in null_cond})
    batch = leaves[0].shape[0]
    drop = jax.random.bernoulli(rng, p, (batch,))  # [B]
    out = dict(cond)
    for key, null in null_cond.items():

        def pick(n, c):
            n = jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape)
            return jnp.where(drop.reshape((batch,) + (1,) * (c.ndim - 1)), n, c)

        out[key] = jax.tree.map(pick, null, cond[key])
    return out


def drop_text(
    rng: jax.Array,
    text_emb: jax.Array,
    text_mask: jax.Array,
    null_emb: jax.Array,
    null_mask: jax.Array,
    p: float,
) -> tuple[jax.Array, jax.Array]:
    """Replaces whole examples' text (emb [B, L, D], mask [B, L]) by the null text w.p. p."""
    out = drop_cond(
        rng,
        {"text_emb": text_emb, "text_mask": text_mask},
        {"text_emb": null_emb, "text_mask": null_mask},
        p,
    )
    return out["text_emb"], out["text_mask"]


def augment_conditioning(
    rng: jax.Array,
    cond_video: jax.Array,
    schedule_cfg: schedules.ScheduleConfig,
    *,
    min_t: float = 0.0,
    max_t: float = 1.0,
    fixed_t: float | jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Noise conditioning augmentation for SR stages (Imagen; Cascaded Diffusion Models).

    The low-res conditioning video is diffused to a level t: during training t ~ U(min_t, max_t)
    per example, at sampling a fixed t. The returned log-SNR is fed to the model so it knows
    how corrupted its conditioning is.

    Args:
      rng: one key (split per example) or a batch of B keys (one per sample, for sampling
        results that do not depend on the batch size).
      cond_video: the (upsampled) low-res video [B, T, H, W, C].
      schedule_cfg: the schedule mapping t to log-SNR.
      min_t, max_t: the training range of t.
      fixed_t: if given, every example uses this t (sampling).

    Returns:
      (noised cond_video [B, T, H, W, C], cond_log_snr [B]).
    """
    if not 0.0 <= min_t <= max_t <= 1.0:
        raise ValueError(f"min_t/max_t must satisfy 0 <= min_t <= max_t <= 1, got {min_t}, {max_t}")
    batch = cond_video.shape[0]
    keys = example_keys(rng, batch)
    if fixed_t is None:
        u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0)))(keys)  # [B]
        t = min_t + (max_t - min_t) * u
    else:
        t = jnp.broadcast_to(jnp.asarray(fixed_t, jnp.float32), (batch,))
    lam = schedules.log_snr(t, schedule_cfg)  # [B]
    eps = jax.vmap(
        lambda k: jax.random.normal(
            jax.random.fold_in(k, 1), cond_video.shape[1:], cond_video.dtype
        )
    )(keys)
    return schedules.add_noise(cond_video, eps, lam), lam


def diffusion_loss(
    model_fn: ModelFn,
    params: Any,
    rng: jax.Array,
    x0: jax.Array,
    cond: Mapping[str, Any],
    schedule_cfg: schedules.ScheduleConfig,
    loss_cfg: LossConfig,
    *,
    null_cond: Mapping[str, Any] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted v-prediction MSE at per-example noise levels t ~ U(0, 1).

    Conditioning noise augmentation is not applied here: SR stages call `augment_conditioning`
    and put its outputs in `cond` ('cond_video', 'cond_log_snr') before calling this.

    Args:
      model_fn: `model_fn(params, z [B, ...], log_snr [B], cond) -> v_pred [B, ...]`.
      params: what `model_fn` differentiates through.
      rng: a PRNG key (t, noise and dropout are drawn from it).
      x0: clean data [B, T, H, W, C] (any [B, ...]).
      cond: conditioning pytree, each leaf with batch B leading.
      schedule_cfg: the log-SNR schedule.
      loss_cfg: weighting, text dropout, t sampling.
      null_cond: the null conditioning, e.g. {'text_emb': null_emb, 'text_mask': null_mask};
        required when loss_cfg.text_dropout > 0 and cond holds 'text_emb'.

    Returns:
      (loss scalar, aux) with aux = {'mse_v': unweighted mean v-MSE, 'per_example_mse_v' [B],
      'log_snr' [B], 't' [B]}.
    """
    batch = x0.shape[0]
    k_t, k_eps, k_drop = jax.random.split(rng, 3)
    if loss_cfg.low_discrepancy:
        t = jnp.mod(jax.random.uniform(k_t) + jnp.arange(batch) / batch, 1.0)
    else:
        t = jax.random.uniform(k_t, (batch,))
    lam = schedules.log_snr(t, schedule_cfg)  # [B]
    eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
    x0 = x0.astype(jnp.float32)
    z = schedules.add_noise(x0, eps, lam)
    if loss_cfg.text_dropout > 0 and "text_emb" in cond:
        if null_cond is None:
            raise ValueError(
                "null_cond: required when loss_cfg.text_dropout > 0 and cond has 'text_emb' "
                "(pass {'text_emb': null_emb, 'text_mask': null_mask}, or set text_dropout=0)"
            )
        cond = drop_cond(k_drop, cond, null_cond, loss_cfg.text_dropout)
    v_pred = model_fn(params, z, lam, cond).astype(jnp.float32)
    v_target = schedules.v_from_x_eps(x0, eps, lam)
    per_example = jnp.mean(jnp.square(v_pred - v_target), axis=tuple(range(1, x0.ndim)))  # [B]
    loss = jnp.mean(loss_weight(lam, loss_cfg) * per_example)
    aux = {"mse_v": jnp.mean(per_example), "per_example_mse_v": per_example, "log_snr": lam, "t": t}
    return loss, aux
