"""Sharded sampling: a tiny cascade with params split over 8 fake devices gives the replicated videos."""

import logging
import math
import pathlib

import jax
import numpy as np
import pytest

from t2v_jax import cascade, pipeline_sharding, sharding
from t2v_jax.configlib import load_config
from t2v_jax.text.encoder import TextEncoder

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROMPTS = ["a red circle moving right", "a blue square", "green"]


@pytest.fixture(scope="module")
def parts():
    """configs/tiny.py's text encoder and base stage.

    One stage keeps the compiles (replicated and sharded programs on 8 devices) within CI's
    budget; an SR stage's params are placed by the same code (a base -> TSR version of these
    tests passed when sharded sampling was written).
    """
    configs = [load_config(f"{ROOT / 'configs' / 'tiny.py'}:base")]
    encoder = cascade.text_encoder_from_config(configs[0].text, jax.random.key(1))
    pipe = cascade.build_pipeline(configs, encoder, jax.random.key(0))
    return pipe.text_encoder, pipe.stages


def _pipeline(parts, mode: str) -> cascade.Pipeline:
    # data 2 x fsdp 2 x tensor 2: params split 4 ways along their fsdp axis, 2 along tensor's.
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
    encoder, stages = parts
    # A copy of the encoder: sharding one moves its params, the other pipelines keep theirs.
    encoder = TextEncoder(encoder.config, encoder.params, encoder.tokenizer, encoder.max_length)
    return cascade.Pipeline(encoder, stages, mesh=mesh, param_sharding=mode)


def _device0_bytes(tree) -> int:
    """Bytes of `tree` that device 0 holds (all of it when replicated)."""
    device = jax.devices()[0]
    return sum(
        shard.data.nbytes
        for leaf in jax.tree.leaves(tree)
        for shard in leaf.addressable_shards
        if shard.device == device
    )


def _record_params(monkeypatch) -> list:
    """Patches Pipeline._run_stage to keep the params each stage's program was called with."""
    seen, run = [], cascade.Pipeline._run_stage

    def spy(self, index, fn, args, num_steps, bar):
        seen.append(args[0])
        return run(self, index, fn, args, num_steps, bar)

    monkeypatch.setattr(cascade.Pipeline, "_run_stage", spy)
    return seen


def _assert_same_video(a, b):
    # The documented rule (tests/test_cascade.py, docs/architecture.md): the same noise, another
    # reduction order, so at most one uint8 level on a few pixels.
    diff = np.abs(a.astype(int) - b)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


def test_sharded_params_give_the_replicated_videos(parts, monkeypatch):
    replicated = _pipeline(parts, "replicated").sample(PROMPTS, seed=5, num_steps=2, progress=False)
    pipe = _pipeline(parts, "sharded")
    seen = _record_params(monkeypatch)
    videos = pipe.sample(PROMPTS, seed=5, num_steps=2, progress=False)
    _assert_same_video(videos, replicated)
    assert pipe.param_placement == {"base": "sharded"}
    # Really split: each device holds a fraction of every stage's params (1/8 for the big
    # kernels; norms, biases and widths the mesh does not divide stay whole), not all of them.
    for stage, params in zip(pipe.stages, seen, strict=True):
        full = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(stage.params))
        assert _device0_bytes(params) < full / 3, (stage.config.name, _device0_bytes(params), full)
    # The text encoder is sharded too, and still encodes what it did.
    assert _device0_bytes(pipe.text_encoder.params) < (
        pipeline_sharding.tree_bytes(pipe.text_encoder.params) / 3
    )


def test_auto_shards_a_stage_that_would_not_fit(parts, monkeypatch, caplog):
    pipe = _pipeline(parts, "auto")
    needed = []
    measure_bytes = cascade.Pipeline._program_bytes

    def measure(self, index, fn, args, batch):
        needed.append(measure_bytes(self, index, fn, args, batch))
        return needed[-1]

    monkeypatch.setattr(cascade.Pipeline, "_program_bytes", measure)
    # A device reporting 1 GiB (CPU reports none): the tiny stage fits, so auto replicates.
    monkeypatch.setattr(cascade, "device_memory_bytes", lambda device: 2**30)
    replicated = pipe.sample(PROMPTS, seed=5, num_steps=2, progress=False)
    assert pipe.param_placement == {"base": "replicated"}
    # One byte less than the replicated program (as compiled and measured above) needs: auto
    # shards, and the sharded program fits (a device holds a quarter-to-an-eighth of the
    # big kernels instead of all of them).
    monkeypatch.setattr(cascade, "device_memory_bytes", lambda device: needed[0] - 1)
    with caplog.at_level(logging.INFO, logger="t2v_jax.pipeline_sharding"):
        videos = pipe.sample(PROMPTS, seed=5, num_steps=2, progress=False)
    assert pipe.param_placement == {"base": "sharded"}
    assert "stage base: with replicated params" in caplog.text
    assert "param_sharding='sharded'" in caplog.text
    _assert_same_video(videos, replicated)


def test_replicated_that_does_not_fit_names_the_knob(parts, monkeypatch):
    pipe = _pipeline(parts, "replicated")
    monkeypatch.setattr(cascade, "device_memory_bytes", lambda device: 1)
    with pytest.raises(cascade.MemoryPreflightError, match=r"param_sharding='sharded'"):
        pipe.sample(PROMPTS[:1], num_steps=2, progress=False)


def test_bad_param_sharding_is_refused_before_anything_compiles():
    with pytest.raises(ValueError, match=r"param_sharding: expected one of 'auto'.*got 'fsdp'"):
        cascade.Pipeline(None, [], param_sharding="fsdp")


def test_sampling_rules_split_fsdp_params_over_all_batch_devices():
    from t2v_jax import axes

    rules = dict(pipeline_sharding.sampling_rules())
    assert rules[axes.EMBED] == ("data", "fsdp") and rules[axes.CONV_IN] == ("data", "fsdp")
    assert rules[axes.HEADS] == "tensor" and rules[axes.BATCH] == ("data", "fsdp")


def test_a_width_data_x_fsdp_does_not_divide_still_splits_over_fsdp():
    from t2v_jax.text.t5 import T5Config

    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
    # d_model 6: not a multiple of data*fsdp = 4 (the sampling rules would replicate it whole),
    # a multiple of fsdp = 2 (the training rules split it).
    config = T5Config(vocab_size=16, d_model=6, d_kv=2, d_ff=8, num_layers=1, num_heads=2)
    shardings = pipeline_sharding.t5_param_shardings(config, mesh)
    assert shardings["final_norm"]["scale"].shard_shape((6,)) == (3,)
    assert shardings["layers_0"]["mlp"]["wo"].shard_shape((8, 6)) == (4, 3)  # [mlp, embed]


def test_a_compile_refused_for_hbm_reads_as_not_fitting():
    # The TPU compiler's refusal of the paper base's replicated sampler on v5e (measured).
    refusal = RuntimeError(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (21.97G) exceeds available HBM (15.75G)."
    )
    assert pipeline_sharding.refused_bytes(refusal) == int(21.97 * 2**30)
    with pytest.raises(RuntimeError, match="something else"):
        pipeline_sharding.refused_bytes(RuntimeError("something else"))
