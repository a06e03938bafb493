"""Parity with committed PyTorch outputs (tests/data/t5_golden), and TextEncoder behaviour.

expected.npz was written by tools/make_t5_golden.py with transformers' tokenizer and PyTorch
T5EncoderModel, so these checks need neither torch nor a network.
"""

import os
import warnings

import numpy as np
import pytest

from t2v_jax.text import HFT5Tokenizer, TextEncoder, load_t5

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "t5_golden")
MAX_LENGTH = 24  # tools/make_t5_golden.py GOLDEN_MAX_LENGTH


@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(GOLDEN, "expected.npz")) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def encoder():
    return load_t5(GOLDEN, max_length=MAX_LENGTH, batch_size=8)


def test_golden_folder_is_small():
    assert sum(os.path.getsize(os.path.join(GOLDEN, f)) for f in os.listdir(GOLDEN)) < 300_000


def test_tokenizer_matches_golden(encoder, expected):
    assert isinstance(encoder.tokenizer, HFT5Tokenizer)
    ids, mask, truncated = encoder.tokenizer.tokenize(list(expected["prompts"]), MAX_LENGTH)
    np.testing.assert_array_equal(ids, expected["ids"])
    np.testing.assert_array_equal(mask, expected["mask"])
    # A prompt is truncated exactly when the untruncated tokenization is longer than L.
    assert truncated.tolist() == [False, False, True, True, False, False, False]


def test_encoder_matches_golden(encoder, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb, mask = encoder.encode(list(expected["prompts"]))
    assert emb.shape == (7, MAX_LENGTH, 16) and emb.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(mask), expected["mask"])
    err = np.abs(np.asarray(emb) - expected["embeddings"])[expected["mask"]]
    assert err.max() <= 1e-5


def test_encoding_does_not_depend_on_padding_length(encoder):
    # Padded keys are masked out, so a longer max_length leaves real tokens unchanged.
    longer = TextEncoder(encoder.config, encoder.params, encoder.tokenizer, max_length=40)
    emb, mask = encoder.encode(["a red circle moving right", "cat dog"])
    emb_long, mask_long = longer.encode(["a red circle moving right", "cat dog"])
    np.testing.assert_array_equal(np.asarray(mask_long)[:, :MAX_LENGTH], mask)
    np.testing.assert_allclose(
        np.asarray(emb_long)[:, :MAX_LENGTH][np.asarray(mask)],
        np.asarray(emb)[np.asarray(mask)],
        atol=1e-5,
    )


def test_truncation_warns_and_flags(encoder):
    with pytest.warns(UserWarning, match=r"1 of 2 prompt\(s\) exceeded max_length=24"):
        _, mask, truncated = encoder.encode_with_info(["red " * 50, "blue"])
    assert truncated.tolist() == [True, False]
    assert np.asarray(mask)[0].all()


def test_batch_sizes_share_compiled_shapes(encoder):
    # Batches are padded to powers of two: 3 and 4 prompts reuse one compiled shape.
    encoder.encode(["a"] * 4)
    before = encoder._encode_tokens._cache_size()
    emb, mask = encoder.encode(["a", "b", "c"])
    assert encoder._encode_tokens._cache_size() == before
    assert emb.shape == (3, MAX_LENGTH, 16) and mask.shape == (3, MAX_LENGTH)


def test_null_embedding_is_finite(encoder):
    emb, mask = encoder.null_embedding()
    assert emb.shape == (1, MAX_LENGTH, 16)
    assert np.asarray(mask).sum() == 1  # just </s>
    assert np.isfinite(np.asarray(emb)).all()


@pytest.mark.parametrize(
    "prompts,match",
    [
        ("a single string", "prompts must be a list of str"),
        ([], "prompts must be a non-empty list"),
        (["ok", 3], r"prompts\[1\] must be a str"),
        (None, "prompts must be a non-empty list"),
    ],
)
def test_bad_prompts_raise(encoder, prompts, match):
    with pytest.raises(ValueError, match=match):
        encoder.encode(prompts)


def test_load_t5_validates_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        load_t5(GOLDEN, max_length=0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_t5(GOLDEN, dtype="float16")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_t5(tmp_path / "nope")
