"""The cascade: a text encoder and an ordered list of U-Net stages that turn prompts into videos.

A `Stage` is a model config, its parameters and its sampling settings; a `Pipeline` chains them
(base -> any sequence of temporal / spatial super-resolution stages, as Imagen Video's 7-stage
cascade). Each stage's denoising loop runs as a few calls of one jit-compiled `lax.scan` over
an equal share of its steps (compiled once per (batch, steps, guidance on/off) and reused); the
host moves the progress bar between calls, so the compiled program holds no host callback and
JAX's persistent compilation cache keeps it. Batches are split over the mesh's batch axes, and
every sample's noise comes from `fold_in(fold_in(key(seed), stage), sample_index)`, so a video
does not depend on the batch it was drawn in or on the number of devices.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax import compile_cache, pipeline_format, pipeline_sharding, sharding, video_in
from t2v_jax.diffusion import consistency, reconstruction, samplers, schedules
from t2v_jax.diffusion import guidance as guidance_lib
from t2v_jax.models import platform
from t2v_jax.models.config import UNetConfig
from t2v_jax.models.unet3d import VideoUNet
from t2v_jax.sampling_args import validate_sampling_args
from t2v_jax.stage import Stage, StageConfig, check_chain
from t2v_jax.text.encoder import TextEncoder
from t2v_jax.upsample import upsample_video
from t2v_jax.video_io import to_uint8
from t2v_jax.video_layout import VideoLayout

# Compiled calls per stage by default: the progress bar moves 8 times per stage, for a few ms
# of dispatch per call (docs/sampling.md measures it).
CALLS_PER_STAGE = 8


def steps_per_call(num_steps: int, calls: int) -> int:
    """Steps each compiled call runs: the largest divisor of num_steps <= num_steps // calls.

    Every call has the same length, so one program per stage is compiled whatever the split;
    a prime num_steps larger than `calls` runs one step per call.
    """
    target = max(1, num_steps // calls)
    return max(d for d in range(1, target + 1) if num_steps % d == 0)


def _per_stage(value: Any, stages: Sequence[Stage], name: str) -> list[Any]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != len(stages):
            raise ValueError(
                f"{name}: expected one value per stage ({len(stages)}), got {len(value)}"
            )
        return list(value)
    return [value] * len(stages)


def device_memory_bytes(device: jax.Device) -> int | None:
    """The device's memory capacity where the backend reports it (GPU/TPU); None on CPU."""
    try:
        stats = device.memory_stats()
    except (NotImplementedError, RuntimeError):
        return None
    return (stats or {}).get("bytes_limit")


class MemoryPreflightError(ValueError):
    """A stage's compiled sampler needs more device memory than the device has."""


class Pipeline:
    """Text encoder + ordered stages; `sample()` turns prompts into uint8 videos.

    Args:
      text_encoder: the (frozen) `TextEncoder` whose embeddings every stage is conditioned on.
      stages: the base stage first, then SR stages in order; consecutive shapes must chain.
      mesh: where to sample; default: all devices as pure data parallelism.
      calls_per_stage: each stage's loop is split into about this many compiled calls of equal
        length (see `steps_per_call`); the progress bar moves between calls. 1 = one scan.
      param_sharding: "replicated" (every device holds each stage's params), "sharded" (split
        over the mesh by their logical axis names; see t2v_jax/pipeline_sharding.py) or "auto":
        sharded only where the replicated program would not fit the device.
      video_sharding: "batch" (each device samples whole videos; the batch over data x fsdp)
        or "frames" (each video's frames split over the mesh's `fsdp` axis, the batch over
        `data`): for videos whose activations exceed one device; see t2v_jax/video_layout.py.
    """

    def __init__(
        self,
        text_encoder: TextEncoder,
        stages: Sequence[Stage],
        mesh: jax.sharding.Mesh | None = None,
        calls_per_stage: int = CALLS_PER_STAGE,
        param_sharding: str = "auto",
        video_sharding: str = "batch",
    ):
        if isinstance(calls_per_stage, bool) or not isinstance(calls_per_stage, int):
            raise ValueError(f"calls_per_stage: expected a positive int, got {calls_per_stage!r}")
        if calls_per_stage < 1:
            raise ValueError(f"calls_per_stage: expected a positive int, got {calls_per_stage}")
        self.param_sharding = pipeline_sharding.check_mode(param_sharding)
        check_chain(stages)
        for stage in stages:
            if stage.model.text_dim != text_encoder.d_model:
                raise ValueError(
                    f"stage {stage.config.name}: model.text_dim={stage.model.text_dim} but the "
                    f"text encoder's d_model is {text_encoder.d_model}"
                )
        self.text_encoder = text_encoder
        self.stages = list(stages)
        self.mesh = mesh or sharding.make_mesh(sharding.MeshConfig())
        self.layout = VideoLayout(self.mesh, video_sharding)
        self.layout.check_stages([stage.config for stage in self.stages])
        self.calls_per_stage = calls_per_stage
        self._compiled: dict[tuple, Any] = {}
        self.param_placement: dict[str, str] = {}  # stage name -> params' layout in the last sample

    def stage_named(self, name: str, where: str) -> Stage:
        """The stage called `name`, else a ValueError "<where> has no stage ... (it has ...)":
        `where` names the argument and the pipeline it gave (e.g. "teacher_stage: 'shapes'")."""
        names = [s.config.name for s in self.stages]
        if name not in names:
            raise ValueError(f"{where} has no stage {name!r} (it has {names})")
        return self.stages[names.index(name)]

    @property
    def fps(self) -> float:
        """Frames per second of the final stage's videos."""
        return self.stages[-1].config.fps

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """(T, H, W, C) of one output video."""
        c = self.stages[-1].config
        return c.frames, c.height, c.width, self.stages[-1].model.out_channels

    # ---------------------------------------------------------------------------------------
    # The compiled per-stage sampler.

    def _stage_fn(
        self,
        index: int,
        batch: int,
        num_steps: int,
        guided: bool,
        sharded: bool = False,
        known_method: str | None = None,
    ):
        """The jit-compiled program that runs `steps_per_call` denoising steps of stage `index`.

        `(params, keys, emb, mask, neg_emb, neg_mask, low, w, w_low, state, start) -> state`,
        where state = (x, x0_prev) [B, T, H, W, C] each comes from `_init_fn` or the previous
        call and `start` (int32, traced) is the first step's index. `sample` calls it
        num_steps / steps_per_call times. The guidance weights are traced inputs, so changing
        guidance_scale reuses the compiled loop; only switching guidance on or off (w == 1
        skips the unconditional half) recompiles. `sharded`: params come split over the mesh
        (`pipeline_sharding.param_shardings`), not replicated. With `known_method` (given frames,
        base stage) the program takes one more argument before `state`: a
        `reconstruction.KnownFrames`.
        """
        key = (index, batch, num_steps, guided, sharded) + ((known_method,) if known_method else ())
        if key in self._compiled:
            return self._compiled[key]
        stage = self.stages[index]
        cfg, module = stage.config, VideoUNet(stage.model)
        length = steps_per_call(num_steps, self.calls_per_stage)

        def model_fn(params, x, log_snr, cond):
            return module.apply(
                {"params": params},
                x,
                log_snr,
                cond["text_emb"],
                cond["text_mask"],
                cond_video=cond.get("cond_video"),
                cond_log_snr=cond.get("cond_log_snr"),
                guidance_weight=cond.get("guidance_weight"),
            )

        # A guidance-distilled model takes w as an input: one call per step, whatever w is.
        weight_input = stage.model.guidance_input

        def denoise(
            params, keys, emb, mask, neg_emb, neg_mask, low, w, w_low, state, start, known=None
        ):
            guidance = guidance_lib.GuidanceConfig(
                weight=w if guided or weight_input else 1.0,
                schedule=cfg.guidance_schedule,
                oscillate_after=cfg.oscillate_after,
                low_weight=w_low if guided or weight_input else 1.0,
            )
            cond = {"text_emb": emb, "text_mask": mask}
            if low is not None:
                # Recomputed by every call: cheap next to the U-Net, and it keeps one program.
                up = upsample_video(
                    low,
                    (cfg.frames, cfg.height, cfg.width),
                    cfg.upsample_kind,
                    spatial_method=cfg.spatial_upsample,
                    temporal_method=cfg.temporal_upsample,
                )
                # Noise conditioning augmentation at a fixed level, per-sample noise.
                aug_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
                lam = jnp.full(
                    (batch,), schedules.log_snr(jnp.float32(cfg.cond_noise_t), cfg.schedule)
                )
                if cfg.cond_noise_t > 0:
                    up = schedules.add_noise(
                        up, samplers.per_sample_normal(aug_keys, up.shape), lam
                    )
                cond["cond_video"] = up
                cond["cond_log_snr"] = lam
            return samplers.sample_steps(
                model_fn,
                params,
                keys,
                cond,
                state,
                start,
                length,
                num_steps,
                sampler=cfg.sampler,
                schedule_cfg=cfg.schedule,
                time_grid=cfg.time_grid,
                guidance=guidance,
                uncond_cond=None
                if guidance.is_identity or weight_input
                else {"text_emb": neg_emb, "text_mask": neg_mask},
                thresholding=cfg.thresholding,
                dynamic_percentile=cfg.dynamic_percentile,
                guidance_input=weight_input,
                known=known,
                known_method=known_method or "reconstruction",
                project_x0=None
                if cfg.data_consistency == "none"
                else lambda x0: consistency.project(x0, low, cfg.data_consistency),
            )

        layout = self.layout

        def stage_steps(*args, known=None):  # traced under the layout's activation rules
            with layout.activation_rules():
                return denoise(*args, known=known)

        batch_sharded, video = layout.batch, layout.video()
        program, known_in = stage_steps, ()
        if known_method:  # (..., w_low, known, state, start)
            program = lambda *a: stage_steps(*a[:9], *a[10:], known=a[9])
            known_in = (reconstruction.KnownFrames(batch_sharded(5), batch_sharded(2), None),)
        fn = jax.jit(
            program,
            in_shardings=(
                pipeline_sharding.param_shardings(stage.model, cfg, self.mesh, sharded),
                batch_sharded(1),
                batch_sharded(3),
                batch_sharded(2),
                batch_sharded(3),
                batch_sharded(2),
                None if index == 0 else batch_sharded(5),
                sharding.replicated(self.mesh),
                sharding.replicated(self.mesh),
                *known_in,
                (video, video),
                sharding.replicated(self.mesh),
            ),
            out_shardings=(video, video),
            compiler_options=self._compiler_options(),
        )
        self._compiled[key] = fn
        return fn

    def stage_program(
        self, index: int, batch: int, num_steps: int, guided: bool, sharded: bool = False
    ):
        """The jitted function `sample` calls for stage `index`, one chunk of steps per call.

        `(params, keys, emb, mask, neg_emb, neg_mask, low, w, w_low, state, start) -> state`,
        with the shardings `sample` uses (`state` is `samplers.init_state`'s, `start` an int32
        step index); tools lower and compile it ahead of time (t2v_jax/perf/aot.py) so that what
        they measure is what `sample` runs. `sharded`: the program with sharded params.
        """
        return self._stage_fn(index, batch, num_steps, guided, sharded)

    def _place_stage(
        self, index: int, batch: int, num_steps: int, guided: bool, rest: tuple, known_method=None
    ):
        """(program, params on the device) of stage `index`, laid out as `param_sharding` says.

        `rest`: the program's arguments after the params (before state and start)."""
        stage = self.stages[index]
        fn = self._stage_fn(index, batch, num_steps, guided, known_method=known_method)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), stage.params)
        sharded = pipeline_sharding.choose_stage_sharding(
            stage.config.name, self.param_sharding, device_memory_bytes(self.mesh.devices.flat[0]),
            lambda: self._program_bytes(index, fn, (abstract, *rest), batch), self.mesh.size,
        )  # fmt: skip
        self.param_placement[stage.config.name] = "sharded" if sharded else "replicated"
        # Placed once per stage, not per call: host (numpy) params would be copied by every call.
        where = pipeline_sharding.param_shardings(stage.model, stage.config, self.mesh, sharded)
        fn = self._stage_fn(index, batch, num_steps, guided, sharded, known_method)
        params = jax.device_put(stage.params, where)
        settings = (index, batch, num_steps, guided, sharded, known_method)
        return self._exported(fn, (params, *rest), settings), params

    def _exported(self, fn, args: tuple, settings: tuple):
        """Stage program `fn` as its exported twin (compile_cache.exported_program), so a second
        process reads it instead of tracing the U-Net; `settings` as in `_place_stage`."""
        key = ("exported", *settings)
        if key not in self._compiled:
            index, batch = settings[:2]
            stage, device = self.stages[index], self.mesh.devices.flat[0]
            state = jax.eval_shape(self._init_fn(index, batch), args[1])
            what = repr((stage.config, stage.model, settings, self.calls_per_stage,
                         device.platform, device.device_kind, dict(self.mesh.shape)))  # fmt: skip
            if self.layout.mode != "batch":  # (kept out of "batch" keys: caches stay valid)
                what += f" video_sharding={self.layout.mode}"
            with self._compile_target():  # the export traces for the mesh's platform
                self._compiled[key] = compile_cache.exported_program(
                    "stage_steps", what, fn, (*args, state, np.int32(0)),
                    compiler_options=self._compiler_options(),
                )  # fmt: skip
        return self._compiled[key]

    def _init_fn(self, index: int, batch: int):
        """jit-compiled `keys -> state`: stage `index`'s initial noise as a sampler state."""
        key = ("init", index, batch)
        if key not in self._compiled:
            stage = self.stages[index]
            cfg = stage.config
            shape = (batch, cfg.frames, cfg.height, cfg.width, stage.model.out_channels)
            out = self.layout.video(len(shape))

            def stage_init(keys):
                return samplers.init_state(keys, shape)

            self._compiled[key] = jax.jit(stage_init, out_shardings=(out, out))
        return self._compiled[key]

    def _compiler_options(self) -> dict[str, str] | None:
        """XLA options for the stage programs on the mesh's platform (platform.py says why)."""
        return platform.sampling_compiler_options(platform.platform_of(self.mesh))

    def _compile_target(self):
        """Stages are traced for the mesh's platform ("auto" kernels: Pallas attention on TPU)."""
        return platform.compile_target(platform.platform_of(self.mesh), self.mesh)

    def _run_stage(self, index: int, fn, args: tuple, num_steps: int, bar) -> jax.Array:
        """Runs stage `index` as num_steps / steps_per_call calls of `fn`; returns x [B, ...].

        Each call is queued before the previous one is waited on, so the device never idles
        while the host moves the bar.
        """
        length = steps_per_call(num_steps, self.calls_per_stage)
        state = self._init_fn(index, args[1].shape[0])(args[1])
        pending = None
        for start in range(0, num_steps, length):
            with self._compile_target():  # the first call traces
                state = fn(*args, state, np.int32(start))
            if bar is not None:
                if pending is not None:
                    jax.block_until_ready(pending)
                    bar.update(length)
                pending = state
        if bar is not None:
            jax.block_until_ready(pending)
            bar.update(length)
        return jnp.clip(state[0], -1.0, 1.0)

    def _program_bytes(self, index: int, fn, args, batch: int) -> int | None:
        """Device memory one call of stage `index`'s program needs (None: not reported)."""
        state = jax.eval_shape(self._init_fn(index, batch), args[1])
        with self._compile_target():
            try:
                analysis = fn.lower(*args, state, np.int32(0)).compile().memory_analysis()
            except jax.errors.JaxRuntimeError as e:  # a TPU refuses what cannot fit its HBM
                return pipeline_sharding.refused_bytes(e)
        if analysis is None:
            return None
        return (
            analysis.argument_size_in_bytes
            + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes
            - analysis.alias_size_in_bytes
        )

    def _preflight(self, index: int, fn, args, batch: int) -> None:
        """Refuses a stage whose compiled program cannot fit the device (where that is known)."""
        capacity = device_memory_bytes(self.mesh.devices.flat[0])
        if capacity is None:
            return
        needed = self._program_bytes(index, fn, args, batch)
        if needed is None or needed <= capacity:
            return
        per_device_batch = max(1, batch // self.layout.divisor)
        fits = int(per_device_batch * capacity / needed) * self.layout.divisor
        name = self.stages[index].config.name
        raise MemoryPreflightError(
            f"stage {name}: sampling a batch of {batch} needs {needed / 2**30:.2f} GiB per "
            f"device but the device has {capacity / 2**30:.2f} GiB; the largest batch that fits is "
            f"about {fits} (fewer prompts or num_videos_per_prompt)"
            + pipeline_sharding.hint(self.param_placement.get(name), self.mesh.size)
            + self.layout.hint()
        )

    # ---------------------------------------------------------------------------------------

    def sample(
        self,
        prompts: Sequence[str] | str | None,
        *,
        negative_prompts: Sequence[str] | str | None = None,
        num_steps: int | Sequence[int | None] | None = None,
        guidance_scale: float | Sequence[float | None] | None = None,
        seed: int = 0,
        num_videos_per_prompt: int = 1,
        return_intermediates: bool = False,
        progress: bool = True,
        callback: Callable[[str, int, np.ndarray], None] | None = None,
        start_stage: int | str = 0,
        init_video: Any = None,
        clip_fps: float | None = None,
        cond_frames: Any = None,
        cond_mask: Any = None,
        cond_method: Literal["reconstruction", "replacement"] = "reconstruction",
        cond_weight: float = video_in.DEFAULT_COND_WEIGHT,
    ) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
        """Samples videos for `prompts`.

        Args:
          prompts: one prompt or a list; None (one video per clip) when the stages run read no
            text (`UNetConfig.uses_text`).
          negative_prompts: None (unconditional branch = null text), one prompt for all, or one
            per prompt; used in place of the null text in classifier-free guidance.
          num_steps: denoising steps, one value for every stage or a list per stage (None = the
            stage's default).
          guidance_scale: guidance weight, one for all stages or a list per stage (None = the
            stage's default).
          seed: int in [0, 2**32 - 1]; the same seed gives the same videos whatever the batch.
          num_videos_per_prompt: videos per prompt (consecutive in the output).
          return_intermediates: also return each stage's output, {stage name: uint8 videos}.
          progress: show a tqdm progress bar over all stages and steps.
          callback: called as callback(stage_name, num_steps, uint8 videos) after each stage.
          start_stage, init_video, clip_fps: run the stages from `start_stage` (index or name)
            on `init_video` (a file, uint8 [T, H, W, 3], or [N, T, H, W, 3] one clip per
            prompt), fitted to that stage's input by `t2v_jax.video_in`'s rules.
          cond_frames, cond_mask, cond_method, cond_weight: base-stage frames to keep (uint8,
            all or just the marked ones) and their [T] or [N, T] bool mask, kept by
            reconstruction guidance of weight w_r (Ho et al. 2022) or by "replacement".
          See docs/video_in.md.

        Returns:
          uint8 [len(prompts) * num_videos_per_prompt, T, H, W, 3] (and the intermediates).
        """
        vin = video_in.VideoIn(self.stages, prompts, start_stage=start_stage, init_video=init_video,
                               clip_fps=clip_fps, cond_frames=cond_frames, cond_mask=cond_mask,
                               cond_method=cond_method, cond_weight=cond_weight)  # fmt: skip
        prompts = validate_sampling_args(
            vin.prompts, negative_prompts, num_steps, guidance_scale, seed, num_videos_per_prompt
        )
        init_low = vin.init_low(len(prompts), num_videos_per_prompt)  # [n, t, h, w, 3] or None
        known = vin.known(len(prompts), num_videos_per_prompt)  # ([n, T, H, W, 3], [n, T])
        steps = [
            s or st.config.num_steps
            for s, st in zip(
                _per_stage(num_steps, self.stages, "num_steps"), self.stages, strict=True
            )
        ]
        scales = [
            st.config.guidance_scale if g is None else float(g)
            for g, st in zip(
                _per_stage(guidance_scale, self.stages, "guidance_scale"), self.stages, strict=True
            )
        ]
        expanded = [p for p in prompts for _ in range(num_videos_per_prompt)]
        n = len(expanded)
        divisor = self.layout.divisor
        batch = -(-n // divisor) * divisor  # padded rows are sliced off; noise is per row
        pad = [""] * (batch - n)

        capacity = device_memory_bytes(self.mesh.devices.flat[0])  # None on CPU
        pipeline_sharding.place_text_encoder(
            self.text_encoder, self.mesh, self.param_sharding, capacity
        )
        emb, mask = self.text_encoder.encode(expanded + pad)
        if negative_prompts is None:
            neg_emb, neg_mask = jnp.zeros_like(emb), jnp.zeros_like(mask)
        else:
            negatives = (
                [negative_prompts] if isinstance(negative_prompts, str) else list(negative_prompts)
            )
            if len(negatives) == 1:
                negatives = negatives * len(prompts)
            negatives = [q for q in negatives for _ in range(num_videos_per_prompt)]
            neg_emb, neg_mask = self.text_encoder.encode(negatives + pad)
        put = lambda a: jax.device_put(a, self.layout.batch(a.ndim))
        put_low = self.layout.batch(5)
        emb, mask, neg_emb, neg_mask = map(put, (emb, mask, neg_emb, neg_mask))
        root = jax.random.key(int(seed))
        rows = jnp.arange(batch, dtype=jnp.uint32)
        pad_rows = lambda a: put(np.concatenate([a, np.zeros((batch - n, *a.shape[1:]), a.dtype)]))

        bar = self._progress_bar(sum(steps[vin.start :])) if progress else None
        intermediates = {}
        low = None if init_low is None else pad_rows(init_low)
        try:
            for i, stage in enumerate(self.stages[vin.start :], start=vin.start):
                guidance = guidance_lib.GuidanceConfig(
                    weight=scales[i],
                    schedule=stage.config.guidance_schedule,
                    oscillate_after=stage.config.oscillate_after,
                    low_weight=stage.config.low_guidance_scale,
                )
                keys = put(
                    jax.vmap(lambda r, i=i: jax.random.fold_in(jax.random.fold_in(root, i), r))(
                        rows
                    )
                )
                given = vin.cond_method if i == 0 else None
                weights = (np.float32(guidance.weight), np.float32(guidance.low_weight))
                rest = (keys, emb, mask, neg_emb, neg_mask, low, *weights)
                if given:  # padded rows have an all-zero mask: nothing is given there
                    w_r = np.float32(vin.cond_weight)  # traced: a new weight does not recompile
                    rest += (reconstruction.KnownFrames(*map(pad_rows, known), w_r),)
                fn, params = self._place_stage(
                    i, batch, steps[i], not guidance.is_identity, rest, given
                )
                args = (params, *rest)
                self._preflight(i, fn, args, batch)
                # The next stage's input is batch-split (a no-op unless frames were split).
                low = jax.device_put(self._run_stage(i, fn, args, steps[i], bar), put_low)
                if return_intermediates or callback is not None:
                    videos = to_uint8(np.asarray(low[:n]))
                    if return_intermediates:
                        intermediates[stage.config.name] = videos
                    if callback is not None:
                        callback(stage.config.name, steps[i], videos)
        finally:
            if bar is not None:
                bar.close()
        out = to_uint8(np.asarray(low[:n]))
        return (out, intermediates) if return_intermediates else out

    def save(
        self, path: str | os.PathLike, *, params_dtype: str = "float32", overwrite: bool = False
    ) -> pathlib.Path:
        """Writes the pipeline to a folder that `load_pipeline(path)` restores (see pipeline_format)."""
        return pipeline_format.save_pipeline(
            self, path, params_dtype=params_dtype, overwrite=overwrite
        )

    def _progress_bar(self, total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="sampling", unit="step")


def init_stage_params(model: UNetConfig, config: StageConfig, text_dim: int, rng: jax.Array) -> Any:
    """Randomly initialised parameters for a stage (tests, and the start of training)."""
    shape = (config.frames, config.height, config.width)
    variables = jax.jit(pipeline_sharding.unet_init_fn(model, *shape, text_dim))(rng)
    return nn.unbox(variables["params"])


def stage_config_from_experiment(config: Any) -> StageConfig:
    """The StageConfig of an experiment config (`config.stage` + `config.sampling` + schedule)."""
    from t2v_jax.configlib import from_config, to_dict

    fields = {**to_dict(config.stage), **to_dict(config.get("sampling", {}))}
    # Stage fields read by training and tools only (the data pipeline, the paper table).
    for data_only in ("frame_stride", "random_crop", "low_res_filter", "paper_params"):
        fields.pop(data_only, None)
    fields["schedule"] = to_dict(config.diffusion.schedule) if "diffusion" in config else {}
    return from_config(StageConfig, fields, "stage")


def build_pipeline(
    stage_configs: Sequence[Any],
    text_encoder: TextEncoder,
    rng: jax.Array,
    *,
    mesh: jax.sharding.Mesh | None = None,
) -> Pipeline:
    """A pipeline with freshly initialised stages from experiment configs (tests, notebooks)."""
    from t2v_jax.configlib import from_config

    stages = []
    for i, config in enumerate(stage_configs):
        stage_cfg = stage_config_from_experiment(config)
        model = from_config(UNetConfig, config.model, f"stages[{i}].model")
        params = init_stage_params(
            model, stage_cfg, text_encoder.d_model, jax.random.fold_in(rng, i)
        )
        stages.append(Stage(config=stage_cfg, model=model, params=params))
    return Pipeline(text_encoder, stages, mesh=mesh)


def text_encoder_from_config(text_config: Any, rng: jax.Array) -> TextEncoder:
    """The experiment's text encoder: `path` (a converted / HF T5 folder) or a fresh tiny T5.

    `text_config` is an experiment's `config.text`: either {"path": folder, "max_length": L}
    or {"tokenizer": "byte", "max_length": L, "t5": {T5Config fields}}.
    """
    from t2v_jax.configlib import ConfigError, from_config
    from t2v_jax.text import ByteTokenizer, T5Config, load_t5

    max_length = int(text_config.get("max_length", 128))
    if text_config.get("path"):
        return load_t5(text_config["path"], max_length=max_length)
    if text_config.get("tokenizer", "byte") != "byte":
        raise ConfigError("text.tokenizer: only 'byte' can be built without files; set text.path")
    t5 = from_config(T5Config, text_config["t5"], "text.t5")
    return TextEncoder.init_random(t5, ByteTokenizer(), rng, max_length=max_length)
