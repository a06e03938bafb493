"""Sampling with each video's frames split over devices (`video_sharding="frames"`), 8 fake devices."""

import dataclasses
import pathlib

import jax
import numpy as np
import pytest

from t2v_jax import cascade, sharding, video_layout
from t2v_jax.configlib import load_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROMPTS = ["a red circle moving right", "a blue square"]


@pytest.fixture(scope="module")
def parts():
    """configs/tiny.py's text encoder, base (4 frames) and TSR (4 -> 8 frames) stages."""
    configs = [load_config(f"{ROOT / 'configs' / 'tiny.py'}:{name}") for name in ("base", "tsr")]
    encoder = cascade.text_encoder_from_config(configs[0].text, jax.random.key(1))
    pipe = cascade.build_pipeline(configs, encoder, jax.random.key(0))
    return pipe.text_encoder, pipe.stages


def _mesh(data: int, fsdp: int):
    return sharding.make_mesh(sharding.MeshConfig(data, fsdp, 1), jax.devices()[: data * fsdp])


def test_frames_split_gives_the_whole_video_layouts_videos(parts, monkeypatch):
    encoder, stages = parts
    whole = cascade.Pipeline(encoder, stages, mesh=_mesh(2, 1))
    # data 2 x fsdp 4: each video's 4 (base) and 8 (TSR) frames split 4 ways, one or two frames
    # per device, so every temporal conv and temporal attention crosses devices.
    split = cascade.Pipeline(encoder, stages, mesh=_mesh(2, 4), video_sharding="frames")
    assert split.layout.divisor == 2 and split.layout.frame_split == 4
    seen = []
    run = cascade.Pipeline._run_stage

    def spy(self, index, fn, args, num_steps, bar):
        out = run(self, index, fn, args, num_steps, bar)
        seen.append(out.sharding.shard_shape(out.shape))
        return out

    monkeypatch.setattr(cascade.Pipeline, "_run_stage", spy)
    kwargs = {"seed": 3, "num_steps": 2, "progress": False}
    expected = whole.sample(PROMPTS, **kwargs)
    seen.clear()
    videos = split.sample(PROMPTS, **kwargs)
    # The documented rule (tests/test_cascade.py): the same noise, another reduction order.
    diff = np.abs(videos.astype(int) - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    # Each device ends each stage holding its quarter of one video's frames.
    assert seen == [(1, 1, 8, 8, 3), (1, 2, 8, 8, 3)], seen


def test_frames_split_really_splits_the_activations(parts):
    # One 8-frame 16x16 video over fsdp=4 against the same video on one device: the compiled
    # program's per-device temporaries (XLA:CPU's memory analysis) are about a quarter (measured
    # 0.26; 0.96 when per-frame layers merged [B, T] batch-major and the compiler gathered).
    encoder, stages = parts
    base = stages[0]
    config = dataclasses.replace(base.config, frames=8, height=16, width=16)
    stage = cascade.Stage(config, base.model, base.params)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), base.params)
    emb, mask = encoder.encode(["red"])
    keys = jax.random.split(jax.random.key(0), 1)
    temps = {}
    for name, mesh, mode in (("whole", _mesh(1, 1), "batch"), ("split", _mesh(1, 4), "frames")):
        pipe = cascade.Pipeline(encoder, [stage], mesh=mesh, video_sharding=mode)
        state = jax.eval_shape(pipe._init_fn(0, 1), keys)
        with pipe._compile_target():
            lowered = pipe.stage_program(0, 1, 2, True).lower(
                params, keys, emb, mask, emb, mask, None, 1.0, 1.0, state, 0
            )
        temps[name] = lowered.compile().memory_analysis().temp_size_in_bytes
    assert temps["split"] < 0.4 * temps["whole"], temps


def test_bad_video_sharding_is_refused_before_anything_compiles(parts):
    encoder, stages = parts
    with pytest.raises(ValueError, match=r"video_sharding: expected one of 'batch'.*got 'rows'"):
        cascade.Pipeline(encoder, stages, mesh=_mesh(2, 1), video_sharding="rows")
    # fsdp 8 does not divide the base's 4 frames.
    with pytest.raises(ValueError, match=r"stage base has 4 frames, not a multiple of .*fsdp=8"):
        cascade.Pipeline(encoder, stages, mesh=_mesh(1, 8), video_sharding="frames")


def test_frames_rules_move_batch_and_frames_only():
    from t2v_jax import axes

    rules = dict(video_layout.VideoLayout(_mesh(2, 4), "frames").rules())
    assert rules[axes.BATCH] == ("data",) and rules[axes.FRAMES] == "fsdp"
    default = dict(sharding.DEFAULT_RULES)
    assert {k: v for k, v in rules.items() if k not in (axes.BATCH, axes.FRAMES)} == {
        k: v for k, v in default.items() if k not in (axes.BATCH, axes.FRAMES)
    }


def test_preflight_compiles_the_frames_split_sampler():
    # The pre-flight's sampler is the Pipeline's own program, so it splits the same way.
    from t2v_jax.perf import aot

    config = load_config(f"{ROOT / 'configs' / 'tiny.py'}:base")
    config.stage.frames, config.stage.height, config.stage.width = 8, 16, 16
    temps = {}
    for mode, mesh in (("batch", _mesh(1, 1)), ("frames", _mesh(1, 4))):
        report = aot.preflight(
            config, mesh, batch_size=4, sample_batch_size=1, train=False, video_sharding=mode
        )
        assert report.sampler_video_sharding == mode
        temps[mode] = report.sampler["temp_bytes"]
    assert temps["frames"] < 0.4 * temps["batch"], temps
    config.stage.frames = 6
    with pytest.raises(aot.PreflightError, match=r"stage base has 6 frames.*fsdp=4"):
        aot.preflight(config, _mesh(1, 4), batch_size=4, train=False, video_sharding="frames")


def test_load_pipeline_checks_the_layouts_before_reading_a_file(tmp_path):
    from t2v_jax.pipeline_store import load_pipeline

    # tmp_path holds no pipeline: a file read would fail with another message.
    with pytest.raises(ValueError, match=r"video_sharding: expected one of .*got 'rows'"):
        load_pipeline(tmp_path, video_sharding="rows")
    with pytest.raises(ValueError, match=r"param_sharding: expected one of .*got 'fsdp'"):
        load_pipeline(tmp_path, param_sharding="fsdp")


def test_a_sampler_that_does_not_fit_names_the_frames_split(parts, monkeypatch):
    encoder, stages = parts
    pipe = cascade.Pipeline(encoder, stages[:1], mesh=_mesh(2, 1), param_sharding="replicated")
    monkeypatch.setattr(cascade, "device_memory_bytes", lambda device: 1)
    with pytest.raises(cascade.MemoryPreflightError, match=r"video_sharding='frames'"):
        pipe.sample(PROMPTS[:1], num_steps=2, progress=False)
    split = cascade.Pipeline(encoder, stages[:1], mesh=_mesh(1, 4), video_sharding="frames")
    with pytest.raises(cascade.MemoryPreflightError) as refused:
        split.sample(PROMPTS[:1], num_steps=2, progress=False)
    assert "video_sharding" not in str(refused.value)  # already on: nothing more to suggest
