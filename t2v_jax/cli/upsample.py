"""`t2v-upsample`: a user's clip in, the cascade's super-resolution stages run on it, one video out."""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

from t2v_jax import video_io
from t2v_jax.cli import add_run_flags


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="t2v-upsample",
        description="Run the super-resolution stages of a t2v_jax pipeline on a video file.",
    )
    p.add_argument("input", help="the video to upsample (never written to)")
    p.add_argument(
        "--out",
        required=True,
        help=f"output file; suffix picks the format ({', '.join(video_io.SUFFIXES)})",
    )
    p.add_argument("--pipeline", default="shapes", help="built-in name or a saved pipeline folder")
    p.add_argument(
        "--stages",
        default=None,
        help="comma-separated stages to run, names or indices, the cascade's last ones in order "
        "(e.g. 'tsr,ssr' or 'ssr'); default: every SR stage (all stages of a pipeline that "
        "starts with one)",
    )
    p.add_argument("--prompt", default=None, help="text, for stages that read it")
    p.add_argument(
        "--clip-fps",
        type=float,
        default=None,
        help="the input's frame rate: take frames at the stage's rate from the start instead of "
        "spreading the whole clip over the stage's frames",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_run_flags(p)
    return p


def start_stage(stages_arg: str | None, names: list[str], first_sr: int = 1) -> int:
    """The first stage to run from `--stages`, which must name the cascade's last stages in order.

    `first_sr` is the index of the cascade's first SR stage: 1 after a base stage, 0 in a
    pipeline that only upsamples (the default runs from there).
    """
    if stages_arg is None:
        return first_sr
    wanted = [s.strip() for s in stages_arg.split(",") if s.strip()]
    indices = [int(s) if s.isdigit() else names.index(s) if s in names else -1 for s in wanted]
    first = len(names) - len(indices)
    if not wanted or indices != list(range(first, len(names))) or first < first_sr:
        raise ValueError(
            f"--stages: {stages_arg!r} must list the cascade's last SR stages in order "
            f"(stages: {', '.join(names)}), e.g. {','.join(names[first_sr:])!r}"
        )
    return first


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        source = pathlib.Path(args.input)
        if not source.is_file():
            raise ValueError(f"input: no such file {args.input!r}")
        out = pathlib.Path(args.out)
        if out.resolve() == source.resolve() or (out.exists() and os.path.samefile(out, source)):
            raise ValueError(f"--out: {args.out!r} is the input; refusing to write over it")
        video_io.check_output_path(out, overwrite=args.overwrite)
        from t2v_jax.pipeline_store import resolve_pipeline_path

        resolve_pipeline_path(args.pipeline)
        from t2v_jax.video_in import load_clips

        clip = load_clips(str(source), "input")  # decodes before anything loads or compiles
    except ValueError as e:
        print(f"t2v-upsample: error: {e}", file=sys.stderr)
        return 2

    from t2v_jax.compile_cache import enable_compilation_cache
    from t2v_jax.pipeline_store import load_pipeline

    enable_compilation_cache(args.compilation_cache)
    pipe = load_pipeline(args.pipeline)
    try:
        first_sr = int(pipe.stages[0].config.kind == "base")
        first = start_stage(args.stages, [s.config.name for s in pipe.stages], first_sr)
        video = pipe.sample(
            args.prompt,
            start_stage=first,
            init_video=clip,
            clip_fps=args.clip_fps,
            seed=args.seed,
            num_steps=args.steps,
            progress=not args.no_progress,
        )[0]
    except ValueError as e:
        print(f"t2v-upsample: error: {e}", file=sys.stderr)
        return 2
    video_io.write_video(video, out, fps=pipe.fps, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
