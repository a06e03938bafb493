"""Runs the frozen T5 once over every distinct caption of TFDS datasets and stores the embeddings.

Training then reads 'text_emb' from the cache and never runs T5 (the Imagen Video setup). Only
the unmasked tokens are stored, in float16 (t2v_jax.text.cache), with a captions.json index.

Usage:
  python tools/precompute_text_embeddings.py --t5 /path/to/t5 --max_length 64 \\
      --data_dir ~/tensorflow_datasets --dataset shapes/32x16 --dataset shapes/images32x16
  # then set the experiment's data.text_embeddings to the printed directory
  # (by default <first dataset's directory>/text_embeddings/<t5 folder name>_L<max_length>).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import tensorflow_datasets as tfds

from t2v_jax.data import pipeline
from t2v_jax.text import cache as cache_lib
from t2v_jax.text import encoder as encoder_lib


def collect_captions(names: Sequence[str], data_dir: str | None) -> list[str]:
    """Sorted distinct captions over every split of the prepared datasets `names`."""
    captions = set()
    for name in names:
        builder = tfds.builder(name, data_dir=data_dir)
        for split in builder.info.splits:
            # SkipDecoding: only the captions are needed, not the (large) videos.
            src = tfds.data_source(
                name,
                split=split,
                data_dir=data_dir,
                download=False,
                decoders={"video": tfds.decode.SkipDecoding()},
            )
            for start in range(0, len(src), 1024):
                for rec in src.__getitems__(range(start, min(start + 1024, len(src)))):
                    captions.add(rec["caption"].decode("utf-8"))
    return sorted(captions)


def default_output_dir(name: str, data_dir: str | None, tag: str) -> str:
    """<dataset version directory>/text_embeddings/<tag>."""
    return os.path.join(str(tfds.builder(name, data_dir=data_dir).data_dir), "text_embeddings", tag)


def precompute(
    encoder: encoder_lib.TextEncoder,
    names: Sequence[str],
    data_dir: str | None,
    out_dir: str,
    batch_size: int = 32,
) -> int:
    """Encodes every distinct caption of `names` and writes the cache to `out_dir`.

    Returns:
      The number of distinct captions encoded.
    """
    captions = collect_captions(names, data_dir)
    if not captions:
        raise ValueError(f"datasets {list(names)} hold no captions")
    cache = cache_lib.encode_captions(encoder, captions, batch_size=batch_size)
    pipeline.save_caption_embeddings(out_dir, captions, cache)
    return len(captions)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t5", required=True, help="local T5 folder (HF or t2v-convert-t5)")
    parser.add_argument("--dataset", action="append", required=True, help="TFDS name/config")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--out", default=None, help="output directory (default: beside the data)")
    args = parser.parse_args(argv)
    encoder = encoder_lib.load_t5(
        args.t5, dtype=args.dtype, max_length=args.max_length, batch_size=args.batch_size
    )
    tag = f"{os.path.basename(os.path.normpath(args.t5))}_L{args.max_length}"
    out = args.out or default_output_dir(args.dataset[0], args.data_dir, tag)
    start = time.perf_counter()
    n = precompute(encoder, args.dataset, args.data_dir, out, batch_size=args.batch_size)
    print(f"encoded {n} captions in {time.perf_counter() - start:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
