"""Measures how well a pipeline follows `shapes` prompts: colour, shape, motion accuracy from pixels.

  python tools/eval_shapes.py --pipeline shapes --num-prompts 96 --seeds 0 1
  python tools/eval_shapes.py --pipeline /tmp/my_pipeline --num-steps 16 --json out.json

Prompts cover the whole (colour, shape, motion) vocabulary plus extra prompts from the
combinations the training data held out; each video is judged from its frames alone
(t2v_jax.eval.shapes_judge). Prints a table and the JSON summary (per-video verdicts go to --json).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pipeline", default="shapes", help="built-in name or a saved pipeline folder")
    p.add_argument("--num-prompts", type=int, default=96, help="prompts over the vocabulary")
    p.add_argument("--num-heldout-prompts", type=int, default=32,
                   help="extra prompts from the held-out combinations")  # fmt: skip
    p.add_argument("--heldout-from", default="sweep32x16",
                   help="shapes TFDS config whose held-out combinations to use")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one pass per seed")
    p.add_argument("--num-steps", type=int, nargs="+", default=None,
                   help="denoising steps: one value, or one per stage (default: the stages')")  # fmt: skip
    p.add_argument("--guidance", type=float, nargs="+", default=None,
                   help="guidance scale: one value, or one per stage (default: the stages')")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=16, help="prompts per sampling call")
    p.add_argument("--json", type=pathlib.Path, default=None,
                   help="write the full result (with per-video verdicts) here")  # fmt: skip
    p.add_argument("--grid", type=pathlib.Path, default=None,
                   help="write a PNG of the first 16 videos (one row each) here")  # fmt: skip
    return p


def _one_or_list(values):
    if values is None:
        return None
    return values[0] if len(values) == 1 else list(values)


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the evaluation; returns the summary dict it printed (without per-video rows)."""
    args = _parser().parse_args(argv)
    from t2v_jax.compile_cache import enable_compilation_cache
    from t2v_jax.eval import shapes_eval
    from t2v_jax.pipeline_store import load_pipeline

    prompts = shapes_eval.make_prompts(
        args.num_prompts, args.num_heldout_prompts, shapes_eval.held_out_combos(args.heldout_from)
    )
    enable_compilation_cache()
    pipe = load_pipeline(args.pipeline)
    steps, guidance = _one_or_list(args.num_steps), _one_or_list(args.guidance)
    grid_videos = []

    def sample(texts, seed):
        videos = pipe.sample(texts, num_steps=steps, guidance_scale=guidance, seed=seed,
                             progress=False)  # fmt: skip
        if len(grid_videos) < 16:
            grid_videos.extend(videos[: 16 - len(grid_videos)])
        return videos

    result = shapes_eval.evaluate(sample, prompts, args.seeds, batch_size=args.batch_size)
    summary = {k: v for k, v in result.items() if k != "videos"}
    summary.update(pipeline=str(args.pipeline), seeds=args.seeds, num_steps=steps,
                   guidance_scale=guidance, output_shape=list(pipe.output_shape))  # fmt: skip
    print(shapes_eval.format_table(result))
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**summary, "videos": result["videos"]}, indent=2))
    if args.grid is not None:
        import numpy as np
        from PIL import Image

        from t2v_jax.video_io import frame_grid

        rows = [frame_grid(v, columns=v.shape[0]) for v in grid_videos]
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, axis=0)).save(args.grid)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
