"""configs/imagen_video.py: all seven paper stages build (eval_shape only) at the paper's sizes."""

import itertools
import math
import pathlib

import jax
import jax.numpy as jnp
import pytest

from t2v_jax.configlib import from_config, load_config
from t2v_jax.models import UNetConfig, VideoUNet

CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "imagen_video.py"

# Imagen Video (Ho et al. 2022), Fig. 6: output frames x height x width, parameters.
PAPER = {
    "base": ("base", 16, 24, 40, 5.6e9),
    "tsr1": ("tsr", 32, 24, 40, 1.7e9),
    "ssr1": ("ssr", 32, 48, 80, 1.4e9),
    "tsr2": ("tsr", 64, 48, 80, 1.7e9),
    "ssr2": ("ssr", 64, 192, 320, 1.2e9),
    "tsr3": ("tsr", 128, 192, 320, 780e6),
    "ssr3": ("ssr", 128, 768, 1280, 340e6),
}


@pytest.mark.parametrize("stage", list(PAPER))
def test_paper_stage_builds_with_the_papers_parameter_count(stage):
    config = load_config(f"{CONFIG}:{stage}")
    kind, frames, height, width, paper_params = PAPER[stage]
    s = config.stage
    assert (s.kind, s.frames, s.height, s.width) == (kind, frames, height, width)
    cfg = from_config(UNetConfig, config.model, "model")
    assert (cfg.cond_channels > 0) == (kind != "base")
    # The stage's frame size passes through every level of its U-Net.
    factor = 2 ** (cfg.num_levels - 1)
    assert height % factor == 0 and width % factor == 0
    # Parameter shapes do not depend on the video size: trace init on a 1-frame toy input.
    spec = jax.ShapeDtypeStruct
    args = (
        spec((1, 1, factor, factor, 3), jnp.float32),
        spec((1,), jnp.float32),
        spec((1, 2, cfg.text_dim), jnp.float32),
        spec((1, 2), jnp.bool_),
    )
    cond = {}
    if cfg.cond_channels:
        cond = {
            "cond_video": spec((1, 1, factor, factor, cfg.cond_channels), jnp.float32),
            "cond_log_snr": spec((1,), jnp.float32),
        }
    params = jax.eval_shape(VideoUNet(cfg).init, jax.random.key(0), *args, **cond)
    count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
    assert abs(count / paper_params - 1) < 0.15, f"{stage}: {count / 1e9:.3f}B parameters"


def test_sr_stages_chain():
    """Each SR stage's low-res input is the previous stage's output."""
    stages = list(PAPER)
    for lower, upper in itertools.pairwise(stages):
        low, up = load_config(f"{CONFIG}:{lower}").stage, load_config(f"{CONFIG}:{upper}").stage
        assert (up.low_frames, up.low_height, up.low_width) == (low.frames, low.height, low.width)
