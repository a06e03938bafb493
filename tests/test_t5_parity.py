"""Parity of t2v_jax's T5 encoder with transformers' PyTorch T5 / mT5 / umT5 encoders."""

import importlib.util
import os
import shutil
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from t2v_jax.text import load_t5  # noqa: E402
from t2v_jax.text.t5 import relative_position_buckets  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "make_t5_golden", os.path.join(_ROOT, "tools", "make_t5_golden.py")
)
golden_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden_tool)

MAX_LENGTH = 32
PROMPTS = [
    "a red circle moving right",
    "",
    "a big yellow star spins and grows on a dark background " * 3,  # over 32 tokens
    "Салом, ҷаҳон! Привет мир",
    "مرحبا بالعالم",
    "你好世界 😀",
    "cat\x00dog\ttab",
    "small green triangle",
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tok"))
    golden_tool.train_tiny_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_dir):
    return transformers.AutoTokenizer.from_pretrained(tokenizer_dir)


def _hf_folder(path, tokenizer_dir, model, **save_kwargs):
    shutil.copytree(tokenizer_dir, path, dirs_exist_ok=True)
    model.save_pretrained(path, **save_kwargs)
    return str(path)


def _reference_tokens(hf_tokenizer):
    batch = hf_tokenizer(
        PROMPTS, max_length=MAX_LENGTH, truncation=True, padding="max_length", return_tensors="np"
    )
    return batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(bool)


def _encode(path, **kwargs):
    enc = load_t5(path, max_length=MAX_LENGTH, batch_size=8, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb, mask, truncated = enc.encode_with_info(PROMPTS)
    assert any("1 of 8 prompt(s) exceeded max_length=32" in str(w.message) for w in caught)
    assert truncated.tolist() == [False, False, True, False, False, False, False, False]
    return np.asarray(emb), np.asarray(mask)


def test_tokenizer_gives_real_ids(hf_tokenizer):
    # The transformers 5 pitfall: a tokenizer that silently maps every word to <unk>.
    ids = hf_tokenizer("a red circle moving right")["input_ids"]
    assert hf_tokenizer.unk_token_id not in ids and ids[-1] == hf_tokenizer.eos_token_id


@pytest.mark.parametrize("variant", ["t5", "t5_v1_1", "mt5", "umt5"])
def test_encoder_matches_transformers(variant, tmp_path, tokenizer_dir, hf_tokenizer):
    model = golden_tool.build_tiny_hf_model(variant, vocab_size=len(hf_tokenizer) + 5, seed=3)
    path = _hf_folder(tmp_path, tokenizer_dir, model)
    emb, mask = _encode(path)
    ids, ref_mask = _reference_tokens(hf_tokenizer)
    np.testing.assert_array_equal(mask, ref_mask)
    ref = golden_tool.torch_reference(model, ids, ref_mask)
    assert np.abs(emb - ref)[mask].max() <= 1e-5
    assert np.abs(ref[mask]).mean() > 0.3  # outputs are not trivially small


def test_sharded_bfloat16_checkpoint(tmp_path, tokenizer_dir, hf_tokenizer):
    model = golden_tool.build_tiny_hf_model("umt5", vocab_size=len(hf_tokenizer), seed=4)
    model = model.to(torch.bfloat16)
    path = _hf_folder(tmp_path, tokenizer_dir, model, max_shard_size="8KB")
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    assert len([f for f in os.listdir(path) if f.endswith(".safetensors")]) > 1
    emb, mask = _encode(path)
    ids, ref_mask = _reference_tokens(hf_tokenizer)
    # bf16 weights widen exactly to float32, so the float32 reference is the same function.
    ref = golden_tool.torch_reference(model.float(), ids, ref_mask)
    assert np.abs(emb - ref)[mask].max() <= 1e-5


def test_full_encoder_decoder_checkpoint(tmp_path, tokenizer_dir, hf_tokenizer):
    encoder = golden_tool.build_tiny_hf_model("t5_v1_1", vocab_size=len(hf_tokenizer), seed=5)
    full = transformers.T5ForConditionalGeneration(encoder.config)
    full.encoder.load_state_dict(encoder.encoder.state_dict())
    full.shared.load_state_dict(encoder.shared.state_dict())
    path = _hf_folder(tmp_path, tokenizer_dir, full)  # holds decoder.* and lm_head.* too
    emb, mask = _encode(path)
    ids, ref_mask = _reference_tokens(hf_tokenizer)
    ref = golden_tool.torch_reference(encoder, ids, ref_mask)
    assert np.abs(emb - ref)[mask].max() <= 1e-5


def test_bfloat16_compute_is_close(tmp_path, tokenizer_dir, hf_tokenizer):
    model = golden_tool.build_tiny_hf_model("t5_v1_1", vocab_size=len(hf_tokenizer), seed=6)
    path = _hf_folder(tmp_path, tokenizer_dir, model)
    emb, mask = _encode(path, dtype="bfloat16")
    ids, ref_mask = _reference_tokens(hf_tokenizer)
    ref = golden_tool.torch_reference(model, ids, ref_mask)
    err = np.abs(emb - ref)[mask]
    assert np.isfinite(emb).all()
    assert err.mean() < 0.02 * np.abs(ref[mask]).mean() and err.max() < 0.15


@pytest.mark.parametrize("buckets,max_distance", [(32, 128), (8, 20), (6, 7), (64, 256)])
def test_relative_position_buckets_match_transformers(buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    length = 300
    relative = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    ref = T5Attention._relative_position_bucket(relative, True, buckets, max_distance).numpy()
    np.testing.assert_array_equal(relative_position_buckets(length, buckets, max_distance), ref)
