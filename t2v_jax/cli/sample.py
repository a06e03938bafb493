"""`t2v-sample`: prompts in, one video file per sample out."""

from __future__ import annotations

import argparse
import pathlib
import sys

from t2v_jax import video_io
from t2v_jax.cli import add_run_flags


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="t2v-sample",
        description="Generate videos from text prompts with a t2v_jax pipeline.",
    )
    p.add_argument("prompts", nargs="+", help="one or more prompts")
    p.add_argument(
        "--out",
        default="out.mp4",
        help="output file; suffix picks the format "
        f"({', '.join(video_io.SUFFIXES)}); several videos get _0, _1, ... suffixes",
    )
    p.add_argument("--pipeline", default="shapes", help="built-in name or a saved pipeline folder")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (every stage)")
    p.add_argument("--negative", default=None, help="negative prompt")
    p.add_argument("--num-videos", type=int, default=1, help="videos per prompt")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_run_flags(p)
    return p


def output_paths(out: str, count: int) -> list[pathlib.Path]:
    """`out` itself for one video; `stem_0.ext`, `stem_1.ext`, ... for several."""
    path = pathlib.Path(out)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from t2v_jax.sampling_args import validate_sampling_args

    try:
        prompts = validate_sampling_args(
            args.prompts, args.negative, args.steps, args.guidance, args.seed, args.num_videos
        )
        paths = output_paths(args.out, len(prompts) * args.num_videos)
        for path in paths:
            video_io.check_output_path(path, overwrite=args.overwrite)
        from t2v_jax.pipeline_store import resolve_pipeline_path

        resolve_pipeline_path(args.pipeline)
    except ValueError as e:
        print(f"t2v-sample: error: {e}", file=sys.stderr)
        return 2

    from t2v_jax.compile_cache import enable_compilation_cache
    from t2v_jax.pipeline_store import load_pipeline

    enable_compilation_cache(args.compilation_cache)
    pipe = load_pipeline(args.pipeline)
    videos = pipe.sample(
        prompts,
        negative_prompts=args.negative,
        num_steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        num_videos_per_prompt=args.num_videos,
        progress=not args.no_progress,
    )
    for video, path in zip(videos, paths, strict=True):
        video_io.write_video(video, path, fps=pipe.fps, overwrite=args.overwrite)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
