"""Stage programs memoized as `jax.export`ed StableHLO: a new process (here: a new Pipeline,
which shares no jit cache with the first) reads them instead of tracing the U-Net, samples the
same videos, and never uses a damaged or mismatched memo."""

import logging
import pathlib

import jax
import numpy as np
import pytest

from t2v_jax import cascade, compile_cache
from t2v_jax.diffusion import samplers

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROMPTS = ["red circle", "blue square"]


@pytest.fixture(scope="module")
def parts(build_tiny_pipeline):
    return build_tiny_pipeline()


def _fresh(pipe, **kwargs):
    """A Pipeline over the same stages with empty in-process program caches."""
    return cascade.Pipeline(pipe.text_encoder, pipe.stages, pipe.mesh, **kwargs)


def _sample(pipe):
    return pipe.sample(PROMPTS, seed=4, num_steps=2, guidance_scale=2.0, progress=False)


@pytest.fixture
def memo(parts, tmp_path, monkeypatch):
    """(memo folder, the videos sampled without any memo)."""
    with monkeypatch.context() as patch:
        patch.setattr(compile_cache, "memo_dir", lambda name: None)
        reference = _sample(_fresh(parts))
    folder = tmp_path / "exported"
    monkeypatch.setattr(compile_cache, "memo_dir", lambda name: tmp_path / name)
    return folder, reference


def _no_tracing(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the stage program was traced, not read from its exported memo")

    monkeypatch.setattr(samplers, "sample_steps", boom)


def test_a_new_pipeline_reads_the_exported_programs_instead_of_tracing(parts, memo, monkeypatch):
    folder, reference = memo
    np.testing.assert_array_equal(_sample(_fresh(parts)), reference)  # exports and writes
    assert len(list(folder.glob("stage_steps-*.bin"))) == 3  # one per stage
    _no_tracing(monkeypatch)
    np.testing.assert_array_equal(_sample(_fresh(parts)), reference)


def test_the_memo_key_holds_the_static_settings(parts, memo, monkeypatch):
    folder, reference = memo
    _sample(_fresh(parts))
    # One call per stage runs 2 steps per call where the default ran 1: the same argument
    # shapes, so only the key tells the programs apart.
    np.testing.assert_array_equal(_sample(_fresh(parts, calls_per_stage=1)), reference)
    assert len(list(folder.glob("stage_steps-*.bin"))) == 6


def test_a_damaged_memo_is_exported_again(parts, memo, monkeypatch, caplog):
    folder, reference = memo
    _sample(_fresh(parts))
    for file in folder.glob("stage_steps-*.bin"):
        blob = bytearray(file.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        file.write_bytes(bytes(blob))
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(_sample(_fresh(parts)), reference)
    assert caplog.text.count("unreadable exported program") == 3
    _no_tracing(monkeypatch)  # rewritten whole: the next pipeline reads them again
    np.testing.assert_array_equal(_sample(_fresh(parts)), reference)


def test_a_program_that_cannot_be_exported_is_traced_as_before(parts, memo, monkeypatch, caplog):
    folder, reference = memo

    def refuse(fn, **kwargs):
        raise ValueError("custom call target not guaranteed stable")

    monkeypatch.setattr(jax.export, "export", refuse)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(_sample(_fresh(parts)), reference)
    assert caplog.text.count("not exportable") == 3 and not list(folder.glob("*.bin"))


def _stage_programs_text(pipe) -> list[str]:
    """The compiled HLO of each stage program one sample runs (exported or not)."""
    texts, run_stage = [], pipe._run_stage

    def capture(index, fn, args, num_steps, bar):
        state = pipe._init_fn(index, args[1].shape[0])(args[1])
        texts.append(fn.lower(*args, state, np.int32(0)).compile().as_text())
        return run_stage(index, fn, args, num_steps, bar)

    pipe._run_stage = capture
    _sample(pipe)
    return texts


YNN_FUSION = "%ynn_fusion"  # how XLA:CPU's HLO names a YNNPACK fusion


@pytest.mark.parametrize("exported", [False, True])
def test_cpu_stage_programs_compile_without_library_fusions(parts, memo, monkeypatch, exported):
    """platform.sampling_compiler_options reaches both the traced and the exported programs."""
    a = np.ones((64, 64), np.float32)
    if YNN_FUSION not in jax.jit(lambda x: x @ x).lower(a).compile().as_text():
        pytest.skip("this jaxlib's XLA:CPU does not fuse dots with YNNPACK")
    if not exported:
        monkeypatch.setattr(compile_cache, "memo_dir", lambda name: None)
    texts = _stage_programs_text(_fresh(parts))
    assert len(texts) == 3 and not any(YNN_FUSION in t for t in texts)
