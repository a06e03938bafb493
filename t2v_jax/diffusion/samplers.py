"""Samplers (ancestral DDPM, DDIM, DPM-Solver++(2M)) for v-prediction models, each one lax.scan.

Every sampler walks a grid of log-SNR values from noisy to clean: `log_snrs[0..N-1]` are where
the model is evaluated and `log_snrs[N]` is the target of the last step (+inf = clean data, so
the last step returns the model's x0 prediction, like diffusers with `set_alpha_to_one` /
`final_sigmas_type="zero"`). All noise for sample b comes from `rngs[b]`, so a sample does not
change with the batch size or the number of devices the batch is sharded over.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp

from t2v_jax.diffusion import guidance as guidance_lib
from t2v_jax.diffusion import reconstruction, schedules

SamplerName = Literal["ddim", "ddpm", "dpmpp_2m"]
SAMPLERS = ("ddim", "ddpm", "dpmpp_2m")
TimeGrid = Literal["uniform", "karras"]
TIME_GRIDS = ("uniform", "karras")
# EDM's (Karras et al. 2022) noise range and spacing, in sigma = exp(-lambda / 2) (the
# variance-exploding noise-to-signal ratio), for data in [-1, 1].
KARRAS_SIGMA_RANGE = (0.002, 80.0)
KARRAS_RHO = 7.0


def check_time_grid(grid: str, name: str = "time_grid") -> None:
    """Raises ValueError naming `name` unless `grid` is one of TIME_GRIDS."""
    if grid not in TIME_GRIDS:
        raise ValueError(f"{name}: one of {TIME_GRIDS}, got {grid!r}")


def sampling_log_snrs(
    num_steps: int, schedule_cfg: schedules.ScheduleConfig, grid: TimeGrid = "uniform"
) -> jax.Array:
    """The grid [num_steps + 1] of log-SNRs a run walks: N model evaluations, then +inf.

    "uniform": lambda(t) at t = 1, 1 - 1/N, ..., 1/N (uniform in the schedule's time; what
    training samples t from, and what progressive distillation halves). Its last evaluation is
    at lambda(1/N) (4.6 for the cosine schedule at 16 steps: noise at a tenth of the signal),
    so fine detail below that noise is only ever predicted, once, by the last step's x0.
    "karras": EDM's spacing, sigma_i = (s_max^(1/rho) + i / (N - 1) (s_min^(1/rho) -
    s_max^(1/rho)))^rho with rho = 7 and sigma = exp(-lambda / 2), between the schedule's ends
    clipped to EDM's [0.002, 80]: more of the steps at low noise, where detail is drawn.
    """
    check_time_grid(grid)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if grid == "uniform":
        t = jnp.linspace(1.0, 0.0, num_steps + 1)[:-1]
        lams = schedules.log_snr(t, schedule_cfg)
    else:
        lo, hi = KARRAS_SIGMA_RANGE
        s_max = min(math.exp(-schedule_cfg.logsnr_min / 2), hi)
        s_min = max(math.exp(-schedule_cfg.logsnr_max / 2), lo)
        frac = jnp.linspace(0.0, 1.0, num_steps)  # [0.] for one step: the noisiest point
        r = 1.0 / KARRAS_RHO
        sigma = (s_max**r + frac * (s_min**r - s_max**r)) ** KARRAS_RHO
        lams = -2.0 * jnp.log(sigma.astype(jnp.float32))
    return jnp.concatenate([lams, jnp.array([jnp.inf], lams.dtype)])


def per_sample_normal(keys: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Standard normal noise [B, *shape[1:]] where row b depends only on keys[b]."""
    return jax.vmap(lambda k: jax.random.normal(k, tuple(shape[1:]), dtype))(keys)


def predict(
    model_fn: guidance_lib.StepModelFn,
    params: Any,
    x: jax.Array,
    lam: jax.Array,
    cond: Mapping[str, Any],
    step: jax.Array,
    thresholding: guidance_lib.ThresholdMode = "none",
    dynamic_percentile: float = 0.995,
) -> tuple[jax.Array, jax.Array]:
    """Evaluates a step-aware v-model at scalar log-SNR `lam`; returns (x0_hat, eps_hat).

    With thresholding, x0_hat is thresholded and eps_hat recomputed from it so the two stay
    consistent with x (Imagen); without, both come straight from v (no division by sigma).
    """
    lam_b = jnp.full((x.shape[0],), lam, jnp.float32)  # [B]
    v = model_fn(params, x, lam_b, cond, step).astype(x.dtype)  # [B, ...]
    x0 = schedules.x_from_v(x, v, lam_b)
    if thresholding == "none":
        return x0, schedules.eps_from_v(x, v, lam_b)
    return threshold_pair(x, x0, lam, thresholding, dynamic_percentile)


def threshold_pair(
    x: jax.Array,
    x0: jax.Array,
    lam: jax.Array,
    thresholding: guidance_lib.ThresholdMode,
    dynamic_percentile: float = 0.995,
) -> tuple[jax.Array, jax.Array]:
    """(thresholded x0, the eps that goes with it at x and scalar log-SNR `lam`)."""
    x0 = guidance_lib.threshold(x0, thresholding, dynamic_percentile)
    return x0, schedules.eps_from_x(x, x0, jnp.full((x.shape[0],), lam, jnp.float32))


def ddim_step(
    x: jax.Array,
    x0: jax.Array,
    eps: jax.Array,
    lam: jax.Array,
    lam_next: jax.Array,
    eta: float | jax.Array = 0.0,
    noise: jax.Array | None = None,
) -> jax.Array:
    """DDIM update from log-SNR `lam` to `lam_next` (> lam); eta=1 is ancestral sampling.

    x_next = alpha' x0 + sqrt(sigma'^2 - s^2) eps + s noise with
    s = eta sigma' sqrt(1 - exp(lam - lam_next)) (Song et al.'s sigma_t in log-SNR form).
    """
    del x  # DDIM only needs the (x0, eps) decomposition of x.
    alpha_n, sigma_n = schedules.alpha_sigma(lam_next)
    x_next = alpha_n * x0 + sigma_n * eps
    if noise is None:
        return x_next
    std = eta * sigma_n * jnp.sqrt(-jnp.expm1(lam - lam_next))
    dir_coef = jnp.sqrt(jnp.maximum(sigma_n**2 - std**2, 0.0))
    return alpha_n * x0 + dir_coef * eps + std * noise


def ddpm_step(
    x: jax.Array,
    x0: jax.Array,
    lam: jax.Array,
    lam_next: jax.Array,
    noise: jax.Array,
) -> jax.Array:
    """Ancestral step: a draw from the posterior q(z_next | z = x, x = x0) (Ho et al.; VDM).

    mean = alpha_c sigma_n^2 / (alpha_n sigma_c^2) x + alpha_n (1 - r) x0, var = sigma_n^2 (1 - r)
    with r = SNR_c / SNR_n = exp(lam - lam_next).
    """
    alpha_c, sigma_c = schedules.alpha_sigma(lam)
    alpha_n, sigma_n = schedules.alpha_sigma(lam_next)
    one_minus_r = -jnp.expm1(lam - lam_next)
    coef_x = alpha_c * sigma_n**2 / (alpha_n * sigma_c**2)
    return coef_x * x + alpha_n * one_minus_r * x0 + sigma_n * jnp.sqrt(one_minus_r) * noise


def dpmpp_2m_step(
    x: jax.Array,
    x0: jax.Array,
    x0_prev: jax.Array,
    lam_prev: jax.Array,
    lam: jax.Array,
    lam_next: jax.Array,
    first_order: jax.Array,
) -> jax.Array:
    """DPM-Solver++(2M) step (Lu et al. 2022, data prediction, midpoint form as in diffusers).

    With half log-SNR h = (lam_next - lam) / 2 and r = (lam - lam_prev) / (lam_next - lam):
    x_next = sigma_n / sigma_c x - alpha_n expm1(-h) D, D = x0 + (x0 - x0_prev) / (2 r), or
    D = x0 when `first_order` (the first step, and the last step when lam_next = +inf).
    """
    alpha_n, sigma_n = schedules.alpha_sigma(lam_next)
    _, sigma_c = schedules.alpha_sigma(lam)
    h = 0.5 * (lam_next - lam)
    r = jnp.where(first_order, 1.0, (lam - lam_prev) / jnp.where(first_order, 1.0, lam_next - lam))
    c = jnp.where(first_order, 0.0, 0.5 / r)
    d = x0 + c.astype(x0.dtype) * (x0 - x0_prev)
    return (sigma_n / sigma_c) * x - alpha_n * jnp.expm1(-h) * d


def _check_rngs(rngs: jax.Array, batch: int) -> None:
    typed = jax.dtypes.issubdtype(rngs.dtype, jax.dtypes.prng_key)
    ndim = 1 if typed else 2
    if rngs.ndim != ndim or rngs.shape[0] != batch:
        raise ValueError(
            f"rngs: expected a batch of {batch} PRNG keys (one per sample, shape "
            f"{(batch,) if typed else (batch, 2)}), got shape {rngs.shape}"
        )


def _check_options(sampler: str, thresholding: str, eta: float | jax.Array) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: {sampler!r} is not one of {', '.join(SAMPLERS)}")
    if thresholding not in ("none", "static", "dynamic"):
        raise ValueError(
            f"thresholding: {thresholding!r} is not one of 'none', 'static', 'dynamic'"
        )
    concrete_eta = isinstance(eta, int | float)
    if concrete_eta and not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if sampler != "ddim" and not (concrete_eta and eta == 0.0):
        raise ValueError(f"eta only applies to sampler='ddim', got eta={eta} with {sampler!r}")


def init_state(
    rngs: jax.Array, shape: tuple[int, ...], x_init: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """The sampler state before step 0: (x, x0_prev), both [B, ...].

    x is the initial noise drawn from `rngs` (or `x_init`); x0_prev, the previous step's x0
    prediction (read by DPM-Solver++(2M) only), starts as a copy of x.
    """
    shape = tuple(shape)
    _check_rngs(rngs, shape[0])
    if x_init is None:
        init_keys = jax.vmap(jax.random.split)(rngs)[:, 0]  # [B] keys
        x_init = per_sample_normal(init_keys, shape)  # [B, ...]
    elif x_init.shape != shape:
        raise ValueError(f"x_init: expected shape {shape}, got {x_init.shape}")
    return x_init, x_init


def sample_steps(
    model_fn: guidance_lib.ModelFn,
    params: Any,
    rngs: jax.Array,
    cond: Mapping[str, Any],
    state: tuple[jax.Array, jax.Array],
    start: int | jax.Array,
    length: int,
    num_steps: int,
    *,
    sampler: SamplerName = "ddim",
    schedule_cfg: schedules.ScheduleConfig | None = None,
    eta: float | jax.Array = 0.0,
    guidance: guidance_lib.GuidanceConfig | float | None = None,
    uncond_cond: Mapping[str, Any] | None = None,
    thresholding: guidance_lib.ThresholdMode = "none",
    dynamic_percentile: float = 0.995,
    timesteps_log_snr: jax.Array | None = None,
    time_grid: TimeGrid = "uniform",
    return_intermediates: bool = False,
    guidance_input: bool = False,
    known: reconstruction.KnownFrames | None = None,
    known_method: reconstruction.Method = "reconstruction",
    project_x0: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array] | tuple[tuple[jax.Array, jax.Array], dict[str, jax.Array]]:
    """Runs steps start, ..., start + length - 1 of a `num_steps`-step run as one `lax.scan`.

    `sample` is `init_state` then all `num_steps` steps in one call; running them in several
    calls (each from the state the previous one returned) gives the same result, because every
    step reads its log-SNRs and noise by its absolute index. `start` may be traced, so one
    compiled program serves every call of the same `length`: a host loop over such calls can
    report progress between them while the compiled program holds no host callback (JAX's
    persistent compilation cache does not store programs that have one).

    Args:
      state: (x, x0_prev) from `init_state` or from the previous call.
      start: the index of the first step to run (int or traced int32 scalar).
      length: how many steps this call runs (static).
      num_steps: the whole run's number of steps (fixes the log-SNR grid).
      known: given frames to stay consistent with (t2v_jax.diffusion.reconstruction): before
        each model evaluation their part of x is replaced by a forward-noised copy of them.
      known_method: "reconstruction" (also correct the prediction of the other frames by
        reconstruction guidance, Ho et al. 2022 eq. 7) or "replacement" (replacement only).
      project_x0: maps every step's x0 estimate (after thresholding) to the one the step uses,
        e.g. `consistency.project` onto the SR input; eps is recomputed from it.
      The other arguments are those of `sample`.

    Returns:
      The new state (x, x0_prev), or (state, intermediates) when return_intermediates.
    """
    _check_options(sampler, thresholding, eta)
    reconstruction.check_method(known_method)
    x_start, _ = state
    _check_rngs(rngs, x_start.shape[0])
    if timesteps_log_snr is None:
        lams = sampling_log_snrs(num_steps, schedule_cfg or schedules.ScheduleConfig(), time_grid)
    else:
        lams = jnp.asarray(timesteps_log_snr, jnp.float32)
        if lams.shape != (num_steps + 1,):
            raise ValueError(
                f"timesteps_log_snr: expected shape ({num_steps + 1},) for num_steps={num_steps}, "
                f"got {lams.shape}"
            )
    step_fn = guidance_lib.guided_model_fn(
        model_fn, guidance, uncond_cond, weight_input=guidance_input
    )
    uses_noise = sampler == "ddpm" or (
        sampler == "ddim" and not (isinstance(eta, int | float) and eta == 0.0)
    )
    step_keys = jax.vmap(jax.random.split)(rngs)[:, 1]  # [B] keys

    def body(carry, i):
        x, x0_prev = carry
        # Step i's grid points by absolute index: the first step's "previous" is itself.
        lam_prev, lam, lam_next = lams[jnp.maximum(i - 1, 0)], lams[i], lams[i + 1]
        predict_at = lambda z: predict(
            step_fn, params, z, lam, cond, i, thresholding, dynamic_percentile
        )
        if known is None:
            x0, eps = predict_at(x)
        else:
            x = reconstruction.replace_known(
                x, known, lam, reconstruction.known_noise(rngs, i, x.shape)
            )
            if known_method == "reconstruction":
                # The gradient step corrects the model's own prediction; thresholding comes
                # after it (a clipped x0 has no gradient where it clips, and an unclipped
                # corrected x0 can leave the data range).
                raw_at = lambda z: predict(step_fn, params, z, lam, cond, i, "none")
                x0, eps = reconstruction.guided_prediction(raw_at, x, lam, known)
                if thresholding != "none":  # without, the pair is the guided prediction's own
                    x0, eps = threshold_pair(x, x0, lam, thresholding, dynamic_percentile)
            else:
                x0, eps = predict_at(x)
        if project_x0 is not None:
            x0 = project_x0(x0)
            eps = schedules.eps_from_x(x, x0, jnp.full((x.shape[0],), lam, jnp.float32))
        noise = None
        if uses_noise:
            noise = per_sample_normal(
                jax.vmap(lambda k: jax.random.fold_in(k, i))(step_keys), x.shape
            )
        if sampler == "ddim":
            x_next = ddim_step(x, x0, eps, lam, lam_next, eta, noise)
        elif sampler == "ddpm":
            x_next = ddpm_step(x, x0, lam, lam_next, noise)
        else:
            first = (i == 0) | jnp.isposinf(lam_next)
            x_next = dpmpp_2m_step(x, x0, x0_prev, lam_prev, lam, lam_next, first)
        return (x_next, x0), ((x_next, x0) if return_intermediates else None)

    steps = jnp.asarray(start, jnp.int32) + jnp.arange(length, dtype=jnp.int32)
    new_state, traj = jax.lax.scan(body, state, steps)
    if return_intermediates:
        return new_state, {"x_t": traj[0], "x0_pred": traj[1]}
    return new_state


def sample(
    model_fn: guidance_lib.ModelFn,
    params: Any,
    rngs: jax.Array,
    cond: Mapping[str, Any],
    shape: tuple[int, ...],
    num_steps: int,
    *,
    sampler: SamplerName = "ddim",
    schedule_cfg: schedules.ScheduleConfig | None = None,
    eta: float | jax.Array = 0.0,
    guidance: guidance_lib.GuidanceConfig | float | None = None,
    uncond_cond: Mapping[str, Any] | None = None,
    thresholding: guidance_lib.ThresholdMode = "none",
    dynamic_percentile: float = 0.995,
    timesteps_log_snr: jax.Array | None = None,
    time_grid: TimeGrid = "uniform",
    return_intermediates: bool = False,
    x_init: jax.Array | None = None,
    guidance_input: bool = False,
    known: reconstruction.KnownFrames | None = None,
    known_method: reconstruction.Method = "reconstruction",
    project_x0: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Draws samples with one `lax.scan` over `num_steps` denoising steps.

    Jit it with `shape`, `num_steps` and the keyword options static (e.g. close over them with
    functools.partial); compile time does not depend on `num_steps`. To report progress, run
    the same steps in several calls of `sample_steps` instead (same result).

    Args:
      model_fn: `model_fn(params, x [B, ...], log_snr [B], cond) -> v [B, ...]` (v-prediction).
      params: model parameters, passed through to model_fn.
      rngs: [B] PRNG keys, one per sample (e.g. fold_in(seed_key, global_sample_index)); all of
        sample b's noise (initial and per-step) is derived from rngs[b].
      cond: conditioning pytree; every leaf has the batch B as its leading axis.
      shape: the output shape [B, T, H, W, C] (any [B, ...] works).
      num_steps: number of model evaluations (doubled batch with guidance).
      sampler: "ddim", "ddpm" (ancestral) or "dpmpp_2m".
      schedule_cfg: the log-SNR schedule (default cosine); ignored with timesteps_log_snr.
      eta: DDIM stochasticity in [0, 1] (0 deterministic, 1 ancestral); DDIM only.
      guidance: classifier-free guidance (GuidanceConfig or a constant weight); None = off.
      uncond_cond: entries replacing those of cond for the unconditional branch of guidance.
      thresholding: "none", "static" or "dynamic" thresholding of the x0 prediction.
      dynamic_percentile: the quantile used by dynamic thresholding.
      timesteps_log_snr: explicit grid [num_steps + 1] of log-SNR values, increasing; the last
        may be +inf (clean). Used for discrete-time parity with other implementations.
      time_grid: the grid otherwise, "uniform" or "karras" (see `sampling_log_snrs`).
      return_intermediates: also return {"x_t": [N, B, ...] (x after each step),
        "x0_pred": [N, B, ...] (the x0 prediction at each step)}.
      x_init: start from this [B, ...] array instead of drawing the initial noise from rngs.
      guidance_input: model_fn takes the guidance weight as `cond['guidance_weight']` [B] (a
        guidance-distilled model): one call per step, see `guided_model_fn(weight_input=...)`.
      known, known_method: given frames to stay consistent with (see `sample_steps`).
      project_x0: a map applied to every step's x0 estimate (see `sample_steps`).

    Returns:
      x0 [B, ...], or (x0, intermediates) when return_intermediates.
    """
    _check_options(sampler, thresholding, eta)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    out = sample_steps(
        model_fn,
        params,
        rngs,
        cond,
        init_state(rngs, shape, x_init),
        0,
        num_steps,
        num_steps,
        sampler=sampler,
        schedule_cfg=schedule_cfg,
        eta=eta,
        guidance=guidance,
        uncond_cond=uncond_cond,
        thresholding=thresholding,
        dynamic_percentile=dynamic_percentile,
        timesteps_log_snr=timesteps_log_snr,
        time_grid=time_grid,
        return_intermediates=return_intermediates,
        guidance_input=guidance_input,
        known=known,
        known_method=known_method,
        project_x0=project_x0,
    )
    if return_intermediates:
        (x, _), traj = out
        return x, traj
    x, _ = out
    return x
