"""The vocabulary of logical axis names that parameters and activations are annotated with.

Every `nn.with_logical_partitioning` / `nn.with_logical_constraint` call in t2v_jax uses these
constants, and `t2v_jax.sharding` maps them onto mesh axes with rules that live in the config.
Keeping the names in one place means a typo is an import error rather than a silently
replicated parameter.
"""

# Activations (`VIDEO_ACTIVATION` names a U-Net block's [B, T, H, W, C] input / output).
BATCH = "batch"
FRAMES = "frames"
HEIGHT = "height"
WIDTH = "width"
LENGTH = "length"  # text tokens
ACT_CHANNELS = "act_channels"  # U-Net feature channels of activations between blocks

# Parameters and activation features.
EMBED = "embed"  # model / text width (d_model)
CHANNELS = "channels"  # U-Net feature channels of norms and biases
CONV_IN = "conv_in"  # input channels of a conv kernel
CONV_OUT = "conv_out"  # output channels of a conv kernel
CONV_SPACE = "conv_space"  # spatial kernel taps (kh, kw)
CONV_TIME = "conv_time"  # temporal kernel taps (kt)
HEADS = "heads"
KV = "kv"  # per-head feature size
MLP = "mlp"  # feed-forward hidden size
VOCAB = "vocab"
REL_POS = "rel_pos"  # relative-position buckets of an attention bias
NORM = "norm"  # scale of a normalisation layer whose width is not a channel axis
LAYERS = "layers"  # stacked layers under nn.scan

VIDEO_ACTIVATION = (BATCH, FRAMES, HEIGHT, WIDTH, ACT_CHANNELS)

ALL = (
    BATCH, FRAMES, HEIGHT, WIDTH, LENGTH, ACT_CHANNELS, EMBED, CHANNELS, CONV_IN, CONV_OUT,
    CONV_SPACE, CONV_TIME, HEADS, KV, MLP, VOCAB, REL_POS, NORM, LAYERS,
)  # fmt: skip
