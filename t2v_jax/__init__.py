"""t2v_jax: cascaded text-to-video diffusion (Imagen Video style) in JAX / Flax linen.

Public API:
  sample(prompts, pipeline="shapes", **kw)  -> uint8 [B, T, H, W, 3]
  load_pipeline(path_or_name)                -> Pipeline
  Pipeline, Stage, StageConfig               the cascade
  write_video(video, path, fps)              .mp4 / .gif / .webp / .png grid
  extend(pipeline, video, prompt, num_frames) a longer video, window by window (video_in)
  text                                       T5 encoder, tokenizers (t2v_jax.text.load_t5)

Submodules are imported on first use, so `import t2v_jax` stays cheap and touches no device.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Pipeline": ("t2v_jax.cascade", "Pipeline"),
    "Stage": ("t2v_jax.cascade", "Stage"),
    "StageConfig": ("t2v_jax.cascade", "StageConfig"),
    "load_pipeline": ("t2v_jax.pipeline_store", "load_pipeline"),
    "write_video": ("t2v_jax.video_io", "write_video"),
    "read_video": ("t2v_jax.video_io", "read_video"),
    "extend": ("t2v_jax.video_in", "extend"),
}
_SUBMODULES = ("text", "models", "diffusion", "data", "train", "sharding", "cascade", "configlib")

__all__ = ["__version__", "sample", *_LAZY, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _SUBMODULES:
        return importlib.import_module(f"t2v_jax.{name}")
    raise AttributeError(f"module 't2v_jax' has no attribute {name!r}")


@functools.lru_cache(maxsize=4)
def _cached_pipeline(path_or_name: str):
    import jax

    from t2v_jax.compile_cache import enable_compilation_cache
    from t2v_jax.pipeline_store import load_pipeline

    # Like t2v-sample, reuse compiled samplers across processes, unless the caller already
    # chose a cache folder.
    if not jax.config.jax_compilation_cache_dir:
        enable_compilation_cache()
    return load_pipeline(path_or_name)


def sample(prompts, pipeline: str = "shapes", **kwargs):
    """Samples videos with a pipeline loaded once and cached (default: the embedded demo).

    Turns on the persistent compilation cache (`compile_cache.enable_compilation_cache`, default
    ~/.cache/t2v_jax/xla) unless `jax_compilation_cache_dir` is already set.

    Args:
      prompts: a prompt or a list of prompts.
      pipeline: a built-in pipeline name or the folder of a saved pipeline.
      **kwargs: passed to `Pipeline.sample` (num_steps, guidance_scale, seed, ...).

    Returns:
      uint8 [len(prompts) * num_videos_per_prompt, T, H, W, 3].
    """
    from t2v_jax.sampling_args import validate_sampling_args

    # Check the cheap arguments before loading (and compiling) anything. No prompts (stages that
    # read no text, docs/video_in.md) is for the pipeline to judge.
    validate_sampling_args(
        [""] if prompts is None else prompts,
        kwargs.get("negative_prompts"),
        kwargs.get("num_steps"),
        kwargs.get("guidance_scale"),
        kwargs.get("seed", 0),
        kwargs.get("num_videos_per_prompt", 1),
    )
    return _cached_pipeline(str(pipeline)).sample(prompts, **kwargs)
