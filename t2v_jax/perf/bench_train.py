"""`t2v-bench train`: steps/s, examples/s, compile time and MFU of the train step of whole configs.

The step is the one `t2v-train` runs: the stage's `diffusion_task` (its U-Net, its text tower,
its loss), AdamW with clipping, the EMA, jitted by `t2v_jax.train.step.jit_train_step` with the
state's shardings and the state donated. It runs on a mesh of one device, so the numbers
describe a chip (or a CPU host), and is fed a synthetic batch of the structure the data
pipeline gives that config: token ids + mask where the config has a byte-level T5 tower (run
inside the step, frozen or trained jointly as the config says), cached T5 embeddings + mask
otherwise (the paper stage: T5-XXL embeddings are precomputed on a pod). No data set is read;
the batch is on the device before timing, so input pipeline and host transfer are not measured.
Parameters are drawn on the host (`bench.synthetic_train_state`): the jitted init is not timed.

MFU = FLOPs of the compiled step (`compiled.cost_analysis()`) x steps/s / the peak FLOP/s of a
large matmul measured on the same device (`bench.matmul_peak`: fp32 on CPU, bf16 elsewhere).

Configs (`--configs`):
  tiny   configs/tiny.py:base (frozen byte T5 in the step)
  demo   configs/shapes.py:base (the embedded demo's base stage; its T5 is trained jointly)
  paper  configs/imagen_video.py:base, every width / `paper_shrink` (aot.shrink_config),
         `paper_frames` frames, `paper_res_blocks` ResBlocks per level; the paper's 24x40
         frames, levels, attention placement, bf16 compute and remat are kept.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from t2v_jax.perf import bench

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
CONFIGS = {"tiny": "tiny.py:base", "demo": "shapes.py:base", "paper": "imagen_video.py:base"}
# Batch per config when --batch is not given: the configs' own train.batch_size, and a small
# one for the shrunk paper stage (whose config sets none) so a CPU runs it in minutes.
DEFAULT_BATCH = {"tiny": 8, "demo": 8, "paper": 2}
PAPER_SHRINK, PAPER_FRAMES, PAPER_RES_BLOCKS = 16, 4, 1


def load_bench_config(
    name: str,
    paper_shrink: int = PAPER_SHRINK,
    paper_frames: int = PAPER_FRAMES,
    paper_res_blocks: int = PAPER_RES_BLOCKS,
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """The experiment config of `name` (a key of CONFIGS) and the overrides applied to it."""
    from t2v_jax import configlib
    from t2v_jax.perf import aot

    if name not in CONFIGS:
        raise ValueError(f"config: expected one of {', '.join(CONFIGS)}, got {name!r}")
    config = configlib.load_config(os.path.join(CONFIG_DIR, CONFIGS[name]))
    if name != "paper":
        return config, {}
    overrides = {"shrink": paper_shrink, "stage.frames": paper_frames,
                 "model.num_res_blocks": paper_res_blocks}  # fmt: skip
    config = aot.shrink_config(config, paper_shrink)
    config.stage.frames = paper_frames
    config.model.num_res_blocks = paper_res_blocks
    return config, overrides


def _uses_token_ids(config: ml_collections.ConfigDict) -> bool:
    """Whether the task encodes token ids in the step (a T5 tower) or reads cached embeddings."""
    if config.get("data", {}).get("text_embeddings"):
        return False
    text = config.get("text", {})
    return bool(text.get("path")) or ("t5" in text and text.get("tokenizer", "byte") == "byte")


def bench_experiment(
    config: ml_collections.ConfigDict, batch_size: int
) -> ml_collections.ConfigDict:
    """`config` as the train task needs it here: this batch size, no samples, no data set read.

    Configs without a T5 tower (the paper stage) get batches of cached embeddings, as they would
    on a pod; the task never opens the data set (its iterator is not asked for).
    """
    config = copy.deepcopy(config)
    with config.unlocked():
        train = config.get("train") or ml_collections.ConfigDict()
        train.batch_size = batch_size
        config.train = train
        config.log = ml_collections.ConfigDict({"sample_every_steps": 0})
        if not _uses_token_ids(config):
            config.data = ml_collections.ConfigDict(
                {"name": "bench/synthetic", "text_embeddings": "<bench: not read>"}
            )
        elif "data" not in config:
            config.data = ml_collections.ConfigDict({"name": "bench/synthetic"})
    return config


def synthetic_batch(
    config: ml_collections.ConfigDict, batch_size: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """One global batch of the structure `t2v_jax.data.pipeline` makes for `config`.

    video float32 [B, T, H, W, 3] in [-1, 1]; frame_mask bool [B, T]; low_res (SR stages);
    text_mask bool [B, L] (a random prefix of each row) with text_ids int32 [B, L] (byte ids,
    0 = padding) when the config encodes text in the step, else text_emb float32 [B, L, D].
    """
    from t2v_jax.perf import aot

    spec = aot.train_batch_spec(config, batch_size)  # cached-embedding form
    rng = np.random.default_rng(seed)
    batch = {
        "video": rng.uniform(-1, 1, spec["video"].shape).astype(np.float32),
        "frame_mask": np.ones(spec["frame_mask"].shape, bool),
    }
    if "low_res" in spec:
        batch["low_res"] = rng.uniform(-1, 1, spec["low_res"].shape).astype(np.float32)
    b, length = spec["text_mask"].shape
    lengths = rng.integers(max(1, length // 4), length + 1, size=(b, 1))
    mask = np.arange(length)[None, :] < lengths  # [B, L]
    batch["text_mask"] = mask
    if _uses_token_ids(config):
        ids = rng.integers(3, 259, size=(b, length))  # ByteTokenizer: byte + 3; 0 pads
        batch["text_ids"] = np.where(mask, ids, 0).astype(np.int32)
    else:
        emb = rng.standard_normal(spec["text_emb"].shape).astype(np.float32)
        batch["text_emb"] = emb * mask[..., None]
    return batch


def bench_train_step(
    config: ml_collections.ConfigDict, batch_size: int, steps: int, repeats: int, peak: float
) -> dict[str, Any]:
    """Compiles and times the real train step of `config` on one device (see the module doc)."""
    from t2v_jax import sharding

    experiment = bench_experiment(config, batch_size)
    mesh = bench.one_device_mesh()
    rules = sharding.rules_from_config(
        experiment.sharding.rules if "sharding" in experiment else None
    )
    jitted, state, batch, init_s = bench.synthetic_train_step(
        experiment, synthetic_batch(experiment, batch_size), mesh, rules
    )

    start = time.perf_counter()
    compiled = jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    state, metrics = compiled(state, batch)  # the state is donated: always rebind it
    jax.block_until_ready(metrics)
    first_s = time.perf_counter() - start
    per_step = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        per_step.append((time.perf_counter() - start) / steps)
    step_s = statistics.median(per_step)
    flops = bench.compiled_flops(compiled)
    memory = compiled.memory_analysis()
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
    stage = experiment.stage
    return {
        "stage_shape": [int(stage.frames), int(stage.height), int(stage.width)],
        "batch": batch_size,
        "text": "token ids" if "text_ids" in batch else "cached embeddings",
        "dtype": str(experiment.model.get("dtype", "float32")),
        "num_params": count(state.params),
        "frozen_params": count(state.frozen),
        "init_s": init_s,
        "compile_s": compile_s,
        "first_step_s": first_s,
        "step_s": step_s,
        "steps_per_s": 1.0 / step_s,
        "examples_per_s": batch_size / step_s,
        "flops_per_step": flops,
        "tflops_per_s": flops / step_s / 1e12 if flops else None,
        "mfu": flops / step_s / peak if flops else None,
        "temp_bytes": int(memory.temp_size_in_bytes) if memory is not None else None,
        "loss": float(metrics["loss"]),
        "skipped_steps": int(metrics["skipped_steps"]),
    }


def run_train_benchmarks(
    configs: Sequence[str] = tuple(CONFIGS),
    steps: int = 5,
    repeats: int = 3,
    batch_size: int | None = None,
    paper_shrink: int = PAPER_SHRINK,
    paper_frames: int = PAPER_FRAMES,
    paper_res_blocks: int = PAPER_RES_BLOCKS,
) -> dict[str, Any]:
    """Times the train step of each config; returns {device, peak, steps, repeats, configs}.

    Args:
      configs: names from CONFIGS, in order.
      steps: train steps per timed window (steps/s is over the window, so the device queue
        stays full as in t2v-train).
      repeats: timed windows; the median is reported.
      batch_size: global batch for every config (default: DEFAULT_BATCH).
      paper_shrink, paper_frames, paper_res_blocks: how the paper stage is shrunk.
    """
    for name in configs:
        if name not in CONFIGS:
            raise ValueError(f"configs: expected names from {', '.join(CONFIGS)}, got {name!r}")
    for label, value in (("steps", steps), ("repeats", repeats), ("paper_shrink", paper_shrink),
                         ("paper_frames", paper_frames),
                         ("paper_res_blocks", paper_res_blocks)):  # fmt: skip
        if value < 1:
            raise ValueError(f"{label}: must be >= 1, got {value}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    results: dict[str, Any] = {"device": bench.device_info(), "peak": bench.matmul_peak(),
                               "steps": steps, "repeats": repeats, "configs": {}}  # fmt: skip
    peak = results["peak"]["flops_per_s"]
    for name in configs:
        config, overrides = load_bench_config(name, paper_shrink, paper_frames, paper_res_blocks)
        result = {"config": f"configs/{CONFIGS[name]}", "overrides": overrides}
        batch = batch_size or DEFAULT_BATCH[name]
        result.update(bench_train_step(config, batch, steps, repeats, peak))
        results["configs"][name] = result
    return results


def format_train_table(results: dict[str, Any]) -> str:
    """A markdown table: one row per config."""
    fmt = bench._fmt
    dev, peak = results["device"], results["peak"]
    lines = [
        f"device: {dev['device_kind']} ({dev['platform']}), load {fmt(dev['load_avg_1min'])}; "
        f"matmul peak {fmt(peak['flops_per_s'], ' GFLOP/s', 1e-9)} ({peak['n']}^2 "
        f"{peak['dtype']}); {results['steps']} steps x {results['repeats']} repeats",
        "",
        "| config | T x H x W | batch | params | text | compile | steps/s | examples/s "
        "| GFLOP/step | MFU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["configs"].items():
        shape = " x ".join(str(n) for n in r["stage_shape"])
        lines.append(
            f"| {name} ({r['dtype']}) | {shape} | {r['batch']} | {fmt(r['num_params'], 'M', 1e-6)} "
            f"| {r['text']} | {fmt(r['compile_s'], ' s')} | {fmt(r['steps_per_s'])} "
            f"| {fmt(r['examples_per_s'])} | {fmt(r['flops_per_step'], '', 1e-9)} "
            f"| {fmt(r['mfu'], '%', 100)} |"
        )
    return "\n".join(lines)
