"""Benchmarks of one device: text encoding, U-Net forward and train step, cascade sampling, MFU.

`run_benchmarks(quick=...)` returns a JSON-friendly dict and `format_table` renders it. Every
measurement runs on the first device (a mesh of one), so the numbers describe a chip (or a CPU
host), and MFU = FLOPs of the compiled program (`compiled.cost_analysis()`) / seconds / the peak
FLOP/s of a large matmul measured on the same device. `--quick` uses configs/tiny.py; the full
run uses the reference U-Net shape of tools/bench_unet.py (imagen-pytorch's Unet3D measured at
the same shape). Cold vs cached start runs the cascade in two fresh processes that share a new
persistent compilation cache (`t2v_jax.compile_cache`).
"""

from __future__ import annotations

import copy
import json
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

TINY_CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "tiny.py")

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
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except (NotImplementedError, RuntimeError):
        stats = {}
    return {"host_peak_rss_bytes": int(rss_bytes),
            "device_peak_bytes": stats.get("peak_bytes_in_use")}  # fmt: skip


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
    from t2v_jax import aot, configlib, sharding
    from t2v_jax.models import UNetConfig, VideoUNet
    from t2v_jax.train import state as state_lib
    from t2v_jax.train import step as step_lib
    from t2v_jax.train import task as task_lib

    shape = QUICK_SHAPE if quick else REFERENCE_SHAPE
    config = _stage_config("base", quick)
    model_cfg = configlib.from_config(UNetConfig, config.model, "model")
    mesh = sharding.make_mesh(sharding.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
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
    task = task_lib.diffusion_task(experiment)
    train_cfg = configlib.from_config(state_lib.TrainConfig, experiment.train, "train")
    optimizer, schedule = state_lib.make_optimizer(train_cfg)
    init = state_lib.make_init_fn(task.init_params, optimizer)
    start = time.perf_counter()
    state, shardings = state_lib.create_train_state(init, 0, mesh, rules)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - start
    batch = sharding.shard_host_batch(random_batch(shape["train_batch"]), mesh)
    step_fn = step_lib.make_train_step(task.loss_fn, optimizer, schedule, train_cfg.ema_decay)
    jitted = step_lib.jit_train_step(step_fn, shardings, batch, mesh)
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


def bench_text_encoder(quick: bool, repeats: int, num_prompts: int = 32) -> dict[str, Any]:
    """Prompts/s of the tiny config's T5 (quick) or a T5-base-sized random encoder (full)."""
    from t2v_jax import cascade

    text_cfg = _stage_config("base", True).text
    if not quick:
        text_cfg = copy.deepcopy(text_cfg)
        text_cfg.t5.update({"d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12,
                            "num_heads": 12, "relative_attention_num_buckets": 32,
                            "relative_attention_max_distance": 128})  # fmt: skip
        text_cfg.max_length = 64
    encoder = cascade.text_encoder_from_config(text_cfg, jax.random.key(0))
    prompts = [f"red circle {i}" for i in range(num_prompts)]  # < 16 bytes: no truncation
    start = time.perf_counter()
    jax.block_until_ready(encoder.encode(prompts))
    first_s = time.perf_counter() - start
    seconds = _median_seconds(lambda: encoder.encode(prompts)[0], repeats)
    return {"d_model": encoder.d_model, "max_length": encoder.max_length,
            "num_prompts": num_prompts, "first_call_s": first_s, "seconds": seconds,
            "prompts_per_s": num_prompts / seconds}  # fmt: skip


def _tiny_pipeline():
    from t2v_jax import cascade, sharding

    configs = [_stage_config(s, True) for s in ("base", "tsr", "ssr")]
    encoder = cascade.text_encoder_from_config(configs[0].text, jax.random.key(0))
    mesh = sharding.make_mesh(sharding.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    return cascade.build_pipeline(configs, encoder, jax.random.key(1), mesh=mesh)


def _timed_sample(pipe: Any, prompts: Sequence[str]) -> dict[str, Any]:
    marks = [time.perf_counter()]
    pipe.sample(prompts, progress=False, callback=lambda *_: marks.append(time.perf_counter()))
    names = [s.config.name for s in pipe.stages]
    per_stage = {n: b - a for n, a, b in zip(names, marks[:-1], marks[1:], strict=True)}
    return {"stages_s": per_stage, "cascade_s": marks[-1] - marks[0]}


def bench_sampler(num_prompts: int = 2) -> dict[str, Any]:
    """The tiny 3-stage cascade: per-stage and whole-cascade seconds, cold (with compile) and warm.

    Stage times come from the sample callback (after each stage's frames reach the host), so the
    base stage's time includes text encoding.
    """
    start = time.perf_counter()
    pipe = _tiny_pipeline()
    build_s = time.perf_counter() - start
    prompts = [f"red circle {i}" for i in range(num_prompts)]
    cold = _timed_sample(pipe, prompts)
    warm = _timed_sample(pipe, prompts)
    stage = pipe.stages[0].config
    return {"num_prompts": num_prompts, "num_steps": [s.config.num_steps for s in pipe.stages],
            "output_shape": list(pipe.output_shape), "base_shape": [stage.frames, stage.height,
            stage.width], "build_s": build_s, "cold": cold, "warm": warm}  # fmt: skip


def time_to_first_video() -> float:
    """Seconds from here (jax imported) to the tiny cascade's first video, compile included."""
    start = time.perf_counter()
    _tiny_pipeline().sample(["a red circle moving right"], progress=False)
    return time.perf_counter() - start


def bench_startup() -> dict[str, Any]:
    """Cold vs cached start: two fresh processes sample the tiny cascade, sharing a new cache.

    The first compiles everything and fills the cache; the second reads the programs back.
    Reported: whole process wall time and the time from `import jax` done to the first video.
    """
    with tempfile.TemporaryDirectory(prefix="t2v_bench_cache_") as cache:
        env = dict(os.environ, T2V_JAX_COMPILATION_CACHE=cache)
        runs = []
        for _ in range(2):
            start = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "t2v_jax.bench", "--first-video"],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            wall = time.perf_counter() - start
            if out.returncode:
                raise RuntimeError(f"startup probe failed:\n{out.stderr[-2000:]}")
            runs.append(
                {"process_s": wall, "first_video_s": json.loads(out.stdout.splitlines()[-1])}
            )
        entries = len(os.listdir(cache))
    return {"cold": runs[0], "cached": runs[1], "cache_entries": entries}


# Runs in the side venv: lucidrains' Unet3D at the shapes of our benchmark, forward and an
# Adam train step, median seconds. Its arguments come as JSON in argv[1].
_IMAGEN_SCRIPT = r"""
import json, statistics, sys, time
import torch
from imagen_pytorch import Unet3D
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
levels = len(cfg["dim_mults"])
attn = tuple(2**i in cfg["attn_factors"] for i in range(levels))
unet = Unet3D(dim=cfg["dim"], dim_mults=tuple(cfg["dim_mults"]), num_resnet_blocks=cfg["blocks"],
              text_embed_dim=cfg["text_dim"], channels=3, attn_heads=cfg["heads"],
              layer_attns=attn, layer_cross_attns=attn)
def inputs(b):
    x = torch.randn(b, 3, cfg["frames"], cfg["size"], cfg["size"])
    return x, torch.rand(b), torch.randn(b, cfg["length"], cfg["text_dim"]), torch.ones(b, cfg["length"], dtype=torch.bool)
def median(fn, n):
    fn(); ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)
fx, ft, fe, fm = inputs(cfg["forward_batch"])
with torch.no_grad():
    fwd = median(lambda: unet(fx, ft, text_embeds=fe, text_mask=fm), cfg["repeats"])
opt = torch.optim.Adam(unet.parameters(), lr=1e-4)
tx, tt, te, tm = inputs(cfg["train_batch"])
def step():
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(unet(tx, tt, text_embeds=te, text_mask=tm), tx)
    loss.backward(); opt.step()
train = median(step, cfg["repeats"])
params = sum(p.numel() for p in unet.parameters())
print(json.dumps({"forward": fwd, "train_step": train, "num_params": params,
                  "torch": torch.__version__, "threads": torch.get_num_threads()}))
"""

# A separate venv: imagen-pytorch pulls torchvision, kornia, accelerate, ... whose versions
# must match the torch wheel pip picks there, and must not touch this environment.
IMAGEN_VENV = os.path.join(os.path.expanduser("~"), ".cache", "t2v_jax", "imagen_pytorch_torch2.13")


def _side_venv(path: str) -> str:
    """A venv with torch==2.13.0 and imagen-pytorch (pip, PyPI); returns its python."""
    python = os.path.join(path, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", path], check=True, capture_output=True)
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "torch==2.13.0", "imagen-pytorch"],
        check=True, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    return python


def compare_imagen_pytorch(model: dict[str, Any], shape: dict[str, int], repeats: int,
                           venv: str = IMAGEN_VENV) -> dict[str, Any]:  # fmt: skip
    """Times imagen-pytorch's Unet3D at our U-Net's shapes in a side venv (made on demand).

    Returns {"forward": s, "train_step": s, ...}, or {"skipped": reason} when the venv cannot
    be built (offline, no PyPI) or the model does not run.
    """
    cfg = {
        "dim": model["base_channels"], "dim_mults": list(model["channel_mults"]),
        "blocks": model["num_res_blocks"], "text_dim": model["text_dim"],
        "heads": model["num_heads"], "attn_factors": list(model["spatial_attention_resolutions"]),
        "frames": shape["frames"], "size": shape["size"], "length": shape["text_length"],
        "forward_batch": shape["forward_batch"], "train_batch": shape["train_batch"],
        "repeats": repeats,
    }  # fmt: skip
    try:
        python = _side_venv(venv)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        detail = getattr(e, "stderr", None) or str(e)
        return {"skipped": f"could not build the side venv {venv}: {str(detail)[-500:]}"}
    # The side venv must not see our XLA/JAX environment (nor our fake-device flags).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    try:
        out = subprocess.run([python, "-c", _IMAGEN_SCRIPT, json.dumps(cfg)], env=env,
                             capture_output=True, text=True, timeout=3600, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"skipped": "imagen-pytorch run timed out"}
    if out.returncode:
        return {"skipped": f"imagen-pytorch failed: {out.stderr.strip()[-800:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _compare_imagen_pytorch(quick: bool, repeats: int) -> dict[str, Any]:
    shape = QUICK_SHAPE if quick else REFERENCE_SHAPE
    config = _stage_config("base", quick)
    return compare_imagen_pytorch(config.model.to_dict(), shape, repeats)


def run_benchmarks(
    quick: bool = False, repeats: int = 3, compare: str | None = None, startup: bool = True
) -> dict[str, Any]:
    """Runs every benchmark; returns {device, peak, text_encoder, unet, sampler, startup, memory}.

    Args:
      quick: tiny shapes (configs/tiny.py), under a minute on a 2-core CPU once warm.
      repeats: timed calls per warm measurement (median).
      compare: "imagen-pytorch" also times lucidrains' Unet3D on the same shapes (side venv).
      startup: measure cold vs cached process start (two subprocesses).
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
    results["sampler"] = bench_sampler()
    results["startup"] = bench_startup() if startup else {"skipped": "startup=False"}
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
    rows.append(("peak memory", f"host RSS {_fmt(mem['host_peak_rss_bytes'], ' GiB', 2**-30)}, "
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
    # The startup probe of bench_startup (a fresh process); prints seconds as the last line.
    if sys.argv[1:] != ["--first-video"]:
        sys.exit("usage: python -m t2v_jax.bench --first-video (internal; use t2v-bench)")
    from t2v_jax.compile_cache import enable_compilation_cache

    enable_compilation_cache()
    print(json.dumps(time_to_first_video()))
