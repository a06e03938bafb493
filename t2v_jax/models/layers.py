"""Video U-Net building blocks: factorized space-time convs, norms, ResBlock, resampling, embeddings.

Every parameter is created through `param()`, which attaches logical axis names from
`t2v_jax.axes`, so `t2v_jax.sharding` can place it on a mesh. Parameters are float32; each layer
computes in the `dtype` it is given (bf16 switch).

Frame masks: several layers take `frame_mask` [B, T] bool. True frames form one video and may
mix along time; False frames are independent images and get no temporal mixing in or out
(their temporal-layer output is zero, i.e. those layers are skipped for them).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import NamedSharding, PartitionSpec

from t2v_jax import axes, sharding
from t2v_jax.models import platform
from t2v_jax.models.remat import MATMUL_OUTPUT

Dtype = Any
Initializer = Callable[..., jax.Array]

default_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


def param(
    module: nn.Module, name: str, init: Initializer, shape: Sequence[int], names: Sequence[str]
) -> jax.Array:
    """A float32 parameter annotated with logical axis `names` (one per dimension)."""
    if len(names) != len(shape):
        raise ValueError(f"param {name}: {len(names)} axis names for shape {tuple(shape)}")
    shape = tuple(shape)
    if module.has_variable("params", name) and not module.is_mutable_collection("params"):
        # Applying: flax's own check would trace the initializer (jax.eval_shape) for every
        # parameter, a third of the time it takes to trace a sampler; the shape is known here.
        value = nn.meta.unbox(module.get_variable("params", name))
        if value.shape != shape:
            raise ValueError(
                f"param {'/'.join(module.scope.path)}/{name}: has shape {value.shape}, the "
                f"model needs {shape}"
            )
        return value
    return module.param(name, nn.with_logical_partitioning(init, tuple(names)), shape)


def constrain(x: jax.Array, names: Sequence[str]) -> jax.Array:
    """`x` pinned to the sharding its logical axis `names` give on the compile target's mesh.

    A no-op outside `platform.compile_target(..., mesh)`. The rules are flax's
    `nn.logical_axis_rules` context when one is set, else `sharding.DEFAULT_RULES`; a name the
    rules do not list (a rule table saved before it existed) leaves its dimension to the
    compiler rather than forcing it replicated, and a dimension the mesh axes do not divide (a
    batch of 1 on a data-parallel mesh) is replicated.
    """
    mesh = platform.target_mesh()
    if mesh is None:
        return x
    rules = tuple(nn.get_logical_axis_rules()) or sharding.DEFAULT_RULES
    known = {name for name, _ in rules}
    spec = sharding.logical_to_spec(
        [n if n in known else None for n in names], rules, x.shape, mesh
    )
    spec = PartitionSpec(
        *(
            s if n in known else PartitionSpec.UNCONSTRAINED
            for s, n in zip(spec, names, strict=True)
        )
    )
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def frames_split() -> bool:
    """Whether the compile target splits activations' frames over devices (the rules map
    `frames` to a mesh axis, as `Pipeline(video_sharding="frames")` does)."""
    if platform.target_mesh() is None:
        return False
    rules = tuple(nn.get_logical_axis_rules()) or sharding.DEFAULT_RULES
    return dict(rules).get(axes.FRAMES) is not None


def merge_frames(x: jax.Array) -> jax.Array:
    """[B, T, ...] -> [B*T, ...]: every frame its own sample (for per-frame layers).

    Frames-major (T*B order) when frames are split over devices: the compiler keeps a merged
    axis split only if the split axis is its major part (merging an unsplit B=2 with frames
    split 4 ways gives each device a non-contiguous quarter, so it gathers whole videos).
    """
    b, t = x.shape[:2]
    if frames_split():
        x = jnp.swapaxes(x, 0, 1)
    return x.reshape(b * t, *x.shape[2:])


def unmerge_frames(y: jax.Array, b: int, t: int) -> jax.Array:
    """The inverse of `merge_frames`: [B*T, ...] -> [B, T, ...]."""
    if frames_split():
        return jnp.swapaxes(y.reshape(t, b, *y.shape[1:]), 0, 1)
    return y.reshape(b, t, *y.shape[1:])


def _frame_gate(frame_mask: jax.Array | None, dtype: Dtype) -> jax.Array | None:
    """[B, T] bool -> [B, T, 1, 1, 1] multiplier (1 for video frames, 0 for images)."""
    if frame_mask is None:
        return None
    return frame_mask.astype(dtype)[:, :, None, None, None]


class Dense(nn.Module):
    """x @ kernel + bias over the last axis, with named kernel/bias axes."""

    features: int
    kernel_axes: tuple[str, str]
    dtype: Dtype = jnp.float32
    use_bias: bool = True
    kernel_init: Initializer = default_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = param(
            self, "kernel", self.kernel_init, (x.shape[-1], self.features), self.kernel_axes
        )
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = param(self, "bias", nn.initializers.zeros, (self.features,), (axes.CHANNELS,))
            y = y + bias.astype(self.dtype)
        return checkpoint_name(y, MATMUL_OUTPUT)  # what remat="save_dots" keeps


class GroupNorm(nn.Module):
    """GroupNorm computed per frame (statistics over H, W and the channels of a group).

    Per-frame statistics keep the network's only cross-frame paths in its temporal layers, which
    is what makes frame masks (joint image-video training) and a frame-independent fresh model
    possible. Statistics are taken in float32 whatever the compute dtype.
    """

    groups: int
    dtype: Dtype = jnp.float32
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, H, W, C]
        b, t, _, _, c = x.shape
        scale = param(self, "scale", nn.initializers.ones, (c,), (axes.CHANNELS,))
        bias = param(self, "bias", nn.initializers.zeros, (c,), (axes.CHANNELS,))
        x32 = x.astype(jnp.float32)

        # Reduce over H, W first (per channel, channels stay the minor axis), then over the
        # channels of each group: ~10x faster on XLA:CPU than reducing a [..., G, C/G] view.
        def group_mean(v):  # [B, T, H, W, C] -> [B, T, 1, 1, C], each group's mean broadcast
            g = v.mean((2, 3)).reshape(b, t, self.groups, c // self.groups).mean(-1)
            return jnp.repeat(g, c // self.groups, axis=-1)[:, :, None, None, :]

        centered = x32 - group_mean(x32)
        y = centered * jax.lax.rsqrt(group_mean(jnp.square(centered)) + self.eps)
        return (y * scale + bias).astype(self.dtype)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis (per token), statistics in float32."""

    dtype: Dtype = jnp.float32
    eps: float = 1e-5
    axis_name: str = axes.CHANNELS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = param(self, "scale", nn.initializers.ones, (c,), (self.axis_name,))
        bias = param(self, "bias", nn.initializers.zeros, (c,), (self.axis_name,))
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        return ((x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias).astype(self.dtype)


def _patches(x: jax.Array, k: int, stride: int) -> jax.Array:
    """im2col of a 'same'-padded k x k window: [N, H, W, Cin] -> [N, H/stride, W/stride, k*k*Cin].

    Taps in (kh, kw) order, channels innermost: matches kernel.reshape(k * k * Cin, Cout).
    """
    _, h, w, _ = x.shape
    pad = k // 2
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    taps = [
        xp[:, dy : dy + stride * (ho - 1) + 1 : stride, dx : dx + stride * (wo - 1) + 1 : stride]
        for dy in range(k)
        for dx in range(k)
    ]
    return jnp.concatenate(taps, axis=-1)


def conv2d_patches(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """A 'same'-padded k x k conv as im2col patches + one matmul.

    x [N, H, W, Cin], kernel [k, k, Cin, Cout] -> [N, H/stride, W/stride, Cout]. Equal to
    `lax.conv_general_dilated` with padding (k//2, k//2). Its forward is slower than XLA:CPU's
    direct conv (121 vs 41 ms for 32 frames of 32x32x64, idle 2-core CPU), but its autodiff
    backward avoids XLA:CPU's slow kernel-gradient conv; `conv2d_gemm_grad` keeps both wins.
    """
    k, _, cin, _ = kernel.shape
    return jnp.dot(_patches(x, k, stride), kernel.reshape(k * k * cin, -1))


def conv2d_direct(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """`lax.conv_general_dilated` with 'same' padding: NHWC x HWIO -> NHWC."""
    pad = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_gemm_grad(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """`conv2d_direct` whose kernel gradient is one im2col GEMM instead of XLA's conv.

    Forward and input gradient are XLA's (a direct conv each), but XLA:CPU computes the kernel
    gradient of a 3x3 conv as a conv contracting over batch x height x width, and runs that an
    order of magnitude slower than the forward on the project's 2-core CPU; as
    patches^T @ grad it is one plain matmul. Same values as `conv2d_direct` up to float rounding.
    """
    return conv2d_direct(x, kernel, stride)


def _gemm_grad_fwd(x, kernel, stride):
    return conv2d_direct(x, kernel, stride), (x, kernel)


def _gemm_grad_bwd(stride, residuals, g):
    x, kernel = residuals
    k, _, cin, cout = kernel.shape
    _, input_vjp = jax.vjp(lambda x_: conv2d_direct(x_, kernel, stride), x)
    (dx,) = input_vjp(g)
    patches = _patches(x, k, stride).reshape(-1, k * k * cin)  # [N*Ho*Wo, k*k*Cin]
    dk = jnp.dot(patches.T, g.reshape(-1, cout), preferred_element_type=jnp.float32)
    return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


conv2d_gemm_grad.defvjp(_gemm_grad_fwd, _gemm_grad_bwd)

# spatial_conv_impl -> (x [N, H, W, Cin], kernel [k, k, Cin, Cout], stride) -> [N, H', W', Cout]
SPATIAL_CONV_IMPLS = {
    "conv": conv2d_direct,
    "matmul": conv2d_patches,
    "conv_gemm_grad": conv2d_gemm_grad,
}


def resolve_conv_impl(impl: str) -> str:
    """The spatial conv impl to run: "auto" is "conv_gemm_grad" on CPU and "conv" elsewhere.

    "auto" follows the platform being compiled for (`platform.target_platform()`), which is the
    host's backend unless an ahead-of-time compile for another platform says otherwise.

    On the project's 2-core CPU the reference U-Net's train step took 16.7 s with "conv", 10.5 s
    with "matmul" and 9.6 s with "conv_gemm_grad" (README, U-Net benchmark); GPU and TPU convs
    have fast kernel gradients of their own, so they keep XLA's conv.
    """
    if impl == "auto":
        return "conv_gemm_grad" if platform.target_platform() == "cpu" else "conv"
    if impl not in SPATIAL_CONV_IMPLS:
        raise ValueError(
            f"spatial_conv_impl: {impl!r} is not one of auto, {', '.join(SPATIAL_CONV_IMPLS)}"
        )
    return impl


class SpatialConv(nn.Module):
    """A k x k conv applied to every frame independently ('same' padding, optional stride 2)."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    dtype: Dtype = jnp.float32
    impl: str = "auto"
    kernel_init: Initializer = default_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, H, W, Cin]
        b, t, *_, cin = x.shape
        k = self.kernel_size
        kernel = param(
            self,
            "kernel",
            self.kernel_init,
            (k, k, cin, self.features),
            (axes.CONV_SPACE, axes.CONV_SPACE, axes.CONV_IN, axes.CONV_OUT),
        )
        bias = param(self, "bias", nn.initializers.zeros, (self.features,), (axes.CHANNELS,))
        frames = merge_frames(x).astype(self.dtype)  # [B*T, H, W, Cin]
        kernel = kernel.astype(self.dtype)
        y = SPATIAL_CONV_IMPLS[resolve_conv_impl(self.impl)](frames, kernel, self.stride)
        y = checkpoint_name(y + bias.astype(self.dtype), MATMUL_OUTPUT)
        return unmerge_frames(y, b, t)  # [B, T, H', W', Cout]


class TemporalConv(nn.Module):
    """A kernel-3 conv along frames, zero-initialised, used as a residual: x + conv(x).

    Zero init makes a fresh network frame-independent (an image model applied per frame), the
    factorized-conv initialisation of Video Diffusion Models. With a frame mask, image frames are
    zeroed on the way in (they leak into no neighbour) and on the way out (they receive nothing).
    """

    dtype: Dtype = jnp.float32
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, frame_mask: jax.Array | None = None) -> jax.Array:
        c = x.shape[-1]
        k = self.kernel_size
        kernel = param(
            self,
            "kernel",
            nn.initializers.zeros,
            (k, c, c),
            (axes.CONV_TIME, axes.CONV_IN, axes.CONV_OUT),
        )
        bias = param(self, "bias", nn.initializers.zeros, (c,), (axes.CHANNELS,))
        gate = _frame_gate(frame_mask, self.dtype)
        h = x if gate is None else x * gate
        t = x.shape[1]
        pad = k // 2
        hp = jnp.pad(h, ((0, 0), (pad, pad), (0, 0), (0, 0), (0, 0)))
        kernel = kernel.astype(self.dtype)
        # One matmul per tap on shifted frames; 3x faster on XLA:CPU than concatenating the taps.
        y = sum(jnp.dot(hp[:, i : i + t], kernel[i]) for i in range(k)) + bias.astype(self.dtype)
        y = checkpoint_name(y, MATMUL_OUTPUT)
        if gate is not None:
            y = y * gate
        return x + y


class FactorizedConv(nn.Module):
    """(2+1)D conv: a 3x3 conv per frame, then (optionally) the residual temporal conv."""

    features: int
    temporal: bool
    dtype: Dtype = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, frame_mask: jax.Array | None = None) -> jax.Array:
        h = SpatialConv(self.features, dtype=self.dtype, impl=self.impl, name="spatial")(x)
        if self.temporal:
            h = TemporalConv(dtype=self.dtype, name="temporal")(h, frame_mask)
        return h


class ResBlock(nn.Module):
    """GroupNorm-SiLU-(2+1)D conv, FiLM from the conditioning embedding, dropout, second conv.

    x [B, T, H, W, Cin], emb [B, E] -> [B, T, H, W, features].
    """

    features: int
    norm_groups: int
    temporal: bool
    dropout: float = 0.0
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(
        self, x: jax.Array, emb: jax.Array, frame_mask: jax.Array | None = None
    ) -> jax.Array:
        h = GroupNorm(self.norm_groups, dtype=self.dtype, name="norm1")(x)
        h = FactorizedConv(self.features, self.temporal, self.dtype, self.impl, name="conv1")(
            nn.silu(h), frame_mask
        )
        film = Dense(2 * self.features, (axes.EMBED, axes.CONV_OUT), self.dtype, name="film")(
            nn.silu(emb)
        )  # [B, 2*C]
        scale, shift = jnp.split(film[:, None, None, None, :], 2, axis=-1)
        h = GroupNorm(self.norm_groups, dtype=self.dtype, name="norm2")(h) * (1 + scale) + shift
        h = nn.Dropout(self.dropout)(nn.silu(h), deterministic=self.deterministic)
        h = FactorizedConv(self.features, self.temporal, self.dtype, self.impl, name="conv2")(
            h, frame_mask
        )
        if x.shape[-1] != self.features:
            x = Dense(self.features, (axes.CONV_IN, axes.CONV_OUT), self.dtype, name="skip")(x)
        return (x.astype(self.dtype) + h) / math.sqrt(2.0)


class Downsample(nn.Module):
    """Halves H and W with a stride-2 3x3 conv; optionally halves T by averaging frame pairs."""

    features: int
    time: bool = False
    dtype: Dtype = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, H, W, C]
        if self.time:
            b, t = x.shape[:2]
            x = x.reshape(b, t // 2, 2, *x.shape[2:]).mean(axis=2)  # [B, T/2, H, W, C]
        return SpatialConv(self.features, stride=2, dtype=self.dtype, impl=self.impl, name="conv")(
            x
        )


class Upsample(nn.Module):
    """Doubles H and W (nearest, then a 3x3 conv); optionally doubles T by repeating frames."""

    features: int
    time: bool = False
    dtype: Dtype = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, H, W, C]
        b, t, h, w, c = x.shape
        x = jnp.broadcast_to(x[:, :, :, None, :, None], (b, t, h, 2, w, 2, c))
        x = x.reshape(b, t, 2 * h, 2 * w, c)
        if self.time:
            x = jnp.repeat(x, 2, axis=1)
        return SpatialConv(self.features, dtype=self.dtype, impl=self.impl, name="conv")(x)


def sinusoidal_embedding(x: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Transformer-style sin/cos features of a scalar per example: [B] -> [B, dim]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = x.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class NoiseLevelEmbedding(nn.Module):
    """Embeds a log-SNR [B] as [B, E]: sinusoidal features, then a 2-layer MLP.

    log-SNR spans roughly [-20, 20]; scaling it by 25 spreads that over the +-500 range that
    sinusoidal timestep features (periods 2*pi .. 2*pi*1e4) resolve well, as for DDPM step indices.
    Also embeds a guidance weight w (roughly [0, 10]: scale 100) for a guidance-distilled student
    (Meng et al. 2023), with `zero_init` so that the new input changes nothing until trained.
    """

    features: int
    num_frequencies: int
    dtype: Dtype = jnp.float32
    scale: float = 25.0
    zero_init: bool = False  # the last layer starts at zero: the embedding is 0 at init

    @nn.compact
    def __call__(self, log_snr: jax.Array) -> jax.Array:
        h = sinusoidal_embedding(log_snr * self.scale, self.num_frequencies)
        h = Dense(self.features, (axes.NORM, axes.MLP), self.dtype, name="dense1")(h)
        out_init = nn.initializers.zeros if self.zero_init else default_init
        return Dense(
            self.features, (axes.MLP, axes.EMBED), self.dtype, kernel_init=out_init, name="dense2"
        )(nn.silu(h))


class PooledTextEmbedding(nn.Module):
    """Masked mean of the text tokens -> LayerNorm -> 2-layer MLP: [B, L, D], [B, L] -> [B, E].

    An all-padding row pools to zeros (the count is clamped to 1) rather than to NaN.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, text_emb: jax.Array, text_mask: jax.Array) -> jax.Array:
        m = text_mask.astype(jnp.float32)[..., None]  # [B, L, 1]
        pooled = (text_emb.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        h = LayerNorm(self.dtype, axis_name=axes.EMBED, name="norm")(pooled)
        h = Dense(self.features, (axes.EMBED, axes.MLP), self.dtype, name="dense1")(h)
        return Dense(self.features, (axes.MLP, axes.EMBED), self.dtype, name="dense2")(nn.silu(h))
