"""Times the VideoUNet forward pass and AdamW train step (compile and steady state) on this host.

The reference shape is the one imagen-pytorch's Unet3D was measured at on the project's 2-core
CPU: dim 64, channel mults (1, 2, 4), 2 ResBlocks per level, attention at the lowest resolution,
8 frames of 32x32, 16 text tokens, batch 2 (forward) and 4 (train step).

  python tools/bench_unet.py                       # every spatial conv impl, fp32
  python tools/bench_unet.py --conv matmul --steps 5 --dtype bfloat16

Prints one line per measurement and a JSON summary. Peak memory is the process's max RSS
(`resource.getrusage`), so it covers everything measured before it; the load average is printed
because a shared machine skews timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from t2v_jax.models import UNetConfig, VideoUNet
from t2v_jax.models.layers import SPATIAL_CONV_IMPLS

REFERENCE = UNetConfig(
    text_dim=768,  # T5-base width, imagen-pytorch's default text_embed_dim
    base_channels=64,
    channel_mults=(1, 2, 4),
    num_res_blocks=2,
    spatial_attention_resolutions=(4,),
    temporal_mixing="both",
    num_heads=8,
)


def _inputs(cfg: UNetConfig, batch: int, frames: int, size: int, length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, frames, size, size, cfg.in_channels)), jnp.float32)
    log_snr = jnp.asarray(rng.uniform(-10, 10, size=(batch,)), jnp.float32)
    text = jnp.asarray(rng.normal(size=(batch, length, cfg.text_dim)), jnp.float32)
    mask = jnp.ones((batch, length), bool)
    return x, log_snr, text, mask


def _timed(fn, *args, steps: int) -> tuple[float, list[float], object]:
    """(first-call seconds, steady-state seconds per call, last output)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, times, out


def bench(cfg: UNetConfig, steps: int, frames: int, size: int, length: int) -> dict:
    """Measures init, forward and train-step compile/steady times for one config."""
    model = VideoUNet(cfg)
    result = {"conv": cfg.spatial_conv_impl, "dtype": cfg.dtype, "remat": cfg.remat}

    start = time.perf_counter()
    params = jax.block_until_ready(
        jax.jit(model.init)(jax.random.key(0), *_inputs(cfg, 1, frames, size, length))
    )
    result["init_s"] = time.perf_counter() - start
    params = jax.tree.map(lambda p: p + 1e-3, params)  # wake zero-init layers (realistic work)
    result["params_m"] = sum(p.size for p in jax.tree.leaves(params)) / 1e6

    forward = jax.jit(model.apply)
    first, times, _ = _timed(forward, params, *_inputs(cfg, 2, frames, size, length), steps=steps)
    result["forward_first_s"] = first
    result["forward_s"] = statistics.median(times)

    tx = optax.adamw(1e-4)
    opt_state = tx.init(params)
    args = _inputs(cfg, 4, frames, size, length, seed=1)
    target = jnp.zeros_like(args[0])

    def train_step(params, opt_state, x, log_snr, text, mask):
        def loss_fn(p):
            return jnp.mean(jnp.square(model.apply(p, x, log_snr, text, mask, train=True) - target))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(train_step, donate_argnums=(0, 1))
    state = (params, opt_state)
    start = time.perf_counter()
    *state, loss = jax.block_until_ready(step(*state, *args))
    result["train_first_s"] = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        *state, loss = jax.block_until_ready(step(*state, *args))
        times.append(time.perf_counter() - start)
    result["train_step_s"] = statistics.median(times)
    result["loss_finite"] = bool(jnp.isfinite(loss))
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conv", choices=[*SPATIAL_CONV_IMPLS, "all"], default="all")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--steps", type=int, default=3, help="timed calls after the first")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--length", type=int, default=16)
    args = parser.parse_args()

    impls = list(SPATIAL_CONV_IMPLS) if args.conv == "all" else [args.conv]
    results = []
    for impl in impls:
        cfg = dataclasses.replace(
            REFERENCE, spatial_conv_impl=impl, dtype=args.dtype, remat=args.remat
        )
        load_before = os.getloadavg()[0]
        r = bench(cfg, args.steps, args.frames, args.size, args.length)
        r["load_avg_1m"] = (load_before, os.getloadavg()[0])
        r["backend"] = jax.default_backend()
        r["cpu_count"] = os.cpu_count()
        results.append(r)
        print(
            f"{impl:14s} {args.dtype}: {r['params_m']:.1f}M params | init {r['init_s']:.1f}s | "
            f"forward(b=2) {r['forward_s']:.3f}s (first {r['forward_first_s']:.1f}s) | "
            f"train step(b=4) {r['train_step_s']:.3f}s (first {r['train_first_s']:.1f}s) | "
            f"peak RSS {r['peak_rss_gb']:.2f} GB | load {r['load_avg_1m'][0]:.1f}->"
            f"{r['load_avg_1m'][1]:.1f}",
            flush=True,
        )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
