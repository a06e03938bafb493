"""Sampling a video consistent with some given frames: reconstruction guidance and replacement.

Video Diffusion Models (Ho et al. 2022, section 3.1) generate the unknown frames x^a of a video
given known frames x^b with an unconditional video model. Both methods here keep the known part
of the latent on the forward process of the given frames: before every model evaluation at
log-SNR lambda, z^b <- alpha x^b + sigma eps ("replacement").

- "replacement" stops there: the model's x0 prediction is used as it is. The unknown frames then
  only see x^b through z^b, which at high noise says little, so they drift from it.
- "reconstruction" also corrects the unknown part of the x0 prediction by a gradient step on
  how badly the model reconstructs the known frames from the current latent (eq. 7):
      x~^a = x^^a - (w_r alpha / 2) grad_{z^a} || x^b - x^^b(z) ||^2,
  the gradient taken through the model (one extra backward pass per step). The model's own,
  unthresholded x0 is corrected, and the sampler thresholds the corrected x0 (clipping first
  would zero the gradient where it clips and let the corrected x0 leave the data range).

Both run inside the sampler's `lax.scan` (`samplers.sample_steps(..., known=...)`), so the
compiled per-stage program holds no host round trip per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from t2v_jax.diffusion import schedules

Method = Literal["reconstruction", "replacement"]
METHODS = ("reconstruction", "replacement")

# The known frames' forward-process noise is drawn from fold_in(rng, _NOISE_STREAM) of each
# sample's key; the cascade already uses stream 1 for its conditioning augmentation.
_NOISE_STREAM = 2


class KnownFrames(NamedTuple):
    """The given frames a sampler must stay consistent with (a pytree of arrays).

    Attributes:
      frames: [B, T, ...] in the model's data range; only the frames marked in `mask` are read.
      mask: [B, T] float, 1 for a given frame, 0 for a frame to generate.
      weight: scalar w_r of reconstruction guidance (unused by replacement); traced, so a new
        weight does not recompile.
    """

    frames: jax.Array
    mask: jax.Array
    weight: jax.Array


# Stage programs that take given frames are memoized as jax.export'ed programs
# (compile_cache.exported_program), whose serialized signature names every pytree type.
jax.export.register_namedtuple_serialization(KnownFrames, serialized_name="t2v_jax.KnownFrames")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"cond_method: {method!r} is not one of {', '.join(METHODS)}")


def _frame_mask(mask: jax.Array, x: jax.Array) -> jax.Array:
    """[B, T] -> [B, T, 1, ..., 1], broadcastable against x [B, T, ...]."""
    return jnp.reshape(mask, mask.shape + (1,) * (x.ndim - 2)).astype(x.dtype)


def known_noise(rngs: jax.Array, step: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The forward-process noise [B, ...] that step `step` puts on the known frames."""
    keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, _NOISE_STREAM), step))(rngs)
    return jax.vmap(lambda k: jax.random.normal(k, tuple(shape[1:]), jnp.float32))(keys)


def replace_known(z: jax.Array, known: KnownFrames, lam: jax.Array, noise: jax.Array) -> jax.Array:
    """z with its known frames replaced by alpha x^b + sigma noise at log-SNR `lam` (scalar)."""
    m = _frame_mask(known.mask, z)
    alpha, sigma = schedules.alpha_sigma(lam)
    noised = alpha * known.frames.astype(z.dtype) + sigma * noise.astype(z.dtype)
    return m * noised + (1.0 - m) * z


def guided_prediction(
    predict_fn: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    z: jax.Array,
    lam: jax.Array,
    known: KnownFrames,
) -> tuple[jax.Array, jax.Array]:
    """Reconstruction guidance (eq. 7): the model's (x0, eps) at z with x0's unknown part corrected.

    Args:
      predict_fn: z [B, T, ...] -> (x0_hat, eps_hat), the model's predictions at log-SNR `lam`.
      z: the latent [B, T, ...] (its known frames already replaced).
      lam: the scalar log-SNR of z (finite).
      known: the given frames, their mask and the weight w_r.

    Returns:
      (x0~, eps~): x0~^a = x0^^a - (w_r alpha / 2) grad_{z^a} ||m (x^b - x0^(z))||^2, x0~^b =
      x0^^b, and eps~ the noise that goes with x0~ (z = alpha x0~ + sigma eps~), so every
      sampler steps from a consistent pair.
    """
    (x0, eps), vjp = jax.vjp(predict_fn, z)
    m = _frame_mask(known.mask, z)
    residual = m * (known.frames.astype(z.dtype) - x0)
    # d/dz ||m (x^b - x0(z))||^2 = J^T (-2 m (x^b - x0)); eps's cotangent is zero.
    (grad,) = vjp((-2.0 * residual, jnp.zeros_like(eps)))
    alpha, sigma = schedules.alpha_sigma(lam)
    x0_tilde = x0 - (known.weight * alpha / 2.0) * (1.0 - m) * grad
    # z = alpha x0 + sigma eps holds for the model's pair; keep it for the corrected x0.
    eps_tilde = eps + (alpha / sigma) * (x0 - x0_tilde)
    return x0_tilde, eps_tilde
