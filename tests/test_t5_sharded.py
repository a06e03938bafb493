"""The T5 encoder sharded over the 8-device mesh gives the unsharded outputs."""

import os

import jax
import numpy as np
import pytest

from t2v_jax import sharding
from t2v_jax.text import load_t5
from t2v_jax.text.t5 import T5Encoder

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "t5_golden")
PROMPTS = [
    "a red circle moving right",
    "",
    "Салом, ҷаҳон!",
    "你好世界 😀",
    "cat dog",
    "small green triangle jumps",
    "مرحبا",
    "blue",
]


@pytest.mark.parametrize("mesh_shape", [(2, 4, 1), (2, 1, 4)], ids=["fsdp", "tensor"])
def test_sharded_equals_unsharded(mesh_shape):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py fakes them on CPU)")
    encoder = load_t5(GOLDEN, max_length=16, batch_size=8)
    emb, mask = encoder.encode(PROMPTS)
    ids, tok_mask, _ = encoder.tokenizer.tokenize(PROMPTS, 16)

    mesh = sharding.make_mesh(sharding.MeshConfig(*mesh_shape))
    abstract = jax.eval_shape(T5Encoder(encoder.config).init, jax.random.key(0), ids, tok_mask)
    param_shardings = sharding.logical_shardings(abstract["params"], mesh)
    params = jax.device_put(encoder.params, param_shardings)
    batch = sharding.batch_sharding(mesh, 2)
    # Parameters really are split (d_model over fsdp, or d_ff / vocab over tensor).
    assert any(len(p.sharding.device_set) > 1 and not p.sharding.is_fully_replicated
               for p in jax.tree.leaves(params))  # fmt: skip

    fn = jax.jit(
        lambda p, i, m: T5Encoder(encoder.config).apply({"params": p}, i, m),
        in_shardings=(param_shardings, batch, batch),
        out_shardings=sharding.batch_sharding(mesh, 3),
    )
    out = fn(params, jax.device_put(ids, batch), jax.device_put(tok_mask, batch))
    assert out.sharding.spec[0] == ("data", "fsdp")
    m = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(out)[m], np.asarray(emb)[m], atol=1e-5)
