"""`t2v-bench`: measure text encoding, U-Net, train step, sampling, MFU and start-up on this device."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    """Parses arguments, runs `t2v_jax.bench.run_benchmarks`, prints a table, writes JSON."""
    parser = argparse.ArgumentParser(prog="t2v-bench", description=__doc__.strip("`"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes (configs/tiny.py): under a minute on a CPU once warm",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per warm measure")
    parser.add_argument(
        "--compare",
        choices=["imagen-pytorch"],
        default=None,
        help="also time lucidrains' Unet3D on the same shapes (side venv)",
    )
    parser.add_argument(
        "--no-startup",
        action="store_true",
        help="skip the cold vs cached process start (two subprocesses)",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    args = parser.parse_args(argv)  # fmt: skip

    from t2v_jax import bench

    results = bench.run_benchmarks(quick=args.quick, repeats=args.repeats, compare=args.compare,
                                   startup=not args.no_startup)  # fmt: skip
    print(bench.format_table(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
