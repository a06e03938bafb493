"""Data consistency for SR: the bicubic operator against closed forms and Pillow, the
projection's algebra, the temporal one against the generic pseudo-inverse, and the sampler
using it (the pipeline's use: tests/test_video_in.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax.data import transforms
from t2v_jax.diffusion import consistency, samplers, schedules
from t2v_jax.stage import StageConfig


def _keys_cubic(t, a=-0.5):
    """The bicubic convolution kernel (Keys 1981) with Pillow's a = -0.5."""
    t = np.abs(t)
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return np.where(t < 1, near, np.where(t < 2, far, 0.0))


@pytest.mark.parametrize("size,low", [(64, 32), (32, 16), (48, 16), (20, 20)])
def test_bicubic_matrix_is_the_antialiased_keys_kernel(size, low):
    # Shrinking by s stretches the kernel by s (antialiasing); each row is renormalised, which
    # at the borders cuts the kernel off where the image ends.
    s = size / low
    centres = (np.arange(low) + 0.5) * s
    want = _keys_cubic((np.arange(size)[None] + 0.5 - centres[:, None]) / max(s, 1.0))
    want /= want.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(consistency.bicubic_matrix(size, low), want, atol=1e-6)


def test_degrade_is_pillows_uint8_shrink_up_to_its_rounding():
    # Pillow shrinks uint8 images in two passes (width, then height), rounding and clipping to
    # uint8 between them; with that rounding added, the float operator gives Pillow's output to
    # within its fixed-point weights (one level). Noise is the hardest input (most overshoot).
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    want = transforms.bicubic_resize(x, 32, 32).astype(np.float64)
    d = consistency.bicubic_matrix(64, 32)
    width_pass = np.clip(np.round(np.einsum("wW,bHWc->bHwc", d, x.astype(np.float64))), 0, 255)
    got = np.clip(np.round(np.einsum("hH,bHwc->bhwc", d, width_pass)), 0, 255)
    assert np.abs(got - want).max() <= 1
    # and without the rounding, the float operator is consistency.degrade's
    np.testing.assert_allclose(
        np.asarray(consistency.degrade(jnp.asarray(x, jnp.float32), (32, 32))),
        np.einsum("hH,bHWc,wW->bhwc", d, x.astype(np.float64), d),
        atol=1e-3,
    )


def test_projection_meets_the_input_and_keeps_what_the_input_cannot_see():
    rng = np.random.default_rng(1)
    x0 = jnp.asarray(rng.normal(size=(2, 3, 16, 24, 3)), jnp.float32)
    low = jnp.asarray(rng.normal(size=(2, 3, 8, 12, 3)), jnp.float32)
    out = consistency.project(x0, low)
    np.testing.assert_allclose(consistency.degrade(out, (8, 12)), low, atol=1e-5)
    np.testing.assert_allclose(consistency.project(out, low), out, atol=1e-5)  # idempotent
    # A change D cannot see (in its null space) passes through unchanged.
    z = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
    null = consistency.project(z, jnp.zeros_like(low))  # (I - D^+ D) z
    np.testing.assert_allclose(consistency.degrade(null, (8, 12)), 0.0, atol=1e-5)
    np.testing.assert_allclose(consistency.project(x0 + null, low), out + null, atol=1e-5)
    # and it is the nearest such point: out - x0 lies in D's row space (orthogonal to null).
    assert abs(float(jnp.vdot(out - x0, null))) < 1e-3 * float(jnp.linalg.norm(null))


def test_box_projection_matches_the_training_datas_area_average():
    # D is transforms.box_downsample, the data pipeline's own (independent) code for the demo's
    # SR inputs; D^+ repeats each input pixel over its block (the pseudo-inverse of an average
    # of f equal weights is f times its transpose), so the projection is x0 plus the
    # nearest-neighbour upsampled residual of the block means.
    rng = np.random.default_rng(2)
    x0 = rng.normal(size=(2, 3, 16, 24, 3)).astype(np.float32)
    low = rng.normal(size=(2, 3, 8, 12, 3)).astype(np.float32)
    np.testing.assert_allclose(
        consistency.degrade(jnp.asarray(x0), (8, 12), "box"),
        transforms.box_downsample(x0, 8, 12),
        atol=1e-5,
    )
    out = np.asarray(consistency.project(jnp.asarray(x0), jnp.asarray(low), "box"))
    residual = low - transforms.box_downsample(x0, 8, 12)
    np.testing.assert_allclose(out, x0 + residual.repeat(2, axis=-3).repeat(2, axis=-2), atol=1e-5)
    np.testing.assert_allclose(transforms.box_downsample(out, 8, 12), low, atol=1e-5)
    with pytest.raises(ValueError, match="box_matrix: size 16 is not a multiple of low_size 6"):
        consistency.box_matrix(16, 6)


@pytest.mark.parametrize("frames,low_frames", [(8, 4), (12, 4), (5, 5)])
def test_frames_projection_is_the_frame_selections_pseudo_inverse(frames, low_frames):
    # A TSR stage's input is every k-th frame (the data pipeline's `video[::k]`, checked in
    # tests/test_data_pipeline.py); with D that selection as a matrix over time, the generic
    # x0 + pinv(D) (y - D x0) (numpy's SVD pseudo-inverse) is what "frames" must return.
    rng = np.random.default_rng(3)
    x0 = rng.normal(size=(2, frames, 4, 6, 3)).astype(np.float32)
    low = rng.normal(size=(2, low_frames, 4, 6, 3)).astype(np.float32)
    d = np.eye(frames)[:: frames // low_frames]  # [t, T]
    want = x0 + np.einsum(
        "Tt,btHWc->bTHWc", np.linalg.pinv(d), low - np.einsum("tT,bTHWc->btHWc", d, x0)
    )
    got = np.asarray(consistency.project(jnp.asarray(x0), jnp.asarray(low), "frames"))
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(got[:, :: frames // low_frames], low)


def test_frames_projection_refuses_inputs_it_cannot_place():
    x0 = jnp.zeros((1, 8, 4, 4, 3))
    for low in (jnp.zeros((1, 3, 4, 4, 3)), jnp.zeros((1, 4, 2, 2, 3))):
        with pytest.raises(ValueError, match="data consistency 'frames': x0"):
            consistency.project(x0, low, "frames")


def _point_mass_model(target):
    """The exact v-model of data that is always `target`: x0_hat = target at every noise level."""

    def model_fn(params, z, lam, cond):
        alpha, sigma = schedules.alpha_sigma(lam[0])
        return (alpha * z - target) / sigma

    return model_fn


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_the_sampler_returns_the_projected_estimate(sampler):
    # Every step's x0 is the data point; projected, it is target + D^+ (y - D target), and the
    # sample (the last step's x0) is that point: it shrinks exactly to the input y.
    rng = np.random.default_rng(2)
    target = jnp.asarray(rng.uniform(-1, 1, (2, 2, 16, 16, 3)), jnp.float32)
    y = jnp.asarray(rng.uniform(-1, 1, (2, 2, 8, 8, 3)), jnp.float32)
    keys = jax.random.split(jax.random.key(0), 2)
    run = lambda project: samplers.sample(
        _point_mass_model(target), None, keys, {}, target.shape, 6, sampler=sampler,
        project_x0=project,
    )  # fmt: skip
    np.testing.assert_allclose(run(None), target, atol=1e-4)
    got = run(lambda x0: consistency.project(x0, y))
    d = consistency.bicubic_matrix(16, 8)
    want = np.asarray(target) + np.einsum(
        "Hh,bthwc,Ww->btHWc", np.linalg.pinv(d),
        np.asarray(y) - np.einsum("hH,btHWc,wW->bthwc", d, np.asarray(target), d),
        np.linalg.pinv(d),
    )  # fmt: skip
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_stage_config_refuses_data_consistency_where_it_cannot_apply():
    kw = dict(name="s", frames=8, height=16, width=16, fps=8, low_height=8, low_width=8)
    with pytest.raises(ValueError, match="data_consistency: 'lanczos' is not one of"):
        StageConfig(kind="ssr", low_frames=8, data_consistency="lanczos", **kw)
    with pytest.raises(ValueError, match="data_consistency='bicubic' needs a spatial SR stage"):
        StageConfig(kind="tsr", low_frames=4, data_consistency="bicubic", **kw)
    StageConfig(kind="ssr", low_frames=8, data_consistency="bicubic", **kw)
    with pytest.raises(ValueError, match="data_consistency='frames' needs a temporal SR stage"):
        StageConfig(kind="ssr", low_frames=8, data_consistency="frames", **kw)
    with pytest.raises(ValueError, match="data_consistency='frames' needs a temporal SR stage"):
        StageConfig(kind="tsr", low_frames=4, data_consistency="frames", **kw)  # 8x8 -> 16x16
    kw.update(low_height=16, low_width=16)
    with pytest.raises(ValueError, match="data_consistency='frames' needs a temporal SR stage"):
        StageConfig(kind="tsr", low_frames=3, data_consistency="frames", **kw)
    StageConfig(kind="tsr", low_frames=4, data_consistency="frames", **kw)
