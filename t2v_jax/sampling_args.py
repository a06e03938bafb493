"""Checks `Pipeline.sample`'s arguments before anything loads or compiles (cheap to import)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# Seeds become PRNG keys through jax.random.key, which takes a uint32 seed.
MAX_SEED = 2**32 - 1


def validate_sampling_args(
    prompts: Any,
    negative_prompts: Any,
    num_steps: Any,
    guidance_scale: Any,
    seed: Any,
    num_videos_per_prompt: Any,
) -> list[str]:
    """Checks `Pipeline.sample`'s arguments before anything compiles; returns the prompts.

    Raises:
      ValueError: naming the argument and what is allowed.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError(f"prompts: expected a non-empty list of strings, got {prompts!r}")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise ValueError(
            f"prompts: every prompt must be a str; item {bad[0]} is {type(prompts[bad[0]]).__name__}"
        )
    if negative_prompts is not None:
        if isinstance(negative_prompts, str):
            negative_prompts = [negative_prompts]
        if not isinstance(negative_prompts, Sequence) or not all(
            isinstance(p, str) for p in negative_prompts
        ):
            raise ValueError("negative_prompts: expected None, a str, or a list of str")
        if len(negative_prompts) not in (1, len(prompts)):
            raise ValueError(
                f"negative_prompts: expected 1 or {len(prompts)} (one per prompt), "
                f"got {len(negative_prompts)}"
            )
    steps = num_steps if isinstance(num_steps, Sequence) else [num_steps]
    for s in steps:
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s <= 0):
            raise ValueError(
                f"num_steps: expected a positive int (or None for each stage's default), got {s!r}"
            )
    scales = guidance_scale if isinstance(guidance_scale, Sequence) else [guidance_scale]
    for g in scales:
        if g is not None and (
            isinstance(g, bool) or not isinstance(g, int | float) or not math.isfinite(g) or g < 0
        ):
            raise ValueError(f"guidance_scale: expected a finite number >= 0 (or None), got {g!r}")
    if (
        isinstance(seed, bool)
        or not isinstance(seed, int | np.integer)
        or not 0 <= seed <= MAX_SEED
    ):
        raise ValueError(f"seed: expected an int in [0, {MAX_SEED}], got {seed!r}")
    if (
        isinstance(num_videos_per_prompt, bool)
        or not isinstance(num_videos_per_prompt, int)
        or num_videos_per_prompt <= 0
    ):
        raise ValueError(
            f"num_videos_per_prompt: expected a positive int, got {num_videos_per_prompt!r}"
        )
    return list(prompts)
