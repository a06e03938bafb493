"""The persistent caches: XLA's compilation cache, and t2v_jax's small memos kept beside it."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pathlib
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import jax

DEFAULT_DIR = (
    pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
    / "t2v_jax"
    / "xla"
)


def enable_compilation_cache(path: str | os.PathLike | None = None) -> pathlib.Path:
    """Turns on JAX's persistent compilation cache in `path` (default: ~/.cache/t2v_jax/xla).

    `T2V_JAX_COMPILATION_CACHE` overrides the default. Every program is cached, however fast it
    compiles: a sample runs about 25 small ones (key folding, initial noise, clipping, the text
    encoder) that each compile in 0.01-0.7 s but read back in milliseconds (with JAX's default
    1 s floor, a warm demo sample spent 4.2 s in XLA compiles; with none, 2.5 s).
    """
    path = pathlib.Path(path or os.environ.get("T2V_JAX_COMPILATION_CACHE") or DEFAULT_DIR)
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


@functools.cache
def source_fingerprint() -> str:
    """A hash of t2v_jax's Python sources and the jax / flax versions (a few ms, once).

    Memos keyed by it are recomputed after any code change, so they can never go stale.
    """
    import flax

    digest = hashlib.sha256(f"{jax.__version__} {flax.__version__}".encode())
    package = pathlib.Path(__file__).resolve().parent
    for file in sorted(package.rglob("*.py")):
        digest.update(str(file.relative_to(package)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def memo_dir(name: str) -> pathlib.Path | None:
    """`<compilation cache>/t2v_jax_<name>/` for t2v_jax's own memos; None when no cache is on.

    A subfolder, so JAX's cache (which only touches its own `*-cache` files) ignores it.
    """
    root = jax.config.jax_compilation_cache_dir
    if not root or not jax.config.jax_enable_compilation_cache:
        return None
    if "://" in str(root):
        # A bucket (gs://...: JAX's cache reads and writes it itself). pathlib would turn it
        # into a local relative folder "gs:/..."; the memos are small and local-only.
        return None
    return pathlib.Path(root) / f"t2v_jax_{name}"


def write_memo(path: pathlib.Path, text: str | bytes) -> None:
    """Writes `text` to `path` atomically (a temporary file renamed), so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def exported_program(
    name: str,
    key: str,
    fn: Callable,
    args: Sequence[Any],
    compiler_options: dict[str, str] | None = None,
) -> Callable:
    """`fn` (a `jax.jit` function) as `jax.jit` of its `jax.export`ed program, memoized.

    The persistent compilation cache saves a second process the XLA compile, but not tracing
    the model and lowering it to StableHLO, which it needs first to compute the cache key: for
    the first demo's three stage programs that was about 5 s of a warm sample under load. The
    exported program (StableHLO plus its shardings) is written to `<cache>/t2v_jax_exported/`,
    named `name` and keyed by `key`, the argument shapes, dtypes and shardings and
    `source_fingerprint()`, so a later process deserializes it and goes straight to the
    (cached) compile. `key` must name everything else the program depends on (configs, static
    settings). Without a compilation cache, without `flatbuffers` (what `Exported.serialize`
    needs), or when the program cannot be exported (a custom call with no stability
    guarantee, e.g. a GPU library kernel), `fn` is returned as is. A memo whose checksum does
    not match or that does not deserialize is exported again, never used. `compiler_options`:
    the XLA options the returned program is compiled with (as `fn`'s own `jax.jit` has them).
    """
    folder = memo_dir("exported")
    if folder is None:
        return fn
    try:
        import flatbuffers  # noqa: F401  (Exported.serialize needs it)
    except ImportError:
        return fn
    abstract = jax.tree.map(
        lambda a: (tuple(a.shape), str(a.dtype), str(getattr(a, "sharding", None))), list(args)
    )
    digest = hashlib.sha256(f"{key}|{abstract}|{source_fingerprint()}".encode()).hexdigest()
    file = folder / f"{name}-{digest[:40]}.bin"
    exported = None
    if file.is_file():
        blob = file.read_bytes()  # sha256 of the payload, then the payload
        try:
            if hashlib.sha256(blob[32:]).digest() != blob[:32]:
                raise ValueError("checksum mismatch")
            exported = jax.export.deserialize(bytearray(blob[32:]))
        except Exception as e:  # any damage: export again
            logging.warning("%s: unreadable exported program (%s); exporting again", file, e)
    if exported is None:
        try:
            exported = jax.export.export(fn)(*args)
            payload = bytes(exported.serialize())
        except Exception as e:  # e.g. a GPU kernel whose custom call export does not allow
            logging.warning("%s: not exportable (%s); traced in every process", name, e)
            return fn
        write_memo(file, hashlib.sha256(payload).digest() + payload)

    def program(*a):  # named, so the compilation cache's entries say which program they hold
        return exported.call(*a)

    program.__name__ = program.__qualname__ = name
    return jax.jit(program, compiler_options=compiler_options)
