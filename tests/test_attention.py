"""Attention blocks and the patch-matmul conv against independent NumPy / PyTorch references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from t2v_jax.models.attention import (
    CrossAttention,
    SpaceTimeSelfAttention,
    SpatialSelfAttention,
    TemporalSelfAttention,
)
from t2v_jax.models.layers import SPATIAL_CONV_IMPLS, conv2d_patches


def _numpy_params(module, *args, seed=0):
    """Random float64 NumPy values for every parameter `module.init` would create."""
    rng = np.random.default_rng(seed)
    abstract = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *args))
    return jax.tree.map(lambda a: rng.normal(size=a.shape) * 0.5, abstract["params"])


def _layer_norm(x, p, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _proj(x, p):  # [..., E] -> [..., H, D]
    return np.einsum("...e,ehd->...hd", x, p["kernel"]) + p["bias"]


def _out(o, p):  # [..., H, D] -> [..., C]
    return np.einsum("...hd,hdc->...c", o, p["kernel"]) + p["bias"]


def test_cross_attention_matches_reference_and_masks_padding():
    b, t, h, w, c, seq, d_text, heads = 2, 2, 3, 3, 8, 4, 6, 2
    rng = np.random.default_rng(1)
    x = rng.normal(size=(b, t, h, w, c))
    text = rng.normal(size=(b, seq, d_text))
    mask = np.array([[True, True, False, False], [False] * seq])  # second prompt: all padding
    module = CrossAttention(heads=heads)
    params = _numpy_params(module, x, text, mask)
    out = np.asarray(module.apply({"params": params}, x, text, jnp.asarray(mask)))

    p = params
    q = _proj(_layer_norm(x, p["norm"]).reshape(b, t * h * w, c), p["query"])
    ctx = _layer_norm(text, p["text_norm"])
    k, v = _proj(ctx, p["key"]), _proj(ctx, p["value"])
    ref = np.zeros_like(x)
    for i in range(b):
        keep = mask[i]
        ki = np.concatenate([p["null_kv"][0][None], k[i][keep]])  # null key first, no padding
        vi = np.concatenate([p["null_kv"][1][None], v[i][keep]])
        logits = np.einsum("qhd,khd->hqk", q[i], ki) / np.sqrt(c // heads)
        o = np.einsum("hqk,khd->qhd", _softmax(logits), vi)
        ref[i] = x[i] + _out(o, p["out"]).reshape(t, h, w, c)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
    assert np.isfinite(out).all()


def test_temporal_attention_matches_reference_with_relative_bias_and_frame_mask():
    b, t, h, w, c, heads, max_dist = 2, 5, 2, 2, 8, 2, 2
    rng = np.random.default_rng(2)
    x = rng.normal(size=(b, t, h, w, c))
    frame_mask = np.array([[True, True, False, True, True], [True] * t])
    module = TemporalSelfAttention(heads=heads, max_distance=max_dist)
    params = _numpy_params(module, x, frame_mask)
    out = np.asarray(module.apply({"params": params}, x, jnp.asarray(frame_mask)))

    p = params
    y = _layer_norm(x, p["norm"])
    q, k, v = (_proj(y, p[n]) for n in ("query", "key", "value"))  # [B, T, H, W, heads, d]
    ref = x.copy()
    for bi in range(b):
        for i in range(t):
            if not frame_mask[bi, i]:
                continue  # image frames are left as they are
            keys = [j for j in range(t) if frame_mask[bi, j]]
            for yy in range(h):
                for xx in range(w):
                    for hd in range(heads):
                        logits = np.array(
                            [
                                q[bi, i, yy, xx, hd] @ k[bi, j, yy, xx, hd] / np.sqrt(c // heads)
                                + p["rel_pos_bias"][
                                    np.clip(j - i, -max_dist, max_dist) + max_dist, hd
                                ]
                                for j in keys
                            ]
                        )
                        att = _softmax(logits)
                        o = sum(a * v[bi, j, yy, xx, hd] for a, j in zip(att, keys, strict=True))
                        ref[bi, i, yy, xx] += o @ p["out"]["kernel"][hd]
                    ref[bi, i, yy, xx] += p["out"]["bias"]
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_spatial_attention_stays_within_each_frame():
    b, t, h, w, c = 1, 3, 4, 4, 8
    x = np.random.default_rng(3).normal(size=(b, t, h, w, c))
    module = SpatialSelfAttention(heads=2, norm_groups=4)
    params = {"params": _numpy_params(module, x)}
    out = module.apply(params, x)
    out2 = module.apply(params, x + np.eye(t)[None, :, None, None, None, 0] * 1.0)  # frame 0 only
    np.testing.assert_allclose(out2[:, 1:], out[:, 1:], atol=1e-6)
    assert not np.allclose(out2[:, 0], out[:, 0])


def _sinusoid(n, dim):  # NumPy transformer sin/cos features of positions 0..n-1: [n, dim]
    half = dim // 2
    freqs = np.exp(-np.log(10_000.0) * np.arange(half) / half)
    args = np.arange(n)[:, None] * freqs[None]
    return np.concatenate([np.sin(args), np.cos(args)], axis=-1)


def test_spacetime_attention_matches_reference_with_positions_and_frame_mask():
    b, t, h, w, c, heads = 2, 3, 2, 3, 8, 2
    rng = np.random.default_rng(6)
    x = rng.normal(size=(b, t, h, w, c))
    frame_mask = np.array([[True, False, True], [True] * t])
    module = SpaceTimeSelfAttention(heads=heads)
    params = _numpy_params(module, x, frame_mask)
    out = np.asarray(module.apply({"params": params}, x, jnp.asarray(frame_mask)))

    p = params
    pos = (_sinusoid(t, c) @ p["frame_position"])[:, None, None]
    pos = pos + (_sinusoid(h, c) @ p["row_position"])[None, :, None]
    pos = pos + (_sinusoid(w, c) @ p["column_position"])[None, None, :]
    y = (_layer_norm(x, p["norm"]) + pos[None]).reshape(b, t * h * w, c)
    q, k, v = (_proj(y, p[n]) for n in ("query", "key", "value"))  # [B, THW, heads, d]
    frame_of = np.repeat(np.arange(t), h * w)
    ref = x.reshape(b, t * h * w, c).copy()
    for bi in range(b):
        for i in range(t * h * w):
            if frame_mask[bi, frame_of[i]]:  # a video frame: every position of the video frames
                keys = [j for j in range(t * h * w) if frame_mask[bi, frame_of[j]]]
            else:  # an image frame: only its own positions
                keys = [j for j in range(t * h * w) if frame_of[j] == frame_of[i]]
            for hd in range(heads):
                logits = np.array([q[bi, i, hd] @ k[bi, j, hd] for j in keys]) / np.sqrt(c // heads)
                o = _softmax(logits) @ v[bi, keys, hd]
                ref[bi, i] += o @ p["out"]["kernel"][hd]
            ref[bi, i] += p["out"]["bias"]
    np.testing.assert_allclose(out, ref.reshape(x.shape), atol=1e-4, rtol=1e-4)


def test_spacetime_attention_starts_as_identity_and_relates_frames():
    b, t, h, w, c = 1, 3, 2, 2, 8
    x = np.random.default_rng(7).normal(size=(b, t, h, w, c)).astype(np.float32)
    module = SpaceTimeSelfAttention(heads=2)
    variables = module.init(jax.random.key(0), x)
    np.testing.assert_array_equal(np.asarray(module.apply(variables, x)), x)  # zero-init output
    params = {"params": _numpy_params(module, x)}
    out = np.asarray(module.apply(params, x))
    bumped = x.copy()
    bumped[:, 0, 0, 0] += np.linspace(-1.0, 1.0, c)  # one pixel of frame 0 (not a constant:
    # LayerNorm would remove that)
    out2 = np.asarray(module.apply(params, bumped))
    # Unlike temporal attention (same pixel only), every pixel of every frame sees the change.
    assert np.all(np.abs(out2 - out)[:, 1:].max(axis=-1) > 1e-6)


@pytest.mark.parametrize("stride", [1, 2])
def test_patch_matmul_conv_matches_torch(stride):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 8, 6, 5)).astype(np.float32)  # [N, H, W, Cin]
    kernel = rng.normal(size=(3, 3, 5, 7)).astype(np.float32)  # [kh, kw, Cin, Cout]
    ours = np.asarray(conv2d_patches(jnp.asarray(x), jnp.asarray(kernel), stride))
    ref = torch.nn.functional.conv2d(
        torch.from_numpy(x).permute(0, 3, 1, 2),
        torch.from_numpy(kernel).permute(3, 2, 0, 1),
        stride=stride,
        padding=1,
    )
    np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", sorted(SPATIAL_CONV_IMPLS))
@pytest.mark.parametrize("stride", [1, 2])
def test_spatial_conv_impl_values_and_grads_match_torch(impl, stride):
    """Every spatial conv impl (custom kernel gradient included) against torch's conv2d autograd."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 8, 6, 5)).astype(np.float32)  # [N, H, W, Cin]
    kernel = rng.normal(size=(3, 3, 5, 4)).astype(np.float32)  # [kh, kw, Cin, Cout]
    conv = SPATIAL_CONV_IMPLS[impl]
    out, vjp = jax.vjp(lambda a, k: conv(a, k, stride), jnp.asarray(x), jnp.asarray(kernel))
    g = rng.normal(size=out.shape).astype(np.float32)
    dx, dk = vjp(jnp.asarray(g))

    tx = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    tk = torch.from_numpy(kernel).permute(3, 2, 0, 1).detach().requires_grad_()
    ref = torch.nn.functional.conv2d(tx, tk, stride=stride, padding=1)
    ref.backward(torch.from_numpy(g).permute(0, 3, 1, 2))
    np.testing.assert_allclose(out, ref.detach().permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(dx, tx.grad.permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(dk, tk.grad.permute(2, 3, 1, 0).numpy(), atol=1e-4, rtol=1e-4)


def _numpy_conv_and_vjp(x, kernel, stride, g):
    """'same'-padded k x k conv and its exact gradients, float64 loops over the k*k taps.

    y[n, i, j, o] = sum_{dy, dx, c} xp[n, s*i + dy, s*j + dx, c] * kernel[dy, dx, c, o]
    (xp: x zero-padded by k//2), so for the cotangent g:
    dkernel[dy, dx, c, o] = sum_{n, i, j} xp[n, s*i + dy, s*j + dx, c] * g[n, i, j, o], and
    dx scatters g @ kernel[dy, dx].T back to the same window positions, minus the padding.
    """
    k, pad = kernel.shape[0], kernel.shape[0] // 2
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    y = np.zeros((n, ho, wo, kernel.shape[3]))
    dk = np.zeros_like(kernel)
    dxp = np.zeros_like(xp)
    for dy in range(k):
        for dx in range(k):
            window = (slice(None), slice(dy, dy + stride * ho, stride),
                      slice(dx, dx + stride * wo, stride))  # fmt: skip
            y += xp[window] @ kernel[dy, dx]
            dk[dy, dx] = np.einsum("nijc,nijo->co", xp[window], g)
            dxp[window] += g @ kernel[dy, dx].T
    return y, dxp[:, pad : pad + h, pad : pad + w], dk


@pytest.mark.parametrize("impl", sorted(SPATIAL_CONV_IMPLS))
@pytest.mark.parametrize("stride", [1, 2])
def test_spatial_conv_impl_values_and_grads_match_numpy(impl, stride):
    """Every spatial conv impl, the CPU default's hand-written kernel gradient (conv_gemm_grad)
    included, against the closed-form float64 conv gradients above: no torch needed."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3, 8, 7, 5))  # [N, H, W, Cin]; odd W: stride 2 drops a column
    kernel = rng.normal(size=(3, 3, 5, 4))  # [kh, kw, Cin, Cout]
    conv = SPATIAL_CONV_IMPLS[impl]
    out, vjp = jax.vjp(lambda a, k: conv(a, k, stride), jnp.asarray(x, jnp.float32),
                       jnp.asarray(kernel, jnp.float32))  # fmt: skip
    g = rng.normal(size=out.shape)
    dx, dk = vjp(jnp.asarray(g, jnp.float32))
    ref_y, ref_dx, ref_dk = _numpy_conv_and_vjp(x, kernel, stride, g)
    # float32 sums of unit-normal products (values up to ~40) against float64: the largest
    # error measured was 1.2e-5, so 1e-4 leaves ~8x margin and still sees any wrong tap.
    np.testing.assert_allclose(out, ref_y, atol=1e-4, rtol=0)
    np.testing.assert_allclose(dx, ref_dx, atol=1e-4, rtol=0)
    np.testing.assert_allclose(dk, ref_dk, atol=1e-4, rtol=0)
