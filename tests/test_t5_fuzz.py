"""Prompt fuzz: 512 hostile prompts through both tokenizers and a tiny encoder, no crash, no NaN."""

import os
import random
import warnings

import jax
import numpy as np

from t2v_jax.text import ByteTokenizer, HFT5Tokenizer, T5Config, TextEncoder

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "t5_golden")
MAX_LENGTH = 48

_FIXED = [
    "",
    " ",
    "x" * 10_000,
    "Салом, ҷаҳон! Ман ҳастам.",  # Tajik Cyrillic
    "مرحبا بالعالم",  # Arabic (right to left)
    "你好，世界",
    "こんにちは",
    "😀👍🏽👨‍👩‍👧‍👦🇹🇯",  # emoji incl. ZWJ sequences and flags
    "\x00",
    "a\x00b\x01\x7f",
    "\ud800",  # lone surrogates
    "\udfff\ud800x",
    "\ufeff\u200b\u202e",  # BOM, zero-width space, RTL override
    "\n\r\t" * 30,
    "ñ" * 5_000,
]
_ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz ",
    "абвгғдеёжзийӣкқлмнопрстуӯфхҳчҷшъэюя ",
    "ابتثجحخدذرزسشصضطظعغفقكلمنهوي ",
    "的一是不了人我在有他这为之大来以个中上们",
    "😀😂🥲🔥🎉🚀🌈🐱",
    "".join(chr(c) for c in range(32)),
]


def _prompts(n: int = 512) -> list[str]:
    rng = random.Random(0)
    prompts = list(_FIXED)
    while len(prompts) < n:
        alphabet = rng.choice(_ALPHABETS)
        prompts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))))
    return prompts


def test_byte_tokenizer_and_encoder_survive_fuzz():
    prompts = _prompts()
    config = T5Config(vocab_size=259, d_model=8, d_kv=4, d_ff=16, num_layers=2, num_heads=2)
    encoder = TextEncoder.init_random(
        config, ByteTokenizer(), jax.random.key(0), max_length=MAX_LENGTH, batch_size=64
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb, mask, truncated = encoder.encode_with_info(prompts)  # 8 calls, one compiled shape
    assert encoder._encode_tokens._cache_size() == 1
    emb, mask = np.asarray(emb), np.asarray(mask)
    assert emb.shape == (512, MAX_LENGTH, 8) and np.isfinite(emb).all()
    assert mask[:, 0].all()  # every prompt keeps at least its EOS
    # Closed form of truncation for bytes: utf-8 length + EOS > max_length.
    byte_lengths = [
        len(p.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace").encode())
        for p in prompts
    ]
    assert truncated.tolist() == [n + 1 > MAX_LENGTH for n in byte_lengths]
    assert mask.sum(1).tolist() == [min(n + 1, MAX_LENGTH) for n in byte_lengths]
    assert len(caught) == 1 and f"{truncated.sum()} of 512" in str(caught[0].message)


def test_hf_tokenizer_survives_fuzz():
    tokenizer = HFT5Tokenizer.load(GOLDEN)
    ids, mask, _ = tokenizer.tokenize(_prompts(), MAX_LENGTH)
    assert ids.shape == (512, MAX_LENGTH)
    assert ((ids >= 0) & (ids < tokenizer.vocab_size)).all()
    assert mask[:, 0].all()
