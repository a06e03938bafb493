"""Does a base stage read its prompt? Its v-loss on rendered `shapes` clips under swapped captions.

Sampling-based accuracy (`shapes_eval`) says *whether* a pipeline follows prompts; this probe says
*which words* its base stage has learned to use, in a minute and without sampling. For each clip
rendered with known (colour, shape, motion), the stage's v-MSE is measured at fixed noise levels
with the same noise under five conditions: the true caption, the null text (what guidance
contrasts with), the caption with another colour, with another shape, and with the opposite
motion. A model that uses a word predicts worse with the wrong word: `relative_gap` (loss / true
loss - 1) is clearly positive at high noise, where the noisy clip no longer shows the answer. A
gap near zero for a word means the stage ignores it, and guidance cannot recover it either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax.data import render, shapes
from t2v_jax.diffusion import schedules
from t2v_jax.eval.shapes_eval import prompt_for
from t2v_jax.models.unet3d import VideoUNet

CONDITIONS = ("true", "null", "colour", "shape", "motion")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
# The `shapes` config the embedded demo trained on (configs/shapes.py).
DEFAULT_DATA_CONFIG = "sweep32x16"


def swapped_combos(
    combo: tuple[str, str, str], rng: np.random.Generator
) -> dict[str, tuple[str, str, str]]:
    """The (colour, shape, motion) of each captioned condition but "null" for a clip of `combo`.

    The colour and shape swaps draw another vocabulary word uniformly; the motion swap is the
    opposite direction (the hardest contrast: same axis, same speed).
    """
    colour, shape, motion = combo
    other_colours = [c for c in render.COLOUR_NAMES if c != colour]
    other_shapes = [s for s in render.SHAPES if s != shape]
    return {
        "true": combo,
        "colour": (other_colours[int(rng.integers(len(other_colours)))], shape, motion),
        "shape": (colour, other_shapes[int(rng.integers(len(other_shapes)))], motion),
        "motion": (colour, shape, OPPOSITE[motion]),
    }


def data_config(name: str) -> shapes.ShapesConfig:
    """The `shapes` builder config called `name` (e.g. "sweep32x16")."""
    configs = {c.name: c for c in shapes.Shapes.BUILDER_CONFIGS}
    if name not in configs:
        raise ValueError(f"data_config={name!r}; must be one of {sorted(configs)}")
    return configs[name]


def render_clips(
    num_clips: int,
    frames: int,
    height: int,
    width: int,
    seed: int = 0,
    *,
    data_config_name: str = DEFAULT_DATA_CONFIG,
) -> tuple[np.ndarray, list[tuple[str, str, str]]]:
    """One-object clips drawn like `shapes/<data_config_name>` (object sizes and travel) at the
    given size: float32 [N, T, H, W, 3] in [-1, 1]."""
    source = data_config(data_config_name)
    cfg = shapes.ShapesConfig(
        name="probe",
        height=height,
        width=width,
        frames=frames,
        prob_two_objects=0.0,
        size_range=source.size_range,
        travel_range=source.travel_range,
    )
    rng = np.random.default_rng(seed)
    videos, combos = [], []
    for _ in range(num_clips):
        example = shapes.make_example(cfg, rng)
        objects = example["objects"]
        combos.append((
            render.COLOUR_NAMES[int(objects["colour"][0])],
            render.SHAPES[int(objects["shape"][0])],
            render.MOTION_NAMES[int(objects["motion"][0])],
        ))  # fmt: skip
        videos.append(example["video"].astype(np.float32) / 127.5 - 1.0)
    return np.stack(videos), combos


def text_use_probe(
    pipeline: Any,
    *,
    num_clips: int = 64,
    noise_levels: Sequence[float] = (0.2, 0.4, 0.6, 0.8, 0.95),
    seed: int = 0,
    data_config_name: str = DEFAULT_DATA_CONFIG,
) -> dict[str, Any]:
    """Mean v-MSE of the pipeline's base stage per noise level t and caption condition.

    Args:
      pipeline: a `t2v_jax.cascade.Pipeline` (e.g. `t2v_jax.load_pipeline("shapes")`).
      num_clips: rendered one-object clips at the base stage's (frames, height, width).
      noise_levels: diffusion times t in (0, 1) (0 = clean), mapped through the stage's schedule.
      seed: clip, swap and noise seed.
      data_config_name: the `shapes` config whose object sizes and travel the clips follow
        (that of the stage's training data).

    Returns:
      {'t': [...], 'loss': {condition: [per t]}, 'relative_gap': {condition: [per t]}} with
      conditions `CONDITIONS`; relative_gap[c] = loss[c] / loss['true'] - 1.

    Raises:
      ValueError: num_clips or noise_levels out of range, or an unknown data_config_name.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips={num_clips}; must be >= 1")
    if not noise_levels or not all(0.0 < t < 1.0 for t in noise_levels):
        raise ValueError(f"noise_levels={tuple(noise_levels)}; each must be in (0, 1)")
    data_config(data_config_name)
    stage = pipeline.stages[0]  # a Pipeline's first stage is always a base stage
    cfg = stage.config
    videos, combos = render_clips(
        num_clips, cfg.frames, cfg.height, cfg.width, seed, data_config_name=data_config_name
    )
    rng = np.random.default_rng(seed + 1)
    swaps = [swapped_combos(c, rng) for c in combos]
    text = {}
    for cond in CONDITIONS:
        if cond == "null":
            continue
        emb, mask = pipeline.text_encoder.encode([prompt_for(s[cond]) for s in swaps])
        text[cond] = (emb, mask)
    emb, mask = text["true"]
    text["null"] = (jnp.zeros_like(emb), jnp.zeros_like(mask))

    module = VideoUNet(stage.model)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), stage.params)

    @jax.jit
    def mse(x0, emb, mask, t, eps):  # -> [N]
        lam = schedules.log_snr(t, cfg.schedule)
        z = schedules.add_noise(x0, eps, lam)
        v = module.apply({"params": params}, z, lam, emb, mask).astype(jnp.float32)
        return jnp.mean(jnp.square(v - schedules.v_from_x_eps(x0, eps, lam)), axis=(1, 2, 3, 4))

    x0 = jnp.asarray(videos)
    key = jax.random.key(seed)
    loss = {cond: [] for cond in CONDITIONS}
    for i, t in enumerate(noise_levels):
        eps = jax.random.normal(jax.random.fold_in(key, i), x0.shape)  # same noise per condition
        tt = jnp.full((num_clips,), t, jnp.float32)
        for cond in CONDITIONS:
            loss[cond].append(float(jnp.mean(mse(x0, *text[cond], tt, eps))))
    gap = {c: [v / r - 1.0 for v, r in zip(loss[c], loss["true"], strict=True)] for c in CONDITIONS}
    return {"t": list(noise_levels), "loss": loss, "relative_gap": gap}


def format_table(result: dict[str, Any]) -> str:
    """Markdown table: one row per noise level, the true loss and each condition's gap in %."""
    others = [c for c in CONDITIONS if c != "true"]
    lines = ["| t | loss (true caption) | " + " | ".join(f"{c} gap" for c in others) + " |"]
    lines.append("|---" * (2 + len(others)) + "|")
    for i, t in enumerate(result["t"]):
        gaps = " | ".join(f"{100 * result['relative_gap'][c][i]:+.1f}%" for c in others)
        lines.append(f"| {t:.2f} | {result['loss']['true'][i]:.4f} | {gaps} |")
    return "\n".join(lines)
