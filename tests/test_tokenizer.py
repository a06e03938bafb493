"""Tokenizers: the byte tokenizer against its closed form, the HF T5 tokenizer against transformers."""

import os

import numpy as np
import pytest

from t2v_jax.text import ByteTokenizer, HFT5Tokenizer, load_tokenizer
from t2v_jax.text.tokenizer import sanitize

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "t5_golden")


def _byte_ids(text: bytes) -> list[int]:
    return [b + 3 for b in text]


def test_byte_tokenizer_closed_form():
    ids, mask, truncated = ByteTokenizer().tokenize(["abc", "", "ҷ😀"], 8)
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == (3, 8)
    assert ids[0].tolist() == [*_byte_ids(b"abc"), 1, 0, 0, 0, 0]
    assert ids[1].tolist() == [1] + [0] * 7  # "" -> just EOS
    assert ids[2].tolist() == [*_byte_ids("ҷ😀".encode()), 1, 0]
    assert mask.sum(1).tolist() == [4, 1, 7]
    assert not truncated.any()
    assert ByteTokenizer().vocab_size == 259


def test_byte_tokenizer_truncates_keeping_eos():
    ids, mask, truncated = ByteTokenizer().tokenize(["x" * 7, "y" * 8, "z" * 10_000], 8)
    assert ids[0].tolist() == [*_byte_ids(b"x" * 7), 1]  # fits exactly
    assert ids[1].tolist() == [*_byte_ids(b"y" * 7), 1]
    assert ids[2].tolist() == [*_byte_ids(b"z" * 7), 1]
    assert truncated.tolist() == [False, True, True]
    assert mask.all()


def test_surrogates_and_control_characters():
    tok = ByteTokenizer()
    ids, _, _ = tok.tokenize(["\ud800", "\ud83d\ude00", "\x00\x1f", "a\udfffb"], 8)
    replacement = _byte_ids("\ufffd".encode())
    assert ids[0, :4].tolist() == [*replacement, 1]  # lone surrogate -> U+FFFD
    assert ids[1, :5].tolist() == [*_byte_ids("😀".encode()), 1]  # a valid pair is joined
    assert ids[2, :3].tolist() == [3, 34, 1]  # NUL and US are ordinary bytes
    assert ids[3, :6].tolist() == [*_byte_ids(b"a"), *replacement, *_byte_ids(b"b"), 1]
    assert sanitize("plain") == "plain"


def test_byte_tokenizer_decode_and_save(tmp_path):
    tok = ByteTokenizer()
    ids, _, _ = tok.tokenize(["Салом 👋"], 32)
    assert tok.decode(ids[0].tolist()) == "Салом 👋"
    tok.save(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)


@pytest.mark.parametrize(
    "prompts,max_length,match",
    [
        ("text", 8, "prompts must be a list of str"),
        ([], 8, "non-empty"),
        ([b"bytes"], 8, r"prompts\[0\] must be a str"),
        (["a"], 0, "max_length must be a positive int"),
        (["a"], 2.5, "max_length must be a positive int"),
    ],
)
def test_bad_arguments(prompts, max_length, match):
    with pytest.raises(ValueError, match=match):
        ByteTokenizer().tokenize(prompts, max_length)


@pytest.fixture(scope="module")
def hf_pair():
    transformers = pytest.importorskip("transformers")
    return HFT5Tokenizer.load(GOLDEN), transformers.AutoTokenizer.from_pretrained(GOLDEN)


def test_hf_tokenizer_matches_transformers_truncation(hf_pair):
    ours, ref = hf_pair
    prompts = ["a red circle moving right", "", "blue square " * 30, "你好世界 😀", "Салом\x00"]
    ids, mask, truncated = ours.tokenize(prompts, 16)
    batch = ref(prompts, max_length=16, truncation=True, padding="max_length", return_tensors="np")
    np.testing.assert_array_equal(ids, batch["input_ids"])
    np.testing.assert_array_equal(mask, batch["attention_mask"].astype(bool))
    lengths = [len(ref(p)["input_ids"]) for p in prompts]
    assert truncated.tolist() == [n > 16 for n in lengths]
    assert ours.vocab_size == len(ref) and ours.pad_id == ref.pad_token_id


def test_hf_tokenizer_accepts_any_unicode(hf_pair):
    ours, _ = hf_pair
    ids, mask, _ = ours.tokenize(["\ud800", "a\udfffb", "\x00", "ثم 🤖"], 8)
    assert (ids < ours.vocab_size).all() and mask[:, 0].all()
    # A lone surrogate is tokenized as U+FFFD would be.
    np.testing.assert_array_equal(ids[0], ours.tokenize(["\ufffd"], 8)[0][0])


def test_hf_tokenizer_save_and_reload(hf_pair, tmp_path):
    ours, _ = hf_pair
    ours.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, HFT5Tokenizer)
    prompts = ["a red circle moving right", "Салом"]
    np.testing.assert_array_equal(again.tokenize(prompts, 12)[0], ours.tokenize(prompts, 12)[0])


def test_missing_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(tmp_path)
