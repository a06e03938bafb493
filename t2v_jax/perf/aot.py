"""Ahead-of-time pre-flight of a stage on a (fake or real) device mesh: divisibility, compile, memory.

Before paying for a pod, `preflight(config, mesh)` checks that the config's shapes split over
the mesh (errors name the config field), then lowers and compiles the stage's train step and one
sampler step from `jax.ShapeDtypeStruct`s that carry their shardings (nothing is allocated), and
reads per-device memory from `compiled.memory_analysis()`. On a CPU host the mesh is made of
fake devices (`--xla_force_host_platform_device_count`, set by tools/aot_check.py before jax
starts); XLA:CPU's buffer assignment is an estimate of a TPU's (same HLO passes and sharding,
a different backend), so leave headroom.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from t2v_jax import cascade, configlib, sharding
from t2v_jax.diffusion import samplers
from t2v_jax.models.config import UNetConfig
from t2v_jax.models.unet3d import VideoUNet
from t2v_jax.upsample import upsample_video

# Per-chip memory of common accelerators, in bytes (HBM as the vendors state it, GiB).
DEVICE_BUDGETS = {
    "v4": 32 * 2**30,
    "v5e": 16 * 2**30,
    "v5p": 95 * 2**30,
    "v6e": 32 * 2**30,
    "a100": 80 * 2**30,
    "h100": 80 * 2**30,
    "h200": 141 * 2**30,
}

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


class PreflightError(ValueError):
    """The config cannot run on the mesh (indivisible shapes) or does not fit the budget."""


def parse_budget(text: str) -> tuple[str, int]:
    """`"v5e"`, `"v5e=16GB"`, `"16GiB"` or `"17179869184"` -> (label, bytes per device)."""
    label, _, amount = text.partition("=")
    if not amount:
        if label.lower() in DEVICE_BUDGETS:
            return label.lower(), DEVICE_BUDGETS[label.lower()]
        label, amount = text, text
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", amount)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(
            f"budget: expected a device name ({', '.join(DEVICE_BUDGETS)}), NAME=SIZE or a size "
            f"such as 16GB / 16GiB / bytes, got {text!r}"
        )
    return label, int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def shrink_config(config: ml_collections.ConfigDict, factor: int) -> ml_collections.ConfigDict:
    """A copy with every width divided by `factor` (channels, text width, heads' size, norm groups).

    Shapes, depths, attention placement and the sharding rules stay, so a shrunk paper-scale
    stage compiles the same program structure quickly (for tests and a fast first look).
    """
    if factor < 1:
        raise ValueError(f"factor: must be >= 1, got {factor}")
    config = copy.deepcopy(config)
    model = config.model
    model.base_channels = max(1, model.base_channels // factor)
    groups = model.get("norm_groups", 32)
    model.norm_groups = math.gcd(groups, model.base_channels)
    if model.get("head_dim"):
        model.head_dim = math.gcd(model.head_dim, model.base_channels)
    if model.get("embed_dim"):
        model.embed_dim = max(1, model.embed_dim // factor)
    model.text_dim = max(1, model.text_dim // factor)
    if "text" in config and "dim" in config.text:
        config.text.dim = model.text_dim
    return config


def _mesh_sizes(mesh: jax.sharding.Mesh) -> dict[str, int]:
    return {name: int(mesh.shape[name]) for name in sharding.MESH_AXES}


def _rule_size(rules: sharding.Rules, logical: str, sizes: Mapping[str, int]) -> tuple[str, int]:
    target = dict(rules).get(logical)
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    return "*".join(targets), math.prod(sizes[t] for t in targets)


def check_divisibility(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, rules: sharding.Rules,
    batch_size: int,
) -> None:  # fmt: skip
    """Checks, before anything compiles, that the config's sizes split over the mesh.

    The batch must split over the batch axes; heads over the axis the rules give `heads`;
    every level's channels over the axes of `conv_in` / `conv_out`; the text and noise-embedding
    widths over the axis of `embed`. (A dimension that does not divide would silently be
    replicated by `sharding.logical_to_spec`, wrecking the memory plan.)

    Raises:
      PreflightError: naming the config field and the mesh axes it must divide by.
    """
    from t2v_jax import axes

    sizes = _mesh_sizes(mesh)
    model = configlib.from_config(UNetConfig, config.model, "model")
    problems = []
    names, size = _rule_size(rules, axes.BATCH, sizes)
    if batch_size % size:
        problems.append(
            f"train.batch_size={batch_size} is not a multiple of the batch axes {names}={size}"
        )
    for level, mult in enumerate(model.channel_mults):
        channels = model.base_channels * mult
        for logical in (axes.CONV_IN, axes.CONV_OUT):
            names, size = _rule_size(rules, logical, sizes)
            if channels % size:
                problems.append(
                    f"model.base_channels={model.base_channels} (x channel_mults[{level}]={mult} "
                    f"= {channels} channels) is not divisible by {logical}'s mesh axes "
                    f"{names}={size}"
                )
        if model.spatial_attention_at(level) or model.temporal_attention_at(level):
            heads = model.heads_at(level)
            names, size = _rule_size(rules, axes.HEADS, sizes)
            if heads % size:
                field = "model.head_dim" if model.head_dim is not None else "model.num_heads"
                problems.append(
                    f"{field}: level {level} has {heads} heads ({channels} channels), not "
                    f"divisible by the heads' mesh axes {names}={size}"
                )
    names, size = _rule_size(rules, axes.EMBED, sizes)
    if model.cross_attention and model.spatial_attention_resolutions and model.text_dim % size:
        problems.append(
            f"model.text_dim={model.text_dim} is not divisible by embed's mesh axes {names}={size}"
        )
    if model.noise_embed_dim % size:
        field = "model.embed_dim" if model.embed_dim else "model.base_channels (4x = embed_dim)"
        problems.append(
            f"{field}: the noise embedding width {model.noise_embed_dim} is not divisible by "
            f"embed's mesh axes {names}={size}"
        )
    if problems:
        raise PreflightError(
            f"stage {config.stage.name}: the config does not split over the mesh "
            f"{sizes}:\n  " + "\n  ".join(problems)
        )


def _per_device_bytes(abstract: Any) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs that carry NamedShardings."""
    total = 0
    for leaf in jax.tree.leaves(abstract):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
    return total


def _memory(compiled: Any) -> dict[str, int]:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    out = {
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "alias_bytes": int(analysis.alias_size_in_bytes),
        "code_bytes": int(analysis.generated_code_size_in_bytes),
    }
    # Donated (aliased) outputs reuse their input buffers, so they count once.
    out["total_bytes"] = (
        out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    )
    return out


def shapes_only_experiment(
    config: ml_collections.ConfigDict, batch_size: int
) -> ml_collections.ConfigDict:
    """The config with the sections the train task needs filled in for a shapes-only build."""
    config = copy.deepcopy(config)
    with config.unlocked():
        train = config.get("train") or ml_collections.ConfigDict()
        train.batch_size = batch_size
        config.train = train
        # Batches carry precomputed T5 embeddings (as they would on a pod): no tokenizer,
        # no text tower in the step. The directory is never read; only shapes are built.
        config.data = ml_collections.ConfigDict(
            {"name": "aot/shapes-only", "text_embeddings": "<aot: not read>"}
        )
        config.log = ml_collections.ConfigDict({"sample_every_steps": 0})
    return config


def train_batch_spec(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, Any]:
    """ShapeDtypeStructs of one global training batch (cached-T5 form, as the pipeline makes)."""
    stage, model = config.stage, config.model
    length = int(config.get("text", {}).get("max_length", 128))
    f32 = jnp.float32
    spec = {
        "video": jax.ShapeDtypeStruct(
            (batch_size, stage.frames, stage.height, stage.width, 3), f32
        ),
        "frame_mask": jax.ShapeDtypeStruct((batch_size, stage.frames), jnp.bool_),
        "text_emb": jax.ShapeDtypeStruct((batch_size, length, model.text_dim), f32),
        "text_mask": jax.ShapeDtypeStruct((batch_size, length), jnp.bool_),
    }
    if stage.kind != "base":
        low = (batch_size, stage.low_frames, stage.low_height, stage.low_width, 3)
        spec["low_res"] = jax.ShapeDtypeStruct(low, f32)
    return spec


def _with_sharding(spec: Mapping[str, Any], mesh: jax.sharding.Mesh) -> dict[str, Any]:
    return {
        k: jax.ShapeDtypeStruct(
            v.shape, v.dtype, sharding=sharding.batch_sharding(mesh, len(v.shape))
        )
        for k, v in spec.items()
    }


def lower_train_step(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, rules: sharding.Rules,
    batch_size: int,
) -> tuple[Any, Any, dict[str, Any]]:  # fmt: skip
    """The stage's sharded, donated train step lowered from abstract inputs (nothing allocated).

    Returns:
      (lowered, abstract_state, abstract_batch): the `jax.stages.Lowered` program and its
      ShapeDtypeStruct arguments (with shardings).
    """
    from t2v_jax.train import state as state_lib
    from t2v_jax.train import step as step_lib
    from t2v_jax.train import task as task_lib

    experiment = shapes_only_experiment(config, batch_size)
    task = task_lib.diffusion_task(experiment)
    train_cfg = configlib.from_config(state_lib.TrainConfig, experiment.train, "train")
    optimizer, schedule = state_lib.make_optimizer(train_cfg)
    init = state_lib.make_init_fn(task.init_params, optimizer)
    abstract_state, shardings = state_lib.state_shardings(init, mesh, rules)
    step_fn = step_lib.make_train_step(task.loss_fn, optimizer, schedule, train_cfg.ema_decay)
    batch = _with_sharding(train_batch_spec(config, batch_size), mesh)
    jitted = step_lib.jit_train_step(step_fn, shardings, batch, mesh)
    return jitted.lower(abstract_state, batch), abstract_state, batch


def lower_sampler_step(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, param_abstract: Any,
    batch_size: int, guidance: float = 2.0,
) -> Any:  # fmt: skip
    """One denoising step of the stage's sampler (the `lax.scan` body, with guidance) lowered.

    `param_abstract` holds the U-Net's parameters as sharded ShapeDtypeStructs (the EMA params of
    the train state). Memory does not grow with the number of steps (the scan carries one
    video), so one step stands for the whole loop.
    """
    stage_fields = {k: v for k, v in configlib.to_dict(config.stage).items() if k != "paper_params"}
    stage_cfg = configlib.from_config(
        cascade.StageConfig,
        {
            **stage_fields,
            "schedule": configlib.to_dict(config.get("diffusion", {}).get("schedule", {})),
        },
        "stage",
    )
    model = configlib.from_config(UNetConfig, config.model, "model")
    module = VideoUNet(model)
    length = int(config.get("text", {}).get("max_length", 128))
    b = batch_size
    shape = (b, stage_cfg.frames, stage_cfg.height, stage_cfg.width, model.out_channels)

    def model_fn(params, x, log_snr, cond):
        return module.apply(
            {"params": params}, x, log_snr, cond["text_emb"], cond["text_mask"],
            cond_video=cond.get("cond_video"), cond_log_snr=cond.get("cond_log_snr"),
        )  # fmt: skip

    def run(params, keys, emb, mask, low):
        cond = {"text_emb": emb, "text_mask": mask}
        if low is not None:
            size = (stage_cfg.frames, stage_cfg.height, stage_cfg.width)
            cond["cond_video"] = upsample_video(low, size, stage_cfg.upsample_kind)
            cond["cond_log_snr"] = jnp.zeros((b,), jnp.float32)
        null = {"text_emb": jnp.zeros_like(emb), "text_mask": jnp.zeros_like(mask)}
        return samplers.sample(
            model_fn, params, keys, cond, shape, 1, sampler=stage_cfg.sampler,
            schedule_cfg=stage_cfg.schedule, guidance=guidance if guidance != 1.0 else None,
            uncond_cond=null if guidance != 1.0 else None, thresholding=stage_cfg.thresholding,
        )  # fmt: skip

    def sds(shape, dtype):
        return jax.ShapeDtypeStruct(
            shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape))
        )

    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), b))
    keys = jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=sharding.batch_sharding(mesh, 1))
    low = None
    if stage_cfg.kind != "base":
        low_shape = (b, stage_cfg.low_frames, stage_cfg.low_height, stage_cfg.low_width, 3)
        low = sds(low_shape, jnp.float32)
    args = (
        param_abstract, keys, sds((b, length, model.text_dim), jnp.float32),
        sds((b, length), jnp.bool_), low,
    )  # fmt: skip
    param_shardings = jax.tree.map(lambda s: s.sharding, param_abstract)
    fn = jax.jit(run, in_shardings=(param_shardings, None, None, None, None),
                 out_shardings=sharding.batch_sharding(mesh, 5))  # fmt: skip
    return fn.lower(*args)


@dataclasses.dataclass
class PreflightReport:
    """Per-device memory (bytes) of a stage's train step and sampler step on one mesh."""

    stage: str
    mesh: dict[str, int]
    batch_size: int
    sample_batch_size: int
    num_params: int
    params_bytes: int
    ema_bytes: int
    optimizer_bytes: int
    train: dict[str, int]
    sampler: dict[str, int]
    compile_s: dict[str, float]
    budget_label: str | None = None
    budget_bytes: int | None = None

    @property
    def train_activation_bytes(self) -> int:
        """The train step's temporaries: activations saved for the backward pass, grads, etc."""
        return self.train.get("temp_bytes", 0)

    def over_budget(self) -> list[str]:
        """Which programs need more than the budget per device (empty when they fit)."""
        if self.budget_bytes is None:
            return []
        return [
            name for name, mem in (("train step", self.train), ("sampler step", self.sampler))
            if mem.get("total_bytes", 0) > self.budget_bytes
        ]  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["train_activation_bytes"] = self.train_activation_bytes
        out["fits"] = not self.over_budget()
        return out


def preflight(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *, batch_size: int,
    sample_batch_size: int | None = None, budget: tuple[str, int] | None = None,
    rules: sharding.Rules | None = None, sampler: bool = True,
) -> PreflightReport:  # fmt: skip
    """Checks divisibility, then compiles the train step (and sampler step) for `mesh`.

    Args:
      config: an experiment config (configs/imagen_video.py:STAGE or any stage config).
      mesh: the target mesh (fake CPU devices stand in for the pod's chips).
      batch_size: the global training batch.
      sample_batch_size: the global sampling batch (default: the batch axes' size, one per
        device).
      budget: (label, bytes per device) to check against; None reports without checking.
      rules: logical-axis rules (default: the config's `sharding.rules`, else the defaults).
      sampler: also compile one sampler step.

    Raises:
      PreflightError: the shapes do not split over the mesh (before compiling), or a program
        needs more memory per device than `budget`.
    """
    if rules is None:
        rules = sharding.rules_from_config(config.sharding.rules if "sharding" in config else None)
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    sample_batch_size = sample_batch_size or sharding.batch_divisor(mesh)
    check_divisibility(config, mesh, rules, batch_size)
    if sample_batch_size % sharding.batch_divisor(mesh):
        raise PreflightError(
            f"sample_batch_size={sample_batch_size} is not a multiple of the mesh's "
            f"data*fsdp={sharding.batch_divisor(mesh)}"
        )
    timings = {}
    start = time.perf_counter()
    lowered, abstract_state, _ = lower_train_step(config, mesh, rules, batch_size)
    compiled = lowered.compile()
    timings["train_step"] = time.perf_counter() - start
    train_mem = _memory(compiled)
    sampler_mem: dict[str, int] = {}
    if sampler:
        start = time.perf_counter()
        unet_params = abstract_state.ema_params["unet"]
        sampler_mem = _memory(
            lower_sampler_step(config, mesh, unet_params, sample_batch_size).compile()
        )
        timings["sampler_step"] = time.perf_counter() - start
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_state.params))
    report = PreflightReport(
        stage=str(config.stage.name),
        mesh=_mesh_sizes(mesh),
        batch_size=batch_size,
        sample_batch_size=sample_batch_size,
        num_params=int(num_params),
        params_bytes=_per_device_bytes(abstract_state.params),
        ema_bytes=_per_device_bytes(abstract_state.ema_params),
        optimizer_bytes=_per_device_bytes(abstract_state.opt_state),
        train=train_mem,
        sampler=sampler_mem,
        compile_s={k: round(v, 2) for k, v in timings.items()},
        budget_label=budget[0] if budget else None,
        budget_bytes=budget[1] if budget else None,
    )
    return report


def format_report(report: PreflightReport) -> str:
    """A few human-readable lines (GiB per device)."""
    gib = lambda n: f"{n / 2**30:8.2f} GiB"
    mesh = " x ".join(f"{k}={v}" for k, v in report.mesh.items())
    lines = [
        f"stage {report.stage}: {report.num_params / 1e9:.3f}B params, mesh {mesh}, "
        f"train batch {report.batch_size}, sample batch {report.sample_batch_size}",
        f"  params      {gib(report.params_bytes)} per device",
        f"  EMA params  {gib(report.ema_bytes)}",
        f"  optimizer   {gib(report.optimizer_bytes)}",
        f"  train step  {gib(report.train.get('total_bytes', 0))} total, "
        f"{gib(report.train_activation_bytes)} activations/temporaries "
        f"(compiled in {report.compile_s.get('train_step', 0):.1f} s)",
    ]
    if report.sampler:
        lines.append(
            f"  sampler step{gib(report.sampler.get('total_bytes', 0))} total, "
            f"{gib(report.sampler.get('temp_bytes', 0))} temporaries "
            f"(compiled in {report.compile_s.get('sampler_step', 0):.1f} s)"
        )
    if report.budget_bytes is not None:
        over = report.over_budget()
        verdict = "FITS" if not over else f"DOES NOT FIT ({', '.join(over)})"
        lines.append(f"  budget {report.budget_label}: {gib(report.budget_bytes)} -> {verdict}")
    return "\n".join(lines)
