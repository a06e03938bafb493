"""`t2v-train --config configs/X.py:stage --workdir DIR`: trains one cascade stage, resuming from DIR.

Any config field can be overridden on the command line (absl config_flags), e.g.
`--config.train.num_steps=2000 --config.mesh.fsdp=4`.

On a pod, run the same command on every host: `train.distributed_init` ("auto" by default)
connects them (a multi-host TPU slice, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID set; see t2v_jax.distributed), and the workdir (gs://... works) must be shared.

Exit codes: 0 when training completed or was preempted (SIGTERM: the current step finishes, a
checkpoint is saved, and a rerun resumes from it); 1 when training stopped because too many
consecutive steps were non-finite (the last good checkpoint is kept).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config: path/to/config.py[:stage].", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, TensorBoard events and samples (resumed from)."
)


def _run(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Imported after flag parsing so `--help` stays fast and JAX sees any XLA_FLAGS first.
    from t2v_jax import distributed
    from t2v_jax.train import loop, run

    # Before anything touches a device: on a pod, connect the hosts first.
    run.setup_process(_CONFIG.value)
    # One log per run: the other hosts of a pod only report problems.
    logging.getLogger("t2v_jax").setLevel(
        logging.INFO if distributed.is_primary() else logging.WARNING
    )
    try:
        result = run.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except loop.NonFiniteTrainingError as e:
        print(f"t2v-train: {e}", file=sys.stderr)
        return 1
    if result.status == "preempted":
        print(
            f"t2v-train: preempted at step {result.step}; checkpoint saved in {_WORKDIR.value}; "
            "rerun the same command to resume",
            file=sys.stderr,
        )
    else:
        resumed = (
            f"resumed from step {result.resumed_from}, "
            if result.resumed_from is not None
            else "started fresh, "
        )
        print(
            f"t2v-train: finished at step {result.step} ({resumed}{result.steps_run} steps run); "
            f"outputs in {_WORKDIR.value}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (`t2v-train`)."""
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(lambda a: sys.exit(_run(a)), argv=list(argv) if argv is not None else None)


if __name__ == "__main__":
    main()
