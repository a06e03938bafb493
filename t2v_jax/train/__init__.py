"""Training one cascade stage: state (state.py), step (step.py), checkpoints (checkpoint.py),
the loop (loop.py), the diffusion task that ties in the model stack (task.py) and the whole run
of a stage from its config (run.py)."""

from t2v_jax.train.checkpoint import CheckpointConfig, Checkpointer
from t2v_jax.train.loop import (
    LogConfig,
    NonFiniteTrainingError,
    Task,
    TrainResult,
    train,
)
from t2v_jax.train.run import train_and_evaluate
from t2v_jax.train.state import TrainConfig, TrainState, create_train_state, make_optimizer
from t2v_jax.train.step import make_train_step

__all__ = [
    "CheckpointConfig",
    "Checkpointer",
    "LogConfig",
    "NonFiniteTrainingError",
    "Task",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "create_train_state",
    "make_optimizer",
    "make_train_step",
    "train",
    "train_and_evaluate",
]
