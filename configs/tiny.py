"""The smallest cascade (base -> temporal SR -> spatial SR), for tests and CI.

Every section is real but tiny: a few thousand parameters per stage, 4-8 frames of 8-16 pixels,
so a stage initialises, trains a step and samples in seconds on one CPU core.

Run (training, once the trainer exists):
  t2v-train --config configs/tiny.py:base --workdir /tmp/tiny_base
Cost: seconds on a 2-core CPU.

The argument picks the stage: "base" (default), "tsr" or "ssr".
"""

import ml_collections

STAGES = ("base", "tsr", "ssr")


def get_config(arg: str = "base") -> ml_collections.ConfigDict:
    if arg not in STAGES:
        raise ValueError(f"configs/tiny.py: stage must be one of {STAGES}, got {arg!r}")
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Shapes of this stage and of the stage below it (SR stages only).
    config.stage = ml_collections.ConfigDict(
        {
            "name": arg,
            "kind": arg,
            "frames": {"base": 4, "tsr": 8, "ssr": 8}[arg],
            "height": {"base": 8, "tsr": 8, "ssr": 16}[arg],
            "width": {"base": 8, "tsr": 8, "ssr": 16}[arg],
            "low_frames": {"base": 0, "tsr": 4, "ssr": 8}[arg],
            "low_height": {"base": 0, "tsr": 8, "ssr": 8}[arg],
            "low_width": {"base": 0, "tsr": 8, "ssr": 8}[arg],
            "fps": {"base": 4, "tsr": 8, "ssr": 8}[arg],
        }
    )

    # One axis may be -1: "all remaining devices". Pure data parallelism by default.
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    config.sharding = ml_collections.ConfigDict(
        {
            "rules": [
                ["batch", ["data", "fsdp"]],
                ["frames", None],
                ["height", None],
                ["width", None],
                ["length", None],
                ["embed", "fsdp"],
                ["conv_in", "fsdp"],
                ["conv_out", "tensor"],
                ["channels", None],
                ["conv_space", None],
                ["conv_time", None],
                ["heads", "tensor"],
                ["kv", None],
                ["mlp", "tensor"],
                ["vocab", "tensor"],
                ["rel_pos", None],
                ["norm", None],
                ["layers", None],
            ]
        }
    )
    return config
