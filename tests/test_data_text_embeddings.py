"""Tests of tools/precompute_text_embeddings.py and the pipeline's 'text_emb' batches."""

import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from t2v_jax.data import pipeline
from t2v_jax.text import ByteTokenizer, T5Config, TextEncoder

MAX_LENGTH = 96  # longer than every caption (bytes + EOS): no truncation warnings


@pytest.fixture(scope="module")
def setup(tmp_path_factory, load_tool):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    pipeline.prepare("shapes/tiny", data_dir)
    pipeline.prepare("shapes/tiny_images", data_dir)
    config = T5Config(vocab_size=259, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    encoder = TextEncoder.init_random(
        config, ByteTokenizer(), jax.random.key(0), max_length=MAX_LENGTH, batch_size=128
    )
    t5_dir = str(tmp_path_factory.mktemp("t5"))
    encoder.save(t5_dir)
    tool = load_tool("precompute_text_embeddings")
    # One chunk of 128 (all 100 captions): a single compiled shape, shared with the test below.
    argv = ["--t5", t5_dir, "--max_length", str(MAX_LENGTH), "--batch_size", "128"]
    argv += ["--data_dir", data_dir, "--dataset", "shapes/tiny", "--dataset", "shapes/tiny_images"]
    assert tool.main(argv) == 0
    out = tool.default_output_dir(
        "shapes/tiny", data_dir, f"{os.path.basename(t5_dir)}_L{MAX_LENGTH}"
    )
    return data_dir, encoder, out


def _all_captions(data_dir, name):
    out = set()
    for split, src in tfds.data_source(name, data_dir=data_dir, download=False).items():
        del split
        out |= {src[i]["caption"].decode() for i in range(len(src))}
    return out


def test_cache_covers_every_caption_once(setup):
    data_dir, _, out = setup
    rows, cache = pipeline.load_caption_embeddings(out)
    expected = _all_captions(data_dir, "shapes/tiny") | _all_captions(
        data_dir, "shapes/tiny_images"
    )
    assert set(rows) == expected and len(cache) == len(expected)
    assert cache.embeddings.dtype == np.float16 and cache.max_length == MAX_LENGTH


def test_batches_carry_the_encoder_embeddings(setup):
    data_dir, encoder, out = setup
    cfg = pipeline.DataConfig(
        name="shapes/tiny", data_dir=data_dir, max_text_length=MAX_LENGTH, text_embeddings=out
    )
    stage = pipeline.StageDataConfig(frames=4, height=8, width=8)
    it = pipeline.make_train_iterator(
        cfg, stage, None, seed=0, batch_size=4, process_index=0, process_count=1, return_labels=True
    )
    batch = next(it)
    assert "text_ids" not in batch
    assert batch["text_emb"].shape == (4, MAX_LENGTH, 16) and batch["text_emb"].dtype == np.float32
    # The reference: the in-memory encoder over every cached caption (the tool's batch shape).
    rows, _ = pipeline.load_caption_embeddings(out)
    captions = sorted(rows, key=rows.get)
    all_emb, all_mask = (np.asarray(x) for x in encoder.encode(captions))
    picked = [rows[c] for c in batch["caption"]]
    np.testing.assert_array_equal(batch["text_mask"], all_mask[picked])
    # Stored as float16: compare at float16 precision; padding positions are exactly zero.
    want = np.where(all_mask[picked][..., None], all_emb[picked], 0)
    np.testing.assert_allclose(batch["text_emb"], want, rtol=2e-3, atol=2e-3)
    assert np.abs(want).max() > 0.1  # a real signal, not zeros on both sides


def test_cache_length_mismatch_raises(setup):
    data_dir, _, out = setup
    cfg = pipeline.DataConfig(
        name="shapes/tiny", data_dir=data_dir, max_text_length=MAX_LENGTH + 1, text_embeddings=out
    )
    with pytest.raises(ValueError, match="max_text_length"):
        pipeline.make_train_iterator(
            cfg,
            pipeline.StageDataConfig(),
            None,
            seed=0,
            batch_size=2,
            process_count=1,
            process_index=0,
        )
