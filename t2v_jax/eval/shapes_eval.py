"""Prompt-adherence evaluation of a pipeline on the `shapes` vocabulary (what tools/eval_shapes.py runs).

Prompts are "a/an {colour} {shape} moving {direction}" for (colour, shape, direction) drawn from
the whole vocabulary (8 x 3 x 4 = 96 combinations, in a fixed shuffled order, cycled), plus extra
prompts from the combinations the training data held out. Every video is judged from its pixels
alone (`shapes_judge.judge_video`); the prompt's words are only compared with the verdict.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from t2v_jax.data import render
from t2v_jax.eval.shapes_judge import measure_video, verdict

# The colour target of the demo (docs/demo.md): the object within this CIELAB distance of the
# prompt's palette colour.
DELTA_E_TARGET = 15.0

ATTRIBUTES = ("colour", "shape", "motion")
Combo = tuple[str, str, str]


def prompt_for(combo: Combo) -> str:
    """The caption of a (colour, shape, motion) combination, in the data's first template."""
    colour, shape, motion = combo
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape} moving {motion}"


def held_out_combos(data_config: str = "sweep32x16") -> tuple[Combo, ...]:
    """The combinations the `shapes/<data_config>` TFDS builder keeps out of its train split."""
    from t2v_jax.data import shapes

    names = [c.name for c in shapes.Shapes.BUILDER_CONFIGS]
    if data_config not in names:
        raise ValueError(f"data_config: {data_config!r} is not a shapes config; allowed: {names}")
    return tuple(tuple(c) for c in shapes.Shapes.builder_configs[data_config].held_out)


@dataclasses.dataclass(frozen=True)
class EvalPrompt:
    """One prompt of the evaluation and the combination it names."""

    text: str
    combo: Combo
    held_out: bool


def make_prompts(
    num_prompts: int, num_held_out_prompts: int, held_out: Sequence[Combo], order_seed: int = 0
) -> list[EvalPrompt]:
    """`num_prompts` prompts over the whole vocabulary, then `num_held_out_prompts` held-out ones.

    The vocabulary is visited in a fixed shuffled order (`order_seed`) and cycled, so 96 prompts
    name every combination once (the held-out ones included, and flagged).
    """
    if num_prompts < 0 or num_held_out_prompts < 0 or num_prompts + num_held_out_prompts < 1:
        raise ValueError(
            f"num_prompts={num_prompts}, num_held_out_prompts={num_held_out_prompts}: both must "
            "be >= 0 and at least one > 0"
        )
    if num_held_out_prompts and not held_out:
        raise ValueError("num_held_out_prompts > 0 needs held-out combinations")
    held = {tuple(c) for c in held_out}
    every = list(itertools.product(render.COLOUR_NAMES, render.SHAPES, render.MOTION_NAMES))
    order = np.random.default_rng(order_seed).permutation(len(every))
    combos = [every[i] for i in order]
    chosen = [combos[i % len(combos)] for i in range(num_prompts)]
    chosen += [tuple(held_out[i % len(held_out)]) for i in range(num_held_out_prompts)]
    return [EvalPrompt(prompt_for(c), c, c in held) for c in chosen]


def _accuracy(rows: list[dict]) -> dict[str, float | None]:
    if not rows:
        return {**dict.fromkeys(ATTRIBUTES), "all": None, "count": 0}
    out = {a: float(np.mean([r["judged"][a] == r[a] for r in rows])) for a in ATTRIBUTES}
    out["all"] = float(np.mean([all(r["judged"][a] == r[a] for a in ATTRIBUTES) for r in rows]))
    out["count"] = len(rows)
    return out


def colour_fidelity(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Distribution of each video's CIELAB distance from its prompt's colour, per colour and 'all'.

    Each entry: 'count', 'median', 'p90', 'max' and 'within_target' (the fraction with
    delta E <= `DELTA_E_TARGET`); a video with no object counts as infinitely far.
    """
    out = {}
    for name in (*render.COLOUR_NAMES, "all"):
        values = np.array([r["delta_e"] for r in rows if name in ("all", r["colour"])], float)
        if values.size == 0:
            continue
        out[name] = {"count": int(values.size), "median": float(np.median(values)),
                     "p90": float(np.percentile(values, 90)), "max": float(values.max()),
                     "within_target": float(np.mean(values <= DELTA_E_TARGET))}  # fmt: skip
    return out


def object_stats(rows: list[dict]) -> dict[str, float]:
    """'one_object': fraction of videos with exactly one object; 'inside': fraction of all frames
    whose object is not cut off by the frame's edge; 'touching': fraction of frames whose object
    touches an edge (whole objects may: the training data's objects graze the edges too)."""
    frames = sum(r["frames"] for r in rows)
    return {
        "one_object": float(np.mean([r["num_objects"] == 1 for r in rows])),
        "inside": 1.0 - sum(r["cut_off_frames"] for r in rows) / frames,
        "touching": sum(r["edge_frames"] for r in rows) / frames,
    }


def evaluate(
    sample_fn: Callable[[list[str], int], np.ndarray],
    prompts: Sequence[EvalPrompt],
    seeds: Sequence[int],
    batch_size: int = 16,
) -> dict[str, Any]:
    """Samples every prompt with every seed, judges each video, and scores the verdicts.

    Args:
      sample_fn: `(prompts, seed) -> uint8 [len(prompts), T, H, W, 3]`, e.g. a wrapper of
        `Pipeline.sample`. It is always called with exactly `batch_size` prompts (the last batch
        is padded by repeating prompts, whose videos are dropped), so it compiles once.
      prompts: from `make_prompts`.
      seeds: one full pass over the prompts per seed; batch k of seed s samples with seed
        s * 100003 + k, so batches do not share noise.
      batch_size: prompts per call.

    Returns:
      JSON-ready dict: 'accuracy' (per attribute, 'all' three right, 'count') over every prompt,
      'vocabulary' (the non-held-out prompts), 'held_out', 'wall_time_s', 'seconds_per_video',
      'first_batch_s' (includes compilation), 'videos' (per-video prompt, seed, labels, verdict).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    rows, batch_times = [], []
    start = time.perf_counter()
    for seed in seeds:
        for k in range(0, len(prompts), batch_size):
            chunk = list(prompts[k : k + batch_size])
            padded = [p.text for p in chunk] + [chunk[-1].text] * (batch_size - len(chunk))
            t0 = time.perf_counter()
            videos = np.asarray(sample_fn(padded, seed * 100003 + k // batch_size))
            batch_times.append(time.perf_counter() - t0)
            for p, video in zip(chunk, videos, strict=False):
                colour, shape, motion = p.combo
                m = measure_video(video)
                rows.append({"prompt": p.text, "seed": seed, "held_out": p.held_out,
                             "colour": colour, "shape": shape, "motion": motion,
                             "judged": verdict(m),
                             "delta_e": m["delta_e"].get(colour, float("inf")),
                             "object_rgb": [float(c) for c in m["object_rgb"]],
                             "num_objects": m["num_objects"],
                             "cut_off_frames": int(m["cut_off"].sum()),
                             "edge_frames": int(m["touches_edge"].sum()),
                             "frames": int(video.shape[0])})  # fmt: skip
    wall = time.perf_counter() - start
    return {
        "accuracy": _accuracy(rows),
        "vocabulary": _accuracy([r for r in rows if not r["held_out"]]),
        "held_out": _accuracy([r for r in rows if r["held_out"]]),
        "colour_delta_e": colour_fidelity(rows),
        "objects": object_stats(rows),
        "wall_time_s": wall,
        "seconds_per_video": wall / len(rows),
        "first_batch_s": batch_times[0],
        "num_videos": len(rows),
        "videos": rows,
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of the accuracies and timings of an `evaluate` result."""
    lines = [f"{'prompts':<12}{'count':>7}" + "".join(f"{a:>9}" for a in (*ATTRIBUTES, "all"))]
    for name in ("accuracy", "vocabulary", "held_out"):
        acc = result[name]
        cells = "".join(
            f"{'-':>9}" if acc[a] is None else f"{100 * acc[a]:>8.1f}%"
            for a in (*ATTRIBUTES, "all")
        )
        label = {"accuracy": "all", "vocabulary": "seen", "held_out": "held-out"}[name]
        lines.append(f"{label:<12}{acc['count']:>7}{cells}")
    fidelity = result["colour_delta_e"]
    lines.append(f"colour delta E (CIELAB) to the prompt's colour, <= {DELTA_E_TARGET:g}:")
    for name, d in fidelity.items():
        lines.append(
            f"  {name:<8}{d['count']:>5}  {100 * d['within_target']:5.1f}%  median "
            f"{d['median']:5.1f}  p90 {d['p90']:5.1f}  max {d['max']:6.1f}"
        )
    objects = result["objects"]
    lines.append(
        f"one object {100 * objects['one_object']:.1f}% of videos; inside the frame "
        f"{100 * objects['inside']:.1f}% of frames (touching an edge {100 * objects['touching']:.1f}%)"
    )
    lines.append(
        f"wall time {result['wall_time_s']:.1f} s for {result['num_videos']} videos "
        f"({result['seconds_per_video']:.2f} s/video; first batch, with compilation, "
        f"{result['first_batch_s']:.1f} s)"
    )
    return "\n".join(lines)
