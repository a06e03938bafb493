"""Writes a pipeline with finished distillation rounds' students in place of their stages.

  python tools/export_students.py --pipeline shapes --out DIR ROOT/base_p8 ROOT/tsr_p4 ...

Each workdir is a `t2v-distill` (or `t2v-train`) run; its newest checkpoint's EMA U-Net, model
and sampling settings replace the stage of the same name in `--pipeline` (a folder or a built-in
name), whose text encoder must be the one the text-reading students were distilled with. What
`tools/distill_demo.sh` calls after each round; `t2v-distill --out` does the same for one round.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdirs", nargs="+", help="distillation runs whose students go in")
    p.add_argument("--pipeline", required=True, help="built-in name or a saved pipeline folder")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--params-dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)

    from t2v_jax import pipeline_store
    from t2v_jax.train import distill_task

    pipe = pipeline_store.load_pipeline(args.pipeline)
    distill_task.export_students(
        args.workdirs, pipe, args.out, params_dtype=args.params_dtype, overwrite=args.overwrite
    )
    print(f"wrote {args.out}: {', '.join(map(str, args.workdirs))} in {args.pipeline}")
    return pathlib.Path(args.out)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
