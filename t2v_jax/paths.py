"""One path type for every path a user gives (workdirs, checkpoints, pipelines, caches): etils.epath.

`pathlib.Path("gs://bucket/run")` is the local path `gs:/bucket/run`: a pod run that used it
would write each host's files to its own boot disk. `as_path` returns an `epath.Path`, which keeps
URLs (gs://, s3://) as URLs and reads/writes them through fsspec (`gcsfs` comes with the `tpu`
extra) and local paths through the OS. TensorBoard event files go through the same type
(`register_tensorboard_schemes`), so one library handles every file the trainer writes.
"""

from __future__ import annotations

import io
import os

from etils import epath

URL_SCHEMES = ("gs", "s3")

PathLike = str | os.PathLike


def as_path(path: PathLike) -> epath.Path:
    """`path` as an `epath.Path` (URLs stay URLs; `~` is expanded for local paths)."""
    if isinstance(path, epath.Path):
        return path
    text = os.fspath(path)
    if not is_url(text):
        text = os.path.expanduser(text)
    return epath.Path(text)


def is_url(path: PathLike) -> bool:
    """Whether `path` names remote storage (gs://, s3://) rather than a local file."""
    text = os.fspath(path)
    return "://" in text and text.split("://", 1)[0] in URL_SCHEMES


class _EventFile:
    """A TensorBoard event file on remote storage, rewritten whole on every flush.

    Object stores have no append; rewriting the (small) event file keeps what TensorBoard shows
    current during training, as TensorFlow's gfile does for gs://.
    """

    def __init__(self, path: str):
        self.path = as_path(path)
        self.buffer = io.BytesIO()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        self.path.write_bytes(self.buffer.getvalue())

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True


class _EventFileFactory:
    def open(self, path: str) -> _EventFile:
        return _EventFile(path)

    def directory_check(self, path: str) -> None:
        as_path(path).mkdir(parents=True, exist_ok=True)


def register_tensorboard_schemes() -> None:
    """Routes tensorboardX's event files for URL workdirs through `epath` (idempotent)."""
    from tensorboardX import record_writer

    for scheme in URL_SCHEMES:
        record_writer.register_writer_factory(scheme, _EventFileFactory())


def stage_local(path: PathLike, cache_root: PathLike | None = None) -> str:
    """A local folder holding the files of folder `path`: `path` itself when it is local.

    Readers that need real files (safetensors memory-maps, tokenizer files) read a remote folder
    through this: it is copied once into `cache_root` (default ~/.cache/t2v_jax/remote), keyed by
    its URL, and refreshed when a file's size differs.
    """
    if not is_url(path):
        return os.path.expanduser(os.fspath(path))
    import hashlib

    source = as_path(path)
    if not source.is_dir():
        raise FileNotFoundError(f"{path}: no such folder")
    root = cache_root or os.path.join(os.path.expanduser("~"), ".cache", "t2v_jax", "remote")
    target = os.path.join(os.fspath(root), hashlib.sha256(str(source).encode()).hexdigest()[:16])
    for relative in _files(source):
        file = source / relative
        local = os.path.join(target, relative)
        if os.path.exists(local) and os.path.getsize(local) == file.stat().length:
            continue
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(local + ".part", "wb") as f:
            f.write(file.read_bytes())
        os.replace(local + ".part", local)
    return target


def upload_folder(local: PathLike, destination: PathLike) -> None:
    """Copies local folder `local` to `destination` (a URL or local path), file by file."""
    source = epath.Path(os.fspath(local))
    target = as_path(destination)
    for relative in _files(source):
        out = target / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes((source / relative).read_bytes())


def _files(root: epath.Path) -> list[str]:
    """Paths (relative to `root`, '/'-separated) of every file below folder `root`."""
    found = []
    for directory, _, names in root.walk():
        base = os.fspath(directory)
        prefix = os.fspath(root)
        relative = base[len(prefix) :].strip("/")
        found.extend(f"{relative}/{name}" if relative else name for name in names)
    return sorted(found)
