"""Turns trained stage workdirs into a saved pipeline (or exports the base stage's text encoder).

  # after every stage of configs/shapes.py trained in ROOT/base, ROOT/tsr, ROOT/ssr:
  python tools/export_pipeline.py --config configs/shapes.py --workdir ROOT \
      --out t2v_jax/assets/shapes --params-dtype bfloat16 --overwrite
  # after the base stage only: its jointly trained T5, for the SR stages' --config.text.path
  python tools/export_pipeline.py --config configs/shapes.py --workdir ROOT --stages base \
      --text-encoder-only --out ROOT/base/text_encoder
  # stages trained in different sessions: the SR stages exported earlier, the base from ROOT
  python tools/export_pipeline.py --config configs/shapes.py --workdir ROOT \
      --stages base tsr ssr ssr2 --stage-from tsr,ssr,ssr2=SR_PIPELINE --out OUT

Each stage's newest checkpoint is read (read-only, its fingerprints checked) and its EMA params
are used. The text encoder is the first stage's: its EMA T5 when `train.train_text_encoder`,
else its frozen T5. Every later stage must have been trained on exactly that encoder (its frozen
T5 is compared bit for bit), otherwise the export refuses; a stage whose U-Net reads no text
(`UNetConfig.uses_text` is False, like the demo's SR stages) may have trained on any encoder.

`--stage-from STAGES=PIPELINE` takes those stages from a saved pipeline instead of a workdir
(a cascade whose stages trained in different sessions: each session exports what it finished).
The saved stage must be the one the config describes (model config and stage config equal, but
for how it is sampled: `stage.SAMPLING_FIELDS`, taken from the config) and, if it reads text,
come with the same text encoder; its params are used as saved.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax


def sampling_stage_config(config: Any):
    """The cascade StageConfig of an experiment config, ignoring data-only stage fields."""
    from t2v_jax import cascade

    return cascade.stage_config_from_experiment(config)


def restore_ema(config: Any, workdir: str | pathlib.Path) -> tuple[int, Any, Any]:
    """(step, EMA params, frozen params) of the newest checkpoint in `workdir`, read-only.

    Raises:
      ValueError: no checkpoint, or its values do not match the fingerprints saved with them.
    """
    import orbax.checkpoint as ocp

    from t2v_jax import configlib
    from t2v_jax.train import checkpoint as ckpt_lib
    from t2v_jax.train import loop
    from t2v_jax.train import state as state_lib
    from t2v_jax.train import task as task_lib

    directory = pathlib.Path(workdir) / "checkpoints"
    config = config.copy_and_resolve_references()
    if "log" in config:
        with config.unlocked():
            config.log.sample_every_steps = 0  # the task would otherwise read a data batch
    task = task_lib.diffusion_task(config)
    train_cfg = configlib.from_config(state_lib.TrainConfig, config.train, "train")
    optimizer, _ = state_lib.make_optimizer(train_cfg)
    mesh, rules = loop._mesh_and_rules(config)
    abstract, _ = state_lib.state_shardings(
        state_lib.make_init_fn(task.init_params, optimizer), mesh, rules
    )
    manager = ocp.CheckpointManager(
        directory,
        item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(read_only=True, create=False),
    )
    step = manager.latest_step() if directory.is_dir() else None
    if step is None:
        raise ValueError(f"workdir: no checkpoint in {directory}")
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
    )
    manager.close()
    state = restored["state"]
    if ckpt_lib.fingerprint(state) != restored["meta"]["fingerprints"]:
        raise ValueError(f"workdir: step {step} in {directory} does not match its fingerprints")
    return step, jax.device_get(state.ema_params), jax.device_get(state.frozen)


def _text_params(config: Any, ema: Any, frozen: Any) -> Any:
    if "text" in ema:
        return ema["text"]
    if "text" in frozen:
        return frozen["text"]
    raise ValueError(
        "the first stage's checkpoint holds no T5 (it trained on cached text embeddings); "
        f"export its encoder from {config.text.get('path')!r} instead"
    )


def _text_encoder(config: Any, params: Any):
    from t2v_jax import configlib
    from t2v_jax.text import ByteTokenizer, T5Config, TextEncoder, load_t5

    max_length = int(config.text.max_length)
    if config.text.get("path"):
        loaded = load_t5(config.text.path, max_length=max_length)
        return TextEncoder(loaded.config, params, loaded.tokenizer, max_length)
    t5 = configlib.from_config(T5Config, config.text.t5, "text.t5")
    return TextEncoder(t5, params, ByteTokenizer(), max_length)


def _saved_stage(config: Any, model_cfg: Any, name: str, folder: str | pathlib.Path):
    """(stage `name` of the saved pipeline `folder`, that pipeline's text encoder), checked
    against the config: a stage trained under another config is refused, not mixed in."""
    from t2v_jax.pipeline_store import load_pipeline
    from t2v_jax.stage import SAMPLING_FIELDS

    pipeline = load_pipeline(folder)
    stage = pipeline.stage_named(name, f"stage_from: {str(folder)!r}")
    expected = sampling_stage_config(config)
    # How to sample it is the config's to say (steps, sampler, data consistency, ...).
    sampling = {f: getattr(expected, f) for f in SAMPLING_FIELDS}
    for what, saved, wanted in (
        ("stage", dataclasses.replace(stage.config, **sampling), expected),
        ("model", stage.model, model_cfg),
    ):
        if saved != wanted:
            raise ValueError(
                f"stage_from: stage {name!r} of {str(folder)!r} has another {what} config than "
                f"the config file describes:\n  saved: {saved}\n  config: {wanted}"
            )
    print(f"{name}: from the saved pipeline {folder}")
    return dataclasses.replace(stage, config=expected), pipeline.text_encoder


def export(
    config_file: str,
    stages: Sequence[str],
    workdirs: Sequence[str | pathlib.Path],
    out: str | pathlib.Path,
    *,
    params_dtype: str = "bfloat16",
    overwrite: bool = False,
    text_encoder_only: bool = False,
    overrides: dict[str, Any] | None = None,
    stage_from: dict[str, str | pathlib.Path] | None = None,
) -> pathlib.Path:
    """Writes the pipeline of `stages` (or only the first stage's text encoder) to `out`.

    Args:
      config_file: the experiment config file; stage s is `config_file:s`.
      stages: stage names, base first, in cascade order.
      workdirs: one training workdir per stage.
      out: the folder to write (`Pipeline.save` / `TextEncoder.save` layout).
      params_dtype: storage dtype of the stage params ("float32", "bfloat16", "float16").
      overwrite: replace an existing `out`.
      text_encoder_only: write only the first stage's T5 (for the SR stages' text.path).
      overrides: dotted config field -> value, applied to every stage's config.
      stage_from: stage name -> a saved pipeline folder to take that stage (and, for the first
        stage, the text encoder) from instead of its workdir.
    """
    from t2v_jax import cascade, pipeline_format
    from t2v_jax.configlib import from_config, load_config
    from t2v_jax.models.config import UNetConfig

    if len(stages) != len(workdirs) or not stages:
        raise ValueError(f"stages {list(stages)} and workdirs {list(workdirs)}: need one each")
    stage_from = dict(stage_from or {})
    if unknown := sorted(set(stage_from) - set(stages)):
        raise ValueError(f"stage_from: {unknown} are not among the stages {list(stages)}")
    out = pathlib.Path(out)
    if out.exists() and not overwrite:  # before minutes of restores
        raise ValueError(f"out: {str(out)!r} exists; pass --overwrite to replace it")
    encoder, built = None, []
    for name, workdir in zip(stages, workdirs, strict=True):
        config = load_config(f"{config_file}:{name}", overrides)
        model_cfg = from_config(UNetConfig, config.model, f"{name}.model")
        if name in stage_from:
            # The saved stage carries the config's stage name (which may differ from the
            # config argument `name`, e.g. configs/real_sr.py:ssr is the stage "real_ssr").
            saved_name = config.stage.name
            stage, stage_encoder = _saved_stage(config, model_cfg, saved_name, stage_from[name])
            if encoder is None:
                encoder = stage_encoder
                if text_encoder_only:
                    encoder.save(out)
                    return out
            elif model_cfg.uses_text and not pipeline_format.same_params(
                jax.device_get(stage_encoder.params), jax.device_get(encoder.params)
            ):
                raise ValueError(
                    f"stage {name} ({stage_from[name]}) comes with another text encoder than "
                    "the first stage's"
                )
            built.append(stage)
            continue
        step, ema, frozen = restore_ema(config, workdir)
        print(f"{name}: step {step} of {workdir}")
        if encoder is None:
            encoder = _text_encoder(config, _text_params(config, ema, frozen))
            if text_encoder_only:
                encoder.save(out)
                return out
        elif model_cfg.uses_text and not pipeline_format.same_params(
            frozen.get("text", ema.get("text")), jax.device_get(encoder.params)
        ):
            raise ValueError(
                f"stage {name} ({workdir}) was not trained on the first stage's text encoder; "
                "train it with --config.text.path=<the encoder written by --text-encoder-only>"
            )
        built.append(cascade.Stage(sampling_stage_config(config), model_cfg, ema["unet"]))
    pipeline = cascade.Pipeline(encoder, built)
    return pipeline.save(out, params_dtype=params_dtype, overwrite=overwrite)


def _parse_override(text: str) -> tuple[str, Any]:
    import ast

    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected FIELD=VALUE")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _parse_stage_from(text: str) -> tuple[list[str], str]:
    names, sep, folder = text.partition("=")
    if not sep or not names or not folder:
        raise argparse.ArgumentTypeError(f"--stage-from {text!r}: expected STAGES=PIPELINE")
    return names.split(","), folder


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="experiment config file, e.g. configs/shapes.py")
    p.add_argument("--stages", nargs="+", default=["base", "tsr", "ssr"])
    p.add_argument("--workdir", required=True, help="root of the runs: stage s trained in ROOT/s")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--params-dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--text-encoder-only", action="store_true")
    p.add_argument("--stage-from", type=_parse_stage_from, action="append", default=[],
                   help="STAGES=PIPELINE: take these comma-separated stages from a saved pipeline")  # fmt: skip
    p.add_argument("--set", type=_parse_override, action="append", default=[],
                   help="config override FIELD=VALUE for every stage, e.g. data.data_dir=/x")  # fmt: skip
    args = p.parse_args(argv)
    root = pathlib.Path(args.workdir)
    path = export(
        args.config, args.stages, [root / s for s in args.stages], args.out,
        params_dtype=args.params_dtype, overwrite=args.overwrite,
        text_encoder_only=args.text_encoder_only, overrides=dict(args.set) or None,
        stage_from={name: folder for names, folder in args.stage_from for name in names},
    )  # fmt: skip
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
