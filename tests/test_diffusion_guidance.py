"""Tests for classifier-free guidance, guidance schedules and thresholding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax.diffusion import guidance
from t2v_jax.diffusion.guidance import GuidanceConfig

B = 3


def _model(calls):
    def model_fn(params, x, lam, cond):
        calls.append(x.shape[0])
        emb = cond["text_emb"].mean(axis=(1, 2)) * cond["text_mask"].mean(axis=1)  # [B]
        return params * x * jnp.tanh(lam)[:, None] + emb[:, None]

    return model_fn


def _inputs():
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, (B, 5))
    lam = jnp.array([-3.0, 0.5, 4.0])
    cond = {"text_emb": jax.random.normal(k2, (B, 4, 6)), "text_mask": jnp.ones((B, 4))}
    return x, lam, cond


NULL = {"text_emb": jnp.zeros((1, 4, 6)), "text_mask": jnp.ones((1, 4))}


def test_weight_one_is_the_conditional_prediction():
    x, lam, cond = _inputs()
    calls = []
    v_cond = _model(calls)(2.0, x, lam, cond)
    fn = guidance.guided_model_fn(_model(calls), 1.0, NULL)
    np.testing.assert_array_equal(fn(2.0, x, lam, cond, jnp.int32(0)), v_cond)
    # The doubled-batch path at a step whose scheduled weight is 1 is also exact.
    osc = GuidanceConfig(weight=7.0, schedule="oscillating", oscillate_after=2, low_weight=1.0)
    fn = guidance.guided_model_fn(_model(calls), osc, NULL)
    np.testing.assert_array_equal(fn(2.0, x, lam, cond, jnp.int32(3)), v_cond)


def test_cfg_combination_in_one_doubled_call():
    x, lam, cond = _inputs()
    neg = {"text_emb": -cond["text_emb"], "text_mask": cond["text_mask"]}  # negative prompt
    calls = []
    model = _model(calls)
    v_c = model(2.0, x, lam, cond)
    v_u = model(2.0, x, lam, neg)
    calls.clear()
    got = guidance.guided_model_fn(model, 4.0, neg)(2.0, x, lam, cond, jnp.int32(0))
    assert calls == [2 * B]
    np.testing.assert_allclose(got, v_u + 4.0 * (v_c - v_u), rtol=1e-5, atol=1e-5)


def test_guidance_schedules():
    const = GuidanceConfig(weight=5.0)
    osc = GuidanceConfig(weight=5.0, schedule="oscillating", oscillate_after=3, low_weight=1.0)
    got_c = [float(guidance.guidance_weight(i, const)) for i in range(8)]
    got_o = [float(guidance.guidance_weight(i, osc)) for i in range(8)]
    assert got_c == [5.0] * 8
    assert got_o == [5.0, 5.0, 5.0, 5.0, 1.0, 5.0, 1.0, 5.0]
    jitted = jax.jit(lambda i: guidance.guidance_weight(i, osc))
    assert [float(jitted(i)) for i in range(8)] == got_o


def test_validation():
    x, lam, cond = _inputs()
    with pytest.raises(ValueError, match="uncond_cond"):
        guidance.guided_model_fn(_model([]), 3.0, None)
    with pytest.raises(ValueError, match="uncond_cond"):
        guidance.guided_model_fn(_model([]), 3.0, {"bogus": 0})(2.0, x, lam, cond, 0)
    with pytest.raises(ValueError, match="schedule"):
        GuidanceConfig(schedule="cosine")


def test_abs_quantile_matches_numpy():
    """The sort-free quantile against numpy's (linear interpolation), with zeros and ties."""
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100, 4097):
        x = np.abs(rng.normal(size=(3, n)) * 2).astype(np.float32)
        x[1, : n // 2] = 0.0  # half zeros
        x[2] = np.round(x[2])  # ties
        for q in (1e-4, 0.5, 0.9, 0.995, 1.0):
            np.testing.assert_allclose(
                guidance.abs_quantile(jnp.asarray(x), q),
                np.quantile(x.astype(np.float64), q, axis=1),
                rtol=1e-6,
                err_msg=f"n={n} q={q}",
            )


def test_thresholding_ranges_and_reference():
    x0 = 3.0 * jax.random.normal(jax.random.key(1), (4, 2, 8, 8, 3))
    x0 = x0.at[0].set(x0[0] * 0.2)  # sample 0 mostly inside [-1, 1]
    for mode in ("static", "dynamic"):
        out = np.asarray(guidance.threshold(x0, mode))
        assert out.min() >= -1.0 and out.max() <= 1.0
    np.testing.assert_array_equal(guidance.threshold(x0, "none"), x0)
    # Reference: Imagen's dynamic thresholding in numpy.
    flat = np.abs(np.asarray(x0).reshape(4, -1))
    s = np.maximum(np.quantile(flat, 0.9, axis=1), 1.0).reshape(4, 1, 1, 1, 1)
    ref = np.clip(np.asarray(x0), -s, s) / s
    np.testing.assert_allclose(guidance.dynamic_threshold(x0, 0.9), ref, rtol=1e-5, atol=1e-6)
    inside = jnp.linspace(-0.9, 0.9, 2 * 4 * 4).reshape(2, 4, 4)
    np.testing.assert_array_equal(guidance.dynamic_threshold(inside), inside)
    with pytest.raises(ValueError, match="thresholding"):
        guidance.threshold(x0, "soft")
