"""`t2v-bench`: measure text encoding, U-Net, train step, sampling, MFU and start-up on this device.

`t2v-bench train` times the train step of whole configs instead (steps/s, examples/s, compile
time, MFU): `t2v-bench train --configs tiny demo paper --steps 5 --repeats 3`. `t2v-bench sample`
times a pipeline as a user meets it (the whole `t2v-sample` command with an empty and with a warm
compilation cache, and a warm sample): `t2v-bench sample --pipeline shapes`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# --quick: compile time dominates tiny programs. XLA:CPU's LLVM passes are most of it (threefry
# kernels and the optimizer's per-parameter updates especially); level 0 cuts it several-fold.
# The older loop emitters compile faster than the MLIR fusion emitters: on this project's 2-core
# CPU, t2v-bench --quick 58 s -> 51 s idle (90 s -> 76 s under load), mostly in the sampler's
# programs. Both flags change how fast the code runs, not what it computes.
_FAST_COMPILE = {
    "xla_backend_optimization_level": "0",
    "xla_cpu_use_fusion_emitters": "false",
}


def fast_compile_flags(flags: str) -> str:
    """`flags` (an XLA_FLAGS value) plus each `_FAST_COMPILE` flag it does not set itself."""
    extra = [f"--{name}={value}" for name, value in _FAST_COMPILE.items() if name not in flags]
    return " ".join([flags.strip(), *extra]).strip()


def _write(results: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {path}")


def _main_train(argv: list[str]) -> int:
    from t2v_jax.perf.bench_train import CONFIGS, PAPER_FRAMES, PAPER_RES_BLOCKS, PAPER_SHRINK

    parser = argparse.ArgumentParser(
        prog="t2v-bench train",
        description="Times the train step t2v-train runs (one device, synthetic batches) of "
        "each config: steps/s, examples/s, compile time, MFU.",
    )
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                        help="configs to time (default: all)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=5, help="steps per timed window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows (median)")
    parser.add_argument("--batch", type=int, default=None,
                        help="global batch for every config (default: 8, 8, 2)")  # fmt: skip
    parser.add_argument("--paper-shrink", type=int, default=PAPER_SHRINK,
                        help="divide the paper stage's widths by this")  # fmt: skip
    parser.add_argument("--paper-frames", type=int, default=PAPER_FRAMES,
                        help="frames of the shrunk paper stage (the paper's: 16)")  # fmt: skip
    parser.add_argument("--paper-res-blocks", type=int, default=PAPER_RES_BLOCKS,
                        help="ResBlocks per level of the shrunk paper stage (the paper's: 3)")  # fmt: skip
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    args = parser.parse_args(argv)

    from t2v_jax.perf import bench_train

    results = bench_train.run_train_benchmarks(
        args.configs, steps=args.steps, repeats=args.repeats, batch_size=args.batch,
        paper_shrink=args.paper_shrink, paper_frames=args.paper_frames,
        paper_res_blocks=args.paper_res_blocks,
    )  # fmt: skip
    print(bench_train.format_train_table(results))
    _write(results, args.out)
    return 0


def _main_sample(argv: list[str]) -> int:
    from t2v_jax.perf.bench_sample import DEFAULT_PROMPT

    parser = argparse.ArgumentParser(
        prog="t2v-bench sample",
        description="Times one prompt as a user meets it: the whole t2v-sample command in fresh "
        "processes (the first with an empty compilation cache, the others reading it back), "
        "then warm samples in this process, whole and per stage.",
    )
    parser.add_argument("--pipeline", default="shapes", help="built-in name or a saved folder")
    parser.add_argument("--processes", type=int, default=3,
                        help="t2v-sample processes (the first with an empty cache; 0: none)")  # fmt: skip
    parser.add_argument("--warm-calls", type=int, default=5, help="warm samples to time")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    args = parser.parse_args(argv)

    from t2v_jax.perf import bench_sample

    try:
        results = bench_sample.run_sample_benchmark(
            args.pipeline, processes=args.processes, warm_calls=args.warm_calls,
            prompt=args.prompt,
        )  # fmt: skip
    except ValueError as e:
        parser.error(str(e))
    print(bench_sample.format_sample_table(results))
    _write(results, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parses arguments, runs `t2v_jax.perf.bench.run_benchmarks` (or a subcommand), prints a table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        return _main_train(argv[1:])
    if argv[:1] == ["sample"]:
        return _main_sample(argv[1:])
    parser = argparse.ArgumentParser(
        prog="t2v-bench",
        description=__doc__.strip("`"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="subcommands: t2v-bench train --help, t2v-bench sample --help",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes (configs/tiny.py) and XLA flags that compile faster (each unless "
        f"XLA_FLAGS sets it: {fast_compile_flags('')}): under a minute on a 2-core CPU",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per warm measure")
    parser.add_argument(
        "--compare",
        choices=["imagen-pytorch"],
        default=None,
        help="also time lucidrains' Unet3D on the same shapes (side venv, made on demand)",
    )
    parser.add_argument(
        "--no-startup",
        action="store_true",
        help="sample in this process, skipping the cold vs cached process start",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    args = parser.parse_args(argv)  # fmt: skip

    if args.quick:
        # Read when the backend starts (nothing has touched a device yet); the sampling
        # subprocesses inherit it.
        os.environ["XLA_FLAGS"] = fast_compile_flags(os.environ.get("XLA_FLAGS", ""))

    from t2v_jax.perf import bench

    results = bench.run_benchmarks(quick=args.quick, repeats=args.repeats, compare=args.compare,
                                   startup=not args.no_startup)  # fmt: skip
    print(bench.format_table(results))
    _write(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
