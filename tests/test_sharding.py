"""Mesh construction, logical-axis rules -> shardings, and batch sharding on 1 and 8 devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec

from t2v_jax import axes, sharding
from t2v_jax.configlib import ConfigError


def test_eight_fake_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize(
    "cfg, expected",
    [
        (sharding.MeshConfig(), (8, 1, 1)),
        (sharding.MeshConfig(data=2, fsdp=-1), (2, 4, 1)),
        (sharding.MeshConfig(data=-1, fsdp=2, tensor=2), (2, 2, 2)),
        (sharding.MeshConfig(data=1, fsdp=8, tensor=1), (1, 8, 1)),
    ],
)
def test_mesh_shapes_on_8_devices(cfg, expected):
    mesh = sharding.make_mesh(cfg)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert tuple(mesh.shape.values()) == expected
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
    # Deliberately Auto (pjit-style), not jax.make_mesh's Explicit default.
    assert all(t == AxisType.Auto for t in mesh.axis_types)


def test_mesh_on_one_device():
    mesh = sharding.make_mesh(sharding.MeshConfig(), devices=jax.devices()[:1])
    assert tuple(mesh.shape.values()) == (1, 1, 1)


@pytest.mark.parametrize(
    "cfg, match",
    [
        (sharding.MeshConfig(data=3, fsdp=-1), "not divisible"),
        (sharding.MeshConfig(data=2, fsdp=2, tensor=1), "data\\*fsdp\\*tensor = 4"),
        (sharding.MeshConfig(data=-1, fsdp=-1), "at most one axis"),
        (sharding.MeshConfig(data=0), "mesh.data"),
    ],
)
def test_bad_mesh_configs(cfg, match):
    with pytest.raises(ConfigError, match=match):
        sharding.make_mesh(cfg)


def test_logical_to_spec_follows_rules_and_uses_each_mesh_axis_once():
    rules = sharding.DEFAULT_RULES
    assert sharding.logical_to_spec((axes.BATCH, axes.FRAMES), rules) == PartitionSpec(
        ("data", "fsdp"), None
    )
    # CONV_IN -> fsdp, CONV_OUT -> tensor.
    spec = sharding.logical_to_spec(
        (axes.CONV_SPACE, axes.CONV_SPACE, axes.CONV_IN, axes.CONV_OUT), rules
    )
    assert spec == PartitionSpec(None, None, "fsdp", "tensor")
    # EMBED and CONV_IN both want fsdp: only the first gets it.
    assert sharding.logical_to_spec((axes.EMBED, axes.CONV_IN), rules) == PartitionSpec(
        "fsdp", None
    )
    with pytest.raises(ValueError, match="no sharding rule"):
        sharding.logical_to_spec(("bogus",), rules)


def test_indivisible_dims_are_replicated():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    spec = sharding.logical_to_spec(
        (axes.CONV_IN, axes.CONV_OUT), sharding.DEFAULT_RULES, (3, 8), mesh
    )
    assert spec == PartitionSpec(None, "tensor")  # 3 channels cannot be split 4 ways
    spec = sharding.logical_to_spec(
        (axes.CONV_IN, axes.CONV_OUT), sharding.DEFAULT_RULES, (8, 8), mesh
    )
    assert spec == PartitionSpec("fsdp", "tensor")


def test_rules_from_config_validates_names():
    rules = sharding.rules_from_config([["batch", ["data", "fsdp"]], ["embed", None]])
    assert rules == (("batch", ("data", "fsdp")), ("embed", None))
    with pytest.raises(ConfigError, match="unknown logical axis 'emb'"):
        sharding.rules_from_config([["emb", "fsdp"]])
    with pytest.raises(ConfigError, match="unknown mesh axis 'model'"):
        sharding.rules_from_config([["embed", "model"]])


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), (axes.EMBED, axes.MLP)),
            (x.shape[-1], 16),
        )
        return x @ kernel


def test_params_created_sharded_and_batch_sharding():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    model = _Tiny()
    x = jnp.ones((8, 4))
    abstract = jax.eval_shape(model.init, jax.random.key(0), x)
    assert sharding.unnamed_params(abstract) == []
    shardings = sharding.logical_shardings(abstract, mesh)
    init = jax.jit(lambda k: nn.unbox(model.init(k, x)), out_shardings=shardings)
    params = init(jax.random.key(0))
    kernel = params["params"]["kernel"]
    assert kernel.sharding.spec == PartitionSpec("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (2, 8)

    batch = sharding.shard_host_batch({"x": np.arange(32.0).reshape(8, 4)}, mesh)
    assert batch["x"].sharding.spec == PartitionSpec(("data", "fsdp"), None)
    assert batch["x"].addressable_shards[0].data.shape == (2, 4)
    out = jax.jit(model.apply)(params, batch["x"])
    reference = np.arange(32.0).reshape(8, 4) @ np.asarray(jax.device_get(kernel))
    np.testing.assert_allclose(np.asarray(out), reference, rtol=1e-5)


def test_unnamed_params_are_reported():
    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x)

    abstract = jax.eval_shape(Plain().init, jax.random.key(0), jnp.ones((1, 2)))
    assert sorted(sharding.unnamed_params(abstract)) == [
        "['params']['Dense_0']['bias']",
        "['params']['Dense_0']['kernel']",
    ]


def test_mesh_larger_than_the_devices_says_both_numbers():
    with pytest.raises(ConfigError, match="data\\*fsdp\\*tensor = 16 but 8 devices are available"):
        sharding.MeshConfig(data=2, fsdp=8, tensor=1).resolve(8)
