"""Remat policies (what a block keeps for the backward pass) and tensor-parallel activations.

The policies are checked on one ResBlock, where the recomputed ops can be counted by hand, and
their wiring into VideoUNet on its traced program; that every policy leaves the loss and the
gradients unchanged is `test_unet.test_remat_and_conv_impl_gradients_match`. The activation
constraints are checked on a one-level U-Net over a (data=4, fsdp=1, tensor=2) mesh of fake
CPU devices: they are in the program, and outputs, loss and gradients equal one device's.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from t2v_jax import sharding
from t2v_jax.configlib import ConfigError, from_config
from t2v_jax.models import UNetConfig, VideoUNet, platform
from t2v_jax.models.layers import ResBlock
from t2v_jax.models.remat import REMAT_POLICIES, remat_block

D = 16
# One level (attention, cross-attention and temporal attention at it): the smallest U-Net
# with every block kind, so the multi-device compiles stay cheap.
SMALL = UNetConfig(
    text_dim=D,
    base_channels=8,
    channel_mults=(1,),
    num_res_blocks=1,
    spatial_attention_resolutions=(1,),
    temporal_mixing="both",
    num_heads=2,
    norm_groups=4,
    spatial_conv_impl="conv",
)


def _inputs(b=4, t=2, h=4, w=4, length=3, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(b, t, h, w, 3)), jnp.float32)
    log_snr = jnp.asarray(rng.uniform(-5, 5, size=(b,)), jnp.float32)
    text = jnp.asarray(rng.normal(size=(b, length, D)), jnp.float32)
    mask = jnp.asarray(np.arange(length)[None] < np.resize([2, length], b)[:, None])
    return x, log_snr, text, mask


def test_remat_takes_a_policy_name_or_an_old_bool():
    assert UNetConfig().remat == "none"
    assert UNetConfig(remat=True).remat == "full"  # configs saved when remat was a bool
    assert UNetConfig(remat=False).remat == "none"
    assert from_config(UNetConfig, {"remat": True}, "model").remat == "full"
    assert from_config(UNetConfig, {"remat": "save_dots"}, "model").remat == "save_dots"
    with pytest.raises(ValueError, match="remat: expected one of none, full, save_dots, offload"):
        UNetConfig(remat="dots")
    with pytest.raises(ConfigError, match="model.remat"):
        from_config(UNetConfig, {"remat": "dots"}, "model")


def _count(lowered_text: str, op: str) -> int:
    return lowered_text.count(f"stablehlo.{op}")


@pytest.mark.parametrize(
    ("policy", "convs"),
    # The block has two 3x3 convs: forward 2, backward 2 x (input grad + kernel grad) = 4.
    # "full" reruns conv1 (its output feeds norm2, whose backward needs it; conv2's output
    # feeds only the linear residual sum, so nothing needs it again); save_dots and offload
    # keep conv1's output, so only the elementwise ops are rerun.
    [("none", 6), ("full", 7), ("save_dots", 6), ("offload", 6)],
)
def test_policy_decides_what_the_backward_pass_recomputes(policy, convs):
    block = remat_block(ResBlock, policy)(8, 4, False, impl="conv")
    x = jax.ShapeDtypeStruct((1, 1, 4, 4, 8), jnp.float32)
    emb = jax.ShapeDtypeStruct((1, 8), jnp.float32)
    params = nn.unbox(jax.eval_shape(block.init, jax.random.key(0), x, emb))
    grad = jax.grad(lambda p, x, emb: jnp.sum(block.apply(p, x, emb) ** 2))
    assert _count(jax.jit(grad).lower(params, x, emb).as_text(), "convolution") == convs
    # Offload moves what it keeps to host memory (XLA:CPU lowers the copy away: its "device"
    # memory is host memory, so only the traced program shows the moves).
    moves = str(jax.make_jaxpr(grad)(params, x, emb)).count("MemorySpace.Host")
    assert (moves > 0) == (policy == "offload"), moves


def test_unet_blocks_use_the_configured_policy():
    args = _inputs()
    # A one-level, one-block U-Net calls 5 ResBlocks (encoder 1, middle 2, decoder 2) and 4
    # attention sites (encoder, middle, 2 decoder) of 3 blocks each (spatial, cross, temporal).
    expected = {"none": [], "full": ["None"] * 17}
    expected["save_dots"] = ["SaveOnlyTheseNames(saveable_names=frozenset({'matmul_output'}))"] * 17
    expected["offload"] = ["save_and_offload_only_these_names.<locals>.policy"] * 17
    for policy in REMAT_POLICIES:
        cfg = dataclasses.replace(SMALL, remat=policy)
        params = jax.eval_shape(VideoUNet(cfg).init, jax.random.key(0), *args)
        jaxpr = jax.make_jaxpr(VideoUNet(cfg).apply)(params, *args).jaxpr
        found = [
            getattr(e.params["policy"], "__qualname__", str(e.params["policy"]))
            for e in jaxpr.eqns
            if e.primitive.name == "remat2"
        ]
        assert found == expected[policy], (policy, found[:1])


def test_tensor_parallel_unet_matches_one_device():
    # Temporal mixing by conv only, no cross-attention: fewer blocks, a cheaper compile; the
    # spatial attention still splits its heads over tensor.
    cfg = dataclasses.replace(SMALL, temporal_mixing="conv", cross_attention=False)
    args = _inputs()
    target = jnp.asarray(np.random.default_rng(1).normal(size=args[0].shape), jnp.float32)
    abstract = jax.eval_shape(VideoUNet(cfg).init, jax.random.key(0), *args)
    params = jax.jit(lambda: nn.unbox(VideoUNet(cfg).init(jax.random.key(0), *args)))()

    def step(p, x, log_snr, text, mask, target):
        """The train step's loss (v-prediction MSE), its gradients, and the U-Net output."""

        def loss_fn(p):
            out = VideoUNet(cfg).apply(p, x, log_snr, text, mask)
            return jnp.mean(jnp.square(out - target)), out

        return jax.value_and_grad(loss_fn, has_aux=True)(p)

    (loss_1, out_1), grads_1 = jax.jit(step)(params, *args, target)

    mesh = sharding.make_mesh(sharding.MeshConfig(data=4, fsdp=1, tensor=2))
    param_shardings = nn.unbox(sharding.logical_shardings(abstract, mesh))
    inputs = (*args, target)
    batch = jax.device_put(inputs, tuple(sharding.batch_sharding(mesh, a.ndim) for a in inputs))
    with platform.compile_target("cpu", mesh):
        lowered = jax.jit(step).lower(jax.device_put(params, param_shardings), *batch)
    # Every block boundary pins [B, T, H, W, C] to batch over (data, fsdp), channels over
    # tensor: conv_in, encoder ResBlock + attention, middle 3, decoder 2 x (ResBlock + attention)
    # = 10 in the forward pass (the backward pass constrains the cotangents too). Without the
    # constraints, tensor-sharded conv kernels alone leave activations to the propagation.
    pinned = '[{"data", "fsdp"}, {}, {}, {}, {"tensor"}]'
    constraints = [line for line in lowered.as_text().splitlines() if "sharding_constraint" in line]
    assert sum(pinned in line for line in constraints) >= 10, constraints[:3]
    (loss_8, out_8), grads_8 = lowered.compile()(jax.device_put(params, param_shardings), *batch)
    assert out_8.sharding.is_equivalent_to(sharding.batch_sharding(mesh, 5), 5)
    np.testing.assert_allclose(out_8, out_1, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads_1), jax.tree.leaves(grads_8), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)


def test_activation_constraints_follow_the_rules_in_context():
    # The train loop and the pre-flight trace inside nn.logical_axis_rules(config's rules): a
    # config that maps the activations' channels to no mesh axis gets no tensor split of them.
    cfg = dataclasses.replace(SMALL, temporal_mixing="conv", cross_attention=False)
    args = _inputs()
    params = jax.eval_shape(lambda: nn.unbox(VideoUNet(cfg).init(jax.random.key(0), *args)))
    mesh = sharding.make_mesh(sharding.MeshConfig(data=4, fsdp=1, tensor=2))
    custom = tuple((n, None if n == "act_channels" else t) for n, t in sharding.DEFAULT_RULES)

    def constraints(rules):
        with platform.compile_target("cpu", mesh), nn.logical_axis_rules(rules):
            text = jax.jit(lambda p, *a: VideoUNet(cfg).apply(p, *a)).lower(params, *args)
        return [line for line in text.as_text().splitlines() if "sharding_constraint" in line]

    assert any('{"tensor"}]' in line for line in constraints(sharding.DEFAULT_RULES))
    custom_lines = constraints(custom)
    assert custom_lines and not any('"tensor"' in line for line in custom_lines), custom_lines[:2]


def test_train_loop_warns_about_the_three_axis_cpu_mesh(caplog):
    # docs/architecture.md: XLA:CPU gets U-Net gradients wrong on (data, fsdp, tensor) all > 1.
    import ml_collections

    from t2v_jax.train import loop

    for shape, warned in (((2, 2, 2), True), ((4, 1, 2), False)):
        caplog.clear()
        config = ml_collections.ConfigDict(
            {"mesh": dict(zip(("data", "fsdp", "tensor"), shape, strict=True))}
        )
        loop._mesh_and_rules(config)
        assert any("all > 1" in r.message for r in caplog.records) == warned, shape
