"""The saved-pipeline folder: its layout, parameter flattening, checksums and the writer.

Layout of a saved pipeline:

    pipeline.json            format version, every stage's StageConfig + UNetConfig, checksums
    text_encoder/            the TextEncoder (t2v_jax T5 checkpoint + tokenizer)
    stage_0.safetensors ...  each stage's params, flattened with '/'-joined names

A save is written to a temporary folder and renamed into place, so a crash never leaves a half
pipeline, and an existing folder is never replaced without `overwrite=True`. The reader,
`pipeline_store.load_pipeline`, sits above the cascade; this module sits below it, so
`Pipeline.save` can use it without an import cycle.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import jax
import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from t2v_jax import paths
from t2v_jax.configlib import to_dict

FORMAT_VERSION = 1
PARAM_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def flatten_params(params: Any) -> dict[str, Any]:
    """{'a/b/kernel': leaf} from a nested dict (leaves: arrays or ShapeDtypeStructs)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        flat["/".join(str(getattr(k, "key", k)) for k in path)] = leaf
    return flat


def unflatten_params(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """The nested dict `flatten_params` flattened."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def same_params(a: Any, b: Any) -> bool:
    """Whether two param trees hold the same arrays: structure, shapes and values (bit for bit,
    whatever the dtypes). How an export checks that two stages share one text encoder."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def file_sha256(path: pathlib.Path) -> str:
    """The hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_pipeline(
    pipeline: Any,
    path: str | os.PathLike,
    *,
    params_dtype: str = "float32",
    overwrite: bool = False,
) -> pathlib.Path:
    """Writes `pipeline` to the folder `path` (see the module docstring for the layout).

    Args:
      pipeline: a `t2v_jax.cascade.Pipeline`.
      path: the folder to create; a URL (gs://...) is written locally first, then uploaded.
      params_dtype: "float32", "bfloat16" or "float16" storage for stage params (the text
        encoder is stored float32); loading always computes in float32.
      overwrite: replace an existing folder (only after the new one is fully written).
    """
    if params_dtype not in PARAM_DTYPES:
        raise ValueError(
            f"params_dtype: expected one of {', '.join(PARAM_DTYPES)}, got {params_dtype!r}"
        )
    if paths.is_url(path):
        return _save_remote(pipeline, path, params_dtype, overwrite)
    path = pathlib.Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"path: {str(path)!r} already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        pipeline.text_encoder.save(tmp / "text_encoder")
        stages = []
        for i, stage in enumerate(pipeline.stages):
            file = f"stage_{i}.safetensors"
            flat = {
                k: np.asarray(v).astype(PARAM_DTYPES[params_dtype])
                for k, v in flatten_params(stage.params).items()
            }
            save_file(flat, str(tmp / file))
            stages.append(
                {
                    "config": to_dict(stage.config),
                    "model": to_dict(stage.model),
                    "params": file,
                    "sha256": file_sha256(tmp / file),
                }
            )
        description = {
            "format_version": FORMAT_VERSION,
            "text_encoder": {
                "path": "text_encoder",
                "max_length": pipeline.text_encoder.max_length,
            },
            "stages": stages,
        }
        (tmp / "pipeline.json").write_text(json.dumps(description, indent=2))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def _save_remote(pipeline: Any, url: str | os.PathLike, params_dtype: str, overwrite: bool) -> Any:
    """`save_pipeline` to a bucket: the whole folder is written and checked locally first."""
    target = paths.as_path(url)
    if target.exists() and not overwrite:
        raise ValueError(
            f"path: {os.fspath(url)!r} already exists; pass overwrite=True to replace it"
        )
    with tempfile.TemporaryDirectory() as tmp:
        local = save_pipeline(pipeline, os.path.join(tmp, "pipeline"), params_dtype=params_dtype)
        if target.exists():
            target.rmtree()  # overwrite=True, and the new folder is complete locally
        paths.upload_folder(local, target)
    return target
