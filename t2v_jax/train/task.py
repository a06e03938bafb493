"""The diffusion task of one cascade stage: param init, the loss (text, SR conditioning), data, samples.

This is where the experiment config meets the model stack: `diffusion_task(config)` builds the
VideoUNet, the text tower, the v-loss and the data iterator of `config.stage`, and hands the
model-agnostic loop (`t2v_jax.train.loop.train`) a `Task`.

Text: the batch carries either 'text_emb' (a precomputed frozen-T5 cache) or 'text_ids' +
'text_mask', in which case a T5 encoder runs inside the step, frozen (its params in
`state.frozen["text"]`) or trained jointly (`train.train_text_encoder`: in `state.params["text"]`).
The null text (classifier-free guidance) is zeros with an all-False mask, as at sampling.

SR stages: the step upsamples the batch's 'low_res' to the stage's size (`t2v_jax.upsample`:
frame repetition for TSR, bilinear for SSR) and noise-augments it to a random level
t ~ U(train.cond_noise_min_t, train.cond_noise_max_t), whose log-SNR is a model input.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2v_jax import configlib, distributed, sharding
from t2v_jax.configlib import ConfigError
from t2v_jax.data import pipeline
from t2v_jax.diffusion import objectives, samplers, schedules
from t2v_jax.models.config import UNetConfig
from t2v_jax.models.unet3d import VideoUNet
from t2v_jax.text import ByteTokenizer, T5Config, T5Encoder, load_t5
from t2v_jax.train import loop
from t2v_jax.train import state as state_lib
from t2v_jax.upsample import upsample_video

_UPSAMPLE_KIND = {"tsr": "temporal", "ssr": "spatial"}


@dataclasses.dataclass(frozen=True)
class _Text:
    """The text tower of a run: None module when the batch carries cached embeddings."""

    module: T5Encoder | None
    loaded_params: Any  # plain arrays of a T5 read from text.path, else None
    tokenizer: Any
    max_length: int
    dim: int


def _text_tower(config: Any, data_cfg: pipeline.DataConfig, text_dim: int) -> _Text:
    text_cfg = config.get("text", {})
    max_length = int(text_cfg.get("max_length", data_cfg.max_text_length))
    if data_cfg.text_embeddings is not None:
        return _Text(None, None, None, max_length, text_dim)
    if text_cfg.get("path"):
        encoder = load_t5(text_cfg["path"], max_length=max_length)
        return _Text(
            T5Encoder(encoder.config), encoder.params, encoder.tokenizer, max_length,
            encoder.config.d_model,
        )  # fmt: skip
    if "t5" not in text_cfg or text_cfg.get("tokenizer", "byte") != "byte":
        raise ConfigError(
            "text: set text.path (a T5 folder), or text.tokenizer='byte' with text.t5 (a T5 "
            "trained or frozen from random init), or data.text_embeddings (a cache)"
        )
    t5 = configlib.from_config(T5Config, text_cfg["t5"], "text.t5")
    return _Text(T5Encoder(t5), None, ByteTokenizer(), max_length, t5.d_model)


def _boxed_like(module: nn.Module, args: tuple, values: Any) -> Any:
    """Loaded plain params boxed with the module's logical names (so they shard like a fresh init)."""
    boxed = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)["params"]
    return jax.tree.map(
        lambda box, v: box.replace_boxed(jnp.asarray(v)),
        boxed, values, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
    )  # fmt: skip


def stage_data_config(config: Any) -> pipeline.StageDataConfig:
    """What the stage trains on (`config.stage` as the data pipeline reads it, crops included)."""
    stage = config.stage
    kind = stage.kind
    fields = {"kind": kind, "frames": stage.frames, "height": stage.height, "width": stage.width}
    if kind != "base":
        fields.update(low_frames=stage.low_frames, low_height=stage.low_height,
                      low_width=stage.low_width)  # fmt: skip
    for optional in ("random_crop", "frame_stride", "low_res_filter"):
        if optional in stage:
            fields[optional] = stage[optional]
    return configlib.from_config(pipeline.StageDataConfig, fields, "stage")


def diffusion_task(config: Any) -> loop.Task:
    """The `Task` that trains `config.stage` as a text-conditioned video diffusion model.

    Reads config.stage, config.model (UNetConfig), config.text, config.data (DataConfig),
    config.diffusion.schedule / .loss, config.sampling (guidance, sampler for eval samples),
    config.train, config.log.
    """
    if "data" not in config:
        raise ConfigError("data: missing section; e.g. {'name': 'shapes/32x16'} (DataConfig)")
    train_cfg = configlib.from_config(state_lib.TrainConfig, config.train, "train")
    log_cfg = configlib.from_config(loop.LogConfig, config.get("log", {}), "log")
    unet_cfg = configlib.from_config(UNetConfig, config.model, "model")
    diffusion = config.get("diffusion", {})
    schedule_cfg = configlib.from_config(
        schedules.ScheduleConfig, diffusion.get("schedule", {}), "diffusion.schedule"
    )
    loss_cfg = configlib.from_config(objectives.LossConfig, diffusion.get("loss", {}),
                                     "diffusion.loss")  # fmt: skip
    data_cfg = configlib.from_config(pipeline.DataConfig, config.data, "data")
    stage_cfg = stage_data_config(config)
    text = _text_tower(config, data_cfg, unet_cfg.text_dim)
    data_cfg = dataclasses.replace(data_cfg, max_text_length=text.max_length)
    if text.dim != unet_cfg.text_dim:
        raise ConfigError(
            f"model.text_dim={unet_cfg.text_dim} but the text encoder gives {text.dim}"
        )
    if (stage_cfg.kind == "base") != (unet_cfg.cond_channels == 0):
        raise ConfigError(
            f"model.cond_channels={unet_cfg.cond_channels} does not fit stage.kind="
            f"{stage_cfg.kind!r} (0 for base, the video's channels for tsr/ssr)"
        )
    unet = VideoUNet(unet_cfg)
    frames, height, width, _ = stage_cfg.video_shape
    seq = text.max_length
    uses_ids = text.module is not None
    null_cond = {
        "text_emb": jnp.zeros((1, seq, unet_cfg.text_dim), jnp.float32),
        "text_mask": jnp.zeros((1, seq), bool),
    }

    def init_params(rng):
        k_unet, k_text = jax.random.split(rng)
        trainable = {"unet": init_unet_params(unet_cfg, (frames, height, width), seq, k_unet)}
        frozen = {}
        if uses_ids:
            t5_args = (jnp.zeros((1, seq), jnp.int32), jnp.ones((1, seq), bool))
            if text.loaded_params is not None:
                t5_params = _boxed_like(text.module, t5_args, text.loaded_params)
            else:
                t5_params = text.module.init(k_text, *t5_args)["params"]
            (trainable if train_cfg.train_text_encoder else frozen)["text"] = t5_params
        return trainable, frozen

    def encode(text_params, ids, mask):
        return text.module.apply({"params": text_params}, ids, mask).astype(jnp.float32)

    conditioning = functools.partial(stage_conditioning, stage_cfg=stage_cfg,
                                     schedule_cfg=schedule_cfg, train_cfg=train_cfg)  # fmt: skip

    def apply_unet(unet_params, z, lam, emb, mask, cond, *, train, dropout_rng=None):
        return unet.apply(
            {"params": unet_params}, z, lam, emb, mask,
            cond_video=cond.get("cond_video"), cond_log_snr=cond.get("cond_log_snr"),
            frame_mask=cond.get("frame_mask"), train=train,
            rngs={"dropout": dropout_rng} if dropout_rng is not None else None,
        )  # fmt: skip

    def loss_fn(params, frozen, rng, batch):
        k_aug, k_text, k_dropout, k_loss = jax.random.split(rng, 4)
        x0 = batch["video"]  # [B, T, H, W, 3]
        cond = conditioning(k_aug, batch)
        joint_text = uses_ids and train_cfg.train_text_encoder
        if not uses_ids:
            cond.update(text_emb=batch["text_emb"], text_mask=batch["text_mask"])
        elif joint_text:
            cond.update(text_ids=batch["text_ids"], text_mask=batch["text_mask"])
        else:
            emb = jax.lax.stop_gradient(
                encode(frozen["text"], batch["text_ids"], batch["text_mask"])
            )
            cond.update(text_emb=emb, text_mask=batch["text_mask"])

        def model_fn(p, z, lam, c):
            if joint_text:
                # The encoder is differentiated, so it runs here; the loss's own dropout only
                # sees 'text_emb' entries, so the null text is applied here too.
                emb = encode(p["text"], c["text_ids"], c["text_mask"])  # [B, L, D]
                emb, mask = objectives.drop_text(k_text, emb, c["text_mask"],
                                                 null_cond["text_emb"], null_cond["text_mask"],
                                                 loss_cfg.text_dropout)  # fmt: skip
            else:
                emb, mask = c["text_emb"], c["text_mask"]
            return apply_unet(p["unet"], z, lam, emb, mask, c, train=True, dropout_rng=k_dropout)

        return objectives.diffusion_loss(
            model_fn, params, k_loss, x0, cond, schedule_cfg, loss_cfg,
            null_cond=None if joint_text else null_cond,
        )  # fmt: skip

    # Once per task: the in-loop sampler's setup and the training iterator both need the data.
    prepare = functools.cache(lambda: _prepare_once(data_cfg))

    def make_iterator(seed=None, worker_count=0):
        seed = config.get("seed", 0) if seed is None else seed
        prepare()
        return pipeline.make_train_iterator(
            data_cfg, stage_cfg, text.tokenizer, seed=seed,
            batch_size=train_cfg.batch_size // jax.process_count(), worker_count=worker_count,
        )  # fmt: skip

    sample_fn = None
    if log_cfg.sample_every_steps:
        sample_fn = _make_sample_fn(
            config, log_cfg, unet_cfg, schedule_cfg, text, null_cond, data_cfg, stage_cfg,
            prepare, conditioning, apply_unet, encode, (frames, height, width),
        )  # fmt: skip
    return loop.Task(init_params, loss_fn, make_iterator, sample_fn)


def init_unet_params(
    unet_cfg: UNetConfig, size: tuple[int, int, int], seq: int, rng: jax.Array
) -> Any:
    """Fresh boxed (logically named) VideoUNet params for videos of `size` (T, H, W) and text of
    `seq` tokens."""
    x = jnp.zeros((1, *size, unet_cfg.in_channels))
    kwargs = {"guidance_weight": jnp.ones((1,))} if unet_cfg.guidance_input else {}
    if unet_cfg.cond_channels:
        kwargs.update(
            cond_video=jnp.zeros((1, *size, unet_cfg.cond_channels)), cond_log_snr=jnp.zeros((1,))
        )
    text_args = (jnp.zeros((1, seq, unet_cfg.text_dim)), jnp.ones((1, seq), bool))
    return VideoUNet(unet_cfg).init(rng, x, jnp.zeros((1,)), *text_args, **kwargs)["params"]


def stage_conditioning(
    rng: jax.Array,
    batch: dict[str, Any],
    *,
    stage_cfg: pipeline.StageDataConfig,
    schedule_cfg: schedules.ScheduleConfig,
    train_cfg: state_lib.TrainConfig,
    fixed_t: float | None = None,
) -> dict[str, jax.Array]:
    """A batch's conditioning besides the text: the SR stages' upsampled, noise-augmented
    low-res video (at t ~ U(train.cond_noise_min_t, max_t), or `fixed_t`) and the frame mask."""
    cond = {}
    if stage_cfg.kind != "base":
        frames, height, width, _ = stage_cfg.video_shape
        up = upsample_video(batch["low_res"], (frames, height, width),
                            _UPSAMPLE_KIND[stage_cfg.kind])  # fmt: skip  # [B, T, H, W, 3]
        cond["cond_video"], cond["cond_log_snr"] = objectives.augment_conditioning(
            rng, up, schedule_cfg, min_t=train_cfg.cond_noise_min_t,
            max_t=train_cfg.cond_noise_max_t, fixed_t=fixed_t,
        )  # fmt: skip
    if "frame_mask" in batch:
        cond["frame_mask"] = batch["frame_mask"]
    return cond


def _prepare_once(data_cfg: pipeline.DataConfig) -> None:
    """Builds the run's TFDS datasets if needed: on process 0 only, the others wait for it.

    Every host preparing the same dataset into shared storage would race on its files.
    """
    if distributed.is_primary():
        pipeline.prepare(data_cfg.name, data_cfg.data_dir)
        if data_cfg.image_name:
            pipeline.prepare(data_cfg.image_name, data_cfg.data_dir)
    distributed.barrier("t2v_data_prepared")


def _make_sample_fn(config, log_cfg, unet_cfg, schedule_cfg, text, null_cond, data_cfg,
                    stage_cfg, prepare, conditioning, apply_unet, encode, size):  # fmt: skip
    """EMA samples conditioned on a fixed held-aside batch (its captions; low-res for SR).

    The held batch is the first `num_samples` elements of a separate stream (seed + 1, so
    drawing it does not move the training iterator), read whole by every host: the batch is a
    constant of the compiled sampler, which must be the same program on every host of a pod.
    """
    sampling = config.get("sampling", {})
    n = log_cfg.num_samples
    prepare()
    held = next(
        pipeline.make_train_iterator(
            data_cfg, stage_cfg, text.tokenizer, seed=config.get("seed", 0) + 1, batch_size=n,
            process_index=0, process_count=1,
        )
    )  # fmt: skip
    held = {k: np.asarray(v) for k, v in held.items()}
    if log_cfg.prompts and text.tokenizer is not None:
        prompts = [log_cfg.prompts[i % len(log_cfg.prompts)] for i in range(n)]
        ids, mask, _ = text.tokenizer.tokenize(prompts, text.max_length)
        held["text_ids"], held["text_mask"] = np.asarray(ids, np.int32), np.asarray(mask, bool)
    guidance = float(sampling.get("guidance_scale", 1.0))

    def run(ema_params, frozen, rng):
        k_aug, k_sample = jax.random.split(rng)
        cond = conditioning(k_aug, held, fixed_t=float(sampling.get("cond_noise_t", 0.0)))
        if "text_emb" in held:
            cond.update(text_emb=held["text_emb"], text_mask=held["text_mask"])
        else:
            text_params = ema_params["text"] if "text" in ema_params else frozen["text"]
            cond.update(text_emb=encode(text_params, held["text_ids"], held["text_mask"]),
                        text_mask=held["text_mask"])  # fmt: skip

        def model_fn(p, z, lam, c):
            return apply_unet(p, z, lam, c["text_emb"], c["text_mask"], c, train=False)

        return samplers.sample(
            model_fn, ema_params["unet"], jax.random.split(k_sample, n), cond,
            (n, *size, unet_cfg.out_channels), log_cfg.sample_steps,
            sampler=sampling.get("sampler", "ddim"), schedule_cfg=schedule_cfg,
            guidance=guidance if guidance != 1.0 else None,
            uncond_cond=null_cond if guidance != 1.0 else None,
            thresholding=sampling.get("thresholding", "dynamic"),
        )  # fmt: skip

    return functools.partial(_call_sampler, run, {})


def _call_sampler(run, compiled, ema_params, frozen, rng, num_samples):
    """Runs the sampler with its videos replicated on the params' mesh (readable on every host)."""
    del num_samples  # fixed by the held-aside batch
    mesh = jax.tree.leaves(ema_params)[0].sharding.mesh
    if mesh not in compiled:
        jitted = jax.jit(run, out_shardings=sharding.replicated(mesh))
        compiled[mesh] = distributed.compile_together(
            jitted, ema_params, frozen, rng, name="in_loop_sampler"
        )
    return compiled[mesh](ema_params, frozen, rng)
