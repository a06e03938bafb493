"""Reconstruction guidance and replacement against closed forms, with an exact Gaussian "model".

Data: one number per frame, x ~ N(0, S) with S_ij = rho^|i-j| (a smooth random walk). For such
data the ideal denoiser is linear and known: E[x | z] = K z with K = alpha S (alpha^2 S +
sigma^2 I)^-1, and the frames left to generate have the conditional mean S_ab S_bb^-1 x_b.
"""

import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax.diffusion import reconstruction, samplers, schedules

T, RHO = 6, 0.9
S = RHO ** np.abs(np.arange(T)[:, None] - np.arange(T)[None])  # [T, T]


def _denoiser(lam):
    """K(lam) [T, T]: the exact x0-predictor of the Gaussian data at log-SNR lam (float64)."""
    a2 = 1.0 / (1.0 + np.exp(-lam))
    return np.sqrt(a2) * S @ np.linalg.inv(a2 * S + (1.0 - a2) * np.eye(T))


def _model_fn(params, z, lam, cond):
    """The v-prediction of the exact denoiser: v = (alpha z - x0) / sigma; z [B, T, 1]."""
    alpha, sigma = schedules.alpha_sigma(lam[0])
    k = (
        alpha
        * jnp.asarray(S, jnp.float32)
        @ jnp.linalg.inv(alpha**2 * jnp.asarray(S, jnp.float32) + sigma**2 * jnp.eye(T))
    )
    x0 = jnp.einsum("ij,bjc->bic", k, z)
    return (alpha * z - x0) / sigma


def _known(batch, weight):
    given = np.zeros(T)
    given[:2] = [1.5, 1.4]  # prediction: the first two frames are given
    mask = (np.arange(T) < 2).astype(np.float32)
    frames = np.broadcast_to(given[None, :, None], (batch, T, 1)).astype(np.float32)
    return given, reconstruction.KnownFrames(
        jnp.asarray(frames), jnp.broadcast_to(jnp.asarray(mask), (batch, T)), jnp.float32(weight)
    )


def test_guided_prediction_is_eq7_in_closed_form():
    """For a linear denoiser x0 = K z: grad_z ||m (x_b - K z)||^2 = -2 K^T m (x_b - K z)."""
    lam = 0.3
    k = _denoiser(lam)
    z = np.random.default_rng(0).standard_normal((1, T, 1))
    given, known = _known(1, 3.0)
    m = (np.arange(T) < 2).astype(float)
    x0 = k @ z[0, :, 0]
    alpha, sigma = np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam)))
    want = x0 + 3.0 * alpha * (1 - m) * (k.T @ (m * (given - x0)))  # - (w a / 2) * grad
    kk = jnp.asarray(k, jnp.float32)

    def predict(zz):  # the model's consistent pair: z = alpha x0 + sigma eps
        x = jnp.einsum("ij,bjc->bic", kk, zz)
        return x, (zz - alpha * x) / sigma

    zj = jnp.asarray(z, jnp.float32)
    got, eps = reconstruction.guided_prediction(predict, zj, lam, known)
    np.testing.assert_allclose(np.asarray(got)[0, :, 0], want, rtol=1e-5, atol=1e-5)
    # eps goes with the corrected x0, so any sampler steps from a consistent pair.
    np.testing.assert_allclose(alpha * np.asarray(got) + sigma * np.asarray(eps), z, atol=1e-5)


def test_replacement_equals_the_hand_computed_ddim_baseline():
    """Two DDIM steps, numpy: z^b <- alpha x_b + sigma n before each evaluation, then step."""
    batch, steps = 3, 2
    keys = jax.random.split(jax.random.key(4), batch)
    given, known = _known(batch, 0.0)
    cfg = schedules.ScheduleConfig()
    z0 = np.asarray(samplers.per_sample_normal(keys, (batch, T, 1)), np.float64)
    out = samplers.sample(_model_fn, None, keys, {}, (batch, T, 1), steps, schedule_cfg=cfg,
                          x_init=jnp.asarray(z0, jnp.float32), known=known,
                          known_method="replacement")  # fmt: skip
    lams = np.asarray(samplers.sampling_log_snrs(steps, cfg), np.float64)
    m = (np.arange(T) < 2)[None, :, None]
    z = z0
    for i in range(steps):
        a, s = np.sqrt(1 / (1 + np.exp(-lams[i]))), np.sqrt(1 / (1 + np.exp(lams[i])))
        noise = np.asarray(reconstruction.known_noise(keys, i, z.shape), np.float64)
        z = np.where(m, a * given[None, :, None] + s * noise, z)
        x0 = np.einsum("ij,bjc->bic", _denoiser(lams[i]), z)
        eps = (z - a * x0) / s
        a_n = np.sqrt(1 / (1 + np.exp(-lams[i + 1])))  # 1 at lam = +inf: the last step is x0
        s_n = np.sqrt(1 / (1 + np.exp(lams[i + 1])))
        z = a_n * x0 + s_n * eps
    np.testing.assert_allclose(np.asarray(out), z, rtol=1e-4, atol=1e-4)


def test_reconstruction_guidance_pulls_toward_the_given_frames():
    """Generated frames' mean vs the exact conditional mean; replacement is far off (the paper's point)."""
    batch = 1000
    keys = jax.random.split(jax.random.key(0), batch)
    cond_mean = S[2:, :2] @ np.linalg.solve(S[:2, :2], [1.5, 1.4])  # [T - 2]
    errors, known_errors = {}, {}
    for method, weight in (("none", 0.0), ("replacement", 0.0), ("reconstruction", 5.0)):
        given, known = _known(batch, weight)
        kwargs = {} if method == "none" else {"known": known, "known_method": method}
        out = np.asarray(samplers.sample(_model_fn, None, keys, {}, (batch, T, 1), 32, **kwargs))[
            ..., 0
        ]
        errors[method] = np.abs(out[:, 2:].mean(0) - cond_mean).max()
        known_errors[method] = np.abs(out[:, :2] - given[:2]).mean()
    # The given frames come back (both methods keep z^b on x_b's forward process).
    assert known_errors["none"] > 0.5 and known_errors["reconstruction"] < 0.05
    # Unconditional: mean 0; replacement: only part of the way; guidance: near the truth
    # (sample-mean noise ~ 0.8 / sqrt(1000) ~ 0.03).
    assert errors["none"] > 1.0
    assert errors["replacement"] > 0.5
    assert errors["reconstruction"] < 0.2


def test_thresholding_comes_after_the_guidance_step():
    """The sampler steps from a thresholded x0 also under reconstruction guidance.

    Thresholding the model's x0 before the correction (and differentiating through the clip)
    let the corrected x0 leave the data range: on the shapes demo that drew coloured noise in
    the generated frames, and dynamic thresholding then dimmed the whole video.
    """
    batch = 64
    keys = jax.random.split(jax.random.key(1), batch)
    _, known = _known(batch, 20.0)
    known = known._replace(frames=jnp.clip(known.frames, -1.0, 1.0))  # given frames in range
    for mode in ("static", "dynamic"):
        _, traj = samplers.sample(_model_fn, None, keys, {}, (batch, T, 1), 8,
                                  thresholding=mode, return_intermediates=True, known=known)  # fmt: skip
        x0 = np.asarray(traj["x0_pred"])
        assert np.abs(x0).max() <= 1.0 + 1e-6, (mode, np.abs(x0).max())
