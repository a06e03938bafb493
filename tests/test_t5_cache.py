"""Embedding cache: encode captions once, save ragged float16, load, look up padded batches."""

import jax
import numpy as np
import pytest

from t2v_jax.text import (
    ByteTokenizer,
    EmbeddingCache,
    T5Config,
    TextEncoder,
    encode_captions,
    save_embedding_cache,
)

CAPTIONS = ["a red circle", "", "Салом 😀", "a blue square moving left " * 3, "x", "cat dog"]


@pytest.fixture(scope="module")
def encoder():
    config = T5Config(vocab_size=259, d_model=8, d_kv=4, d_ff=16, num_layers=2, num_heads=2)
    return TextEncoder.init_random(
        config, ByteTokenizer(), jax.random.key(0), max_length=32, batch_size=4
    )


def test_cache_round_trip(encoder, tmp_path):
    with pytest.warns(UserWarning, match="truncated"):
        cache = encode_captions(encoder, CAPTIONS, batch_size=4)
        emb, mask, truncated = encoder.encode_with_info(CAPTIONS)
    emb, mask = np.asarray(emb), np.asarray(mask)
    # Only unmasked tokens are stored.
    assert cache.embeddings.dtype == np.float16 and len(cache.embeddings) == mask.sum()
    save_embedding_cache(tmp_path / "emb.safetensors", cache)
    loaded = EmbeddingCache.load(tmp_path / "emb.safetensors")
    assert len(loaded) == len(CAPTIONS) and loaded.max_length == 32
    np.testing.assert_array_equal(loaded.truncated, truncated)

    order = [3, 0, 1, 5]
    got, got_mask = loaded.lookup(order)
    assert got.shape == (4, 32, 8) and got.dtype == np.float32
    np.testing.assert_array_equal(got_mask, mask[order])
    np.testing.assert_allclose(got[got_mask], emb[order][mask[order]], rtol=1e-3, atol=1e-3)
    assert (got[~got_mask] == 0).all()


def test_lookup_and_save_validate(encoder, tmp_path):
    cache = encode_captions(encoder, CAPTIONS[:2])
    with pytest.raises(ValueError, match="indices must be"):
        cache.lookup([2])
    with pytest.raises(ValueError, match="captions must be a non-empty list"):
        encode_captions(encoder, [])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        encode_captions(encoder, CAPTIONS, batch_size=0)
