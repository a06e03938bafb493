"""Benchmarks of one device: text encoding, U-Net forward and train step, cascade sampling, MFU.

`run_benchmarks(quick=...)` returns a JSON-friendly dict and `format_table` renders it. Every
measurement runs on the first device (a mesh of one), so the numbers describe a chip (or a CPU
host), and MFU = FLOPs of the compiled program (`compiled.cost_analysis()`) / seconds / the peak
FLOP/s of a large matmul measured on the same device. `--quick` uses configs/tiny.py; the full
run uses the reference U-Net shape of tools/bench_unet.py (imagen-pytorch's Unet3D measured at
the same shape). Parameters are random values drawn on the host (`host_random_params`): what is
measured is the programs that use them, not a jitted init. Sampling runs as `t2v-sample` does,
in fresh processes that load a saved tiny pipeline: the first compiles everything (cold) and
fills a new persistent compilation cache (`t2v_jax.compile_cache`), the second reads it back.
`t2v_jax.perf.bench_train` times the train step of whole configs (`t2v-bench train`).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# The checkout's configs/ (this file is t2v_jax/perf/bench.py).
TINY_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny.py")

# tools/bench_unet.py's reference shape: imagen-pytorch's Unet3D at dim 64, mults (1, 2, 4).
REFERENCE_MODEL = {
    "text_dim": 768, "base_channels": 64, "channel_mults": (1, 2, 4), "num_res_blocks": 2,
    "spatial_attention_resolutions": (4,), "temporal_mixing": "both", "num_heads": 8,
    "norm_groups": 32, "cross_attention": True,
}  # fmt: skip
REFERENCE_SHAPE = {"frames": 8, "size": 32, "text_length": 16, "forward_batch": 2, "train_batch": 4}
QUICK_SHAPE = {"frames": 4, "size": 8, "text_length": 16, "forward_batch": 2, "train_batch": 4}


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs XLA counts for a compiled program (`cost_analysis()['flops']`), None if unknown."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per program
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None


def device_info() -> dict[str, Any]:
    """The device the numbers describe, and the host load (a shared machine skews timings)."""
    device = jax.devices()[0]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "num_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": load,
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        # An optimisation-level flag changes both compile times and the matmul peak.
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def matmul_peak(repeats: int = 5) -> dict[str, Any]:
    """Peak FLOP/s of one large matmul: 2048^2 fp32 on CPU, 4096^2 bf16 on accelerators."""
    device = jax.devices()[0]
    n, dtype = (2048, jnp.float32) if device.platform == "cpu" else (4096, jnp.bfloat16)
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    compiled = jax.jit(lambda x, y: x @ y).lower(a, a).compile()
    jax.block_until_ready(compiled(a, a))
    seconds = _median_seconds(lambda: compiled(a, a), repeats)
    flops = 2.0 * n**3
    return {"n": n, "dtype": jnp.dtype(dtype).name, "seconds": seconds,
            "flops_per_s": flops / seconds}  # fmt: skip


def memory_info() -> dict[str, Any]:
    """Peak host RSS (covers everything measured so far) and device peak where reported."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except (NotImplementedError, RuntimeError):
        stats = {}
    return {"host_peak_rss_bytes": _peak_rss_bytes(),
            "device_peak_bytes": stats.get("peak_bytes_in_use")}  # fmt: skip


def _peak_rss_bytes() -> int:
    """This program's peak host RSS in bytes.

    Linux's VmHWM first: a child's ru_maxrss starts at its parent's RSS (kept across fork and
    exec), which would hide the sampling process's own peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


def host_random_params(abstract: Any, seed: int = 0) -> Any:
    """Random numpy arrays shaped like `abstract` (a tree of ShapeDtypeStructs or arrays).

    Kernels and embeddings ~ N(0, 1/fan_in) (fan_in: all but the last axis), leaves named
    `scale` are ones, biases and other vectors zeros: finite activations of a sensible size,
    which is all a timing needs. Drawing on the host skips compiling a jitted init, whose
    threefry kernels take tens of seconds on XLA:CPU and are not what is measured.
    """
    rng = np.random.default_rng(seed)

    def draw(path: Any, leaf: Any) -> np.ndarray:
        shape, dtype = tuple(leaf.shape), leaf.dtype
        name = str(getattr(path[-1], "key", path[-1])) if path else ""
        if name == "scale":
            return np.ones(shape, dtype)
        if len(shape) < 2:
            return np.zeros(shape, dtype)
        fan_in = max(1, math.prod(shape[:-1]))
        return (rng.standard_normal(shape, np.float32) / math.sqrt(fan_in)).astype(dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)


def synthetic_train_state(
    init: Callable[[jax.Array], Any], optimizer: Any, mesh: Any, rules: Any, seed: int = 0
) -> tuple[Any, Any, float]:
    """A TrainState laid out as `state_lib.create_train_state` makes it, with host-drawn params.

    Everything but the params (EMA copy, AdamW moments, step counters, rng) is built as
    `state_lib.make_init_fn` builds it, in one small jitted program with the state's shardings.

    Returns:
      (state, shardings, seconds to build it).
    """
    from t2v_jax.train import state as state_lib

    start = time.perf_counter()
    abstract, shardings = state_lib.state_shardings(init, mesh, rules)
    params = host_random_params(abstract.params, seed)
    frozen = host_random_params(abstract.frozen, seed + 1)

    def make(params: Any, frozen: Any) -> Any:
        return state_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            ema_params=jax.tree.map(jnp.copy, params),
            opt_state=optimizer.init(params),
            rng=jax.random.PRNGKey(seed),
            frozen=frozen,
            skipped_steps=jnp.zeros((), jnp.int32),
            consecutive_skips=jnp.zeros((), jnp.int32),
        )

    state = jax.block_until_ready(jax.jit(make, out_shardings=shardings)(params, frozen))
    return state, shardings, time.perf_counter() - start


def synthetic_train_step(
    experiment: ml_collections.ConfigDict, host_batch: dict[str, np.ndarray], mesh: Any, rules: Any
) -> tuple[Any, Any, Any, float]:
    """The jitted train step `t2v-train` runs for `experiment`, with a host-drawn state.

    The stage's `diffusion_task`, AdamW with clipping and the EMA, jitted by
    `step.jit_train_step` with the state's shardings (state donated).

    Returns:
      (jitted step, state, `host_batch` placed on the mesh, seconds to build the state).
    """
    from t2v_jax import configlib, sharding
    from t2v_jax.train import state as state_lib
    from t2v_jax.train import step as step_lib
    from t2v_jax.train import task as task_lib

    task = task_lib.diffusion_task(experiment)
    train_cfg = configlib.from_config(state_lib.TrainConfig, experiment.train, "train")
    optimizer, schedule = state_lib.make_optimizer(train_cfg)
    init = state_lib.make_init_fn(task.init_params, optimizer)
    state, shardings, init_s = synthetic_train_state(init, optimizer, mesh, rules)
    batch = sharding.shard_host_batch(host_batch, mesh)
    step_fn = step_lib.make_train_step(
        task.loss_fn, optimizer, schedule, train_cfg.ema_decay, train_cfg.grad_accum_steps
    )
    return step_lib.jit_train_step(step_fn, shardings, batch, mesh), state, batch, init_s


def one_device_mesh() -> Any:
    """A (data, fsdp, tensor) = (1, 1, 1) mesh of the first device: numbers per chip."""
    from t2v_jax import sharding

    return sharding.make_mesh(sharding.MeshConfig(1, 1, 1), devices=jax.devices()[:1])


def _stage_config(stage: str, quick: bool) -> ml_collections.ConfigDict:
    from t2v_jax import configlib

    config = configlib.load_config(f"{TINY_CONFIG}:{stage}")
    if not quick:
        shape = REFERENCE_SHAPE
        with config.unlocked():
            config.model.update(REFERENCE_MODEL)
            config.stage.frames, config.stage.height = shape["frames"], shape["size"]
            config.stage.width = shape["size"]
            config.text.max_length = shape["text_length"]
    return config


def _timed_program(lowered_fn: Callable[[], Any], call: Callable[[Any], Any], repeats: int,
                   peak: float) -> dict[str, Any]:  # fmt: skip
    """Compile time, first-call and warm seconds, FLOPs and MFU of one program."""
    start = time.perf_counter()
    compiled = lowered_fn().compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(call(compiled))
    first_s = time.perf_counter() - start
    warm_s = _median_seconds(lambda: call(compiled), repeats)
    flops = compiled_flops(compiled)
    return {
        "compile_s": compile_s,
        "first_call_s": first_s,
        "seconds": warm_s,
        "flops": flops,
        "tflops_per_s": flops / warm_s / 1e12 if flops else None,
        "mfu": flops / warm_s / peak if flops else None,
    }


def bench_unet(quick: bool, repeats: int, peak: float) -> dict[str, Any]:
    """VideoUNet forward (base stage) and the library's train step on one device."""
    from t2v_jax import configlib, sharding
    from t2v_jax.models import UNetConfig, VideoUNet
    from t2v_jax.perf import aot

    shape = QUICK_SHAPE if quick else REFERENCE_SHAPE
    config = _stage_config("base", quick)
    model_cfg = configlib.from_config(UNetConfig, config.model, "model")
    mesh = one_device_mesh()
    rules = sharding.rules_from_config(config.sharding.rules)
    rng = np.random.default_rng(0)

    def random_batch(batch: int) -> dict[str, np.ndarray]:
        spec = aot.train_batch_spec(config, batch)
        out = {}
        for key, s in spec.items():
            out[key] = (np.ones(s.shape, bool) if s.dtype == jnp.bool_
                        else rng.uniform(-1, 1, s.shape).astype(np.float32))  # fmt: skip
        return out

    # Train step through the training library (the same code t2v-train runs).
    experiment = aot.shapes_only_experiment(config, shape["train_batch"])
    host_batch = random_batch(shape["train_batch"])
    jitted, state, batch, init_s = synthetic_train_step(experiment, host_batch, mesh, rules)
    holder = {"state": state}

    def train_call(compiled):
        holder["state"], metrics = compiled(holder["state"], batch)  # the state is donated
        return metrics["loss"]

    train = _timed_program(lambda: jitted.lower(holder["state"], batch), train_call, repeats, peak)
    train["batch"] = shape["train_batch"]
    params = holder["state"].params["unet"]

    # Forward pass (what each sampler step runs, without guidance).
    module = VideoUNet(model_cfg)
    fwd = random_batch(shape["forward_batch"])
    log_snr = jnp.zeros((shape["forward_batch"],), jnp.float32)
    apply = jax.jit(lambda p, x, lam, e, m: module.apply({"params": p}, x, lam, e, m))
    args = (params, fwd["video"], log_snr, fwd["text_emb"], fwd["text_mask"])
    forward = _timed_program(lambda: apply.lower(*args), lambda c: c(*args), repeats, peak)
    forward["batch"] = shape["forward_batch"]
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return {"shape": dict(shape), "num_params": num_params, "init_s": init_s,
            "forward": forward, "train_step": train}  # fmt: skip


def random_text_encoder(text_cfg: ml_collections.ConfigDict) -> Any:
    """The byte-level T5 that `text_cfg` (an experiment's config.text) describes, host-drawn params."""
    import flax.linen as nn

    from t2v_jax import configlib
    from t2v_jax.text import ByteTokenizer, T5Config, T5Encoder, TextEncoder

    t5 = configlib.from_config(T5Config, text_cfg.t5, "text.t5")
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    mask = jax.ShapeDtypeStruct((1, 1), jnp.bool_)
    abstract = jax.eval_shape(T5Encoder(t5).init, jax.random.key(0), tokens, mask)["params"]
    params = host_random_params(nn.unbox(abstract))
    return TextEncoder(t5, params, ByteTokenizer(), max_length=int(text_cfg.max_length))


def bench_text_encoder(quick: bool, repeats: int, num_prompts: int = 32) -> dict[str, Any]:
    """Prompts/s of the tiny config's T5 (quick) or a T5-base-sized random encoder (full)."""
    text_cfg = _stage_config("base", True).text
    if not quick:
        text_cfg = copy.deepcopy(text_cfg)
        text_cfg.t5.update({"d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12,
                            "num_heads": 12, "relative_attention_num_buckets": 32,
                            "relative_attention_max_distance": 128})  # fmt: skip
        text_cfg.max_length = 64
    encoder = random_text_encoder(text_cfg)
    prompts = [f"red circle {i}" for i in range(num_prompts)]  # < 16 bytes: no truncation
    start = time.perf_counter()
    jax.block_until_ready(encoder.encode(prompts))
    first_s = time.perf_counter() - start
    seconds = _median_seconds(lambda: encoder.encode(prompts)[0], repeats)
    return {"d_model": encoder.d_model, "max_length": encoder.max_length,
            "num_prompts": num_prompts, "first_call_s": first_s, "seconds": seconds,
            "prompts_per_s": num_prompts / seconds}  # fmt: skip


def save_tiny_pipeline(path: str) -> None:
    """Writes configs/tiny.py's 3-stage cascade (host-drawn params) as a pipeline folder."""
    from t2v_jax import cascade, configlib, pipeline_format
    from t2v_jax.models import UNetConfig

    configs = [_stage_config(s, True) for s in ("base", "tsr", "ssr")]
    encoder = random_text_encoder(configs[0].text)
    stages = []
    for i, config in enumerate(configs):
        stage_cfg = cascade.stage_config_from_experiment(config)
        model = configlib.from_config(UNetConfig, config.model, "model")
        init = functools.partial(cascade.init_stage_params, model, stage_cfg, encoder.d_model)
        params = host_random_params(jax.eval_shape(init, jax.random.key(0)), seed=i)
        stages.append(cascade.Stage(config=stage_cfg, model=model, params=params))
    pipeline_format.save_pipeline(cascade.Pipeline(encoder, stages, one_device_mesh()), path)


def timed_sample(pipe: Any, prompts: Sequence[str]) -> dict[str, Any]:
    """Samples `prompts` once: seconds per stage (`stages_s`, each ending when the stage's frames
    reach the host, through the sample callback) and for the whole cascade (`cascade_s`)."""
    marks = [time.perf_counter()]
    pipe.sample(prompts, progress=False, callback=lambda *_: marks.append(time.perf_counter()))
    names = [s.config.name for s in pipe.stages]
    per_stage = {n: b - a for n, a, b in zip(names, marks[:-1], marks[1:], strict=True)}
    return {"stages_s": per_stage, "cascade_s": marks[-1] - marks[0]}


SAMPLE_PROMPTS = 2


def sample_probe(pipeline_dir: str, warm: bool) -> dict[str, Any]:
    """Loads a saved pipeline and samples it twice (`warm`) or once, as `t2v-sample` does.

    Stage times come from the sample callback (after each stage's frames reach the host), so the
    base stage's time includes text encoding. `first_video_s` runs from the start of the load to
    the first video; `after_first_s` is what the probe spent after it (the warm sample).
    """
    from t2v_jax import pipeline_store

    start = time.perf_counter()
    pipe = pipeline_store.load_pipeline(pipeline_dir, mesh=one_device_mesh())
    load_s = time.perf_counter() - start
    prompts = [f"red circle {i}" for i in range(SAMPLE_PROMPTS)]
    cold = timed_sample(pipe, prompts)
    first = time.perf_counter()
    stage = pipe.stages[0].config
    out = {"num_prompts": len(prompts), "num_steps": [s.config.num_steps for s in pipe.stages],
           "output_shape": list(pipe.output_shape), "base_shape": [stage.frames, stage.height,
           stage.width], "load_s": load_s, "first_video_s": first - start, "cold": cold}  # fmt: skip
    if warm:
        out["warm"] = timed_sample(pipe, prompts)
    out["peak_rss_bytes"] = _peak_rss_bytes()
    out["after_first_s"] = time.perf_counter() - first
    return out


def _probe_process(pipeline_dir: str, cache: str, warm: bool) -> dict[str, Any]:
    """`sample_probe` in a fresh Python process that uses the persistent compilation cache `cache`."""
    env = dict(os.environ, T2V_JAX_COMPILATION_CACHE=cache)
    cmd = [sys.executable, "-m", "t2v_jax.perf.bench", "--probe", pipeline_dir]
    start = time.perf_counter()
    out = subprocess.run(cmd + ["--warm"] * warm, env=env, capture_output=True, text=True,
                         check=False)  # fmt: skip
    wall = time.perf_counter() - start
    if out.returncode:
        raise RuntimeError(f"sampling probe failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.splitlines()[-1])
    result["process_s"] = wall - result.pop("after_first_s")  # process start to first video
    return result


def bench_sampler(startup: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tiny 3-stage cascade as `t2v-sample` runs it, from a saved pipeline folder.

    Returns (sampler, startup): per-stage and whole-cascade seconds, cold (compile included) and
    warm; and cold vs cached process start. With `startup`, two fresh processes load the
    pipeline and share a new persistent compilation cache: the first compiles everything (its
    timings are the sampler's), the second reads the programs back. Without, the pipeline is
    sampled in this process.
    """
    with tempfile.TemporaryDirectory(prefix="t2v_bench_") as tmp:
        pipeline_dir = os.path.join(tmp, "pipeline")
        save_tiny_pipeline(pipeline_dir)
        if not startup:
            sampler = sample_probe(pipeline_dir, warm=True)
            del sampler["after_first_s"]
            return sampler, {"skipped": "startup=False"}
        cache = os.path.join(tmp, "xla_cache")
        cold = _probe_process(pipeline_dir, cache, warm=True)
        cached = _probe_process(pipeline_dir, cache, warm=False)
        entries = len(os.listdir(cache))
    timing = ("process_s", "first_video_s")
    sampler = {k: v for k, v in cold.items() if k != "process_s"}
    return sampler, {"cold": {k: cold[k] for k in timing},
                     "cached": {k: cached[k] for k in timing}, "cache_entries": entries}  # fmt: skip


def _compare_imagen_pytorch(quick: bool, repeats: int) -> dict[str, Any]:
    from t2v_jax.perf.bench_compare import compare_imagen_pytorch

    shape = QUICK_SHAPE if quick else REFERENCE_SHAPE
    config = _stage_config("base", quick)
    return compare_imagen_pytorch(config.model.to_dict(), shape, repeats)


def run_benchmarks(
    quick: bool = False, repeats: int = 3, compare: str | None = None, startup: bool = True
) -> dict[str, Any]:
    """Runs every benchmark; returns {device, peak, text_encoder, unet, sampler, startup, memory}.

    Args:
      quick: tiny shapes (configs/tiny.py); with XLA's backend optimisation level 0 (what
        `t2v-bench --quick` sets) under a minute on a 2-core CPU.
      repeats: timed calls per warm measurement (median).
      compare: "imagen-pytorch" also times lucidrains' Unet3D on the same shapes (side venv).
      startup: sample in two fresh processes, cold then with the persistent compilation cache
        (else the sampler runs in this process and start-up is not measured).
    """
    if compare not in (None, "imagen-pytorch"):
        raise ValueError(f"compare: expected None or 'imagen-pytorch', got {compare!r}")
    if repeats < 1:
        raise ValueError(f"repeats: must be >= 1, got {repeats}")
    results: dict[str, Any] = {"quick": quick, "device": device_info()}
    results["peak"] = matmul_peak()
    peak = results["peak"]["flops_per_s"]
    results["text_encoder"] = bench_text_encoder(quick, repeats)
    results["unet"] = bench_unet(quick, repeats, peak)
    results["sampler"], results["startup"] = bench_sampler(startup)
    results["memory"] = memory_info()
    if compare:
        results["compare"] = _compare_imagen_pytorch(quick, repeats)
    return results


def _fmt(value: Any, unit: str = "", scale: float = 1.0, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value * scale:.{digits}g}{unit}"


def format_table(results: dict[str, Any]) -> str:
    """A markdown table of the main numbers."""
    dev, peak, unet = results["device"], results["peak"], results["unet"]
    rows = [
        ("device", f"{dev['device_kind']} ({dev['platform']}), load {_fmt(dev['load_avg_1min'])}"),
        ("matmul peak", f"{_fmt(peak['flops_per_s'], ' GFLOP/s', 1e-9)} ({peak['n']}^2 "
                        f"{peak['dtype']})"),
        ("text encoder", f"{_fmt(results['text_encoder']['prompts_per_s'])} prompts/s"),
    ]  # fmt: skip
    for name in ("forward", "train_step"):
        r = unet[name]
        rows.append((
            f"U-Net {name.replace('_', ' ')} (batch {r['batch']})",
            f"{_fmt(r['seconds'], ' s')}, compile {_fmt(r['compile_s'], ' s')}, "
            f"MFU {_fmt(r['mfu'], '%', 100)}",
        ))  # fmt: skip
    sampler = results["sampler"]
    for phase in ("cold", "warm"):
        stages = ", ".join(f"{k} {_fmt(v, ' s')}" for k, v in sampler[phase]["stages_s"].items())
        rows.append((f"cascade sample, {phase}", f"{_fmt(sampler[phase]['cascade_s'], ' s')} "
                                                 f"({stages})"))  # fmt: skip
    startup = results["startup"]
    if "cold" in startup:
        rows.append(("first video, new process", f"cold {_fmt(startup['cold']['first_video_s'], ' s')}"
                     f", cached {_fmt(startup['cached']['first_video_s'], ' s')}"))  # fmt: skip
    mem = results["memory"]
    rows.append(("peak memory", f"host RSS {_fmt(mem['host_peak_rss_bytes'], ' GiB', 2**-30)} "
                 f"(sampling {_fmt(sampler['peak_rss_bytes'], ' GiB', 2**-30)}), "
                 f"device {_fmt(mem['device_peak_bytes'], ' GiB', 2**-30)}"))  # fmt: skip
    if "compare" in results:
        cmp = results["compare"]
        if "skipped" in cmp:
            rows.append(("imagen-pytorch", f"skipped: {cmp['skipped']}"))
        else:
            for name in ("forward", "train_step"):
                ours = unet[name]["seconds"]
                rows.append((f"imagen-pytorch {name}", f"{_fmt(cmp[name], ' s')} "
                             f"(t2v_jax is {_fmt(cmp[name] / ours)}x its speed)"))  # fmt: skip
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'measure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    # The sampling probe of bench_sampler (a fresh process); prints JSON as the last line.
    args = sys.argv[1:]
    if len(args) not in (2, 3) or args[0] != "--probe" or args[2:] not in ([], ["--warm"]):
        sys.exit("usage: python -m t2v_jax.perf.bench --probe PIPELINE_DIR [--warm] (internal)")
    from t2v_jax.compile_cache import enable_compilation_cache

    enable_compilation_cache()
    print(json.dumps(sample_probe(args[1], warm=args[2:] == ["--warm"])))
