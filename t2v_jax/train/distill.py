"""Distillation targets and losses: guidance distillation and progressive distillation (pure).

Guidance distillation (Meng et al. 2023, "On distillation of guided diffusion models", as used
by Imagen Video): a student that takes the guidance weight w as an input learns, in one call,
the teacher's classifier-free guided prediction `v_c + (w - 1) (v_c - v_u)` (the project's
convention, `t2v_jax.diffusion.guidance`), with w drawn per example from a range.

Progressive distillation (Salimans & Ho 2022): on the teacher's N-step DDIM grid
(`samplers.sampling_log_snrs(N)`), one deterministic DDIM step of the student from grid point
2j to 2j + 2 must land where the teacher's two steps 2j -> 2j + 1 -> 2j + 2 land. The target is
the x that makes a single DDIM step do so (the paper's x-target), expressed as v; the loss is
the v-MSE with truncated-SNR weighting (x-space weight max(SNR, 1)). The student then samples
with N / 2 DDIM steps on the same time grid.

Model functions here are `fn(params, z [B, ...], log_snr [B], cond, w [B]) -> v [B, ...]`;
`w` is ignored by models without a guidance input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp

from t2v_jax.diffusion import objectives, samplers, schedules

# fn(params, z [B, ...], log_snr [B], cond, w [B]) -> v [B, ...]
WeightModelFn = Callable[[Any, jax.Array, jax.Array, Mapping[str, Any], jax.Array], jax.Array]
# fn(z [B, ...], log_snr [B], cond, w [B]) -> v [B, ...] (the teacher, params closed over)
TeacherFn = Callable[[jax.Array, jax.Array, Mapping[str, Any], jax.Array], jax.Array]

Mode = Literal["guidance", "progressive"]


@dataclasses.dataclass(frozen=True)
class DistillSpec:
    """What the student learns (the pure part of a distillation run's settings).

    Attributes:
      mode: "guidance" (one call = the teacher's guided v, at t ~ U(0, 1)) or "progressive"
        (one DDIM step = the teacher's two, on the teacher's grid of `teacher_steps`).
      teacher_steps: the teacher's number of DDIM steps N (progressive; even).
      guidance_min, guidance_max: the range w is drawn from, uniformly per example (for a
        student without a guidance input set both to the teacher's weight, 1 for SR stages).
      weighting: the v-space loss weighting (`objectives.LossConfig.weighting`); "snr_trunc"
        is Salimans & Ho's max(SNR, 1) in x-space.
    """

    mode: Mode
    teacher_steps: int = 2
    guidance_min: float = 1.0
    guidance_max: float = 1.0
    weighting: Literal["v", "snr_trunc", "min_snr"] = "snr_trunc"

    def __post_init__(self):
        if self.mode not in ("guidance", "progressive"):
            raise ValueError(f"mode: {self.mode!r} is not one of 'guidance', 'progressive'")
        if self.mode == "progressive":
            check_halvable(self.teacher_steps, "teacher_steps")
        if not self.guidance_min <= self.guidance_max:
            raise ValueError(
                f"guidance_min ({self.guidance_min}) must be <= guidance_max ({self.guidance_max})"
            )
        objectives.LossConfig(weighting=self.weighting)  # validates the name

    @property
    def student_steps(self) -> int:
        """The student's DDIM steps: half the teacher's (progressive), else the teacher's."""
        return self.teacher_steps // 2 if self.mode == "progressive" else self.teacher_steps


def check_halvable(num_steps: int, name: str) -> None:
    """Raises ValueError unless `num_steps` is an even count >= 2 (one progressive round)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int):
        raise ValueError(f"{name}: expected an int, got {num_steps!r}")
    if num_steps < 2 or num_steps % 2:
        raise ValueError(
            f"{name}: {num_steps} steps do not halve; progressive distillation needs an even "
            "step count >= 2 (each round halves it)"
        )


def guided_v(v_cond: jax.Array, v_uncond: jax.Array, w: jax.Array) -> jax.Array:
    """Classifier-free guidance with a per-example weight w [B]: v_c + (w - 1)(v_c - v_u)."""
    w = schedules.broadcast_to(jnp.asarray(w, v_cond.dtype), v_cond)
    return v_cond + (w - 1) * (v_cond - v_uncond)


def cfg_teacher(
    model_fn: Callable[[Any, jax.Array, jax.Array, Mapping[str, Any]], jax.Array],
    params: Any,
    null_cond: Mapping[str, Any],
) -> TeacherFn:
    """A teacher without a guidance input, guided by w: conditional and unconditional halves in
    one call on a doubled batch (as the sampler does), combined by `guided_v`."""

    def fn(z, lam, cond, w):
        uncond = objectives.drop_cond(jax.random.key(0), cond, null_cond, 1.0)
        both = jax.tree.map(lambda c, u: jnp.concatenate([c, u], axis=0), dict(cond), uncond)
        v = model_fn(params, jnp.concatenate([z, z]), jnp.concatenate([lam, lam]), both)
        v_cond, v_uncond = jnp.split(v, 2, axis=0)
        return guided_v(v_cond, v_uncond, w)

    return fn


def ddim_x_target(
    z: jax.Array, lam: jax.Array, z_target: jax.Array, lam_target: jax.Array
) -> jax.Array:
    """The x for which one deterministic DDIM step from (z, lam) lands on z_target at lam_target.

    DDIM: z' = alpha' x + sigma' eps with eps = (z - alpha x) / sigma, so
    x = (z' - (sigma'/sigma) z) / (alpha' - (sigma'/sigma) alpha) (Salimans & Ho, Alg. 2);
    at lam_target = +inf (the clean end) this is z_target itself. lam, lam_target: [B].
    """
    alpha, sigma = (schedules.broadcast_to(a, z) for a in schedules.alpha_sigma(lam))
    alpha_t, sigma_t = (schedules.broadcast_to(a, z) for a in schedules.alpha_sigma(lam_target))
    ratio = sigma_t / sigma
    return (z_target - ratio * z) / (alpha_t - ratio * alpha)


def ddim_move(z: jax.Array, v: jax.Array, lam: jax.Array, lam_next: jax.Array) -> jax.Array:
    """One deterministic DDIM step of a v-prediction from lam to lam_next (both [B])."""
    x0 = schedules.x_from_v(z, v, lam)
    eps = schedules.eps_from_v(z, v, lam)
    alpha_n, sigma_n = (schedules.broadcast_to(a, z) for a in schedules.alpha_sigma(lam_next))
    return alpha_n * x0 + sigma_n * eps


def two_step_target(
    teacher: TeacherFn,
    z: jax.Array,
    cond: Mapping[str, Any],
    w: jax.Array,
    lam: jax.Array,
    lam_mid: jax.Array,
    lam_end: jax.Array,
) -> jax.Array:
    """The student's v-target: the teacher's DDIM steps lam -> lam_mid -> lam_end, as one step.

    Returns v such that `ddim_move(z, v, lam, lam_end)` equals the teacher's two steps.
    """
    z_mid = ddim_move(z, teacher(z, lam, cond, w), lam, lam_mid)
    z_end = ddim_move(z_mid, teacher(z_mid, lam_mid, cond, w), lam_mid, lam_end)
    x_target = ddim_x_target(z, lam, z_end, lam_end)
    return schedules.v_from_x(z, x_target, lam)


def distill_loss(
    student_fn: WeightModelFn,
    params: Any,
    teacher: TeacherFn,
    rng: jax.Array,
    x0: jax.Array,
    cond: Mapping[str, Any],
    schedule_cfg: schedules.ScheduleConfig,
    spec: DistillSpec,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted v-MSE between the student and its target at noised data.

    Noise levels: t ~ U(0, 1) (guidance), or one of the student's grid points (progressive:
    index j uniform in [0, N/2), log-SNRs from the teacher's grid at 2j, 2j + 1, 2j + 2).
    The target is computed without gradient. w ~ U(guidance_min, guidance_max) per example.

    Args:
      student_fn: `fn(params, z, lam, cond, w) -> v`, differentiated through `params`.
      teacher: `fn(z, lam, cond, w) -> guided v` (see `cfg_teacher`).
      x0: clean data [B, T, H, W, C] (any [B, ...]).
      cond: conditioning, each leaf with batch B leading.

    Returns:
      (loss, aux) with aux = {'mse_v': unweighted mean v-MSE, 'log_snr' [B], 'guidance' [B]}.
    """
    batch = x0.shape[0]
    k_t, k_eps, k_w = jax.random.split(rng, 3)
    w = jax.random.uniform(k_w, (batch,), minval=spec.guidance_min, maxval=spec.guidance_max)
    eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
    x0 = x0.astype(jnp.float32)
    if spec.mode == "guidance":
        lam = schedules.log_snr(jax.random.uniform(k_t, (batch,)), schedule_cfg)  # [B]
        z = schedules.add_noise(x0, eps, lam)
        target = teacher(z, lam, cond, w)
    else:
        grid = samplers.sampling_log_snrs(spec.teacher_steps, schedule_cfg)  # [N + 1]
        j = jax.random.randint(k_t, (batch,), 0, spec.student_steps)
        lam, lam_mid, lam_end = grid[2 * j], grid[2 * j + 1], grid[2 * j + 2]
        z = schedules.add_noise(x0, eps, lam)
        target = two_step_target(teacher, z, cond, w, lam, lam_mid, lam_end)
    target = jax.lax.stop_gradient(target.astype(jnp.float32))
    v_pred = student_fn(params, z, lam, cond, w).astype(jnp.float32)
    per_example = jnp.mean(jnp.square(v_pred - target), axis=tuple(range(1, x0.ndim)))  # [B]
    weight = objectives.loss_weight(lam, objectives.LossConfig(weighting=spec.weighting))
    loss = jnp.mean(weight * per_example)
    return loss, {"mse_v": jnp.mean(per_example), "log_snr": lam, "guidance": w}
