"""Console-script entry points (thin: parse arguments, call the library)."""

import argparse


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every sampling command shares: --seed, --steps, --no-progress, --compilation-cache."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per stage")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--compilation-cache",
        default=None,
        help="persistent compilation cache folder (default ~/.cache/t2v_jax/xla)",
    )
