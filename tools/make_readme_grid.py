"""Draws the README's picture: the embedded demo's videos for a few prompts, one row per prompt.

  python tools/make_readme_grid.py --out docs/images/demo_grid.png --overwrite

Each row is one prompt's video (seed 0, the demo's default steps and guidance): every second of
its 16 frames at the output size (64x64), enlarged 2x (nearest). About two minutes on a 2-core CPU,
most of it compiling.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import t2v_jax

PROMPTS = (
    "a red circle moving right",
    "a blue square moving up",
    "a yellow triangle moving left",
    "a green circle moving left",  # a combination held out of the training data
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/images/demo_grid.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=2, help="pixel enlargement (nearest)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)

    videos = t2v_jax.sample(list(PROMPTS), seed=args.seed)  # uint8 [P, T, H, W, 3]
    frames = videos[:, ::2]  # [P, T/2, H, W, 3]: 8 frames per prompt, one grid row each
    frames = frames.repeat(args.scale, axis=2).repeat(args.scale, axis=3)
    # write_video's .png is a frame grid with 8 frames per row: one row per prompt.
    frames = frames.reshape(-1, *frames.shape[2:])  # [P * T/2, H', W', 3]
    t2v_jax.write_video(np.ascontiguousarray(frames), args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}: rows = {', '.join(repr(x) for x in PROMPTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
