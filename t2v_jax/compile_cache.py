"""The persistent XLA compilation cache, so a second process skips recompiling the same programs."""

from __future__ import annotations

import os
import pathlib

import jax

DEFAULT_DIR = (
    pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
    / "t2v_jax"
    / "xla"
)


def enable_compilation_cache(path: str | os.PathLike | None = None) -> pathlib.Path:
    """Turns on JAX's persistent compilation cache in `path` (default: ~/.cache/t2v_jax/xla).

    `T2V_JAX_COMPILATION_CACHE` overrides the default. Programs that compile in under a second
    are not cached (they are cheaper to rebuild than to read back).
    """
    path = pathlib.Path(path or os.environ.get("T2V_JAX_COMPILATION_CACHE") or DEFAULT_DIR)
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path
