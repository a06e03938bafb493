"""`t2v-convert-t5 SRC DST`: converts a Hugging Face T5 folder into t2v_jax's Flax checkpoint."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np
from flax import traverse_util

from t2v_jax.text import convert
from t2v_jax.text.tokenizer import load_tokenizer

_CHECK_PROMPTS = ["a red circle moving right", "", "Салом, ҷаҳон! 你好 😀"]


def convert_t5(src: str, dst: str, overwrite: bool = False) -> int:
    """Converts `src` (HF folder, safetensors only) to `dst`; returns the parameter count.

    Writes `t5_config.json`, `t5_params.safetensors` and the tokenizer files, then reloads `dst`
    and checks that every parameter is bit-identical and the tokenizer gives the same ids.

    Raises:
      FileExistsError: `dst` is a non-empty folder and `overwrite` is False.
      FileNotFoundError / CheckpointError: see `t2v_jax.text.load_t5`.
      RuntimeError: the written checkpoint does not read back identically.
    """
    if os.path.isdir(dst) and os.listdir(dst) and not overwrite:
        raise FileExistsError(f"{dst} exists and is not empty; pass --overwrite to write into it")
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise FileExistsError(f"{dst} exists and is not a folder")
    config, params = convert.read_checkpoint(src)
    tokenizer = load_tokenizer(src)
    convert.save_flax_checkpoint(dst, config, params)
    tokenizer.save(dst)

    config_back, params_back = convert.read_checkpoint(dst)
    if config_back != config:
        raise RuntimeError(f"{dst}: config reads back as {config_back}, wrote {config}")
    flat = traverse_util.flatten_dict(params, sep="/")
    flat_back = traverse_util.flatten_dict(params_back, sep="/")
    differ = [n for n in flat if not np.array_equal(flat[n], flat_back[n])]
    if differ or set(flat) != set(flat_back):
        raise RuntimeError(f"{dst}: parameters read back differently: {differ[:5]}")
    ids = tokenizer.tokenize(_CHECK_PROMPTS, 32)
    ids_back = load_tokenizer(dst).tokenize(_CHECK_PROMPTS, 32)
    if not all(np.array_equal(a, b) for a, b in zip(ids, ids_back, strict=True)):
        raise RuntimeError(f"{dst}: the copied tokenizer gives different ids")
    return sum(v.size for v in flat.values())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `t2v-convert-t5`; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="t2v-convert-t5",
        description="Convert a local Hugging Face T5 / mT5 / umT5 folder (safetensors) into a "
        "t2v_jax Flax checkpoint that t2v_jax.text.load_t5 reads. Pickle weights are refused.",
    )
    parser.add_argument("src", help="HF folder: config.json, model*.safetensors, tokenizer files")
    parser.add_argument("dst", help="output folder (must be empty or absent)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty DST")
    args = parser.parse_args(argv)
    try:
        count = convert_t5(args.src, args.dst, overwrite=args.overwrite)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"t2v-convert-t5: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst}: {count:,} encoder parameters; reloaded and verified identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
