"""VideoUNet: the space-time factorized U-Net that every cascade stage (base, TSR, SSR) uses.

One class; the stage is config (`UNetConfig`): a base stage sees only the noisy video and the
text, an SR stage also gets the upsampled lower-stage video (concatenated on channels) and its
noise-augmentation level (embedded like the noise level). Architecture after Video Diffusion
Models / Imagen Video: ResBlocks of (2+1)D convs with FiLM conditioning, spatial self-attention,
text cross-attention and temporal self-attention at configured resolutions, skip connections.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2v_jax import axes
from t2v_jax.models.attention import (
    CrossAttention,
    SpaceTimeSelfAttention,
    SpatialSelfAttention,
    TemporalSelfAttention,
)
from t2v_jax.models.config import UNetConfig
from t2v_jax.models.layers import (
    Downsample,
    GroupNorm,
    NoiseLevelEmbedding,
    PooledTextEmbedding,
    ResBlock,
    SpatialConv,
    Upsample,
    constrain,
)
from t2v_jax.models.remat import remat_block


def _check_shape(name: str, value: jax.Array, shape: tuple[int | None, ...]) -> None:
    """Raises ValueError unless `value` has rank len(shape) and matches every non-None size."""
    ok = value.ndim == len(shape) and all(
        s is None or s == v for s, v in zip(shape, value.shape, strict=False)
    )
    if not ok:
        want = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(value.shape)}")


class VideoUNet(nn.Module):
    """Predicts v for a noisy video (or a batch of images as 1-frame / frame-masked videos).

    Attributes:
      config: the architecture (see `UNetConfig`).
    """

    config: UNetConfig

    def _block(self, cls: type[nn.Module]) -> type[nn.Module]:
        """`cls`, rematerialised in the backward pass under the config's remat policy."""
        return remat_block(cls, self.config.remat)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        log_snr: jax.Array,
        text_emb: jax.Array,
        text_mask: jax.Array,
        *,
        cond_video: jax.Array | None = None,
        cond_log_snr: jax.Array | None = None,
        frame_mask: jax.Array | None = None,
        guidance_weight: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        """Runs the network.

        Args:
          x: [B, T, H, W, in_channels] noisy video.
          log_snr: [B] noise level of x.
          text_emb: [B, L, text_dim] text-encoder embeddings.
          text_mask: [B, L] bool, True for real tokens.
          cond_video: [B, T, H, W, cond_channels] lower-stage video, already resized to x's
            T, H, W (required iff config.cond_channels > 0).
          cond_log_snr: [B] noise-augmentation level of cond_video (required with cond_video).
          frame_mask: [B, T] bool; True frames form the example's video, False frames are
            independent images that get no temporal mixing. None: every frame is video.
          guidance_weight: [B] classifier-free guidance weight (required iff
            config.guidance_input).
          train: enables dropout (needs a 'dropout' rng).

        Returns:
          [B, T, H, W, out_channels] float32 v-prediction.
        """
        cfg = self.config
        dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
        b, t, h, w = x.shape[:4]
        _check_shape("x", x, (None, None, None, None, cfg.in_channels))
        _check_shape("log_snr", log_snr, (b,))
        _check_shape("text_emb", text_emb, (b, None, cfg.text_dim))
        _check_shape("text_mask", text_mask, (b, text_emb.shape[1]))
        spatial_factor = 2 ** (cfg.num_levels - 1)
        time_factor = 2 ** sum(cfg.time_downsample_after(i) for i in range(cfg.num_levels - 1))
        if h % spatial_factor or w % spatial_factor:
            raise ValueError(
                f"x: height and width must be multiples of {spatial_factor} for "
                f"{cfg.num_levels} levels, got {h}x{w}"
            )
        if t % time_factor:
            raise ValueError(f"x: frames must be a multiple of {time_factor}, got {t}")
        if frame_mask is not None:
            _check_shape("frame_mask", frame_mask, (b, t))
            if time_factor > 1:
                raise ValueError(
                    "frame_mask: not supported with temporal_downsample (pooling frames would "
                    "mix images into videos)"
                )
        if cfg.cond_channels:
            if cond_video is None or cond_log_snr is None:
                raise ValueError(
                    f"cond_video and cond_log_snr: required, config.cond_channels="
                    f"{cfg.cond_channels}"
                )
            _check_shape("cond_video", cond_video, (b, t, h, w, cfg.cond_channels))
            _check_shape("cond_log_snr", cond_log_snr, (b,))
        elif cond_video is not None or cond_log_snr is not None:
            raise ValueError("cond_video / cond_log_snr: given, but config.cond_channels is 0")
        if cfg.guidance_input:
            if guidance_weight is None:
                raise ValueError("guidance_weight: required, config.guidance_input is True")
            _check_shape("guidance_weight", guidance_weight, (b,))
        elif guidance_weight is not None:
            raise ValueError("guidance_weight: given, but config.guidance_input is False")

        # Conditioning embedding [B, E]: noise level (+ pooled text) (+ augmentation level).
        e = cfg.noise_embed_dim
        emb = NoiseLevelEmbedding(e, cfg.base_channels, dtype, name="noise_embed")(log_snr)
        if cfg.use_pooled_text:
            emb = emb + PooledTextEmbedding(e, dtype, name="text_pool")(text_emb, text_mask)
        if cfg.cond_channels:
            emb = emb + NoiseLevelEmbedding(e, cfg.base_channels, dtype, name="cond_noise_embed")(
                cond_log_snr
            )
            x = jnp.concatenate([x, cond_video.astype(x.dtype)], axis=-1)
        if cfg.guidance_input:
            emb = emb + NoiseLevelEmbedding(
                e, cfg.base_channels, dtype, scale=100.0, zero_init=True, name="guidance_embed"
            )(guidance_weight)
        text_emb = text_emb.astype(dtype)

        res_block = self._block(ResBlock)
        spatial_attn = self._block(SpatialSelfAttention)
        cross_attn = self._block(CrossAttention)
        temporal_attn = self._block(TemporalSelfAttention)
        spacetime_attn = self._block(SpaceTimeSelfAttention)
        impl = cfg.spatial_conv_impl

        def pin(hidden):
            # Block boundaries keep the batch split over (data, fsdp) and the channels over
            # tensor (a no-op outside a compile_target mesh), so a tensor-parallel mesh stores
            # each block's output, and remat's saved inputs, split rather than gathered.
            return constrain(hidden, axes.VIDEO_ACTIVATION)  # [B, T, H, W, C]

        def resnet(hidden, level, name, mask):
            hidden = res_block(
                cfg.base_channels * cfg.channel_mults[level],
                cfg.norm_groups,
                cfg.temporal_conv,
                cfg.dropout,
                not train,
                dtype,
                impl,
                name=name,
            )(hidden, emb, mask)
            return pin(hidden)

        def attend(hidden, level, name, mask):
            heads = cfg.heads_at(level)
            if cfg.spatial_attention_at(level):
                hidden = spatial_attn(
                    heads, cfg.norm_groups, dtype, cfg.attention_impl, name=f"{name}_spatial"
                )(hidden)
                if cfg.cross_attention:
                    hidden = cross_attn(heads, dtype, cfg.attention_impl, name=f"{name}_cross")(
                        hidden, text_emb, text_mask
                    )
            if cfg.temporal_attention_at(level):
                hidden = temporal_attn(
                    heads,
                    cfg.temporal_max_distance,
                    dtype,
                    cfg.attention_impl,
                    name=f"{name}_temporal",
                )(hidden, mask)
            if cfg.spacetime_attention_at(level):
                hidden = spacetime_attn(heads, dtype, cfg.attention_impl, name=f"{name}_spacetime")(
                    hidden, mask
                )
            return pin(hidden)

        hidden = pin(SpatialConv(cfg.base_channels, dtype=dtype, impl=impl, name="conv_in")(x))
        skips = [hidden]  # [B, T, H, W, C] per encoder stage, consumed by the decoder
        for level in range(cfg.num_levels):
            for i in range(cfg.blocks_at(level)):
                hidden = resnet(hidden, level, f"down{level}_res{i}", frame_mask)
                hidden = attend(hidden, level, f"down{level}_attn{i}", frame_mask)
                skips.append(hidden)
            if level < cfg.num_levels - 1:
                hidden = Downsample(
                    hidden.shape[-1],
                    cfg.time_downsample_after(level),
                    dtype,
                    impl,
                    name=f"down{level}_sample",
                )(hidden)
                hidden = pin(hidden)
                skips.append(hidden)

        last = cfg.num_levels - 1
        hidden = resnet(hidden, last, "mid_res0", frame_mask)
        hidden = attend(hidden, last, "mid_attn", frame_mask)
        hidden = resnet(hidden, last, "mid_res1", frame_mask)

        for level in reversed(range(cfg.num_levels)):
            for i in range(cfg.blocks_at(level) + 1):
                hidden = jnp.concatenate([hidden, skips.pop()], axis=-1)
                hidden = resnet(hidden, level, f"up{level}_res{i}", frame_mask)
                hidden = attend(hidden, level, f"up{level}_attn{i}", frame_mask)
            if level > 0:
                hidden = Upsample(
                    hidden.shape[-1],
                    cfg.time_downsample_after(level - 1),
                    dtype,
                    impl,
                    name=f"up{level}_sample",
                )(hidden)
                hidden = pin(hidden)

        hidden = nn.silu(GroupNorm(cfg.norm_groups, dtype=dtype, name="norm_out")(hidden))
        out = SpatialConv(cfg.out_channels, dtype=dtype, impl=impl, name="conv_out")(hidden)
        return out.astype(jnp.float32)  # [B, T, H, W, out_channels]
