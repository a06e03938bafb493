"""`t2v-distill --config configs/X.py:stage --workdir DIR --teacher T --mode M`: one distillation
round of a cascade stage (guidance or progressive), resuming from DIR like `t2v-train`.

The teacher is a run's workdir (`t2v-train`, or the workdir of an earlier round) or a saved
pipeline (a folder or a built-in name) with `--teacher_stage`. The config gives the data, text
tower, optimiser and run length (override fields as for t2v-train, e.g.
`--config.train.num_steps=2000`); its model and sampling become the student's. With `--out` (and
`--pipeline`, default: the teacher pipeline) the finished student is written into a copy of that
pipeline, replacing the stage of the same name. See docs/distillation.md.

Exit codes: 0 when the round completed or was preempted (rerun the same command to resume);
1 when training stopped on non-finite steps.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The stage's experiment config: path/to/config.py[:stage].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "The student run's directory (resumed from).")
_MODE = flags.DEFINE_enum("mode", None, ["guidance", "progressive"], "What to distill.")
_TEACHER = flags.DEFINE_string("teacher", None, "A run's workdir, or a saved pipeline.")
_TEACHER_STAGE = flags.DEFINE_string("teacher_stage", None, "The stage (pipeline teacher).")
_TEACHER_STEPS = flags.DEFINE_integer(
    "teacher_steps", None, "The teacher's DDIM steps (progressive); default: its num_steps."
)
_W_MIN = flags.DEFINE_float("guidance_min", None, "Lowest guidance weight w trained on.")
_W_MAX = flags.DEFINE_float("guidance_max", None, "Highest guidance weight w trained on.")
_WEIGHTING = flags.DEFINE_enum(
    "weighting", "snr_trunc", ["v", "snr_trunc", "min_snr"], "v-space loss weighting."
)
_OUT = flags.DEFINE_string("out", None, "Write a pipeline with the student here when done.")
_PIPELINE = flags.DEFINE_string(
    "pipeline", None, "The pipeline --out starts from (default: the teacher pipeline)."
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")


def _run(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Imported after flag parsing so `--help` stays fast.
    from t2v_jax.train import distill_task, loop

    logging.getLogger("t2v_jax").setLevel(logging.INFO)
    settings = distill_task.DistillSettings(
        mode=_MODE.value, teacher=_TEACHER.value, teacher_stage=_TEACHER_STAGE.value,
        teacher_steps=_TEACHER_STEPS.value, guidance_min=_W_MIN.value,
        guidance_max=_W_MAX.value, weighting=_WEIGHTING.value,
    )  # fmt: skip
    base_pipeline = _PIPELINE.value or (_TEACHER.value if _TEACHER_STAGE.value else None)
    if _OUT.value and not base_pipeline:
        raise app.UsageError("--out needs --pipeline (the teacher is a workdir)")
    try:
        result = distill_task.distill(_CONFIG.value, _WORKDIR.value, settings)
    except loop.NonFiniteTrainingError as e:
        print(f"t2v-distill: {e}", file=sys.stderr)
        return 1
    if result.status == "preempted":
        print(f"t2v-distill: preempted at step {result.step}; rerun to resume", file=sys.stderr)
        return 0
    print(f"t2v-distill: finished at step {result.step}; student in {_WORKDIR.value}")
    if _OUT.value:
        from t2v_jax import pipeline_store

        pipe = pipeline_store.load_pipeline(base_pipeline)
        distill_task.export_student(_WORKDIR.value, pipe, _OUT.value, overwrite=_OVERWRITE.value)
        print(f"t2v-distill: wrote {_OUT.value}")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (`t2v-distill`)."""
    flags.mark_flags_as_required(["config", "workdir", "mode", "teacher"])
    app.run(lambda a: sys.exit(_run(a)), argv=list(argv) if argv is not None else None)


if __name__ == "__main__":
    main()
