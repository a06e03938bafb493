"""The cascade: a tiny random base -> TSR -> SSR pipeline samples, saves, loads, validates input."""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import t2v_jax
from t2v_jax import cascade, compile_cache, pipeline_store, sharding

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROMPTS = ["a red circle moving right", "a blue square", "green", "x"]


def _assert_same_video(a, b):
    # Batch size and sharding change XLA's float reduction order, not the noise: frames agree to
    # within one uint8 level on a few pixels, while a different seed changes nearly all of them.
    diff = np.abs(a.astype(int) - b)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


@pytest.fixture(scope="module")
def pipe(build_tiny_pipeline):
    return build_tiny_pipeline()


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    return pipe.save(tmp_path_factory.mktemp("pipe") / "tiny")


def test_samples_end_to_end_with_progress_and_callback(pipe):
    seen = []
    videos, inter = pipe.sample(
        PROMPTS[:2],
        seed=3,
        num_steps=2,
        progress=True,
        return_intermediates=True,
        callback=lambda name, steps, x: seen.append((name, steps, x.shape)),
    )
    assert videos.shape == (2, 8, 16, 16, 3) and videos.dtype == np.uint8
    assert pipe.fps == 8.0 and pipe.output_shape == (8, 16, 16, 3)
    assert videos.std() > 1.0  # a random model still gives varied pixels, not a flat image
    assert seen == [
        ("base", 2, (2, 4, 8, 8, 3)),
        ("tsr", 2, (2, 8, 8, 8, 3)),
        ("ssr", 2, (2, 8, 16, 16, 3)),
    ]
    assert [v.shape for v in inter.values()] == [s[2] for s in seen]
    np.testing.assert_array_equal(inter["ssr"], videos)


def test_steps_per_call_divides_the_steps():
    assert [cascade.steps_per_call(n, 8) for n in (32, 16, 20, 31, 4, 1)] == [4, 2, 2, 1, 1, 1]
    assert cascade.steps_per_call(32, 1) == 32
    with pytest.raises(ValueError, match="calls_per_stage"):
        cascade.Pipeline(None, [], calls_per_stage=0)


def test_chunked_stages_equal_one_scan_and_hold_no_host_callback(pipe, monkeypatch):
    """Progress comes from the host between calls: same videos as one scan per stage."""
    one_scan = cascade.Pipeline(pipe.text_encoder, pipe.stages, pipe.mesh, calls_per_stage=1)
    bars = []
    monkeypatch.setattr(
        cascade.Pipeline, "_progress_bar", lambda self, total: bars.append(_Bar(total)) or bars[-1]
    )
    chunked = pipe.sample(PROMPTS[:2], seed=5, num_steps=4, guidance_scale=2.0)
    whole = one_scan.sample(PROMPTS[:2], seed=5, num_steps=4, guidance_scale=2.0, progress=False)
    np.testing.assert_array_equal(chunked, whole)
    assert bars[0].n == bars[0].total == 12 and bars[0].updates == 12  # 1 step per call here
    # One program per stage, whatever the number of calls; no host callback in it.
    programs = [k for k in pipe._compiled if k[:1] != ("init",) and k[2] == 4 and k[3]]
    assert sorted(k[0] for k in programs) == [0, 1, 2]
    fn = pipe._stage_fn(0, 2, 4, True)
    keys = jax.random.split(jax.random.key(0), 2)
    emb, mask = pipe.text_encoder.encode(["a", "b"])
    args = (pipe.stages[0].params, keys, emb, mask, emb, mask, None, np.float32(2), np.float32(1))
    state = jax.eval_shape(pipe._init_fn(0, 2), keys)
    assert "callback" not in fn.lower(*args, state, np.int32(0)).as_text()


class _Bar:
    def __init__(self, total):
        self.total, self.n, self.updates = total, 0, 0

    def update(self, k):
        self.n += k
        self.updates += 1

    def close(self):
        pass


def test_same_seed_same_video_whatever_the_batch(pipe):
    together = pipe.sample(PROMPTS, seed=11, num_steps=2, progress=False)
    first = pipe.sample(PROMPTS[:1], seed=11, num_steps=2, progress=False)
    # Noise is keyed by (seed, stage, row), so row 0 is the same in a batch of 4 and of 1.
    _assert_same_video(together[0], first[0])
    assert not np.array_equal(pipe.sample(PROMPTS[:1], seed=12, num_steps=2, progress=False), first)
    twice = pipe.sample(PROMPTS[:1], seed=11, num_steps=2, progress=False, num_videos_per_prompt=2)
    _assert_same_video(twice[0], first[0])
    assert not np.array_equal(twice[1], twice[0])


def test_stage_loop_compiles_once_per_shape(pipe):
    def compiles():
        return sum(fn._cache_size() for fn in pipe._compiled.values())

    a = pipe.sample(PROMPTS[:1], seed=0, num_steps=2, progress=False, guidance_scale=2.0)
    n = compiles()
    b = pipe.sample(
        PROMPTS[1:2], seed=0, num_steps=2, progress=False, guidance_scale=[3.0, 1.5, 1.5]
    )
    # A new prompt, seed or guidance weight reuses the compiled loops ...
    assert compiles() == n
    assert not np.array_equal(a, b)
    c = pipe.sample(PROMPTS[:1], seed=0, num_steps=2, progress=False, guidance_scale=5.0)
    assert compiles() == n
    assert not np.array_equal(a, c)  # ... and the weight really reaches the model


def test_a_stages_time_grid_reaches_its_sampler_and_survives_save_load(pipe, monkeypatch, tmp_path):
    """StageConfig.time_grid is the grid that stage's sampler walks (the others keep theirs),
    it changes the video, and a saved pipeline keeps it."""
    import dataclasses

    from t2v_jax.diffusion import samplers

    stages = [dataclasses.replace(pipe.stages[0], config=dataclasses.replace(
        pipe.stages[0].config, time_grid="karras")), *pipe.stages[1:]]  # fmt: skip
    karras = cascade.Pipeline(pipe.text_encoder, stages, pipe.mesh)
    grids = []
    real = samplers.sample_steps
    # No exported-program memo (a process that read one would not trace, so not call the spy).
    monkeypatch.setattr(compile_cache, "memo_dir", lambda name: None)
    monkeypatch.setattr(samplers, "sample_steps",
                        lambda *a, **k: grids.append(k["time_grid"]) or real(*a, **k))  # fmt: skip
    a = karras.sample(PROMPTS[:1], seed=3, num_steps=2, progress=False)
    assert grids == ["karras", "uniform", "uniform"]  # traced once per stage
    b = pipe.sample(PROMPTS[:1], seed=3, num_steps=2, progress=False)
    assert np.abs(a.astype(int) - b).max() > 8
    loaded = pipeline_store.load_pipeline(karras.save(tmp_path / "karras"), mesh=pipe.mesh)
    assert [s.config.time_grid for s in loaded.stages] == ["karras", "uniform", "uniform"]
    with pytest.raises(ValueError, match="stage base: time_grid: one of"):
        dataclasses.replace(pipe.stages[0].config, time_grid="edm")


def test_save_load_round_trip_is_bitwise(pipe, saved):
    one_device = sharding.make_mesh(sharding.MeshConfig(), devices=jax.devices()[:1])
    loaded = pipeline_store.load_pipeline(saved, mesh=one_device)
    a = pipe.sample(PROMPTS[:2], seed=4, num_steps=2, progress=False)
    b = loaded.sample(PROMPTS[:2], seed=4, num_steps=2, progress=False)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="already exists"):
        pipe.save(saved)


def test_corrupted_or_mismatched_pipelines_are_refused(saved, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    data = bytearray((broken / "stage_1.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (broken / "stage_1.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="stage_1.safetensors: checksum mismatch"):
        pipeline_store.load_pipeline(broken)

    wrong = tmp_path / "wrong"
    shutil.copytree(saved, wrong)
    description = json.loads((wrong / "pipeline.json").read_text())
    description["stages"][0]["model"]["base_channels"] = 16
    description["stages"][0]["model"]["norm_groups"] = 4
    (wrong / "pipeline.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match="has shape .* the model needs"):
        pipeline_store.load_pipeline(wrong)

    description["format_version"] = 99
    (wrong / "pipeline.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match="format_version 99 is not supported"):
        pipeline_store.load_pipeline(wrong)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prompts": []}, "prompts: expected a non-empty list"),
        ({"prompts": ["ok", 3]}, "prompts: every prompt must be a str; item 1 is int"),
        ({"num_steps": 0}, "num_steps: expected a positive int"),
        ({"num_steps": 2.5}, "num_steps: expected a positive int"),
        ({"guidance_scale": float("nan")}, "guidance_scale: expected a finite number"),
        ({"guidance_scale": float("inf")}, "guidance_scale: expected a finite number"),
        ({"guidance_scale": -1.0}, "guidance_scale: expected a finite number >= 0"),
        ({"num_videos_per_prompt": 0}, "num_videos_per_prompt: expected a positive int"),
        ({"seed": -1}, r"seed: expected an int in \[0, 4294967295\]"),
        ({"seed": 2**32}, r"seed: expected an int in \[0, 4294967295\]"),
        ({"negative_prompts": ["a", "b", "c"]}, "negative_prompts: expected 1 or 2"),
    ],
)
def test_invalid_arguments_fail_fast(pipe, kwargs, match):
    prompts = kwargs.pop("prompts", ["a", "b"])
    with pytest.raises(ValueError, match=match):
        pipe.sample(prompts, progress=False, **kwargs)
    with pytest.raises(ValueError, match=match):  # the top-level API checks before loading
        t2v_jax.sample(prompts, **kwargs)


def test_unknown_pipeline_name():
    with pytest.raises(ValueError, match="'nope' is neither a built-in pipeline"):
        t2v_jax.load_pipeline("nope")


def test_long_prompt_is_truncated_with_a_warning(pipe):
    with pytest.warns(UserWarning, match="truncated"):
        videos = pipe.sample(["a very long prompt " * 10], num_steps=2, progress=False)
    assert videos.shape[0] == 1


def _stage_bytes(pipe, monkeypatch, batch: int) -> int:
    """The most device memory any stage's compiled sampler needs for `batch` prompts."""
    needed = []

    def measure(self, index, fn, args, batch):
        needed.append(self._program_bytes(index, fn, args, batch))

    with monkeypatch.context() as patch:
        patch.setattr(cascade.Pipeline, "_preflight", measure)
        pipe.sample(["x"] * batch, num_steps=2, progress=False)
    return max(needed)


def test_memory_preflight_accepts_what_fits_and_names_the_largest_batch(pipe, monkeypatch):
    capacity = _stage_bytes(pipe, monkeypatch, 2)  # exactly what a batch of 2 needs
    monkeypatch.setattr(cascade, "device_memory_bytes", lambda device: capacity)
    assert pipe.sample(["x"] * 2, num_steps=2, progress=False).shape[0] == 2  # fits: accepted
    with pytest.raises(cascade.MemoryPreflightError, match=r"needs .* GiB per device but") as err:
        pipe.sample(["x"] * 4, num_steps=2, progress=False)
    largest = int(re.search(r"the largest batch that fits is about (\d+)", str(err.value))[1])
    assert largest == 2
    with pytest.raises(cascade.MemoryPreflightError):  # and it is the largest
        pipe.sample(["x"] * (largest + 1), num_steps=2, progress=False)


@pytest.mark.slow
def test_one_vs_eight_devices_give_the_same_videos(pipe):
    eight = cascade.Pipeline(pipe.text_encoder, pipe.stages, mesh=sharding.make_mesh())
    a = pipe.sample(PROMPTS[:3], seed=2, num_steps=2, progress=False)
    b = eight.sample(PROMPTS[:3], seed=2, num_steps=2, progress=False)
    _assert_same_video(a, b)


@pytest.mark.slow
def test_cli_end_to_end(saved, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "t2v_jax.cli.sample", "a red circle", "a blue square",
           "--pipeline", str(saved), "--out", str(tmp_path / "v.gif"), "--steps", "2",
           "--no-progress", "--compilation-cache", str(tmp_path / "cache")]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    for name in ("v_0.gif", "v_1.gif"):
        assert t2v_jax.read_video(tmp_path / name).shape == (8, 16, 16, 3)
    # A second run must not overwrite what the first wrote.
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "already exists" in again.stderr
    bad = subprocess.run(
        [*cmd[:4], "--out", str(tmp_path / "v.avi")], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unsupported video suffix" in bad.stderr
