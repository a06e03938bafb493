"""Times T5 encoding (prompts/s) of t2v_jax's Flax encoder vs transformers' PyTorch encoder.

Both run the same random weights (a t5-v1_1-base-sized config unless overridden) on the same
token ids in one process; tokenization is excluded. Prints compile time, per-batch latency
(median of --iters, the two alternating) and prompts/s, plus the max abs difference of the outputs as a sanity check.

    python tools/bench_t5.py [--batch 8 --length 64 --iters 20 --layers 12 --dtype float32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np


def _interleaved_medians(fns, iters: int) -> list[float]:
    """Median seconds per call of each fn, alternating them so machine load hits all alike."""
    times = [[] for _ in fns]
    for _ in range(iters):
        for fn, bucket in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    """Runs the benchmark and prints one line per implementation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d_model", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--d_ff", type=int, default=2048)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    import torch
    import transformers

    from t2v_jax.text import T5Config, T5Encoder
    from t2v_jax.text.convert import read_hf_params

    hf_config = transformers.T5Config(
        vocab_size=32128,
        d_model=args.d_model,
        d_kv=args.d_model // args.heads,
        d_ff=args.d_ff,
        num_layers=args.layers,
        num_heads=args.heads,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    torch.manual_seed(0)
    model = transformers.T5EncoderModel(hf_config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        config = T5Config.from_hf_dict(hf_config.to_dict(), dtype=args.dtype)
        params = jax.tree.map(jnp.asarray, read_hf_params(tmp, config))

    rng = np.random.default_rng(0)
    ids = rng.integers(3, 32000, (args.batch, args.length)).astype(np.int32)
    lengths = rng.integers(args.length // 4, args.length + 1, args.batch)
    mask = np.arange(args.length)[None, :] < lengths[:, None]

    module = T5Encoder(config)
    encode = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m).astype(jnp.float32))
    start = time.perf_counter()
    compiled = encode.lower(params, ids, mask).compile()
    compile_s = time.perf_counter() - start
    ours_out = np.asarray(compiled(params, ids, mask))

    ids_t, mask_t = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
    with torch.inference_mode():
        ref_out = model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state.numpy()
        ours_s, torch_s = _interleaved_medians(
            [
                lambda: compiled(params, ids, mask).block_until_ready(),
                lambda: model(input_ids=ids_t, attention_mask=mask_t),
            ],
            args.iters,
        )

    diff = float(np.abs(ours_out - ref_out)[mask].max())
    print(
        f"T5 encoder {args.layers} layers, d_model {args.d_model}, d_ff {args.d_ff}, "
        f"batch {args.batch} x {args.length} tokens, {os.cpu_count()} CPU cores, "
        f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load avg {os.getloadavg()[0]:.1f}"
    )
    print(f"  t2v_jax ({args.dtype}): {ours_s * 1e3:8.1f} ms/batch  "
          f"{args.batch / ours_s:7.1f} prompts/s  (compile {compile_s:.1f} s)")  # fmt: skip
    print(
        f"  transformers PyTorch: {torch_s * 1e3:8.1f} ms/batch  {args.batch / torch_s:7.1f} prompts/s"
    )
    print(f"  max |ours - torch| on unmasked tokens: {diff:.2e}")


if __name__ == "__main__":
    main()
