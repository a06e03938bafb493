"""The platform (and mesh) a model is being traced for, which "auto" implementation switches read.

A program compiled ahead of time for a TPU topology is traced on a CPU host, so the host's
`jax.default_backend()` is the wrong answer to "which conv / attention kernel should this use?".
Code that lowers for another platform says so with `with compile_target("tpu", mesh):`; model
code asks `target_platform()` / `target_mesh()`. Outside such a block the host's backend is the
target and there is no mesh (the model is traced for whatever the caller's jit says).

The target is read while a function is traced, so it must be set around `jit(...).lower()` (or
the first call); a jitted function already traced for the same argument shapes and shardings is
not traced again.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

import jax

PLATFORMS = ("cpu", "gpu", "tpu")


@dataclasses.dataclass(frozen=True)
class _Target:
    platform: str
    mesh: jax.sharding.Mesh | None


_TARGET: contextvars.ContextVar[_Target | None] = contextvars.ContextVar(
    "t2v_jax_compile_target", default=None
)


def platform_of(mesh: jax.sharding.Mesh) -> str:
    """The platform of a mesh's devices ("cpu", "gpu" or "tpu"; CUDA/ROCm devices are "gpu")."""
    platform = mesh.devices.flat[0].platform
    return "gpu" if platform in ("cuda", "rocm") else platform


@contextlib.contextmanager
def compile_target(platform: str, mesh: jax.sharding.Mesh | None = None) -> Iterator[None]:
    """Within the block, models are traced for `platform` (and shard kernels over `mesh`)."""
    if platform not in PLATFORMS:
        raise ValueError(f"platform: expected one of {', '.join(PLATFORMS)}, got {platform!r}")
    token = _TARGET.set(_Target(platform, mesh))
    try:
        yield
    finally:
        _TARGET.reset(token)


def target_platform() -> str:
    """The platform being traced for: the innermost `compile_target`, else the host's backend."""
    target = _TARGET.get()
    if target is not None:
        return target.platform
    backend = jax.default_backend()
    return "gpu" if backend in ("cuda", "rocm") else backend


def target_mesh() -> jax.sharding.Mesh | None:
    """The mesh given to the innermost `compile_target` (None outside one or when not given)."""
    target = _TARGET.get()
    return target.mesh if target is not None else None


# XLA:CPU (jaxlib 0.10) hands dots and convolutions to YNNPACK fusions by default. For the
# sampler's programs on the project's 2-core CPU they cost more than they give: with them off,
# a warm demo sample (8 / 4 / 4 / 4 steps) took 2.2-2.3 s instead of 2.8 s (the 64x64 SSR U-Net
# 325 instead of 378-407 ms a call), and a new process's first call of each stage program no
# longer spends 0.1-0.4 s setting them up (the base's: 82 instead of 506 ms after deserializing
# it). docs/sampling.md has the measurements.
_CPU_SAMPLING_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def sampling_compiler_options(platform: str) -> dict[str, str] | None:
    """XLA compiler options for the sampler's programs on `platform` (None: XLA's defaults).

    Passed to `jax.jit(..., compiler_options=...)`; they are part of the compilation cache's
    key, so a program compiled with them is never mixed up with one compiled without.
    """
    return dict(_CPU_SAMPLING_OPTIONS) if platform == "cpu" else None
