"""A distillation run of one cascade stage on the training loop: teacher, student, checks, export.

`distill(config, workdir, settings)` is what `t2v-distill` calls. The teacher is a stage of a
saved pipeline (a folder or a built-in name, plus the stage's name) or a run's workdir (a
`t2v-train` run, or an earlier `t2v-distill` round: its newest checkpoint's EMA U-Net, text
encoder and saved config). The student starts as a copy of the teacher (plus, for guidance
distillation, a zero-initialised guidance-weight embedding, so it starts as the teacher's
conditional model) and trains with `t2v_jax.train.distill`'s loss; the frozen teacher rides in
the train state (`frozen['teacher']`), so the run checkpoints, resumes and is exported exactly
like a `t2v-train` run. The data, text tower and optimiser come from the experiment `config`
of the stage; its model and sampling sections are replaced by the student's, and a `distill`
section records the settings, so the workdir's saved config describes the student (and a next
round can take this workdir as its teacher).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from t2v_jax import cascade, configlib, paths, pipeline_format
from t2v_jax.data import pipeline as data_pipeline
from t2v_jax.models.config import UNetConfig
from t2v_jax.models.unet3d import VideoUNet
from t2v_jax.train import checkpoint as ckpt_lib
from t2v_jax.train import distill as distill_lib
from t2v_jax.train import loop
from t2v_jax.train import state as state_lib
from t2v_jax.train import task as task_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistillSettings:
    """The command line of a distillation round (recorded as the run config's `distill`).

    Attributes:
      mode: "guidance" (a student taking w as input; text-reading stages only) or
        "progressive" (a student taking half the teacher's DDIM steps; every stage kind).
      teacher: a run's workdir, or a saved pipeline (folder or built-in name, e.g. "shapes").
      teacher_stage: the stage's name in the pipeline (required for a pipeline teacher).
      teacher_steps: the teacher's DDIM steps N (progressive); None: its stage's num_steps.
      guidance_min, guidance_max: the range w is drawn from per example; None: the teacher's
        own range (a guidance-distilled teacher), else [1, 2 w] (guidance mode) or w.
      weighting: v-space loss weighting ("snr_trunc": Salimans & Ho's truncated SNR).
    """

    mode: distill_lib.Mode
    teacher: str
    teacher_stage: str | None = None
    teacher_steps: int | None = None
    guidance_min: float | None = None
    guidance_max: float | None = None
    weighting: str = "snr_trunc"

    def __post_init__(self):
        if self.mode not in ("guidance", "progressive"):
            raise ValueError(f"mode: {self.mode!r} is not one of 'guidance', 'progressive'")
        if not self.teacher:
            raise ValueError("teacher: required (a run's workdir, or a saved pipeline)")
        if self.teacher_steps is not None:
            distill_lib.check_halvable(self.teacher_steps, "teacher_steps")


@dataclasses.dataclass
class Teacher:
    """A loaded teacher: its stage (sampling settings, model, EMA U-Net params), text encoder
    params (None when the source holds none) and the `distill` section that made it (if any)."""

    stage: cascade.Stage
    text_params: Any
    distill: dict[str, Any] | None
    source: str


def _is_pipeline(source: str) -> bool:
    from t2v_jax import pipeline_store

    if paths.is_url(source) or os.path.isdir(source):
        return (paths.as_path(source) / "pipeline.json").exists()
    return source in pipeline_store.BUILTIN_PIPELINES


def check_teacher_source(settings: DistillSettings) -> None:
    """Cheap checks of the teacher argument (no arrays read, nothing compiled)."""
    source = settings.teacher
    if _is_pipeline(source):
        if not settings.teacher_stage:
            raise ValueError(
                f"teacher_stage: required with a pipeline teacher ({source!r}); name its stage"
            )
        return
    directory = paths.as_path(source) / "checkpoints"
    steps = [p for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []
    if not steps:
        raise ValueError(
            f"teacher: {source!r} is neither a saved pipeline nor a workdir with a checkpoint "
            f"(nothing in {directory})"
        )


def stage_from_workdir(workdir: str | os.PathLike) -> tuple[cascade.Stage, Any, dict]:
    """(Stage from the EMA U-Net of the newest usable checkpoint, its text params or None, the
    run's saved config) of a `t2v-train` or `t2v-distill` workdir; read-only, fingerprints
    checked."""
    import orbax.checkpoint as ocp

    directory = paths.as_path(workdir) / "checkpoints"
    source = ckpt_lib.Checkpointer(directory, ckpt_lib.CheckpointConfig(), read_only=True)
    try:
        fields = tuple(f.name for f in dataclasses.fields(state_lib.TrainState))
        found = source.restore_latest_subtrees(fields, ("ema_params", "frozen"))
        if found is None:
            raise ValueError(f"teacher: no usable checkpoint in {directory} ({source.last_error})")
        step, saved = found
        meta = source.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]
    finally:
        source.close()
    config = ml_collections.ConfigDict(meta["config"])
    stage_cfg = cascade.stage_config_from_experiment(config)
    model = configlib.from_config(UNetConfig, config.model, "model")
    ema, frozen = jax.device_get(saved["ema_params"]), jax.device_get(saved.get("frozen", {}))
    text = frozen.get("text", ema.get("text"))
    log.info("teacher: step %d of %s", step, workdir)
    return cascade.Stage(stage_cfg, model, ema["unet"]), text, meta["config"]


def load_teacher(settings: DistillSettings) -> Teacher:
    """The teacher named by `settings` (see `DistillSettings.teacher`)."""
    check_teacher_source(settings)
    if _is_pipeline(settings.teacher):
        from t2v_jax import pipeline_store

        pipe = pipeline_store.load_pipeline(settings.teacher)
        stage = pipe.stage_named(settings.teacher_stage, f"teacher_stage: {settings.teacher!r}")
        return Teacher(stage, jax.device_get(pipe.text_encoder.params), None, settings.teacher)
    stage, text, config = stage_from_workdir(settings.teacher)
    return Teacher(stage, text, config.get("distill"), settings.teacher)


def resolve_spec(settings: DistillSettings, teacher: Teacher) -> distill_lib.DistillSpec:
    """The DistillSpec of a round; ValueError naming the argument for what cannot work."""
    stage, model = teacher.stage.config, teacher.stage.model
    w = stage.guidance_scale
    if settings.mode == "guidance":
        if not model.uses_text:
            raise ValueError(
                f"mode: stage {stage.name!r} reads no text, so it has no guidance to distill; "
                "use mode='progressive'"
            )
        if model.guidance_input:
            raise ValueError(f"mode: stage {stage.name!r} is already guidance-distilled")
        default = (1.0, max(2.0 * w, 1.0))
    elif model.guidance_input:
        previous = teacher.distill or {}
        default = (previous.get("guidance_min", w), previous.get("guidance_max", w))
    else:
        if w != 1.0 and model.uses_text:
            raise ValueError(
                f"mode: stage {stage.name!r} samples with guidance_scale={w} (two calls per "
                "step) and takes no guidance input; distill its guidance first "
                "(mode='guidance'), then run progressive rounds on that student"
            )
        default = (1.0, 1.0)
    lo = default[0] if settings.guidance_min is None else settings.guidance_min
    hi = default[1] if settings.guidance_max is None else settings.guidance_max
    if not lo <= w <= hi:
        raise ValueError(
            f"guidance_min/guidance_max: the range [{lo}, {hi}] excludes the teacher's default "
            f"guidance weight {w} (stage {stage.name!r}'s guidance_scale)"
        )
    if not (model.guidance_input or settings.mode == "guidance") and (lo, hi) != (w, w):
        raise ValueError(
            f"guidance_min/guidance_max: stage {stage.name!r} takes no guidance input, so the "
            f"range must be [{w}, {w}], got [{lo}, {hi}]"
        )
    steps = stage.num_steps if settings.teacher_steps is None else settings.teacher_steps
    if settings.mode == "progressive":
        distill_lib.check_halvable(steps, "teacher_steps")
        if stage.sampler != "ddim":
            log.warning("teacher samples with %r; the round distills its DDIM sampler",
                        stage.sampler)  # fmt: skip
        if stage.time_grid != "uniform":  # halving needs the uniform grid (every other point)
            log.warning("teacher samples on the %r grid; the round distills the uniform one",
                        stage.time_grid)  # fmt: skip
    return distill_lib.DistillSpec(settings.mode, steps, lo, hi, settings.weighting)


def run_config(
    config: ml_collections.ConfigDict,
    teacher: Teacher,
    settings: DistillSettings,
    spec: distill_lib.DistillSpec,
) -> ml_collections.ConfigDict:
    """`config` (the stage's experiment config) made into the student run's config.

    Its stage must be the teacher's; model and sampling become the student's; the T5 stays
    frozen; in-loop sampling is off (the task's sampler knows no guidance input).
    """
    stage = teacher.stage.config
    want = (stage.kind, stage.frames, stage.height, stage.width)
    have = tuple(config.stage[k] for k in ("kind", "frames", "height", "width"))
    if have != want:
        raise ValueError(
            f"config: its stage (kind, frames, height, width) {have} is not the teacher's {want}"
        )
    schedule = configlib.from_config(
        type(stage.schedule), config.get("diffusion", {}).get("schedule", {}), "schedule"
    )
    if schedule != stage.schedule:
        raise ValueError(
            f"config: diffusion.schedule {schedule} is not the teacher's {stage.schedule}"
        )
    student_model = dataclasses.replace(
        teacher.stage.model,
        guidance_input=teacher.stage.model.guidance_input or spec.mode == "guidance",
    )
    out = config.copy_and_resolve_references()
    with out.unlocked():
        out.model = ml_collections.ConfigDict(configlib.to_dict(student_model))
        # Every sampling setting is the teacher's (they may differ from the config file's).
        geometry = {"name", "kind", "frames", "height", "width", "schedule"}
        sampling = {
            f.name: getattr(stage, f.name)
            for f in dataclasses.fields(stage)
            if f.name not in geometry and not f.name.startswith("low_")
        }
        # DDIM on the uniform grid: what a progressive round distills (and halves again).
        sampling.update(num_steps=spec.student_steps, sampler="ddim", time_grid="uniform")
        out.sampling = ml_collections.ConfigDict(sampling)
        out.train.train_text_encoder = False
        out.train.init_from = None
        if "log" in out:
            out.log.sample_every_steps = 0
        out.distill = ml_collections.ConfigDict(
            {**dataclasses.asdict(spec), "teacher": settings.teacher,
             "teacher_stage": settings.teacher_stage or ""}
        )  # fmt: skip
    return out


def _zeros_like_init(init: Any, rng: jax.Array) -> Any:
    """`init(rng)`'s (boxed) tree with zeros for values: its structure and logical axis names
    without tracing its random draws."""
    shapes = jax.eval_shape(init, rng)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def distill_task(config: ml_collections.ConfigDict, teacher: Teacher) -> loop.Task:
    """The Task of a student run whose config `run_config` made (its `distill` section)."""
    spec = distill_lib.DistillSpec(
        **{f.name: config.distill[f.name] for f in dataclasses.fields(distill_lib.DistillSpec)}
    )
    base = task_lib.diffusion_task(config)
    train_cfg = configlib.from_config(state_lib.TrainConfig, config.train, "train")
    data_cfg = configlib.from_config(data_pipeline.DataConfig, config.data, "data")
    student_cfg = configlib.from_config(UNetConfig, config.model, "model")
    teacher_cfg = teacher.stage.model
    stage_cfg = task_lib.stage_data_config(config)
    text = task_lib._text_tower(config, data_cfg, student_cfg.text_dim)
    schedule_cfg = teacher.stage.config.schedule
    frames, height, width, _ = stage_cfg.video_shape
    seq = text.max_length
    uses_ids = text.module is not None
    if uses_ids and teacher.text_params is None:
        raise ValueError(
            f"teacher: {teacher.source!r} holds no text encoder, but the data gives token ids"
        )
    null_cond = {
        "text_emb": jnp.zeros((1, seq, student_cfg.text_dim), jnp.float32),
        "text_mask": jnp.zeros((1, seq), bool),
    }
    student, teacher_net = VideoUNet(student_cfg), VideoUNet(teacher_cfg)

    def init_params(rng):
        # warm_start overwrites the frozen teacher, and in a progressive round every parameter
        # of the student too: those need only the tree and its logical axis names, so they
        # start as zeros. A random init would cost the random-number kernels' compile (minutes
        # on a CPU host for the demo's base: most of a round's start-up).
        if spec.mode == "progressive":
            trainable, frozen = _zeros_like_init(base.init_params, rng)
        else:  # the guidance embedding is new: the student's own init draws it
            trainable, frozen = base.init_params(rng)
        teacher_init = _zeros_like_init(
            lambda r: task_lib.init_unet_params(teacher_cfg, (frames, height, width), seq, r), rng
        )
        return trainable, {**frozen, "teacher": teacher_init}

    def warm_start(state):
        unet = teacher.stage.params
        merged = {}
        for name, values in (("params", {"unet": unet}), ("ema_params", {"unet": unet}),
                             ("frozen", {"teacher": unet, **({"text": teacher.text_params}
                                                             if uses_ids else {})})):  # fmt: skip
            try:
                merged[name], fresh = loop._merge_by_path(
                    getattr(state, name), values, teacher.source, name
                )
            except ValueError as e:  # its message names train.init_from, the warm start's flag
                raise ValueError(f"teacher: does not fit the student's config: {e}") from e
            if fresh and (name == "frozen" or spec.mode == "progressive"):
                raise ValueError(f"teacher: {teacher.source!r} lacks {name} {sorted(fresh)}")
        log.info("student initialised from teacher %s", teacher.source)
        return state.replace(**merged)

    def apply(net, cfg, params, z, lam, cond, w):
        return net.apply(
            {"params": params}, z, lam, cond["text_emb"], cond["text_mask"],
            cond_video=cond.get("cond_video"), cond_log_snr=cond.get("cond_log_snr"),
            frame_mask=cond.get("frame_mask"),
            guidance_weight=w if cfg.guidance_input else None,
        )  # fmt: skip

    def loss_fn(params, frozen, rng, batch):
        k_aug, k_loss = jax.random.split(rng)
        cond = task_lib.stage_conditioning(
            k_aug, batch, stage_cfg=stage_cfg, schedule_cfg=schedule_cfg, train_cfg=train_cfg
        )
        if uses_ids:
            emb = text.module.apply({"params": frozen["text"]}, batch["text_ids"],
                                    batch["text_mask"]).astype(jnp.float32)  # fmt: skip
            cond.update(text_emb=jax.lax.stop_gradient(emb), text_mask=batch["text_mask"])
        else:
            cond.update(text_emb=batch["text_emb"], text_mask=batch["text_mask"])
        t_params = frozen["teacher"]
        if teacher_cfg.guidance_input or (spec.guidance_min, spec.guidance_max) == (1.0, 1.0):
            teacher_fn = lambda z, lam, c, w: apply(
                teacher_net, teacher_cfg, t_params, z, lam, c, w
            )
        else:
            plain = lambda p, z, lam, c: apply(teacher_net, teacher_cfg, p, z, lam, c, None)
            teacher_fn = distill_lib.cfg_teacher(plain, t_params, null_cond)
        student_fn = lambda p, z, lam, c, w: apply(student, student_cfg, p["unet"], z, lam, c, w)
        return distill_lib.distill_loss(
            student_fn, params, teacher_fn, k_loss, batch["video"], cond, schedule_cfg, spec
        )

    return loop.Task(init_params, loss_fn, base.make_iterator, warm_start=warm_start)


def prepare(
    config: ml_collections.ConfigDict, settings: DistillSettings
) -> tuple[ml_collections.ConfigDict, Teacher]:
    """Every check of a round, then the teacher: (the student run's config, the teacher).

    Raises ValueError naming the argument (teacher, teacher_stage, teacher_steps, guidance
    range, mode, config) before any training program is compiled.
    """
    teacher = load_teacher(settings)  # checks the source before reading any array
    spec = resolve_spec(settings, teacher)
    return run_config(config, teacher, settings, spec), teacher


def distill(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    settings: DistillSettings,
    *,
    on_metrics: loop.MetricsCallback | None = None,
) -> loop.TrainResult:
    """Runs (or resumes, from `workdir`) one distillation round; what `t2v-distill` calls."""
    student_config, teacher = prepare(config, settings)
    task = distill_task(student_config, teacher)
    return loop.train(student_config, workdir, task, on_metrics=on_metrics)


def export_student(
    workdir: str | os.PathLike, pipeline: Any, out: str | os.PathLike, **save_kwargs: Any
) -> Any:
    """Saves `pipeline` with the stage of the same name replaced by `workdir`'s student (its
    newest checkpoint's EMA params, model and sampling settings); returns the new Pipeline."""
    return export_students([workdir], pipeline, out, **save_kwargs)


def export_students(
    workdirs: Sequence[str | os.PathLike], pipeline: Any, out: str | os.PathLike,
    *, stage_from: Mapping[str, str | os.PathLike] | None = None, **save_kwargs: Any,
) -> Any:  # fmt: skip
    """`export_student` for several rounds at once (a whole distilled cascade): each workdir's
    student replaces the stage of its name; two students of one stage are refused.

    `stage_from` maps a stage name to a saved pipeline whose stage of that name goes in instead
    (a round's student kept as a pipeline, e.g. committed, after its workdir is gone).
    """
    from t2v_jax import pipeline_store

    names = [s.config.name for s in pipeline.stages]
    students: dict[str, Any] = {}
    sources = [(workdir, None) for workdir in workdirs]
    sources += [(folder, name) for name, folder in (stage_from or {}).items()]
    for source, wanted in sources:
        if wanted is None:
            stage, text, _ = stage_from_workdir(source)
        else:
            saved = pipeline_store.load_pipeline(source, mesh=pipeline.mesh)
            stage = saved.stage_named(wanted, f"stage_from: {str(source)!r}")
            text = saved.text_encoder.params
        name = stage.config.name
        if name not in names:
            raise ValueError(f"pipeline: has no stage {name!r} for the student of {source} "
                             f"(stages: {names})")  # fmt: skip
        if stage.model.uses_text and not pipeline_format.same_params(
            text, pipeline.text_encoder.params
        ):
            raise ValueError(f"pipeline: its text encoder is not the one the student of "
                             f"{source} (stage {name!r}) was distilled with")  # fmt: skip
        if name in students:
            raise ValueError(f"workdirs: two students of stage {name!r}")
        students[name] = stage
    stages = [students.get(s.config.name, s) for s in pipeline.stages]
    new = cascade.Pipeline(pipeline.text_encoder, stages, mesh=pipeline.mesh)
    new.save(out, **save_kwargs)
    return new
