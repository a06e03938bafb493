"""Tests for log-SNR schedules and the x / eps / v conversions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax import configlib
from t2v_jax.diffusion import schedules
from t2v_jax.diffusion.schedules import ScheduleConfig

CONFIGS = [
    ScheduleConfig(),
    ScheduleConfig(kind="shifted_cosine", resolution=256),
    ScheduleConfig(kind="linear", logsnr_min=-10.0, logsnr_max=12.0),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.kind)
def test_endpoints_finite_and_monotone(cfg):
    t = jnp.linspace(0.0, 1.0, 1001)
    lam = np.asarray(schedules.log_snr(t, cfg))
    assert np.all(np.isfinite(lam))
    np.testing.assert_allclose(lam[[0, -1]], [cfg.logsnr_max, cfg.logsnr_min], atol=1e-3)
    assert np.all(np.diff(lam) < 0)
    alpha, sigma = schedules.alpha_sigma(jnp.asarray(lam))
    assert np.all(np.isfinite(alpha)) and np.all(np.isfinite(sigma))
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
    # t_from_log_snr inverts log_snr.
    t_back = np.asarray(schedules.t_from_log_snr(jnp.asarray(lam), cfg))
    np.testing.assert_allclose(t_back, np.asarray(t), atol=2e-4)


def test_cosine_matches_improved_ddpm_alpha_bar():
    # Unclipped cosine: alpha^2(t) = cos^2(pi t / 2) (Nichol & Dhariwal with s = 0); the +-20
    # clip moves the interior by ~exp(-10) only.
    t = np.linspace(0.02, 0.98, 49)
    lam = schedules.log_snr(jnp.asarray(t), ScheduleConfig())
    alpha2 = np.asarray(schedules.alpha_sigma(lam)[0]) ** 2
    np.testing.assert_allclose(alpha2, np.cos(np.pi * t / 2) ** 2, atol=1e-4)


def test_shifted_cosine_is_cosine_plus_resolution_shift():
    # The shifted schedule keeps its ends at [logsnr_min, logsnr_max] by clipping the underlying
    # cosine at (min - shift, max - shift); that moves the interior by < 2e-3 here.
    t = jnp.linspace(0.1, 0.9, 9)
    base = np.asarray(schedules.log_snr(t, ScheduleConfig()))
    shifted = ScheduleConfig(kind="shifted_cosine", base_resolution=64, resolution=256)
    np.testing.assert_allclose(
        np.asarray(schedules.log_snr(t, shifted)) - base, 2 * np.log(64 / 256), atol=2e-3
    )
    explicit = ScheduleConfig(kind="shifted_cosine", shift=2 * float(np.log(0.25)))
    np.testing.assert_allclose(
        schedules.log_snr(t, explicit), schedules.log_snr(t, shifted), atol=1e-5
    )


def test_conversions_round_trip():
    kx, ke = jax.random.split(jax.random.key(0))
    x = jax.random.uniform(kx, (7, 2, 3, 3, 2), minval=-1, maxval=1)
    eps = jax.random.normal(ke, x.shape)
    lam = jnp.linspace(-8.0, 8.0, 7)
    a, s = (np.asarray(c).reshape(7, 1, 1, 1, 1) for c in schedules.alpha_sigma(lam))
    z = schedules.add_noise(x, eps, lam)
    np.testing.assert_allclose(z, a * np.asarray(x) + s * np.asarray(eps), atol=1e-6)
    v = schedules.v_from_x_eps(x, eps, lam)
    np.testing.assert_allclose(v, a * np.asarray(eps) - s * np.asarray(x), atol=1e-6)
    np.testing.assert_allclose(schedules.x_from_v(z, v, lam), x, atol=1e-5)
    np.testing.assert_allclose(schedules.eps_from_v(z, v, lam), eps, atol=1e-5)
    np.testing.assert_allclose(schedules.eps_from_x(z, x, lam), eps, atol=1e-3)
    np.testing.assert_allclose(schedules.x_from_eps(z, eps, lam), x, atol=1e-3)
    np.testing.assert_allclose(schedules.v_from_x(z, x, lam), v, atol=1e-3)


def test_extreme_log_snr_conversions_finite():
    lam = jnp.array([-20.0, 20.0])
    z = jnp.ones((2, 4))
    v = jnp.ones((2, 4))
    for out in (schedules.x_from_v(z, v, lam), schedules.eps_from_v(z, v, lam)):
        assert np.all(np.isfinite(out))
    alpha, sigma = schedules.alpha_sigma(jnp.array([jnp.inf]))
    assert float(alpha[0]) == 1.0 and float(sigma[0]) == 0.0


def test_config_validation():
    with pytest.raises(ValueError, match="kind"):
        ScheduleConfig(kind="sigmoid")
    with pytest.raises(ValueError, match="logsnr_min"):
        ScheduleConfig(logsnr_min=5.0, logsnr_max=-5.0)
    with pytest.raises(ValueError, match="resolution or shift"):
        ScheduleConfig(kind="shifted_cosine")
    with pytest.raises(ValueError, match="shifted_cosine"):
        ScheduleConfig(kind="cosine", resolution=128)
    cfg = configlib.from_config(
        ScheduleConfig, {"kind": "shifted_cosine", "resolution": 128}, "schedule"
    )
    assert cfg.logsnr_shift == pytest.approx(2 * np.log(0.5))
