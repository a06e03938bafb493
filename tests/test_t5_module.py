"""T5Encoder module: config validation, parameter names and logical axes, masking edge cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax import configlib, sharding
from t2v_jax.text import T5Config, T5Encoder

TINY = dict(vocab_size=40, d_model=8, d_kv=4, d_ff=12, num_layers=2, num_heads=2)
TOKENS = jax.ShapeDtypeStruct((2, 5), jnp.int32)
MASK = jax.ShapeDtypeStruct((2, 5), jnp.bool_)


def _abstract(config):
    return jax.eval_shape(T5Encoder(config).init, jax.random.key(0), TOKENS, MASK)["params"]


def _unbox(tree):
    return jax.tree.map(lambda x: x.value, tree, is_leaf=lambda x: hasattr(x, "names"))


@pytest.mark.parametrize(
    "extra", [{}, {"feed_forward_proj": "relu"}, {"per_layer_relative_bias": True}]
)
def test_every_param_has_logical_axes(extra):
    params = _abstract(T5Config(**TINY, **extra))
    assert sharding.unnamed_params(params) == []
    for leaf in jax.tree.leaves(params, is_leaf=lambda x: hasattr(x, "names")):
        assert len(leaf.names) == leaf.value.ndim


def test_param_tree_names_and_shapes():
    params = _unbox(_abstract(T5Config(**TINY)))
    flat = {
        jax.tree_util.keystr(path, simple=True, separator="/"): leaf.shape
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    layer = {
        "pre_attention_norm/scale": (8,),
        "attention/query": (8, 2, 4),
        "attention/key": (8, 2, 4),
        "attention/value": (8, 2, 4),
        "attention/out": (2, 4, 8),
        "pre_mlp_norm/scale": (8,),
        "mlp/wi_0": (8, 12),
        "mlp/wi_1": (8, 12),
        "mlp/wo": (12, 8),
    }
    expected = {"token_embedder/embedding": (40, 8), "final_norm/scale": (8,)}
    expected.update({f"layers_{i}/{k}": v for i in range(2) for k, v in layer.items()})
    expected["layers_0/attention/rel_bias"] = (32, 2)  # only the first layer (T5, mT5)
    assert flat == expected


def test_fully_masked_row_is_finite_and_isolated():
    config = T5Config(**TINY)
    module = T5Encoder(config)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 5)), jnp.int32)
    mask = jnp.asarray([[True, True, True, False, False], [False] * 5])
    params = jax.jit(module.init)(jax.random.key(1), ids, mask)
    apply = jax.jit(module.apply)
    out = apply(params, ids, mask)
    assert np.isfinite(np.asarray(out)).all()
    alone = apply(params, ids[:1], mask[:1])
    np.testing.assert_allclose(out[0], alone[0], atol=1e-6)


def test_from_hf_dict_variants():
    base = dict(TINY, model_type="t5")
    assert T5Config.from_hf_dict(base).feed_forward_proj == "relu"  # HF's t5 default
    mt5 = T5Config.from_hf_dict(dict(TINY, model_type="mt5"))
    assert mt5.feed_forward_proj == "gated-gelu" and not mt5.per_layer_relative_bias
    umt5 = T5Config.from_hf_dict(dict(TINY, model_type="umt5"), dtype="bfloat16")
    assert umt5.per_layer_relative_bias and umt5.dtype == "bfloat16"
    with pytest.raises(ValueError, match="model_type must be"):
        T5Config.from_hf_dict(dict(TINY, model_type="bert"))
    with pytest.raises(ValueError, match="feed_forward_proj must be one of"):
        T5Config.from_hf_dict(dict(base, feed_forward_proj="gated-silu"))
    with pytest.raises(ValueError, match="missing field.*d_ff"):
        T5Config.from_hf_dict({k: v for k, v in base.items() if k != "d_ff"})


@pytest.mark.parametrize(
    "field,value",
    [
        ("d_model", 0),
        ("num_heads", 2.0),
        ("relative_attention_num_buckets", 7),
        ("relative_attention_max_distance", 4),
        ("layer_norm_epsilon", 0.0),
        ("feed_forward_proj", "gelu"),
        ("dtype", "float16"),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"T5Config.{field}"):
        T5Config(**{**TINY, field: value})


def test_config_from_experiment_config():
    config = configlib.from_config(T5Config, dict(TINY, dtype="bfloat16"), "model.text")
    assert config == T5Config(**TINY, dtype="bfloat16")
    with pytest.raises(configlib.ConfigError, match="model.text: unknown field"):
        configlib.from_config(T5Config, dict(TINY, dropout=0.1), "model.text")
