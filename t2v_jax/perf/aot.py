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
import functools
import math
import re
import time
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from t2v_jax import cascade, configlib, pipeline_sharding, sharding
from t2v_jax.diffusion import samplers
from t2v_jax.models import platform
from t2v_jax.models.config import UNetConfig
from t2v_jax.perf import aot_report, chips
from t2v_jax.video_layout import VideoLayout

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


def shrink_config(
    config: ml_collections.ConfigDict, factor: int, multiple: int = 1
) -> ml_collections.ConfigDict:
    """A copy with every width divided by `factor` (channels, text width, heads' size, norm groups).

    Shapes, depths, attention placement and the sharding rules stay, so a shrunk paper-scale
    stage compiles the same program structure quickly (for tests and a fast first look).
    `multiple` rounds each shrunk width up to a multiple of it (the mesh's fsdp x tensor size,
    so the shrunk widths still split over the mesh: 704 / 32 = 22 does not split over 4 chips,
    24 does); the true width ratio is then `shrunk.model.base_channels / base_channels`.
    """
    if factor < 1:
        raise ValueError(f"factor: must be >= 1, got {factor}")
    if multiple < 1:
        raise ValueError(f"multiple: must be >= 1, got {multiple}")
    shrink = lambda width: -(-max(1, width // factor) // multiple) * multiple
    config = copy.deepcopy(config)
    model = config.model
    model.base_channels = shrink(model.base_channels)
    groups = model.get("norm_groups", 32)
    model.norm_groups = math.gcd(groups, model.base_channels)
    if model.get("head_dim"):
        model.head_dim = math.gcd(model.head_dim, model.base_channels)
    if model.get("embed_dim"):
        model.embed_dim = shrink(model.embed_dim)
    model.text_dim = shrink(model.text_dim)
    if "text" in config and "dim" in config.text:
        config.text.dim = model.text_dim
    return config


def _mesh_sizes(mesh: jax.sharding.Mesh) -> dict[str, int]:
    return {name: int(mesh.shape[name]) for name in sharding.MESH_AXES}


def _rule_size(rules: sharding.Rules, logical: str, sizes: Mapping[str, int]) -> tuple[str, int]:
    target = dict(rules).get(logical)
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    return "*".join(targets), math.prod(sizes[t] for t in targets)


def _grad_accum_steps(config: ml_collections.ConfigDict) -> int:
    return int(config.get("train", {}).get("grad_accum_steps", 1))


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
    accum = _grad_accum_steps(config)
    if batch_size % (size * accum):
        problems.append(
            f"train.batch_size={batch_size} is not a multiple of the batch axes {names}={size}"
            + (f" times train.grad_accum_steps={accum}" if accum > 1 else "")
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


def per_step_cost(cost: dict[str, float], loop_trips: int) -> dict[str, float]:
    """A train step's cost with its microbatch loop counted `loop_trips` times.

    XLA's cost analysis counts a while loop's body once, whatever its trip count, so with
    `train.grad_accum_steps` k the compiled step reports one microbatch's FLOPs and bytes.
    Everything is multiplied by k: the optimizer update outside the loop is then counted k
    times too (small next to k forward/backward passes), so the figure is an upper bound.
    """
    if loop_trips == 1 or not cost:
        return cost
    scaled = {k: v * loop_trips for k, v in cost.items() if k in ("flops", "bytes_accessed")}
    return {**cost, **scaled, "loop_trips": loop_trips}


def _cost(compiled: Any) -> dict[str, float]:
    """One chip's FLOPs and HBM bytes accessed, from the compiler's cost analysis.

    Also counts the program's Pallas (Mosaic) kernels, so a report shows whether the TPU
    attention kernels are in the program.
    """
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older jax: one dict per program
        analysis = analysis[0] if analysis else None
    if not analysis:
        return {}
    return {
        "flops": float(analysis.get("flops", 0.0)),
        "bytes_accessed": float(analysis.get("bytes accessed", 0.0)),
        "pallas_kernels": compiled.as_text().count('custom_call_target="tpu_custom_call"'),
    }


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
    """ShapeDtypeStructs of one global training batch (cached-T5 form, as the pipeline makes).

    The shapes are the data pipeline's (`StageDataConfig.video_shape` / `low_res_shape`), so an
    SR stage that trains on crops (`stage.random_crop`) is compiled for its crops.
    """
    from t2v_jax.train import task as task_lib

    data = task_lib.stage_data_config(config)
    length = int(config.get("text", {}).get("max_length", 128))
    f32 = jnp.float32
    spec = {
        "video": jax.ShapeDtypeStruct((batch_size, *data.video_shape), f32),
        "frame_mask": jax.ShapeDtypeStruct((batch_size, data.frames), jnp.bool_),
        "text_emb": jax.ShapeDtypeStruct((batch_size, length, config.model.text_dim), f32),
        "text_mask": jax.ShapeDtypeStruct((batch_size, length), jnp.bool_),
    }
    if data.low_res_shape is not None:
        spec["low_res"] = jax.ShapeDtypeStruct((batch_size, *data.low_res_shape), f32)
    return spec


def _with_sharding(spec: Mapping[str, Any], mesh: jax.sharding.Mesh) -> dict[str, Any]:
    return {
        k: jax.ShapeDtypeStruct(
            v.shape, v.dtype, sharding=sharding.batch_sharding(mesh, len(v.shape))
        )
        for k, v in spec.items()
    }


def _train_parts(config, mesh, rules, batch_size):
    """(task, train config, optimizer, schedule, abstract state, its shardings, init): shapes only."""
    from t2v_jax.train import state as state_lib
    from t2v_jax.train import task as task_lib

    experiment = shapes_only_experiment(config, batch_size)
    task = task_lib.diffusion_task(experiment)
    train_cfg = configlib.from_config(state_lib.TrainConfig, experiment.train, "train")
    optimizer, schedule = state_lib.make_optimizer(train_cfg)
    init = state_lib.make_init_fn(task.init_params, optimizer)
    abstract_state, shardings = state_lib.state_shardings(init, mesh, rules)
    return task, train_cfg, optimizer, schedule, abstract_state, shardings, init


def lower_train_step(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, rules: sharding.Rules,
    batch_size: int,
) -> tuple[Any, Any, dict[str, Any]]:  # fmt: skip
    """The stage's sharded, donated train step lowered from abstract inputs (nothing allocated).

    Returns:
      (lowered, abstract_state, abstract_batch): the `jax.stages.Lowered` program and its
      ShapeDtypeStruct arguments (with shardings).
    """
    from t2v_jax.train import step as step_lib

    task, train_cfg, optimizer, schedule, abstract_state, shardings, _ = _train_parts(
        config, mesh, rules, batch_size
    )
    step_fn = step_lib.make_train_step(
        task.loss_fn, optimizer, schedule, train_cfg.ema_decay, train_cfg.grad_accum_steps
    )
    batch = _with_sharding(train_batch_spec(config, batch_size), mesh)
    jitted = step_lib.jit_train_step(step_fn, shardings, batch, mesh)
    return jitted.lower(abstract_state, batch), abstract_state, batch


class _ShapesOnlyText:
    """Stands in for the text encoder of a Pipeline that is only lowered (batches carry the
    embeddings); `Pipeline` reads its width, nothing ever encodes."""

    def __init__(self, d_model: int):
        self.d_model = d_model


def lower_sampler_program(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, param_abstract: Any,
    batch_size: int, num_steps: int = 2, guided: bool = True, sharded_params: bool = False,
    video_sharding: str = "batch",
) -> Any:  # fmt: skip
    """The `Pipeline`'s own jitted per-stage sampler (`Pipeline.stage_program`), lowered.

    The stage is put in a Pipeline on `mesh` with shapes-only parameters, so the program is
    exactly what `Pipeline.sample` runs: params in fp32, replicated or (`sharded_params`) split
    as `param_sharding="sharded"` splits them (t2v_jax/pipeline_sharding.py), the batch split over
    (`data`, `fsdp`) or, under `video_sharding="frames"`, each video's frames over `fsdp`
    (t2v_jax/video_layout.py), one call's chunk of the `lax.scan` over `num_steps` (the TPU compiler
    costs a scan body once, so its figures are per denoising step), guidance on. An SR stage sits
    second, after a placeholder base stage of its input's size (never compiled), because
    the pipeline feeds the stage below's video only to stages after the first.
    """
    stage_cfg = cascade.stage_config_from_experiment(config)
    model = configlib.from_config(UNetConfig, config.model, "model")
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), param_abstract)
    stages = [cascade.Stage(stage_cfg, model, params)]
    if stage_cfg.kind != "base":
        below = dataclasses.replace(
            stage_cfg, name="below", kind="base", frames=stage_cfg.low_frames,
            height=stage_cfg.low_height, width=stage_cfg.low_width,
            low_frames=0, low_height=0, low_width=0,
        )  # fmt: skip
        stages.insert(0, cascade.Stage(below, model, None))
    pipe = cascade.Pipeline(
        _ShapesOnlyText(model.text_dim), stages, mesh=mesh, video_sharding=video_sharding
    )
    index = len(stages) - 1
    fn = pipe.stage_program(index, batch_size, num_steps, guided, sharded_params)
    b, length = batch_size, int(config.get("text", {}).get("max_length", 128))
    sds = jax.ShapeDtypeStruct
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), b))
    emb, mask = sds((b, length, model.text_dim), jnp.float32), sds((b, length), jnp.bool_)
    low = None
    if index:
        low = sds((b, stage_cfg.low_frames, stage_cfg.low_height, stage_cfg.low_width, 3),
                  jnp.float32)  # fmt: skip
    weight = sds((), jnp.float32)
    # The sampler state the chunked calls carry, and the traced index of a call's first step.
    shape = (b, stage_cfg.frames, stage_cfg.height, stage_cfg.width, model.out_channels)
    state = jax.eval_shape(lambda k: samplers.init_state(k, shape), keys)
    start = sds((), jnp.int32)
    return fn.lower(params, keys, emb, mask, emb, mask, low, weight, weight, state, start)


@dataclasses.dataclass
class PreflightReport:
    """Per-chip memory (bytes) and cost of a stage's train step and sampler on one mesh.

    `platform` is the compiler that produced the figures: "tpu" (the real TPU compiler, for a
    topology) or "cpu" (fake CPU devices: an estimate of a TPU's memory, no cost model).
    """

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
    platform: str = "cpu"
    topology: str | None = None
    train_cost: dict[str, float] = dataclasses.field(default_factory=dict)
    sampler_cost: dict[str, float] = dataclasses.field(default_factory=dict)
    sampler_steps: int = 0
    chip: chips.Chip | None = None
    # How the sampler's params were laid out ("replicated" or "sharded", see
    # t2v_jax/pipeline_sharding.py) and, when "auto" had to shard, the replicated program's memory.
    sampler_param_sharding: str = "replicated"
    sampler_replicated: dict[str, int] = dataclasses.field(default_factory=dict)
    # Where the sampled videos lived: "batch" (whole per chip) or "frames" (split over fsdp).
    sampler_video_sharding: str = "batch"
    # The text encoder's program (`text_aot`), its params' layout and their resident share.
    text_encoder: str | None = None
    text: dict[str, int] = dataclasses.field(default_factory=dict)
    text_param_sharding: str = "replicated"
    text_params_bytes: int = 0

    @property
    def train_activation_bytes(self) -> int:
        """The train step's temporaries: activations saved for the backward pass, grads, etc."""
        return self.train.get("temp_bytes", 0)

    def over_budget(self) -> list[str]:
        """Which programs need more than the budget per device (empty when they fit)."""
        if self.budget_bytes is None:
            return []
        # While a stage samples, the text encoder's params stay on the device beside it.
        programs = (
            ("train step", self.train, 0),
            ("sampler", self.sampler, self.text_params_bytes),
            ("text encoder", self.text, 0),
        )
        return [
            name for name, mem, resident in programs
            if mem and mem.get("total_bytes", 0) + resident > self.budget_bytes
        ]  # fmt: skip

    def rooflines(self) -> dict[str, dict[str, float]]:
        """Roofline step-time bounds per program (needs a chip and the TPU cost analysis)."""
        if self.chip is None:
            return {}
        out = {}
        if self.train_cost:
            out["train_step"] = chips.roofline(
                self.train_cost["flops"], self.train_cost["bytes_accessed"], self.chip
            )
        if self.sampler_cost:
            out["sampler_step"] = chips.roofline(
                self.sampler_cost["flops"], self.sampler_cost["bytes_accessed"], self.chip
            )
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of every field plus the derived figures."""
        out = dataclasses.asdict(self)
        out["chip"] = self.chip.name if self.chip else None
        out["train_activation_bytes"] = self.train_activation_bytes
        out["fits"] = not self.over_budget()
        out["estimate"] = self.platform != "tpu"
        out["roofline"] = self.rooflines()
        return out


def preflight(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *, batch_size: int,
    sample_batch_size: int | None = None, budget: tuple[str, int] | None = None,
    rules: sharding.Rules | None = None, sampler: bool = True, sampler_steps: int = 2,
    topology: chips.Topology | None = None, train: bool = True, sampler_params: str = "auto",
    text_encoder: str | None = None, video_sharding: str = "batch",
) -> PreflightReport:  # fmt: skip
    """Checks divisibility, then compiles the train step (and the stage's sampler) for `mesh`.

    Every "auto" implementation switch resolves for the mesh's platform (`compile_target`),
    so a TPU topology mesh gets the TPU program (lax.conv, Pallas attention) on a CPU host.

    Args:
      config: an experiment config (configs/imagen_video.py:STAGE or any stage config).
      mesh: the target mesh: TPU topology devices (`topology_mesh`) or fake CPU devices.
      batch_size: the global training batch.
      sample_batch_size: the global sampling batch (default: the batch axes' size, one per
        device).
      budget: (label, bytes per device) to check against; None reports without checking.
      rules: logical-axis rules (default: the config's `sharding.rules`, else the defaults).
      sampler: also compile the Pipeline's sampler for this stage.
      sampler_steps: denoising steps of that sampler program. Neither its memory nor its cost
        analysis grows with them: the TPU compiler counts the `lax.scan` body once (measured:
        the same FLOPs for 2 and 4 steps), so the sampler's cost is one denoising step's.
      topology: the TPU slice `mesh` was made from (gives the chip for the roofline).
      train: compile the train step (False: the sampling programs only).
      sampler_params: the sampler's params "replicated", "sharded" or "auto" (as `Pipeline`'s
        `param_sharding`: replicated unless that program is over `budget`, then sharded).
      text_encoder: also compile the sampling pipeline's text encoder ("t5-xxl"), its params
        sharded under "sharded", or under "auto" when they take over half the budget (as
        `Pipeline` decides); its resident params count against the sampler's budget.

    Raises:
      PreflightError: the shapes do not split over the mesh (before compiling), or a program
        needs more memory per device than `budget`.
    """
    if rules is None:
        rules = sharding.rules_from_config(config.sharding.rules if "sharding" in config else None)
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    layout = VideoLayout(mesh, video_sharding)
    sample_batch_size = sample_batch_size or layout.divisor
    check_divisibility(config, mesh, rules, batch_size)
    if sample_batch_size % layout.divisor:
        raise PreflightError(
            f"sample_batch_size={sample_batch_size} is not a multiple of the devices the "
            f"sampled batch is split over ({'*'.join(layout.batch_axes)}={layout.divisor})"
        )
    if sampler:
        try:
            layout.check_stages([cascade.stage_config_from_experiment(config)])
        except ValueError as e:
            raise PreflightError(str(e)) from None
    pipeline_sharding.check_mode(sampler_params)
    if text_encoder is not None:
        from t2v_jax.perf import text_aot

        if text_encoder not in text_aot.TEXT_ENCODERS:
            raise ValueError(
                f"text_encoder: expected one of {', '.join(text_aot.TEXT_ENCODERS)}, "
                f"got {text_encoder!r}"
            )
    target = platform.platform_of(mesh)
    timings = {}
    train_mem: dict[str, int] = {}
    train_cost: dict[str, float] = {}
    sampling: dict[str, Any] = {}
    # The config's rules reach the models' activation constraints too (layers.constrain).
    with platform.compile_target(target, mesh), nn.logical_axis_rules(rules):
        if train:
            start = time.perf_counter()
            lowered, abstract_state, _ = lower_train_step(config, mesh, rules, batch_size)
            compiled = lowered.compile()
            timings["train_step"] = time.perf_counter() - start
            train_mem = _memory(compiled)
            train_cost = per_step_cost(_cost(compiled), _grad_accum_steps(config))
        else:
            abstract_state = _train_parts(config, mesh, rules, batch_size)[4]
        if text_encoder:
            sampling.update(_text_program(text_encoder, config, mesh, sample_batch_size,
                                          sampler_params, budget, timings))  # fmt: skip
        if sampler:
            sampling.update(_sampler_program(config, mesh, abstract_state.ema_params["unet"],
                                             sample_batch_size, sampler_steps, sampler_params,
                                             budget, timings,
                                             sampling.get("text_params_bytes", 0),
                                             video_sharding))  # fmt: skip
    sampler_cost = sampling.pop("sampler_cost", {})
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_state.params))
    return PreflightReport(
        stage=str(config.stage.name),
        mesh=_mesh_sizes(mesh),
        batch_size=batch_size,
        sample_batch_size=sample_batch_size,
        num_params=int(num_params),
        params_bytes=_per_device_bytes(abstract_state.params),
        ema_bytes=_per_device_bytes(abstract_state.ema_params),
        optimizer_bytes=_per_device_bytes(abstract_state.opt_state),
        train=train_mem,
        sampler=sampling.pop("sampler", {}),
        compile_s={k: round(v, 2) for k, v in timings.items()},
        budget_label=budget[0] if budget else None,
        budget_bytes=budget[1] if budget else None,
        platform=target,
        topology=topology.name if topology else None,
        train_cost=train_cost if target == "tpu" else {},
        sampler_cost=sampler_cost if target == "tpu" else {},
        sampler_steps=sampler_steps if sampler else 0,
        chip=topology.chip if topology else None,
        text_encoder=text_encoder,
        **sampling,
    )


def _sampler_program(
    config, mesh, unet_params, batch, steps, mode, budget, timings, resident,
    video_sharding="batch",
):  # fmt: skip
    """Compiles the stage's sampler with its params laid out as `mode` ("auto": as `Pipeline`)."""
    sharded = mode == "sharded"
    start = time.perf_counter()
    lower = functools.partial(
        lower_sampler_program, config, mesh, unet_params, batch, steps, True,
        video_sharding=video_sharding,
    )  # fmt: skip
    lowered = lower(sharded)
    try:
        compiled = lowered.compile()
        mem, out = _memory(compiled), {}
    except jax.errors.JaxRuntimeError as e:
        if mode != "auto":
            raise
        # The TPU compiler refuses a program over the chip's HBM; "auto" then shards.
        mem, out = {"total_bytes": pipeline_sharding.refused_bytes(e), "refused": 1}, {}
    if mode == "auto" and budget and mem.get("total_bytes", 0) + resident > budget[1]:
        # What `Pipeline(param_sharding="auto")` does on a device too small for the replicated
        # program (the text encoder's resident params count here; the Pipeline sees them too).
        out["sampler_replicated"], sharded = mem, True
        compiled = lower(True).compile()
        mem = _memory(compiled)
    timings["sampler"] = time.perf_counter() - start
    out.update(sampler=mem, sampler_cost=_cost(compiled),
               sampler_param_sharding="sharded" if sharded else "replicated",
               sampler_video_sharding=video_sharding)  # fmt: skip
    return out


def _text_program(name, config, mesh, batch, mode, budget, timings):
    """Compiles the text encoder `name` the way `Pipeline` would place it."""
    from t2v_jax.perf import text_aot

    t5 = text_aot.TEXT_ENCODERS[name]
    full = text_aot.resident_param_bytes(t5, mesh, sharded=False)
    sharded = mode == "sharded" or (mode == "auto" and budget is not None and full > budget[1] // 2)
    length = int(config.get("text", {}).get("max_length", 128))
    start = time.perf_counter()
    compiled = text_aot.lower_text_encoder(t5, mesh, batch, length, sharded).compile()
    timings["text_encoder"] = time.perf_counter() - start
    return {
        "text": _memory(compiled),
        "text_param_sharding": "sharded" if sharded else "replicated",
        "text_params_bytes": text_aot.resident_param_bytes(t5, mesh, sharded),
    }


# Kept here too: tools and tests print reports with `aot.format_report`.
format_report = aot_report.format_report
