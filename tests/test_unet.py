"""VideoUNet: shapes per stage, named params, frame independence, frame masks, grads, sharding.

Compiles dominate on CPU. Most tests use parameters drawn with numpy for the shapes
`jax.eval_shape(init)` reports (compiling `init` costs more than compiling `apply`; only
`test_real_init_*` pays for it) and share a few jitted functions (`_apply`), which the
persistent compilation cache makes nearly free on a second run.
"""

import dataclasses
import functools

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from t2v_jax import sharding
from t2v_jax.configlib import ConfigError, from_config
from t2v_jax.models import UNetConfig, VideoUNet

B, T, H, W, L, D = 2, 4, 8, 8, 5, 16

# The tiny settings (configs/tiny.py uses the same): two levels, attention at the lower one.
BASE = UNetConfig(
    text_dim=D,
    base_channels=8,
    channel_mults=(1, 2),
    num_res_blocks=1,
    spatial_attention_resolutions=(2,),
    temporal_mixing="both",  # exercise temporal conv *and* temporal attention
    num_heads=2,
    norm_groups=4,
)
TSR = dataclasses.replace(BASE, cond_channels=3, temporal_mixing="conv")
SSR = dataclasses.replace(
    BASE, cond_channels=3, temporal_mixing="conv", spatial_attention_resolutions=()
)


def _inputs(cfg, b=B, t=T, h=H, w=W, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(b, t, h, w, cfg.in_channels)), jnp.float32)
    log_snr = jnp.asarray(rng.uniform(-5, 5, size=(b,)), jnp.float32)
    text = jnp.asarray(rng.normal(size=(b, L, cfg.text_dim)), jnp.float32)
    mask = jnp.asarray(np.arange(L)[None] < np.resize([3, L], b)[:, None])  # padded prompts
    kwargs = {}
    if cfg.cond_channels:
        kwargs["cond_video"] = jnp.asarray(rng.normal(size=(b, t, h, w, cfg.cond_channels)))
        kwargs["cond_log_snr"] = jnp.asarray(rng.uniform(-2, 5, size=(b,)), jnp.float32)
    return (x, log_snr, text, mask), kwargs


def _abstract_params(cfg, t=T):
    args, kwargs = _inputs(cfg, t=t)
    return jax.eval_shape(VideoUNet(cfg).init, jax.random.key(0), *args, **kwargs)


def _random_params(cfg, seed=1, zero_temporal=False):
    """Parameters drawn with numpy (fan-in scaled) for the shapes `init` would make.

    Every leaf is non-zero, so temporal layers are active. With zero_temporal, the leaves that
    `init` zero-initialises in temporal layers are zeroed again (the fresh-model state).
    """
    rng = np.random.default_rng(seed)
    abstract = nn.unbox(_abstract_params(cfg))

    def fill(path, leaf):
        shape = leaf.shape
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 16
        value = rng.normal(size=shape) / np.sqrt(fan_in)
        keys = jax.tree_util.keystr(path)
        if zero_temporal and (
            ("temporal" in keys and ("'kernel'" in keys or "'bias'" in keys) and "'conv" in keys)
            or ("_temporal" in keys and "'out'" in keys)
        ):
            value = np.zeros(shape)
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


@functools.cache
def _apply(cfg):
    """jax.jit(VideoUNet(cfg).apply), one per config (jit caches per input shape)."""
    return jax.jit(VideoUNet(cfg).apply)


@pytest.fixture(scope="module")
def base_params():
    return _random_params(BASE)


@pytest.mark.parametrize("cfg", [BASE, TSR, SSR], ids=["base", "tsr", "ssr"])
@pytest.mark.parametrize("t", [T, 1], ids=["video", "image"])
def test_output_shapes(cfg, t):
    args, kwargs = _inputs(cfg, t=t)
    model = VideoUNet(cfg)
    params = jax.eval_shape(model.init, jax.random.key(0), *args, **kwargs)
    out = jax.eval_shape(model.apply, params, *args, **kwargs)
    assert out.shape == (B, t, H, W, cfg.out_channels) and out.dtype == jnp.float32


def test_ssr_has_no_attention_and_tsr_no_temporal_attention():
    ssr = nn.unbox(_abstract_params(SSR))["params"]
    tsr = nn.unbox(_abstract_params(TSR))["params"]
    assert not any("attn" in k for k in ssr), sorted(ssr)
    assert not any("temporal" in k for k in tsr)  # conv-only temporal mixing
    assert any("temporal" in k for k in nn.unbox(_abstract_params(BASE))["params"])


@pytest.mark.parametrize("cfg", [BASE, TSR, SSR], ids=["base", "tsr", "ssr"])
def test_every_param_has_logical_axis_names(cfg):
    boxed = _abstract_params(cfg)
    assert sharding.unnamed_params(boxed) == []
    for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)):
        assert len(leaf.names) == leaf.value.ndim and all(leaf.names)
    # Every name has a sharding rule (logical_to_spec raises otherwise).
    specs = nn.get_partition_spec(boxed)
    for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)):
        sharding.logical_to_spec(leaf.names, sharding.DEFAULT_RULES)
    assert jax.tree.structure(specs) is not None


@pytest.mark.parametrize("cfg", [TSR, SSR], ids=["tsr", "ssr"])
def test_sr_stages_run(cfg):
    args, kwargs = _inputs(cfg)
    params = _random_params(cfg)
    out = _apply(cfg)(params, *args, **kwargs)
    assert out.shape == (B, T, H, W, 3) and bool(jnp.isfinite(out).all())
    # The conditioning video and its noise level are real inputs.
    other = dict(kwargs, cond_video=kwargs["cond_video"] + 1.0)
    assert not np.allclose(out, _apply(cfg)(params, *args, **other))
    other = dict(kwargs, cond_log_snr=kwargs["cond_log_snr"] + 3.0)
    assert not np.allclose(out, _apply(cfg)(params, *args, **other))


def test_uses_text_says_whether_the_output_reads_the_text():
    text_free = dataclasses.replace(TSR, cross_attention=False, use_pooled_text=False)
    assert BASE.uses_text and TSR.uses_text and SSR.uses_text  # SSR: pooled text
    assert not dataclasses.replace(SSR, use_pooled_text=False).uses_text  # no attention levels
    assert not text_free.uses_text
    (x, log_snr, text, mask), kwargs = _inputs(text_free)
    params = _random_params(text_free)
    out = _apply(text_free)(params, x, log_snr, text, mask, **kwargs)
    other = _apply(text_free)(params, x, log_snr, -text, ~mask, **kwargs)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(other))
    with_text = _apply(TSR)(_random_params(TSR), x, log_snr, text, mask, **kwargs)
    assert not np.allclose(
        with_text, _apply(TSR)(_random_params(TSR), x, log_snr, -text, mask, **kwargs)
    )


def _perturb_frame(x, b, t):
    return x.at[b, t].add(1.0)


def test_zero_temporal_layers_make_the_model_frame_independent():
    params = _random_params(BASE, zero_temporal=True)
    args, _ = _inputs(BASE)
    apply = _apply(BASE)
    out = apply(params, *args)
    out2 = apply(params, _perturb_frame(args[0], 0, 0), *args[1:])
    np.testing.assert_allclose(out2[:, 1:], out[:, 1:], atol=1e-6)
    assert not np.allclose(out2[0, 0], out[0, 0])
    # ...whereas with active temporal layers the perturbation spreads to other frames.
    active = _random_params(BASE)
    out = apply(active, *args)
    out2 = apply(active, _perturb_frame(args[0], 0, 0), *args[1:])
    assert not np.allclose(out2[0, 1:], out[0, 1:], atol=1e-4)


def test_real_init_zeroes_temporal_layers_and_is_frame_independent():
    """The actual `init` (not numpy params): temporal convs / temporal-attention outputs are 0."""
    args, _ = _inputs(BASE)
    model = VideoUNet(BASE)
    params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), *args)
    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(params))[0]
    zero = [k for k, v in flat if not np.any(v)]
    temporal = [
        k for k, _ in flat
        if "'temporal'" in jax.tree_util.keystr(k) or (
            "_temporal" in jax.tree_util.keystr(k) and "'out'" in jax.tree_util.keystr(k))
    ]  # fmt: skip
    assert temporal and set(map(str, temporal)) <= set(map(str, zero))
    assert all(bool(jnp.isfinite(v).all()) for _, v in flat)
    out = _apply(BASE)(params, *args)
    out2 = _apply(BASE)(params, _perturb_frame(args[0], 1, 2), *args[1:])
    np.testing.assert_allclose(out2[1, :2], out[1, :2], atol=1e-6)
    np.testing.assert_allclose(out2[1, 3:], out[1, 3:], atol=1e-6)
    np.testing.assert_allclose(out2[0], out[0], atol=1e-6)


def test_frame_mask_isolates_image_frames(base_params):
    args, _ = _inputs(BASE)
    apply = _apply(BASE)
    # Example 0: frames 0, 1, 3 are a video, frame 2 an image. Example 1: four images.
    frame_mask = jnp.array([[True, True, False, True], [False] * 4])
    run = lambda x: apply(base_params, x, *args[1:], frame_mask=frame_mask)
    out = run(args[0])
    # Perturbing the image frame changes nothing else.
    out2 = run(_perturb_frame(args[0], 0, 2))
    others = np.ones(T, bool)
    others[2] = False
    np.testing.assert_allclose(out2[0, others], out[0, others], atol=1e-6)
    assert not np.allclose(out2[0, 2], out[0, 2])
    # Perturbing a video frame reaches the other video frames, never the image frame.
    out3 = run(_perturb_frame(args[0], 0, 0))
    np.testing.assert_allclose(out3[0, 2], out[0, 2], atol=1e-6)
    assert not np.allclose(out3[0, 3], out[0, 3], atol=1e-4)
    # All-image example: every frame independent.
    out4 = run(_perturb_frame(args[0], 1, 1))
    np.testing.assert_allclose(out4[1, [0, 2, 3]], out[1, [0, 2, 3]], atol=1e-6)
    # An image frame computes exactly what a 1-frame image batch computes.
    single = apply(base_params, args[0][:, 2:3], *args[1:], frame_mask=jnp.zeros((B, 1), bool))
    np.testing.assert_allclose(single[0, 0], out[0, 2], atol=1e-5)


def test_spacetime_attention_mixes_frames_alone_and_respects_the_frame_mask():
    cfg = dataclasses.replace(BASE, temporal_mixing="none", spacetime_attention_resolutions=(2,))
    params = _random_params(cfg)
    names = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert any("_spacetime" in n for n in names) and not any("temporal" in n for n in names)
    args, _ = _inputs(cfg)
    apply = _apply(cfg)
    out = apply(params, *args)
    # No temporal conv or temporal attention: the joint block alone carries frame 0 to the others.
    out2 = apply(params, _perturb_frame(args[0], 0, 0), *args[1:])
    assert not np.allclose(out2[0, 1:], out[0, 1:], atol=1e-4)
    frame_mask = jnp.array([[True, True, False, True], [True] * 4])
    run = lambda x: apply(params, x, *args[1:], frame_mask=frame_mask)
    out = run(args[0])
    out3 = run(_perturb_frame(args[0], 0, 2))  # the image frame reaches no other frame
    np.testing.assert_allclose(out3[0, [0, 1, 3]], out[0, [0, 1, 3]], atol=1e-6)
    out4 = run(_perturb_frame(args[0], 0, 0))  # a video frame reaches video frames only
    np.testing.assert_allclose(out4[0, 2], out[0, 2], atol=1e-6)
    assert not np.allclose(out4[0, 3], out[0, 3], atol=1e-4)
    # A fresh block is the identity: the real init zeroes its output projection.
    init = nn.unbox(jax.jit(VideoUNet(cfg).init)(jax.random.key(0), *args))
    outs = [v for k, v in jax.tree_util.tree_flatten_with_path(init)[0]
            if "_spacetime" in jax.tree_util.keystr(k) and "'out'" in jax.tree_util.keystr(k)]  # fmt: skip
    assert outs and not any(np.any(v) for v in outs)


def test_text_padding_never_leaks_and_empty_prompt_is_finite(base_params):
    (x, log_snr, text, mask), _ = _inputs(BASE)
    apply = _apply(BASE)
    out = apply(base_params, x, log_snr, text, mask)
    garbage = text.at[0, 3:].set(100.0)  # example 0 has 3 real tokens
    np.testing.assert_allclose(apply(base_params, x, log_snr, garbage, mask), out, atol=1e-6)
    empty = apply(base_params, x, log_snr, text, jnp.zeros_like(mask))
    assert bool(jnp.isfinite(empty).all())
    assert not np.allclose(empty, out)


def test_conv_impls_agree(base_params):
    args, _ = _inputs(BASE)
    conv = _apply(dataclasses.replace(BASE, spatial_conv_impl="conv"))(base_params, *args)
    for impl in ("auto", "matmul", "conv_gemm_grad"):
        other = _apply(dataclasses.replace(BASE, spatial_conv_impl=impl))(base_params, *args)
        np.testing.assert_allclose(other, conv, atol=2e-5, rtol=2e-5, err_msg=impl)


def test_grads_are_finite_and_reach_every_param(base_params):
    """Gradients at non-zero params: every leaf is connected to the loss.

    At a fresh init the zero-initialised temporal output layers block the gradient to the
    layers before them in their own branch (q/k/v of temporal attention) for the first step;
    that is by design, so connectivity is checked at generic (numpy) parameter values.
    """
    args, _ = _inputs(BASE)
    model = VideoUNet(BASE)
    frame_mask = jnp.array([[True, True, False, True], [True] * 4])

    def loss(p):
        return jnp.mean(jnp.square(model.apply(p, *args, frame_mask=frame_mask)))

    grads = jax.jit(jax.grad(loss))(base_params)
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    assert all(bool(jnp.isfinite(g).all()) for _, g in flat)
    dead = [jax.tree_util.keystr(k) for k, g in flat if not np.any(g)]
    assert dead == []


def test_bf16_and_remat_forward(base_params):
    args, _ = _inputs(BASE)
    ref = _apply(BASE)(base_params, *args)
    bf16 = _apply(dataclasses.replace(BASE, dtype="bfloat16"))(base_params, *args)
    assert bf16.dtype == jnp.float32
    err = float(jnp.sqrt(jnp.mean(jnp.square(bf16 - ref))) / jnp.sqrt(jnp.mean(jnp.square(ref))))
    assert 0 < err < 0.05, err  # really computed in bf16, and close
    remat = _apply(dataclasses.replace(BASE, remat="full"))(base_params, *args)
    np.testing.assert_allclose(remat, ref, atol=1e-5)


@pytest.mark.slow
def test_remat_and_conv_impl_gradients_match(base_params):
    args, _ = _inputs(BASE)

    def loss_and_grads(cfg):
        loss = lambda p: jnp.mean(jnp.square(VideoUNet(cfg).apply(p, *args)))
        return jax.jit(jax.value_and_grad(loss))(base_params)

    loss_ref, g_ref = loss_and_grads(dataclasses.replace(BASE, spatial_conv_impl="conv"))
    # The remat policies, and the custom kernel gradient of conv_gemm_grad (under remat too),
    # change how the gradient is computed (what is kept or recomputed), never its value.
    # ("offload" is save_dots with host copies, which XLA:CPU compiles away: the same program
    # here; test_remat_sharding checks its host moves.)
    for cfg in (
        dataclasses.replace(BASE, remat="full", spatial_conv_impl="conv"),
        dataclasses.replace(BASE, spatial_conv_impl="conv_gemm_grad"),
        dataclasses.replace(BASE, remat="save_dots", spatial_conv_impl="conv_gemm_grad"),
    ):
        loss, g = loss_and_grads(cfg)
        np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g), strict=True):
            np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)


def test_sharded_forward_matches_unsharded(base_params):
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4, tensor=1))
    args, _ = _inputs(BASE, b=8, t=2)
    frame_mask = jnp.array([[True, False]] * 8)
    model = VideoUNet(BASE)
    fn = lambda p, x, s, te, tm, fm: model.apply(p, x, s, te, tm, frame_mask=fm)
    ref = jax.jit(fn)(base_params, *args, frame_mask)

    param_shardings = nn.unbox(sharding.logical_shardings(_abstract_params(BASE), mesh))
    specs = [s.spec for s in jax.tree.leaves(param_shardings)]
    assert any("fsdp" in str(s) for s in specs)  # really sharded, not all replicated
    params = jax.device_put(base_params, param_shardings)
    inputs = (*args, frame_mask)
    batch = jax.device_put(inputs, tuple(sharding.batch_sharding(mesh, a.ndim) for a in inputs))
    out = jax.jit(fn)(params, *batch)
    assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=1e-5)


def test_config_is_validated():
    with pytest.raises(ValueError, match="spatial_attention_resolutions"):
        dataclasses.replace(BASE, spatial_attention_resolutions=(8,))
    with pytest.raises(ValueError, match="spacetime_attention_resolutions"):
        dataclasses.replace(BASE, spacetime_attention_resolutions=(4,))
    with pytest.raises(ValueError, match="norm_groups"):
        dataclasses.replace(BASE, norm_groups=3)
    with pytest.raises(ValueError, match="num_res_blocks"):
        dataclasses.replace(BASE, num_res_blocks=(1, 1, 1))
    with pytest.raises(ConfigError, match="temporal_mixing"):
        from_config(UNetConfig, {"temporal_mixing": "lstm"}, "model")
    with pytest.raises(ConfigError, match="unknown field"):
        from_config(UNetConfig, {"channels": 3}, "model")
    cfg = {"channel_mults": [1, 2], "num_res_blocks": [1, 2], "spatial_attention_resolutions": [2]}
    cfg = from_config(UNetConfig, cfg, "model")
    assert cfg.num_res_blocks == (1, 2)


def test_bad_inputs_raise_value_errors():
    args, kwargs = _inputs(TSR)
    init = VideoUNet(TSR).init
    with pytest.raises(ValueError, match="cond_video"):
        jax.eval_shape(init, jax.random.key(0), *args)
    with pytest.raises(ValueError, match="height and width"):
        x = args[0][:, :, :7]
        cond = dict(kwargs, cond_video=kwargs["cond_video"][:, :, :7])
        jax.eval_shape(init, jax.random.key(0), x, *args[1:], **cond)
    with pytest.raises(ValueError, match="text_emb"):
        jax.eval_shape(init, jax.random.key(0), *args[:2], args[2][..., :3], args[3], **kwargs)
    with pytest.raises(ValueError, match="cond_video / cond_log_snr"):
        jax.eval_shape(VideoUNet(BASE).init, jax.random.key(0), *_inputs(BASE)[0], **kwargs)


def test_temporal_downsampling_shapes():
    cfg = dataclasses.replace(BASE, temporal_downsample=(True,))
    args, _ = _inputs(cfg)
    params = jax.eval_shape(VideoUNet(cfg).init, jax.random.key(0), *args)
    assert jax.eval_shape(VideoUNet(cfg).apply, params, *args).shape == (B, T, H, W, 3)
    with pytest.raises(ValueError, match="frames must be a multiple of 2"):
        jax.eval_shape(VideoUNet(cfg).init, jax.random.key(0), *_inputs(cfg, t=3)[0])


def test_apply_checks_param_shapes_without_tracing_initializers(monkeypatch):
    args, kwargs = _inputs(BASE)
    boxed = _abstract_params(BASE)["params"]  # LogicallyPartitioned leaves, as init returns
    apply = functools.partial(VideoUNet(BASE).apply, **kwargs)
    assert jax.eval_shape(apply, {"params": boxed}, *args).shape == args[0].shape
    flat = flax.traverse_util.flatten_dict(nn.unbox(boxed))
    name = next(k for k in flat if k[-1] == "kernel")
    flat[name] = jax.ShapeDtypeStruct((*flat[name].shape[:-1], flat[name].shape[-1] + 1), "f4")
    bad = flax.traverse_util.unflatten_dict(flat)
    with pytest.raises(ValueError, match=rf"{'/'.join(name)}: has shape .* the model needs"):
        jax.eval_shape(apply, {"params": bad}, *args)
    # Applying never traces an initializer (flax's own per-param check would, for each one).
    monkeypatch.setattr(jax, "eval_shape", lambda *a, **k: pytest.fail("eval_shape in apply"))
    jax.jit(apply).trace({"params": nn.unbox(boxed)}, *args)
