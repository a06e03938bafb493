"""Pallas splash attention: the blocks give XLA's numbers (interpret mode on CPU); "auto" picks it on TPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax import sharding
from t2v_jax.models import attention as attn
from t2v_jax.models import platform


def _init_apply(module, *inputs):
    variables = module.init(jax.random.key(0), *inputs)
    # Zero-initialised output projections would hide the attention: randomise every param.
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [
        0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)
    ]
    variables = jax.tree.unflatten(tree, leaves)
    return variables, lambda v: module.apply(v, *inputs)


def _compare(make, *inputs, grad=False):
    xla_vars, xla_fn = _init_apply(make("xla"), *inputs)
    _, pallas_fn = _init_apply(make("pallas"), *inputs)
    want, got = xla_fn(xla_vars), pallas_fn(xla_vars)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)
    if grad:
        loss = lambda fn: lambda v: jnp.sum(jnp.sin(fn(v)))
        gw, gg = jax.grad(loss(xla_fn))(xla_vars), jax.grad(loss(pallas_fn))(xla_vars)
        for a, b in zip(jax.tree.leaves(gg), jax.tree.leaves(gw), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_spatial_matches_xla_with_grads():
    x = jax.random.normal(jax.random.key(2), (2, 2, 16, 16, 32))  # 256 queries per frame
    _compare(lambda impl: attn.SpatialSelfAttention(2, 8, impl=impl), x, grad=True)


def test_cross_matches_xla_with_padding_mask():
    x = jax.random.normal(jax.random.key(3), (2, 2, 8, 8, 32))  # 128 queries
    text = jax.random.normal(jax.random.key(4), (2, 5, 16))
    mask = jnp.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], bool)  # padding; an empty prompt
    _compare(lambda impl: attn.CrossAttention(2, impl=impl), x, text, mask, grad=True)


def test_spacetime_matches_xla_with_image_frames():
    x = jax.random.normal(jax.random.key(5), (2, 3, 8, 8, 32))  # 192 queries: padded to 256
    frame_mask = jnp.array([[1, 1, 0], [0, 0, 0]], bool)  # video + image frame; all images
    _compare(lambda impl: attn.SpaceTimeSelfAttention(2, impl=impl), x, frame_mask)


def test_auto_follows_the_target_platform_not_the_host(monkeypatch):
    calls = []

    def fake_splash(q, k, v, *, segments, mesh, interpret, frames_split=False):
        calls.append(interpret)
        return jnp.zeros_like(q)

    monkeypatch.setattr(attn.pallas_attention, "splash", fake_splash)
    x = jnp.zeros((1, 1, 16, 16, 32))
    spatial = attn.SpatialSelfAttention(2, 8, impl="auto")
    variables = spatial.init(jax.random.key(0), x)
    spatial.apply(variables, x)
    assert calls == []  # the host is a CPU: XLA
    with platform.compile_target("tpu"):  # 8 devices but no mesh to shard_map over: XLA
        spatial.apply(variables, x)
    assert calls == []
    with platform.compile_target("tpu", sharding.make_mesh()):
        spatial.apply(variables, x)
        assert calls == [False]  # the real kernel, not interpret mode
        # Temporal attention (relative-position bias over a few frames) stays on XLA.
        temporal = attn.TemporalSelfAttention(2, 4, impl="auto")
        y = jnp.zeros((1, 4, 2, 2, 32))
        temporal.apply(temporal.init(jax.random.key(0), y), y)
        # Fewer than 128 queries (an 8x8 map) would be mostly padding: XLA.
        small = jnp.zeros((1, 1, 8, 8, 32))
        spatial.apply(spatial.init(jax.random.key(0), small), small)
    assert calls == [False]


def test_pallas_refuses_a_bias():
    q = jnp.zeros((1, 128, 2, 16))
    with pytest.raises(ValueError, match="attention_impl='pallas'.*bias=True"):
        attn.attention(q, q, q, bias=jnp.zeros((1, 2, 128, 128)), impl="pallas")


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_spacetime_image_frames_see_only_themselves(impl):
    # Two image frames (and a video example): an image frame's output must not depend on the
    # other frames, whichever kernel runs the segment-id mask.
    x = jax.random.normal(jax.random.key(6), (1, 2, 8, 8, 32))  # 128 queries
    other = x.at[:, 1].set(jax.random.normal(jax.random.key(7), (1, 8, 8, 32)))
    images = jnp.zeros((1, 2), bool)
    module = attn.SpaceTimeSelfAttention(2, impl=impl)
    variables, run = _init_apply(module, x, images)
    _, run_other = _init_apply(module, other, images)
    np.testing.assert_allclose(run(variables)[:, 0], run_other(variables)[:, 0], atol=1e-5)
    assert not np.allclose(run(variables)[:, 1], run_other(variables)[:, 1], atol=1e-3)
    video = jnp.ones((1, 2), bool)  # video frames do see each other
    _, run_video = _init_apply(module, x, video)
    _, run_video_other = _init_apply(module, other, video)
    assert not np.allclose(run_video(variables)[:, 0], run_video_other(variables)[:, 0], atol=1e-3)


def test_shard_specs_follow_the_video_layout():
    from jax.sharding import PartitionSpec as P

    from t2v_jax.models.pallas_attention import _specs

    mesh = type("M", (), {"shape": {"data": 2, "fsdp": 4, "tensor": 1}})()
    # Whole videos per chip: the batch over (data, fsdp), the whole sequence on each chip.
    assert _specs(mesh, 16, 256, 2, False) == (
        P(("data", "fsdp"), None, "tensor", None), P(("data", "fsdp"), None, "tensor", None),
        P(("data", "fsdp"), None), P(("data", "fsdp"), None),
    )  # fmt: skip
    # Frames split: per-frame attention folds 8 frames x 2 videos frames-major: (fsdp, data).
    assert _specs(mesh, 16, 256, 2, True)[0] == P(("fsdp", "data"), None, "tensor", None)
    # Joint / cross attention of 2 videos: the queries' 2048 tokens over fsdp, every key whole.
    q, kv, q_seg, kv_seg = _specs(mesh, 2, 2048, 2, True)
    assert q == P(("data",), "fsdp", "tensor", None) and kv == P(("data",), None, "tensor", None)
    assert q_seg == P(("data",), "fsdp") and kv_seg == P(("data",), None)
    # A query shard shorter than a block (256 tokens over 4 chips): the sequence stays whole.
    assert _specs(mesh, 2, 256, 2, True)[0] == P(("data",), None, "tensor", None)


@pytest.mark.parametrize("block", ["spatial", "cross"])
def test_frames_split_kernel_matches_xla(block):
    # Under video_sharding="frames" (frames over fsdp=4, batch over data=2), the kernel runs on
    # each chip's frames (spatial: folded frames-major) or its frames' queries against every
    # key (cross), interpret mode, and gives the unsharded XLA numbers.
    import flax.linen as nn
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from t2v_jax.video_layout import VideoLayout

    mesh = sharding.make_mesh(sharding.MeshConfig(2, 4, 1))
    x = jax.random.normal(jax.random.key(6), (2, 4, 16, 16, 32))  # 256 queries a frame
    text = jax.random.normal(jax.random.key(7), (2, 5, 16))
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
    if block == "spatial":
        make, inputs = (lambda impl: attn.SpatialSelfAttention(2, 8, impl=impl)), (x,)
    else:
        make, inputs = (lambda impl: attn.CrossAttention(2, impl=impl)), (x, text, mask)
    variables, xla_fn = _init_apply(make("xla"), *inputs)
    want = xla_fn(variables)
    module = make("pallas")
    x_split = jax.device_put(x, NamedSharding(mesh, P("data", "fsdp")))

    @jax.jit
    def split(v, x_in):
        with (
            platform.compile_target("cpu", mesh),
            nn.logical_axis_rules(VideoLayout(mesh, "frames").rules()),
        ):
            return module.apply(v, x_in, *inputs[1:])

    np.testing.assert_allclose(split(variables, x_split), want, atol=2e-5, rtol=2e-5)
