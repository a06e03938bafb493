"""Continuous-time log-SNR noise schedules and the x / eps / v conversions built on them.

Conventions (Kingma et al. VDM; Hoogeboom et al. simple diffusion): time t in [0, 1], t = 0 is
clean data (log-SNR = `logsnr_max`) and t = 1 is pure noise (log-SNR = `logsnr_min`). A noisy
sample is `z = alpha * x + sigma * eps` with `alpha**2 = sigmoid(log_snr)` and
`sigma**2 = sigmoid(-log_snr)` (variance preserving), and the v-parameterization is
`v = alpha * eps - sigma * x`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp

ScheduleKind = Literal["cosine", "shifted_cosine", "linear"]


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """A log-SNR schedule lambda(t) on t in [0, 1].

    Attributes:
      kind: "cosine" (`-2 log tan(pi t / 2)`, clipped to [logsnr_min, logsnr_max]),
        "shifted_cosine" (cosine + `2 log(base_resolution / resolution)`, simple diffusion's
        resolution shift: more noise at higher resolutions) or "linear" (lambda linear in t,
        VDM's fixed linear schedule).
      logsnr_min: log-SNR at t = 1.
      logsnr_max: log-SNR at t = 0.
      base_resolution: the resolution the unshifted cosine was designed for (shifted_cosine).
      resolution: the resolution of the stage using the schedule (shifted_cosine).
      shift: an explicit log-SNR shift (shifted_cosine); overrides base_resolution/resolution.
    """

    kind: ScheduleKind = "cosine"
    logsnr_min: float = -20.0
    logsnr_max: float = 20.0
    base_resolution: int = 64
    resolution: int | None = None
    shift: float | None = None

    def __post_init__(self):
        if self.kind not in ("cosine", "shifted_cosine", "linear"):
            raise ValueError(
                f"ScheduleConfig.kind: {self.kind!r} is not one of 'cosine', "
                "'shifted_cosine', 'linear'"
            )
        if not (math.isfinite(self.logsnr_min) and math.isfinite(self.logsnr_max)):
            raise ValueError("ScheduleConfig.logsnr_min/logsnr_max must be finite")
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(
                f"ScheduleConfig.logsnr_min ({self.logsnr_min}) must be < logsnr_max "
                f"({self.logsnr_max})"
            )
        if self.kind == "shifted_cosine":
            if self.shift is None and self.resolution is None:
                raise ValueError("ScheduleConfig: kind='shifted_cosine' needs resolution or shift")
            if self.resolution is not None and self.resolution <= 0:
                raise ValueError(f"ScheduleConfig.resolution must be > 0, got {self.resolution}")
            if self.base_resolution <= 0:
                raise ValueError(
                    f"ScheduleConfig.base_resolution must be > 0, got {self.base_resolution}"
                )
        elif self.shift is not None or self.resolution is not None:
            raise ValueError(
                f"ScheduleConfig: shift/resolution only apply to kind='shifted_cosine', "
                f"not {self.kind!r}"
            )

    @property
    def logsnr_shift(self) -> float:
        """The additive log-SNR shift (0 unless kind is 'shifted_cosine')."""
        if self.kind != "shifted_cosine":
            return 0.0
        if self.shift is not None:
            return float(self.shift)
        return 2.0 * math.log(self.base_resolution / self.resolution)


def _cosine_t_range(logsnr_min: float, logsnr_max: float) -> tuple[float, float]:
    # tan(angle) = exp(-lambda / 2): the angles where the unclipped cosine hits the clip values.
    a_min = math.atan(math.exp(-0.5 * logsnr_max))
    a_max = math.atan(math.exp(-0.5 * logsnr_min))
    return a_min, a_max


def log_snr(t: jax.Array, cfg: ScheduleConfig) -> jax.Array:
    """log-SNR lambda(t) for t in [0, 1]; decreasing, lambda(0)=logsnr_max, lambda(1)=logsnr_min.

    For shifted_cosine the cosine is built on the clip range minus the shift, so the shifted
    schedule still spans exactly [logsnr_min, logsnr_max] (finite at both ends).
    """
    t = jnp.asarray(t, jnp.float32)
    if cfg.kind == "linear":
        return cfg.logsnr_max + (cfg.logsnr_min - cfg.logsnr_max) * t
    shift = cfg.logsnr_shift
    a_min, a_max = _cosine_t_range(cfg.logsnr_min - shift, cfg.logsnr_max - shift)
    # -2 log tan(a) = 2 log tan(pi/2 - a): use whichever angle is small, as float32 cannot
    # resolve a = pi/2 - 5e-5 (the t = 1 end) well enough.
    angle = a_min + t * (a_max - a_min)
    co_angle = (0.5 * math.pi - a_max) + (1.0 - t) * (a_max - a_min)
    lam = jnp.where(
        angle < 0.25 * math.pi, -2.0 * jnp.log(jnp.tan(angle)), 2.0 * jnp.log(jnp.tan(co_angle))
    )
    return jnp.clip(lam + shift, cfg.logsnr_min, cfg.logsnr_max)


def t_from_log_snr(lam: jax.Array, cfg: ScheduleConfig) -> jax.Array:
    """Inverse of `log_snr`: the time t in [0, 1] at which the schedule reaches `lam`."""
    lam = jnp.clip(jnp.asarray(lam, jnp.float32), cfg.logsnr_min, cfg.logsnr_max)
    if cfg.kind == "linear":
        return (lam - cfg.logsnr_max) / (cfg.logsnr_min - cfg.logsnr_max)
    shift = cfg.logsnr_shift
    a_min, a_max = _cosine_t_range(cfg.logsnr_min - shift, cfg.logsnr_max - shift)
    return (jnp.arctan(jnp.exp(-0.5 * (lam - shift))) - a_min) / (a_max - a_min)


def alpha_sigma(lam: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(alpha, sigma) with alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda); lambda=+inf ok."""
    return jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))


def broadcast_to(a: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes a per-example array [B] to [B, 1, ..., 1] so it broadcasts against x [B, ...]."""
    return jnp.reshape(a, a.shape + (1,) * (x.ndim - a.ndim))


def _coeffs(z: jax.Array, lam: jax.Array) -> tuple[jax.Array, jax.Array]:
    alpha, sigma = alpha_sigma(jnp.asarray(lam))
    return broadcast_to(alpha, z).astype(z.dtype), broadcast_to(sigma, z).astype(z.dtype)


def add_noise(x: jax.Array, eps: jax.Array, lam: jax.Array) -> jax.Array:
    """z = alpha * x + sigma * eps; x, eps [B, ...], lam [B] (or scalar)."""
    alpha, sigma = _coeffs(x, lam)
    return alpha * x + sigma * eps


def v_from_x_eps(x: jax.Array, eps: jax.Array, lam: jax.Array) -> jax.Array:
    """v = alpha * eps - sigma * x."""
    alpha, sigma = _coeffs(x, lam)
    return alpha * eps - sigma * x


def x_from_v(z: jax.Array, v: jax.Array, lam: jax.Array) -> jax.Array:
    """x = alpha * z - sigma * v (the data prediction of a v-model)."""
    alpha, sigma = _coeffs(z, lam)
    return alpha * z - sigma * v


def eps_from_v(z: jax.Array, v: jax.Array, lam: jax.Array) -> jax.Array:
    """eps = sigma * z + alpha * v (the noise prediction of a v-model)."""
    alpha, sigma = _coeffs(z, lam)
    return sigma * z + alpha * v


def eps_from_x(z: jax.Array, x: jax.Array, lam: jax.Array) -> jax.Array:
    """eps = (z - alpha * x) / sigma; lam must be finite (sigma > 0)."""
    alpha, sigma = _coeffs(z, lam)
    return (z - alpha * x) / sigma


def x_from_eps(z: jax.Array, eps: jax.Array, lam: jax.Array) -> jax.Array:
    """x = (z - sigma * eps) / alpha; lam must be > -inf (alpha > 0)."""
    alpha, sigma = _coeffs(z, lam)
    return (z - sigma * eps) / alpha


def v_from_x(z: jax.Array, x: jax.Array, lam: jax.Array) -> jax.Array:
    """v = (alpha * z - x) / sigma, the v that a model predicting `x` from `z` implies."""
    alpha, sigma = _coeffs(z, lam)
    return (alpha * z - x) / sigma
