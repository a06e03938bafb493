"""`t2v-bench sample`: seconds from prompt to video as a user meets them, for any pipeline.

Three numbers, for one prompt (issue 23's targets on the demo, docs/sampling.md):
- the whole `t2v-sample PROMPT --out F` command (default arguments, progress bar on) in a fresh
  process with an empty persistent compilation cache: start-up, compiles, sampling, the mp4;
- the same command in later fresh processes that read that cache back;
- a warm `Pipeline.sample` in this process (after a first, compiling call), and its stages.
The cache is a new temporary folder, so the first process always compiles everything.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Any

DEFAULT_PROMPT = "a red circle moving right"


def _command_seconds(pipeline: str, prompt: str, out: str, cache: str) -> float:
    """Wall seconds of one `t2v-sample` command in a new Python process."""
    cmd = [sys.executable, "-m", "t2v_jax.cli.sample", prompt, "--pipeline", pipeline,
           "--out", out, "--overwrite", "--compilation-cache", cache]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"t2v-sample failed:\n{proc.stderr[-2000:]}")
    return seconds


def run_sample_benchmark(
    pipeline: str = "shapes", processes: int = 3, warm_calls: int = 5, prompt: str = DEFAULT_PROMPT
) -> dict[str, Any]:
    """Times `pipeline` (a built-in name or a saved folder) on `prompt`; see the module doc.

    `processes` fresh `t2v-sample` processes (the first with an empty cache; 0 skips them), then
    `warm_calls` warm samples in this process (seeds 1, 2, ...) and one more split by stage.
    """
    if processes < 0:
        raise ValueError(f"processes: expected >= 0, got {processes}")
    if warm_calls < 1:
        raise ValueError(f"warm_calls: expected >= 1, got {warm_calls}")
    from t2v_jax.pipeline_store import resolve_pipeline_path

    resolve_pipeline_path(pipeline)  # a bad name fails here, before any process starts

    import jax

    from t2v_jax import compile_cache, pipeline_store
    from t2v_jax.perf import bench

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="t2v_bench_sample_") as tmp:
        cache = os.path.join(tmp, "xla")
        out = os.path.join(tmp, "video.mp4")
        command_s = [_command_seconds(pipeline, prompt, out, cache) for _ in range(processes)]
        cache_entries = len(os.listdir(cache)) if processes else 0

        if not jax.config.jax_compilation_cache_dir:  # (a caller's own cache is left alone)
            compile_cache.enable_compilation_cache(cache)
        pipe = pipeline_store.load_pipeline(pipeline, mesh=bench.one_device_mesh())
        pipe.sample(prompt, progress=False)  # compiles, or reads the programs back
        warm_s = []
        for seed in range(1, warm_calls + 1):
            start = time.perf_counter()
            pipe.sample(prompt, seed=seed, progress=False)
            warm_s.append(time.perf_counter() - start)
        stages = bench.timed_sample(pipe, [prompt])
    return {
        "pipeline": pipeline,
        "prompt": prompt,
        "num_steps": [s.config.num_steps for s in pipe.stages],
        "empty_cache_s": command_s[0] if command_s else None,
        "warm_cache_s": command_s[1:],
        "cache_entries": cache_entries,
        "warm_sample_s": warm_s,
        "stages_s": stages["stages_s"],
        "load_average": {"before": load_before[0], "after": os.getloadavg()[0]},
        "device": bench.device_info(),
    }


def format_sample_table(results: dict[str, Any]) -> str:
    """A small text table of `run_sample_benchmark`'s results."""

    def seconds(values: list[float]) -> str:
        return ", ".join(f"{v:.2f} s" for v in values) or "-"

    empty = results["empty_cache_s"]
    rows = [
        ("pipeline", f"{results['pipeline']} (steps {results['num_steps']})"),
        ("t2v-sample, empty cache", "-" if empty is None else f"{empty:.2f} s"),
        ("t2v-sample, later processes", seconds(results["warm_cache_s"])),
        ("warm sample, same process", seconds(results["warm_sample_s"])),
        ("  per stage", ", ".join(f"{k} {v:.2f} s" for k, v in results["stages_s"].items())),
        ("load average (1 min)", "{before:.2f} -> {after:.2f}".format(**results["load_average"])),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
