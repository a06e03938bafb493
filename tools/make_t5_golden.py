"""Writes tests/data/t5_golden/: a tiny random HF T5 1.1 folder plus PyTorch reference outputs.

The folder (config.json, model.safetensors, a sentencepiece tokenizer trained here) and
`expected.npz` (prompts, the HF tokenizer's ids and mask, transformers' PyTorch encoder output)
let tests/test_t5_golden.py check parity where torch is not installed. The helpers are also
imported by the torch parity tests, so both build the tiny models the same way.

Run from the repository root (needs torch + transformers; ~10 s on a CPU):
    python tools/make_t5_golden.py [--out tests/data/t5_golden]
"""

from __future__ import annotations

import argparse
import io
import os
import random

import numpy as np

GOLDEN_DIR = os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "tests", "data", "t5_golden")
)
GOLDEN_MAX_LENGTH = 24
GOLDEN_PROMPTS = [
    "a red circle moving right",
    "",
    "a small blue square jumps over a big green triangle " * 4,  # truncated at 24 tokens
    "Салом, ҷаҳон! Привет мир",
    "مرحبا بالعالم",
    "你好世界 😀 \x00 tab\there",
    "cat dog",
]

_WORDS = [
    "a", "the", "red", "blue", "green", "yellow", "purple", "orange", "circle", "square",
    "triangle", "star", "moving", "left", "right", "up", "down", "small", "big", "fast", "slow",
    "cat", "dog", "runs", "jumps", "over", "under", "bounces", "spins", "grows", "shrinks",
    "and", "with", "video", "of", "in", "on", "at", "into", "from", "background", "white",
    "black", "bright", "dark",
]  # fmt: skip
_EXTRA_TEXT = [
    "Салом, ҷаҳон! Привет мир, ҳамаи одамон",
    "مرحبا بالعالم، كيف حالك",
    "你好世界，今天天气很好",
    "こんにちは世界",
]


def train_tiny_tokenizer(out_dir: str, extra_ids: int = 8, seed: int = 0) -> None:
    """Trains a ~100-piece sentencepiece model on generated captions and saves it, converted by
    transformers, as a T5 tokenizer folder (tokenizer.json + tokenizer_config.json)."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    rng = random.Random(seed)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) for _ in range(600)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines + _EXTRA_TEXT * 5),
        model_writer=model,
        vocab_size=160,
        hard_vocab_limit=False,
        model_type="unigram",
        # T5's id layout; "identity" keeps tokenizer.json free of a 300 KB NFKC char map.
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    spm_dir = os.path.join(out_dir, "_spm")
    os.makedirs(spm_dir, exist_ok=True)
    with open(os.path.join(spm_dir, "spiece.model"), "wb") as f:
        f.write(model.getvalue())
    T5Tokenizer.from_pretrained(spm_dir, extra_ids=extra_ids).save_pretrained(out_dir)
    os.remove(os.path.join(spm_dir, "spiece.model"))
    os.rmdir(spm_dir)


def build_tiny_hf_model(variant: str, vocab_size: int, seed: int = 0, **overrides):
    """A small random PyTorch encoder of `variant` in {"t5", "t5_v1_1", "mt5", "umt5"}.

    Weights are drawn with larger spreads than HF's init (norm scales around 1, relative biases
    with std 1) so a mis-mapped or mis-applied tensor changes the output visibly.
    """
    import torch
    import transformers as tf

    classes = {
        "t5": (tf.T5Config, tf.T5EncoderModel, {"feed_forward_proj": "relu"}),
        "t5_v1_1": (tf.T5Config, tf.T5EncoderModel, {"feed_forward_proj": "gated-gelu"}),
        "mt5": (tf.MT5Config, tf.MT5EncoderModel, {}),
        "umt5": (tf.UMT5Config, tf.UMT5EncoderModel, {}),
    }
    config_cls, model_cls, extra = classes[variant]
    kwargs = dict(
        vocab_size=vocab_size,
        d_model=16,
        d_kv=4,
        d_ff=24,
        num_layers=2,
        num_heads=3,  # heads * d_kv != d_model on purpose
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
    )
    kwargs.update(extra)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif "relative_attention_bias" in name or "shared" in name:
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, p.shape[1] ** -0.5)
    return model


def torch_reference(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers' PyTorch encoder output, float32 [B, L, D]."""
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
        )
    return out.last_hidden_state.float().numpy()


def make_golden(out_dir: str) -> None:
    """Writes the golden folder and expected.npz (see the module doc)."""
    from transformers import AutoTokenizer

    os.makedirs(out_dir, exist_ok=True)
    train_tiny_tokenizer(out_dir)
    hf_tok = AutoTokenizer.from_pretrained(out_dir)
    model = build_tiny_hf_model("t5_v1_1", vocab_size=len(hf_tok), seed=1)
    model.save_pretrained(out_dir)
    batch = hf_tok(
        GOLDEN_PROMPTS,
        max_length=GOLDEN_MAX_LENGTH,
        truncation=True,
        padding="max_length",
        return_tensors="np",
    )
    ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(bool)
    np.savez(
        os.path.join(out_dir, "expected.npz"),
        prompts=np.array(GOLDEN_PROMPTS),
        ids=ids,
        mask=mask,
        embeddings=torch_reference(model, ids, mask),
    )
    total = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"wrote {out_dir}: {sorted(os.listdir(out_dir))}, {total / 1024:.0f} KiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=GOLDEN_DIR)
    make_golden(parser.parse_args().out)
