"""Loading pipelines: built-in names and saved folders become a checked `Pipeline`.

A load checks the format version, every file's SHA-256 and every parameter's name and shape
against the model the config describes before any of it is used. The folder's layout and the
writer are in `pipeline_format` (below the cascade, which `Pipeline.save` uses); this module
builds `cascade.Pipeline`s, so it sits above the cascade.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any

import jax
import numpy as np
from safetensors.numpy import load_file

from t2v_jax import cascade, paths
from t2v_jax.configlib import from_config
from t2v_jax.pipeline_format import FORMAT_VERSION, file_sha256, flatten_params, unflatten_params

# Built-in pipelines ship inside the package (t2v_jax/assets/<name>): "shapes" is the demo
# (docs/demo.md), distilled to 8 steps for its base, 4 for its TSR and first SSR and 2 for its
# 64x64 SSR (docs/distillation.md); "shapes_teacher" the same cascade before distillation
# (32 / 16 / 16 / 16 steps, the stages configs/shapes.py trains); "shapes_v1" the first edition
# (three stages, 32x32), kept for comparison; "real_sr" a spatial SR stage for real footage,
# 32x32 -> 64x64 (docs/video_in.md).
BUILTIN_PIPELINES = ("shapes", "shapes_teacher", "shapes_v1", "real_sr")


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
    if paths.is_url(name):
        # Read through a local copy (safetensors memory-maps its files).
        if not (paths.as_path(name) / "pipeline.json").exists():
            raise ValueError(f"pipeline: {name!r} holds no pipeline.json written by Pipeline.save")
        return pathlib.Path(paths.stage_local(name))
    path = pathlib.Path(name)
    if not (path / "pipeline.json").is_file():
        raise ValueError(
            f"pipeline: {name!r} is neither a built-in pipeline ({', '.join(BUILTIN_PIPELINES)}) "
            "nor a folder holding a pipeline.json written by Pipeline.save"
        )
    return path


def load_pipeline(
    path_or_name: str | os.PathLike = "shapes",
    *,
    mesh: Any = None,
    param_sharding: str = "auto",
    video_sharding: str = "batch",
) -> Any:
    """Restores a `Pipeline` saved by `Pipeline.save` (or a built-in one by name).

    `mesh`, `param_sharding` and `video_sharding` are the `Pipeline`'s (where it samples, how
    its params and its videos are laid out over the mesh); they are checked before any file is
    read.

    Every file is checked (format version, SHA-256, parameter names and shapes against the
    model the config describes) before anything is used; a mismatch raises ValueError naming the
    file and the parameter.
    """
    from t2v_jax import pipeline_sharding, video_layout
    from t2v_jax.models.config import UNetConfig
    from t2v_jax.text.encoder import load_t5

    pipeline_sharding.check_mode(param_sharding)
    video_layout.check_mode(video_sharding)
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
        if file_sha256(file) != entry["sha256"]:
            raise ValueError(f"{file}: checksum mismatch; the file is corrupted or was modified")
        params = _checked_params(load_file(str(file)), model, config, file)
        stages.append(cascade.Stage(config=config, model=model, params=params))
    text = description["text_encoder"]
    encoder = load_t5(path / text["path"], max_length=text["max_length"])
    return cascade.Pipeline(
        encoder, stages, mesh=mesh, param_sharding=param_sharding, video_sharding=video_sharding
    )


def expected_param_shapes(model: Any, config: Any) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the parameters a stage's model needs.

    Finding them traces the model's init (seconds for the demo's stages), so with a
    compilation cache on the answer is memoized beside it, keyed by the configs and
    `compile_cache.source_fingerprint()` (any code change recomputes it).
    """
    from t2v_jax import compile_cache
    from t2v_jax.configlib import to_dict

    folder = compile_cache.memo_dir("param_shapes")
    file = None
    if folder is not None:
        key = json.dumps(
            [to_dict(model), to_dict(config), compile_cache.source_fingerprint()], sort_keys=True
        )
        file = folder / f"{hashlib.sha256(key.encode()).hexdigest()}.json"
        if file.is_file():
            return {name: tuple(shape) for name, shape in json.loads(file.read_text()).items()}
    specs = jax.eval_shape(
        lambda: cascade.init_stage_params(model, config, model.text_dim, jax.random.key(0))
    )
    shapes = {name: tuple(spec.shape) for name, spec in flatten_params(specs).items()}
    if file is not None:
        compile_cache.write_memo(file, json.dumps(shapes))
    return shapes


def _checked_params(
    flat: dict[str, np.ndarray], model: Any, config: Any, file: pathlib.Path
) -> Any:
    expected = expected_param_shapes(model, config)
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{file}: parameters do not match the model: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for name, shape in expected.items():
        if flat[name].shape != shape:
            raise ValueError(
                f"{file}: {name} has shape {flat[name].shape}, the model needs {shape}"
            )
    return jax.tree.map(lambda a: a.astype(np.float32), unflatten_params(flat))
