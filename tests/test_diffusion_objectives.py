"""Tests for the v-objective, its weightings, text dropout and noise conditioning augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax.diffusion import objectives, schedules
from t2v_jax.diffusion.objectives import LossConfig

SCHED = schedules.ScheduleConfig()


def test_loss_weights_match_snr_formulas():
    lam = jnp.linspace(-12.0, 12.0, 49)
    snr = np.exp(np.asarray(lam, np.float64))
    expect = {
        "v": np.ones_like(snr),
        "snr_trunc": np.maximum(snr, 1.0) / (1.0 + snr),
        "min_snr": np.minimum(snr, 5.0) / (1.0 + snr),
    }
    for name, ref in expect.items():
        got = objectives.loss_weight(lam, LossConfig(weighting=name))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    assert np.all(
        np.isfinite(objectives.loss_weight(jnp.array([-20.0, 20.0]), LossConfig("min_snr")))
    )


def _perfect_for_zero_data(params, z, lam, cond):
    # For x0 = 0: z = sigma eps and v = alpha eps, so v = (alpha / sigma) z exactly.
    a, s = schedules.alpha_sigma(lam)
    return params * schedules.broadcast_to(a / s, z) * z


@pytest.mark.parametrize("weighting", ["v", "snr_trunc", "min_snr"])
def test_diffusion_loss_values(weighting):
    cfg = LossConfig(weighting=weighting, text_dropout=0.0)
    x0 = jnp.zeros((64, 2, 4, 4, 3))
    loss_fn = jax.jit(
        lambda p, rng: objectives.diffusion_loss(_perfect_for_zero_data, p, rng, x0, {}, SCHED, cfg)
    )
    loss, _ = loss_fn(1.0, jax.random.key(0))
    assert float(loss) < 1e-8
    # A zero model: the per-example v-MSE is alpha^2 * mean(eps^2) ~ sigmoid(lambda).
    loss, aux = loss_fn(0.0, jax.random.key(1))
    ratio = np.asarray(aux["per_example_mse_v"]) / np.asarray(jax.nn.sigmoid(aux["log_snr"]))
    assert abs(ratio.mean() - 1) < 0.05
    weights = np.asarray(objectives.loss_weight(aux["log_snr"], cfg))
    np.testing.assert_allclose(
        loss, np.mean(weights * np.asarray(aux["per_example_mse_v"])), rtol=1e-5
    )
    t = np.asarray(aux["t"])
    assert t.min() >= 0 and t.max() <= 1 and t.std() > 0.15
    grad = jax.grad(lambda p: loss_fn(p, jax.random.key(2))[0])(0.5)
    assert np.isfinite(grad) and grad < 0


def test_low_discrepancy_t():
    cfg = LossConfig(low_discrepancy=True, text_dropout=0.0)
    _, aux = objectives.diffusion_loss(
        _perfect_for_zero_data, 1.0, jax.random.key(3), jnp.zeros((8, 2)), {}, SCHED, cfg
    )
    np.testing.assert_allclose(np.diff(np.sort(np.asarray(aux["t"]))), 1 / 8, atol=1e-5)


def test_text_dropout():
    k1, k2 = jax.random.split(jax.random.key(4))
    emb = jax.random.normal(k1, (1000, 3, 4)) + 5.0
    mask = jnp.ones((1000, 3), bool)
    null_emb, null_mask = jnp.zeros((1, 3, 4)), jnp.zeros((1, 3), bool).at[:, 0].set(True)
    e0, m0 = objectives.drop_text(k2, emb, mask, null_emb, null_mask, 0.0)
    np.testing.assert_array_equal(e0, emb)
    np.testing.assert_array_equal(m0, mask)
    e1, m1 = objectives.drop_text(k2, emb, mask, null_emb, null_mask, 1.0)
    assert np.all(np.asarray(e1) == 0) and np.all(np.asarray(m1) == np.asarray(null_mask))
    e, m = objectives.drop_text(k2, emb, mask, null_emb, null_mask, 0.3)
    dropped_emb = np.all(np.asarray(e) == 0, axis=(1, 2))
    kept_emb = np.all(np.asarray(e) == np.asarray(emb), axis=(1, 2))
    assert np.all(dropped_emb | kept_emb)  # whole examples only
    np.testing.assert_array_equal(dropped_emb, ~np.asarray(m)[:, 1])  # emb and mask together
    assert 0.25 < dropped_emb.mean() < 0.35


def test_loss_requires_null_cond_for_text_dropout():
    cond = {"text_emb": jnp.ones((2, 3, 4)), "text_mask": jnp.ones((2, 3), bool)}
    model = lambda p, z, lam, c: z * 0 + c["text_emb"].mean()
    with pytest.raises(ValueError, match="null_cond"):
        objectives.diffusion_loss(
            model, None, jax.random.key(0), jnp.zeros((2, 5)), cond, SCHED, LossConfig()
        )
    null = {"text_emb": jnp.zeros((1, 3, 4)), "text_mask": jnp.ones((1, 3), bool)}
    loss, _ = objectives.diffusion_loss(
        model, None, jax.random.key(0), jnp.zeros((2, 5)), cond, SCHED, LossConfig(), null_cond=null
    )
    assert np.isfinite(loss)


_augment = jax.jit(objectives.augment_conditioning, static_argnums=2, static_argnames=("max_t",))


def test_augment_conditioning():
    video = jax.random.uniform(jax.random.key(5), (6, 2, 4, 4, 3), minval=-1, maxval=1)
    clean, lam0 = _augment(jax.random.key(6), video, SCHED, fixed_t=0.0)
    np.testing.assert_allclose(lam0, SCHED.logsnr_max)
    np.testing.assert_allclose(clean, video, atol=3e-4)  # sigma(20) = 4.5e-5
    noisy, lam1 = _augment(jax.random.key(6), video, SCHED, fixed_t=1.0)
    np.testing.assert_allclose(lam1, SCHED.logsnr_min, atol=1e-3)
    corr = np.corrcoef(np.asarray(noisy).ravel(), np.asarray(video).ravel())[0, 1]
    assert abs(corr) < 0.05
    _, lam = _augment(jax.random.key(7), video, SCHED, max_t=0.3)
    assert np.all(np.asarray(lam) >= float(schedules.log_snr(0.3, SCHED)) - 1e-4)
    # Per-sample keys: a sample's augmentation does not depend on the rest of the batch.
    keys = jax.random.split(jax.random.key(8), 6)
    full, _ = _augment(keys, video, SCHED, fixed_t=0.4)
    part, _ = _augment(keys[2:4], video[2:4], SCHED, fixed_t=0.4)
    np.testing.assert_array_equal(part, full[2:4])
    with pytest.raises(ValueError, match="max_t"):
        objectives.augment_conditioning(keys, video, SCHED, max_t=1.5)


def test_loss_config_validation():
    with pytest.raises(ValueError, match="weighting"):
        LossConfig(weighting="eps")
    with pytest.raises(ValueError, match="text_dropout"):
        LossConfig(text_dropout=1.5)
