"""The paper-scale Imagen Video cascade: seven VideoUNets, 16x24x40 up to 128x768x1280.

Imagen Video (Ho et al. 2022, Fig. 6) runs a base model and six interleaved temporal (TSR) and
spatial (SSR) super-resolution models, 11.6B+ diffusion parameters in all. The paper gives each
stage's output size and parameter count but not its widths or depths; the U-Net shapes here are
ours, chosen so each stage lands within a few percent of the paper's count
(`tests/test_unet_imagen_video.py` checks 15%). As in the paper, the base model mixes frames
with temporal self-attention, the SR models with temporal convolutions, and the last TSR/SSR
stages are fully convolutional (no attention; trained on crops).

These configs build (use `jax.eval_shape`) but are never trained here: one stage needs a TPU pod.
Run (on a pod):
  t2v-train --config configs/imagen_video.py:base --workdir gs://BUCKET/imagen_video/base
Cost: weeks on a large TPU pod per stage; the 5.6B base alone needs ~90 GB of fp32
parameters + AdamW state, so FSDP over >= 16 chips.

The argument picks the stage: base, tsr1, ssr1, tsr2, ssr2, tsr3, ssr3.
"""

import ml_collections

# name: (kind, frames, height, width, paper parameter count, VideoUNet fields)
STAGES = {
    "base": (
        "base", 16, 24, 40, 5.6e9,
        dict(
            base_channels=704, channel_mults=(1, 2, 4, 4), num_res_blocks=3,
            spatial_attention_resolutions=(2, 4, 8), temporal_attention_resolutions=(1, 2, 4, 8),
            temporal_mixing="attention",
        ),
    ),
    "tsr1": (
        "tsr", 32, 24, 40, 1.7e9,
        dict(
            base_channels=256, channel_mults=(1, 2, 4, 8), num_res_blocks=3,
            spatial_attention_resolutions=(8,), temporal_mixing="conv",
        ),
    ),
    "ssr1": (
        "ssr", 32, 48, 80, 1.4e9,
        dict(
            base_channels=224, channel_mults=(1, 2, 4, 8), num_res_blocks=(2, 2, 3, 3),
            spatial_attention_resolutions=(8,), temporal_mixing="conv",
        ),
    ),
    "tsr2": (
        "tsr", 64, 48, 80, 1.7e9,
        dict(
            base_channels=256, channel_mults=(1, 2, 4, 8), num_res_blocks=3,
            spatial_attention_resolutions=(8,), temporal_mixing="conv",
        ),
    ),
    "ssr2": (
        "ssr", 64, 192, 320, 1.2e9,
        dict(
            base_channels=160, channel_mults=(1, 2, 4, 8, 8), num_res_blocks=(2, 2, 3, 3, 3),
            spatial_attention_resolutions=(16,), temporal_mixing="conv",
        ),
    ),
    "tsr3": (
        "tsr", 128, 192, 320, 780e6,
        dict(
            base_channels=128, channel_mults=(1, 2, 4, 8, 8), num_res_blocks=(2, 2, 3, 4, 4),
            spatial_attention_resolutions=(), cross_attention=False, temporal_mixing="conv",
        ),
    ),
    "ssr3": (
        "ssr", 128, 768, 1280, 340e6,
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
    kind, frames, height, width, paper_params, unet = STAGES[arg]
    index = ORDER.index(arg)
    config = ml_collections.ConfigDict()
    config.seed = 0
    low = STAGES[ORDER[index - 1]] if index else None
    config.stage = ml_collections.ConfigDict(
        {
            "name": arg,
            "kind": kind,
            "frames": frames,
            "height": height,
            "width": width,
            "low_frames": low[1] if low else 0,
            "low_height": low[2] if low else 0,
            "low_width": low[3] if low else 0,
            # 3 fps base; each TSR doubles the frame rate: 128 frames at 24 fps = 5.3 s.
            "fps": 3 * frames // 16,
            "paper_params": paper_params,
        }
    )
    # T5-XXL encoder (4096-wide embeddings), as in Imagen and Imagen Video.
    config.text = ml_collections.ConfigDict({"tokenizer": "t5", "max_length": 128, "dim": 4096})
    config.model = ml_collections.ConfigDict(
        {
            "in_channels": 3,
            "out_channels": 3,
            "cond_channels": 0 if kind == "base" else 3,
            "text_dim": 4096,
            "head_dim": 64,
            "norm_groups": 32,
            "dtype": "bfloat16",
            "remat": True,
            "attention_impl": "auto",
            **unet,
        }
    )
    return config
