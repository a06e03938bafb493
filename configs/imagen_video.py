"""The paper-scale Imagen Video cascade: seven VideoUNets, 16x24x40 up to 128x768x1280.

Imagen Video (Ho et al. 2022, Fig. 2) runs a base model and six temporal (TSR) and spatial (SSR)
super-resolution models, 11.6B+ diffusion parameters in all, in this order (frames x height x
width, frame rate, parameters):
  base 16x24x40 3 fps 5.6B -> tsr1 32x24x40 6 fps 1.7B -> ssr1 32x48x80 1.4B
  -> ssr2 32x192x320 1.2B -> tsr2 64x192x320 12 fps 780M -> tsr3 128x192x320 24 fps 630M
  -> ssr3 128x768x1280 340M
The paper gives each stage's output size and parameter count but not its widths or depths; the
U-Net shapes here are ours, chosen so each stage lands within a few percent of the paper's count
(`tests/test_unet_imagen_video.py` checks 15%). As in the paper, the base model mixes frames
with temporal self-attention, the SR models with temporal convolutions, and the high-resolution
TSR/SSR stages are fully convolutional (no attention) and train on spatial crops.

Every stage is launchable: the data are the user's prepared `video_folder` dataset and a T5-XXL
caption-embedding cache (tools/precompute_text_embeddings.py) in shared storage, the mesh is
FSDP over all chips, and on a multi-host slice the hosts connect by themselves
(train.distributed_init="auto"). docs/tpu.md walks through a launch. On a pod:
  t2v-train --config configs/imagen_video.py:base --workdir gs://BUCKET/imagen_video/base \
    --config.data.data_dir=gs://BUCKET/tfds --config.data.text_embeddings=gs://BUCKET/t5xxl_emb
Cost: weeks on a large TPU pod per stage; the 5.6B base alone needs ~90 GB of fp32
parameters + AdamW state, so FSDP over >= 16 chips. Nothing here has been trained; the configs
build (`jax.eval_shape`), pass the trainer's validation, and compile for TPU topologies in the
pre-flight (tools/aot_check.py).

The argument picks the stage: base, tsr1, ssr1, ssr2, tsr2, tsr3, ssr3.
"""

import ml_collections

from t2v_jax import sharding

# name: (kind, frames, height, width, fps, paper parameter count, train crop, VideoUNet fields)
STAGES = {
    "base": (
        "base", 16, 24, 40, 3, 5.6e9, None,
        dict(
            base_channels=704, channel_mults=(1, 2, 4, 4), num_res_blocks=3,
            spatial_attention_resolutions=(2, 4, 8), temporal_attention_resolutions=(1, 2, 4, 8),
            temporal_mixing="attention",
        ),
    ),
    "tsr1": (
        "tsr", 32, 24, 40, 6, 1.7e9, None,
        dict(
            base_channels=256, channel_mults=(1, 2, 4, 8), num_res_blocks=3,
            spatial_attention_resolutions=(8,), temporal_mixing="conv",
        ),
    ),
    "ssr1": (
        "ssr", 32, 48, 80, 6, 1.4e9, None,
        dict(
            base_channels=224, channel_mults=(1, 2, 4, 8), num_res_blocks=(2, 2, 3, 3),
            spatial_attention_resolutions=(8,), temporal_mixing="conv",
        ),
    ),
    "ssr2": (
        "ssr", 32, 192, 320, 6, 1.2e9, None,
        dict(
            base_channels=160, channel_mults=(1, 2, 4, 8, 8), num_res_blocks=(2, 2, 3, 3, 3),
            spatial_attention_resolutions=(16,), temporal_mixing="conv",
        ),
    ),
    "tsr2": (
        "tsr", 64, 192, 320, 12, 780e6, (96, 160),
        dict(
            base_channels=128, channel_mults=(1, 2, 4, 8, 8), num_res_blocks=(2, 2, 3, 4, 4),
            spatial_attention_resolutions=(), cross_attention=False, temporal_mixing="conv",
        ),
    ),
    "tsr3": (
        "tsr", 128, 192, 320, 24, 630e6, (96, 160),
        dict(
            base_channels=128, channel_mults=(1, 2, 4, 8, 8), num_res_blocks=(2, 2, 3, 3, 3),
            spatial_attention_resolutions=(), cross_attention=False, temporal_mixing="conv",
        ),
    ),
    "ssr3": (
        "ssr", 128, 768, 1280, 24, 340e6, (192, 320),
        dict(
            base_channels=128, channel_mults=(1, 2, 4, 4, 8), num_res_blocks=2,
            spatial_attention_resolutions=(), cross_attention=False, temporal_mixing="conv",
        ),
    ),
}  # fmt: skip

ORDER = tuple(STAGES)


def get_config(arg: str = "base") -> ml_collections.ConfigDict:
    """The experiment config of one Imagen Video stage (see the module docstring)."""
    if arg not in STAGES:
        raise ValueError(f"configs/imagen_video.py: stage must be one of {ORDER}, got {arg!r}")
    kind, frames, height, width, fps, paper_params, crop, unet = STAGES[arg]
    index = ORDER.index(arg)
    config = ml_collections.ConfigDict()
    config.seed = 0
    low = STAGES[ORDER[index - 1]] if index else None
    stage = {
        "name": arg,
        "kind": kind,
        "frames": frames,
        "height": height,
        "width": width,
        "low_frames": low[1] if low else 0,
        "low_height": low[2] if low else 0,
        "low_width": low[3] if low else 0,
        "fps": fps,
        "paper_params": paper_params,
    }
    if crop is not None:
        stage["random_crop"] = crop  # fully convolutional: trained on crops, sampled whole
    config.stage = ml_collections.ConfigDict(stage)
    # T5-XXL (4096-wide embeddings), as in Imagen and Imagen Video. Training reads its
    # embeddings from the cache (data.text_embeddings); `path` is the converted encoder that
    # tools/precompute_text_embeddings.py and sampling use.
    config.text = ml_collections.ConfigDict(
        {"max_length": 128, "path": ml_collections.config_dict.placeholder(str)}
    )
    config.model = ml_collections.ConfigDict(
        {
            "in_channels": 3,
            "out_channels": 3,
            "cond_channels": 0 if kind == "base" else 3,
            "text_dim": 4096,
            "head_dim": 64,
            "norm_groups": 32,
            "dtype": "bfloat16",
            "remat": "full",
            "attention_impl": "auto",
            **unet,
        }
    )
    config.diffusion = ml_collections.ConfigDict(
        {"schedule": {"kind": "cosine", "logsnr_min": -20.0, "logsnr_max": 20.0}}
    )
    config.sampling = ml_collections.ConfigDict(
        {
            "num_steps": 64,
            "sampler": "ddim",
            "guidance_scale": 6.0 if kind == "base" else 1.0,
            "thresholding": "dynamic",
            "cond_noise_t": 0.0 if kind == "base" else 0.1,
        }
    )
    config.train = ml_collections.ConfigDict(
        {
            # A global batch; it must split over the data*fsdp devices (all chips here).
            "batch_size": 256,
            "num_steps": 500_000,
            "learning_rate": 1e-4,
            "warmup_steps": 10_000,
            "lr_schedule": "constant",
            "weight_decay": 0.0,
            "adam_b1": 0.9,
            "adam_b2": 0.99,
            "adam_eps": 1e-8,
            "grad_clip_norm": 1.0,
            "ema_decay": 0.9999,
            "max_consecutive_skips": 10,
            "train_text_encoder": False,
            "cond_noise_min_t": 0.0,
            "cond_noise_max_t": 0.5,
            "distributed_init": "auto",
            "grad_accum_steps": 1,  # microbatches per step (TrainConfig.grad_accum_steps)
            "init_from": ml_collections.config_dict.placeholder(str),
        }
    )
    config.checkpoint = ml_collections.ConfigDict(
        {"every_steps": 1000, "keep": 3, "async_save": True}
    )
    config.log = ml_collections.ConfigDict(
        {"every_steps": 100, "sample_every_steps": 0, "num_samples": 2, "sample_steps": 32,
         "prompts": ()}
    )  # fmt: skip
    # The user's clips, prepared once into shared storage as a `video_folder` dataset (each
    # stage reads its own frames/size from the same clips), and the caption-embedding cache.
    config.data = ml_collections.ConfigDict(
        {
            "name": "video_folder/imagen_video",
            "data_dir": ml_collections.config_dict.placeholder(str),
            "split": "train",
            "max_text_length": 128,
            "text_embeddings": ml_collections.config_dict.placeholder(str),
        }
    )
    # FSDP over every chip: the 5.6B base's fp32 params + AdamW moments (~90 GB) must be split.
    config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    config.sharding = ml_collections.ConfigDict(
        {"rules": [[name, target] for name, target in sharding.DEFAULT_RULES]}
    )
    return config
