"""UNetConfig: the typed, validated description of one VideoUNet (base, TSR or SSR stage)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from t2v_jax.models.remat import canonical_remat


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Architecture and performance switches of a `VideoUNet`.

    Build it from an experiment config with
    `t2v_jax.configlib.from_config(UNetConfig, cfg.model, "model")`. Stages differ only here:
    a base stage has `cond_channels=0`; TSR/SSR stages set `cond_channels` to the channels of the
    upsampled lower-stage video that is concatenated to the input.

    Resolution fields are *downsample factors*, not pixel sizes, so one config works at any
    input size (an SSR stage trained on crops and sampled on full frames): level `i` of the
    U-Net runs at `1 / 2**i` of the input's height and width, and a factor `f` in
    `spatial_attention_resolutions` puts attention at the level with `2**i == f`
    (1 = full input resolution, 2 = half, ...).

    Fields:
      in_channels: channels of the noisy input video x.
      out_channels: channels of the prediction (v).
      cond_channels: channels of the conditioning video (0: no conditioning video, base stage).
      text_dim: width D of the text embeddings [B, L, D].
      base_channels: feature channels at level 0; level i has base_channels * channel_mults[i].
      channel_mults: one multiplier per level; len(channel_mults) - 1 spatial downsamplings.
      num_res_blocks: ResBlocks per level in the encoder (decoder: one more), an int or one per
        level.
      spatial_attention_resolutions: downsample factors with spatial self-attention (and
        cross-attention, when `cross_attention`); () makes a fully convolutional network.
      temporal_attention_resolutions: downsample factors with temporal self-attention when
        `temporal_mixing` includes attention; None means the same as spatial attention.
      spacetime_attention_resolutions: downsample factors with a joint space-time
        self-attention block (every pixel of every frame attends to every other, with sinusoidal
        frame and pixel positions through zero-initialised projections), after the other
        attention blocks of the level. Per-pixel temporal attention cannot see where a moving
        object went; this block can, at O((T*H*W)^2) cost, so use it at coarse levels only.
      temporal_mixing: "attention" (temporal self-attention, Imagen Video base), "conv"
        (zero-initialised temporal convs in every ResBlock, Imagen Video SR stages), "both", or
        "none" (an image model applied per frame).
      temporal_downsample: per level transition, also halve the frame count (len(channel_mults)
        - 1 bools); False or () for none.
      num_heads: attention heads (used when head_dim is None).
      head_dim: channels per head; when set, heads = channels // head_dim at each level.
      temporal_max_distance: frame offsets beyond +-this share one relative-position bias.
      cross_attention: cross-attend to the text tokens where spatial attention is enabled.
      use_pooled_text: add an embedding of the masked mean of the text tokens to the noise
        embedding (FiLM conditioning of every ResBlock).
      embed_dim: width of the noise embedding; None means 4 * base_channels.
      dropout: dropout rate inside ResBlocks (active only with train=True).
      norm_groups: GroupNorm groups (each level's channels must be divisible by it).
      dtype: compute dtype; parameters are always float32.
      remat: the remat policy of each ResBlock / attention block (`t2v_jax.models.remat`):
        "none", "full" (rerun the block in the backward pass), "save_dots" (keep conv and
        projection outputs, rerun the rest) or "offload" (those outputs kept in pinned host
        memory). True / False, from older configs, mean "full" / "none"; the field always
        holds the policy name after construction.
      attention_impl: the attention kernel: "xla", "cudnn" (GPU flash attention, bf16 only),
        "pallas" (TPU splash attention; interpret mode elsewhere, for tests) or "auto" (decided
        by the platform compiled for: Pallas on TPU for spatial, space-time and cross attention
        over >= 128 queries, cuDNN on GPU where it applies, XLA otherwise).
      spatial_conv_impl: "conv" (lax.conv), "matmul" (3x3 patches + one matmul),
        "conv_gemm_grad" (lax.conv forward and input gradient, the kernel gradient as one
        patches GEMM: the fastest train step on XLA:CPU) or "auto" (conv_gemm_grad on CPU, conv
        on GPU/TPU); all give the same values up to float rounding.
      guidance_input: the network takes the classifier-free guidance weight w [B] as an input
        (a guidance-distilled student, Meng et al. 2023): an embedding of w, zero at init, is
        added to the noise embedding, and one call predicts the guided v.
    """

    in_channels: int = 3
    out_channels: int = 3
    cond_channels: int = 0
    text_dim: int = 512
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int | tuple[int, ...] = 2
    spatial_attention_resolutions: tuple[int, ...] = (4,)
    temporal_attention_resolutions: tuple[int, ...] | None = None
    spacetime_attention_resolutions: tuple[int, ...] = ()
    temporal_mixing: Literal["attention", "conv", "both", "none"] = "both"
    temporal_downsample: bool | tuple[bool, ...] = False
    num_heads: int = 4
    head_dim: int | None = None
    temporal_max_distance: int = 32
    cross_attention: bool = True
    use_pooled_text: bool = True
    embed_dim: int | None = None
    dropout: float = 0.0
    norm_groups: int = 32
    dtype: Literal["float32", "bfloat16"] = "float32"
    remat: Literal["none", "full", "save_dots", "offload"] | bool = "none"
    attention_impl: Literal["xla", "cudnn", "pallas", "auto"] = "xla"
    spatial_conv_impl: Literal["auto", "conv", "matmul", "conv_gemm_grad"] = "auto"
    guidance_input: bool = False

    def __post_init__(self):
        # Frozen: canonicalise through object.__setattr__, so saved configs with a bool load.
        object.__setattr__(self, "remat", canonical_remat(self.remat))
        num_levels = len(self.channel_mults)
        if num_levels == 0 or any(m <= 0 for m in self.channel_mults):
            raise ValueError(
                f"channel_mults: need at least one positive multiplier, got {self.channel_mults}"
            )
        for name in ("in_channels", "out_channels", "text_dim", "base_channels", "num_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.cond_channels < 0:
            raise ValueError(f"cond_channels: must be >= 0, got {self.cond_channels}")
        if isinstance(self.num_res_blocks, tuple):
            if len(self.num_res_blocks) != num_levels or min(self.num_res_blocks) < 1:
                raise ValueError(
                    f"num_res_blocks: need {num_levels} positive ints (one per level), "
                    f"got {self.num_res_blocks}"
                )
        elif self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks: must be >= 1, got {self.num_res_blocks}")
        factors = {2**i for i in range(num_levels)}
        for name in (
            "spatial_attention_resolutions",
            "temporal_attention_resolutions",
            "spacetime_attention_resolutions",
        ):
            value = getattr(self, name) or ()
            bad = [f for f in value if f not in factors]
            if bad:
                raise ValueError(
                    f"{name}: {bad} are not level downsample factors; allowed: {sorted(factors)}"
                )
        downsample = self.temporal_downsample
        if isinstance(downsample, tuple) and downsample and len(downsample) != num_levels - 1:
            raise ValueError(
                f"temporal_downsample: need {num_levels - 1} bools (one per downsampling), "
                f"got {downsample}"
            )
        if self.temporal_downsample is True and num_levels == 1:
            raise ValueError("temporal_downsample: a one-level U-Net has nothing to downsample")
        for level, mult in enumerate(self.channel_mults):
            channels = self.base_channels * mult
            if channels % self.norm_groups:
                raise ValueError(
                    f"norm_groups: {self.norm_groups} does not divide the {channels} channels of a "
                    "level (base_channels * channel_mults)"
                )
            attends = (self.spatial_attention_at(level) or self.temporal_attention_at(level)
                       or self.spacetime_attention_at(level))  # fmt: skip
            if not attends:
                continue
            if self.head_dim is not None and channels % self.head_dim:
                raise ValueError(f"head_dim: {self.head_dim} does not divide {channels} channels")
            if self.head_dim is None and channels % self.num_heads:
                raise ValueError(f"num_heads: {self.num_heads} does not divide {channels} channels")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.temporal_max_distance < 1:
            raise ValueError(
                f"temporal_max_distance: must be >= 1, got {self.temporal_max_distance}"
            )
        if self.embed_dim is not None and self.embed_dim <= 0:
            raise ValueError(f"embed_dim: must be positive, got {self.embed_dim}")

    # Derived per-level quantities (the network reads these rather than the raw fields).

    @property
    def num_levels(self) -> int:
        return len(self.channel_mults)

    @property
    def noise_embed_dim(self) -> int:
        return self.embed_dim or 4 * self.base_channels

    @property
    def uses_text(self) -> bool:
        """Whether the output depends on the text embeddings at all (pooled or cross-attended)."""
        cross = self.cross_attention and bool(self.spatial_attention_resolutions)
        return cross or self.use_pooled_text

    def blocks_at(self, level: int) -> int:
        """Encoder ResBlocks at `level` (the decoder has one more)."""
        if isinstance(self.num_res_blocks, tuple):
            return self.num_res_blocks[level]
        return self.num_res_blocks

    def heads_at(self, level: int) -> int:
        channels = self.base_channels * self.channel_mults[level]
        return channels // self.head_dim if self.head_dim is not None else self.num_heads

    def spatial_attention_at(self, level: int) -> bool:
        return 2**level in self.spatial_attention_resolutions

    def spacetime_attention_at(self, level: int) -> bool:
        return 2**level in self.spacetime_attention_resolutions

    def temporal_attention_at(self, level: int) -> bool:
        if self.temporal_mixing not in ("attention", "both"):
            return False
        resolutions = self.temporal_attention_resolutions
        if resolutions is None:
            resolutions = self.spatial_attention_resolutions
        return 2**level in resolutions

    @property
    def temporal_conv(self) -> bool:
        return self.temporal_mixing in ("conv", "both")

    def time_downsample_after(self, level: int) -> bool:
        """Whether the downsampling after `level` also halves the frames."""
        if isinstance(self.temporal_downsample, bool):
            return self.temporal_downsample
        return bool(self.temporal_downsample) and self.temporal_downsample[level]
