"""Writes a pipeline with finished distillation rounds' students in place of their stages.

  python tools/export_students.py --pipeline shapes --out DIR ROOT/base_p8 ROOT/tsr_p4 ...
  python tools/export_students.py --pipeline shapes --out DIR ROOT/tsr_p4 \
      --stage-from base=runs/distill/base_p8     # a finished round kept as a pipeline

Each workdir is a `t2v-distill` (or `t2v-train`) run; its newest checkpoint's EMA U-Net, model
and sampling settings replace the stage of the same name in `--pipeline` (a folder or a built-in
name), whose text encoder must be the one the text-reading students were distilled with. What
`tools/distill_demo.sh` calls after each round; `t2v-distill --out` does the same for one round.
`--stage-from NAME=PIPELINE` (repeatable) takes stage NAME from a saved pipeline instead: a
round's student kept as a pipeline after its workdir is gone.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdirs", nargs="*", help="distillation runs whose students go in")
    p.add_argument("--pipeline", required=True, help="built-in name or a saved pipeline folder")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--params-dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--stage-from",
        action="append",
        default=[],
        metavar="NAME=PIPELINE",
        help="take stage NAME from a saved pipeline (repeatable)",
    )
    args = p.parse_args(argv)
    stage_from = {}
    for item in args.stage_from:
        name, sep, folder = item.partition("=")
        if not (sep and name and folder) or name in stage_from:
            p.error(f"--stage-from: NAME=PIPELINE, each stage once; got {item!r}")
        stage_from[name] = folder
    if not (args.workdirs or stage_from):
        p.error("give at least one workdir or --stage-from")

    from t2v_jax import pipeline_store
    from t2v_jax.train import distill_task

    pipe = pipeline_store.load_pipeline(args.pipeline)
    distill_task.export_students(
        args.workdirs,
        pipe,
        args.out,
        stage_from=stage_from,
        params_dtype=args.params_dtype,
        overwrite=args.overwrite,
    )
    sources = [*map(str, args.workdirs), *(f"{n} of {f}" for n, f in stage_from.items())]
    print(f"wrote {args.out}: {', '.join(sources)} in {args.pipeline}")
    return pathlib.Path(args.out)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
