"""Saving and loading whole pipelines: a folder with pipeline.json, the text encoder and per-stage params.

Layout of a saved pipeline:

    pipeline.json            format version, every stage's StageConfig + UNetConfig, checksums
    text_encoder/            the TextEncoder (t2v_jax T5 checkpoint + tokenizer)
    stage_0.safetensors ...  each stage's params, flattened with '/'-joined names

A save is written to a temporary folder and renamed into place, so a crash never leaves a half
pipeline, and an existing folder is never replaced without `overwrite=True`. A load checks the
format version, every file's SHA-256 and every parameter's name and shape against the model the
config describes before any of it is used.
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
from safetensors.numpy import load_file, save_file

from t2v_jax.configlib import from_config, to_dict

FORMAT_VERSION = 1
# Built-in pipelines ship inside the package (t2v_jax/assets/<name>).
BUILTIN_PIPELINES = ("shapes",)
_PARAM_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def flatten_params(params: Any) -> dict[str, Any]:
    """{'a/b/kernel': leaf} from a nested dict (leaves: arrays or ShapeDtypeStructs)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        flat["/".join(str(getattr(k, "key", k)) for k in path)] = leaf
    return flat


def unflatten_params(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _sha256(path: pathlib.Path) -> str:
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
      path: the folder to create.
      params_dtype: "float32", "bfloat16" or "float16" storage for stage params (the text
        encoder is stored float32); loading always computes in float32.
      overwrite: replace an existing folder (only after the new one is fully written).
    """
    if params_dtype not in _PARAM_DTYPES:
        raise ValueError(
            f"params_dtype: expected one of {', '.join(_PARAM_DTYPES)}, got {params_dtype!r}"
        )
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
                k: np.asarray(v).astype(_PARAM_DTYPES[params_dtype])
                for k, v in flatten_params(stage.params).items()
            }
            save_file(flat, str(tmp / file))
            stages.append(
                {
                    "config": to_dict(stage.config),
                    "model": to_dict(stage.model),
                    "params": file,
                    "sha256": _sha256(tmp / file),
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


def builtin_path(name: str) -> pathlib.Path:
    """The packaged folder of a built-in pipeline (which may be absent from this build)."""
    import importlib.resources

    return pathlib.Path(str(importlib.resources.files("t2v_jax") / "assets" / name))


def resolve_pipeline_path(path_or_name: str | os.PathLike) -> pathlib.Path:
    """A pipeline folder from a built-in name or a path; raises ValueError naming what exists."""
    name = os.fspath(path_or_name)
    if name in BUILTIN_PIPELINES:
        path = builtin_path(name)
        if not (path / "pipeline.json").is_file():
            raise ValueError(
                f"pipeline: the built-in pipeline {name!r} is not included in this installation "
                f"(expected {path}); pass the folder of a pipeline saved with Pipeline.save"
            )
        return path
    path = pathlib.Path(name)
    if not (path / "pipeline.json").is_file():
        raise ValueError(
            f"pipeline: {name!r} is neither a built-in pipeline ({', '.join(BUILTIN_PIPELINES)}) "
            "nor a folder holding a pipeline.json written by Pipeline.save"
        )
    return path


def load_pipeline(path_or_name: str | os.PathLike = "shapes", *, mesh: Any = None) -> Any:
    """Restores a `Pipeline` saved by `Pipeline.save` (or a built-in one by name).

    Every file is checked (format version, SHA-256, parameter names and shapes against the
    model the config describes) before anything is used; a mismatch raises ValueError naming the
    file and the parameter.
    """
    from t2v_jax import cascade
    from t2v_jax.models.config import UNetConfig
    from t2v_jax.text.encoder import load_t5

    path = resolve_pipeline_path(path_or_name)
    description = json.loads((path / "pipeline.json").read_text())
    version = description.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path / 'pipeline.json'}: format_version {version!r} is not supported "
            f"(this t2v_jax reads version {FORMAT_VERSION})"
        )
    stages = []
    for i, entry in enumerate(description["stages"]):
        config = from_config(cascade.StageConfig, entry["config"], f"stages[{i}].config")
        model = from_config(UNetConfig, entry["model"], f"stages[{i}].model")
        file = path / entry["params"]
        if _sha256(file) != entry["sha256"]:
            raise ValueError(f"{file}: checksum mismatch; the file is corrupted or was modified")
        params = _checked_params(load_file(str(file)), model, config, file)
        stages.append(cascade.Stage(config=config, model=model, params=params))
    text = description["text_encoder"]
    encoder = load_t5(path / text["path"], max_length=text["max_length"])
    return cascade.Pipeline(encoder, stages, mesh=mesh)


def _checked_params(
    flat: dict[str, np.ndarray], model: Any, config: Any, file: pathlib.Path
) -> Any:
    from t2v_jax import cascade

    expected = flatten_params(
        jax.eval_shape(
            lambda: cascade.init_stage_params(model, config, model.text_dim, jax.random.key(0))
        )
    )
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{file}: parameters do not match the model: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for name, spec in expected.items():
        if flat[name].shape != spec.shape:
            raise ValueError(
                f"{file}: {name} has shape {flat[name].shape}, the model needs {spec.shape}"
            )
    return jax.tree.map(lambda a: a.astype(np.float32), unflatten_params(flat))
