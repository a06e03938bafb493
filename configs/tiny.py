"""The smallest cascade (base -> temporal SR -> spatial SR), for tests and CI.

Every section is real but tiny: a few thousand parameters per stage, 4-8 frames of 8-16 pixels,
so a stage initialises, trains a step and samples in seconds on one CPU core.

Run (training, once the trainer exists):
  t2v-train --config configs/tiny.py:base --workdir /tmp/tiny_base
Cost: seconds on a 2-core CPU.

The argument picks the stage: "base" (default), "tsr" or "ssr".
"""

import ml_collections

from t2v_jax import sharding

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

    # The text tower: a tiny T5 encoder over UTF-8 bytes (no tokenizer files needed).
    config.text = ml_collections.ConfigDict(
        {
            "tokenizer": "byte",
            "max_length": 16,
            "t5": {
                "vocab_size": 259,
                "d_model": 32,
                "d_kv": 8,
                "d_ff": 64,
                "num_layers": 2,
                "num_heads": 4,
                "relative_attention_num_buckets": 8,
                "relative_attention_max_distance": 16,
                "feed_forward_proj": "gated-gelu",
            },
        }
    )

    # The VideoUNet of this stage (t2v_jax.models.config.UNetConfig). As in Imagen Video, the
    # base stage mixes frames with temporal attention and the SR stages with temporal convs;
    # the SSR stage is fully convolutional.
    config.model = ml_collections.ConfigDict(
        {
            "in_channels": 3,
            "out_channels": 3,
            "cond_channels": 0 if arg == "base" else 3,
            "text_dim": 32,
            "base_channels": 8,
            "channel_mults": (1, 2),
            "num_res_blocks": 1,
            "spatial_attention_resolutions": () if arg == "ssr" else (2,),
            "temporal_mixing": "attention" if arg == "base" else "conv",
            "num_heads": 2,
            "norm_groups": 4,
            "cross_attention": arg != "ssr",
        }
    )

    config.diffusion = ml_collections.ConfigDict(
        {"schedule": {"kind": "cosine", "logsnr_min": -20.0, "logsnr_max": 20.0}}
    )

    # How this stage is sampled in a cascade (t2v_jax.cascade.StageConfig).
    config.sampling = ml_collections.ConfigDict(
        {
            "num_steps": 4,
            "sampler": "ddim",
            "guidance_scale": 2.0 if arg == "base" else 1.0,
            "thresholding": "dynamic",
            "cond_noise_t": 0.0 if arg == "base" else 0.1,
        }
    )

    # Training of this stage (t2v_jax.train: TrainConfig, CheckpointConfig, LogConfig).
    config.train = ml_collections.ConfigDict(
        {
            "batch_size": 8,
            "num_steps": 200,
            "learning_rate": 2e-3,
            "warmup_steps": 10,
            "lr_schedule": "cosine",
            "weight_decay": 0.0,
            "adam_b1": 0.9,
            "adam_b2": 0.99,
            "adam_eps": 1e-8,
            "grad_clip_norm": 1.0,
            "ema_decay": 0.99,
            "max_consecutive_skips": 10,
            "train_text_encoder": False,
            "cond_noise_min_t": 0.0,
            "cond_noise_max_t": 0.5,
            "distributed_init": "auto",
            "grad_accum_steps": 1,  # microbatches per step (TrainConfig.grad_accum_steps)
            "init_from": ml_collections.config_dict.placeholder(str),  # warm start
        }
    )
    config.checkpoint = ml_collections.ConfigDict(
        {"every_steps": 50, "keep": 2, "async_save": True}
    )
    config.log = ml_collections.ConfigDict(
        {"every_steps": 10, "sample_every_steps": 0, "num_samples": 2, "sample_steps": 4,
         "prompts": ()}
    )  # fmt: skip

    # Training data (t2v_jax.data.pipeline.DataConfig): the tiny synthetic shapes set. data_dir
    # None means TFDS's default folder.
    config.data = ml_collections.ConfigDict(
        {
            "name": "shapes/tiny",
            "data_dir": ml_collections.config_dict.placeholder(str),
            "split": "train",
        }
    )

    # One axis may be -1: "all remaining devices". Pure data parallelism by default.
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    # The logical-axis -> mesh-axis table is config data; start from the library's default and
    # override entries here or on the command line.
    config.sharding = ml_collections.ConfigDict(
        {"rules": [[name, target] for name, target in sharding.DEFAULT_RULES]}
    )
    return config
