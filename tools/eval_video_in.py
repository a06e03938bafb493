"""Measures given-frame conditioning on the shapes demo's base stage: prediction and image-to-video.

  python tools/eval_video_in.py --num-prompts 32 --json video_in.json

For each prompt "a <colour> <shape> moving <direction>" a scene that the prompt describes is
rendered at the base stage's size (t2v_jax.data.render: a shape of radius 0.18-0.26 sweeping
75-100% of the free room, like the training data); the base stage then gets
- prediction: the first 4 of its 8 frames, and generates the rest;
- image-to-video: the first frame only.
Each output is judged from its pixels (t2v_jax.eval.shapes_judge: colour, shape, direction of
the whole 8 frames); for prediction the object's centroid in the generated frames is compared
with the rendered continuation (pixels). Methods: reconstruction guidance (each --weights value),
replacement, and text alone (no frames given) as the reference.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import sys
from collections.abc import Sequence

import numpy as np


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pipeline", default="shapes")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--weights", type=float, nargs="+", default=[5.0], help="w_r values to try")
    p.add_argument("--context", type=int, default=4, help="frames given for prediction")
    p.add_argument("--num-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=pathlib.Path, default=None)
    return p


def scenes(count: int, frames: int, height: int, width: int, seed: int = 0):
    """(prompt, rendered uint8 [frames, H, W, 3]) pairs cycling over the vocabulary."""
    from t2v_jax.data import render

    rng = np.random.default_rng(seed)
    combos = list(itertools.product(render.COLOUR_NAMES, render.SHAPES, render.MOTION_NAMES))
    picks = rng.permutation(len(combos))[:count]
    out = []
    for colour, shape, motion in (combos[i] for i in picks):
        size = float(rng.uniform(0.18, 0.26))
        dy, dx = render.MOTIONS[motion]
        free = 1.0 - 2 * size  # square frames: the same room along either axis
        travel = float(rng.uniform(0.75, 1.0)) * free
        sign = dy or dx
        along = float(
            rng.uniform(size, 1.0 - size - travel)
            if sign > 0
            else rng.uniform(size + travel, 1.0 - size)
        )
        perp = float(rng.uniform(size, 1.0 - size))
        y, x = (along, perp) if dy else (perp, along)
        obj = render.ShapeSpec(colour, shape, motion, y, x, size, travel / (frames - 1))
        article = "an" if colour[0] in "aeiou" else "a"
        out.append(
            (
                f"{article} {colour} {shape} moving {motion}",
                render.render_video([obj], frames, height, width),
            )
        )
    return out


def score(videos: np.ndarray, prompts: list[str], truths: np.ndarray, first: int) -> dict:
    """Judge accuracy vs the prompts, and centroid error (px) vs the truth from frame `first`."""
    from t2v_jax.eval import shapes_judge

    hits = {"colour": 0, "shape": 0, "motion": 0, "all": 0}
    errors = []
    for video, prompt, truth in zip(videos, prompts, truths, strict=True):
        colour, shape, _, motion = prompt.split()[1:]
        verdict = shapes_judge.judge_video(video)
        ok = {"colour": verdict["colour"] == colour, "shape": verdict["shape"] == shape,
              "motion": verdict["motion"] == motion}  # fmt: skip
        for k, v in ok.items():
            hits[k] += v
        hits["all"] += all(ok.values())
        got = shapes_judge.measure_video(video)["centroids"][first:]
        want = shapes_judge.measure_video(truth)["centroids"][first:]
        dist = np.linalg.norm(got - want, axis=-1)
        # A frame where the judge finds no object counts as the frame's diagonal away.
        errors.append(np.where(np.isnan(dist), np.hypot(*truth.shape[1:3]), dist).mean())
    n = len(prompts)
    return {**{k: v / n for k, v in hits.items()}, "centroid_error_px": float(np.mean(errors))}


def main(argv: Sequence[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    from t2v_jax.cascade import Pipeline
    from t2v_jax.compile_cache import enable_compilation_cache
    from t2v_jax.pipeline_store import load_pipeline

    enable_compilation_cache()
    full = load_pipeline(args.pipeline)
    base = Pipeline(full.text_encoder, full.stages[:1], full.mesh)
    cfg = base.stages[0].config
    pairs = scenes(args.num_prompts, cfg.frames, cfg.height, cfg.width, args.seed)
    prompts = [p for p, _ in pairs]
    truths = np.stack([v for _, v in pairs])  # [N, T, H, W, 3]
    kw = {"seed": args.seed, "num_steps": args.num_steps, "progress": False}
    methods = [("text only", {})] + [
        (f"reconstruction w={w:g}", {"cond_method": "reconstruction", "cond_weight": w})
        for w in args.weights
    ] + [("replacement", {"cond_method": "replacement"})]  # fmt: skip
    result = {}
    text_only = base.sample(prompts, **kw)
    for task, given in (("prediction", args.context), ("image-to-video", 1)):
        mask = np.arange(cfg.frames) < given
        for name, extra in methods:
            videos = text_only
            if extra:
                extra = {**extra, "cond_frames": truths[:, :given], "cond_mask": mask}
                videos = base.sample(prompts, **kw, **extra)
            result[f"{task} / {name}"] = score(videos, prompts, truths, given)
            print(f"{task:15s} {name:22s} {json.dumps(result[f'{task} / {name}'])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
