"""load_pipeline's parameter check: memoized beside the compilation cache, never stale."""

import json
import shutil

import jax
import pytest

from t2v_jax import cascade, compile_cache, pipeline_store
from t2v_jax.perf.bench import save_tiny_pipeline


@pytest.fixture
def cache_dir(tmp_path):
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla"))
    yield tmp_path / "xla"
    jax.config.update("jax_compilation_cache_dir", previous)


def test_param_shapes_are_memoized_and_the_memo_cannot_hide_a_mismatch(
    tmp_path, cache_dir, monkeypatch
):
    saved = tmp_path / "tiny"
    save_tiny_pipeline(str(saved))
    traced = []
    init = cascade.init_stage_params
    monkeypatch.setattr(
        cascade, "init_stage_params", lambda *a, **k: traced.append(a[1].name) or init(*a, **k)
    )

    pipeline_store.load_pipeline(saved)
    assert traced == ["base", "tsr", "ssr"]
    assert len(list((cache_dir / "t2v_jax_param_shapes").glob("*.json"))) == 3
    pipeline_store.load_pipeline(saved)  # a second load reads the memo: no model traced
    assert traced == ["base", "tsr", "ssr"]

    # A pipeline.json whose model no longer fits its params is still refused.
    wrong = tmp_path / "wrong"
    shutil.copytree(saved, wrong)
    description = json.loads((wrong / "pipeline.json").read_text())
    description["stages"][0]["model"]["base_channels"] *= 2
    (wrong / "pipeline.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match="has shape .* the model needs"):
        pipeline_store.load_pipeline(wrong)
    assert traced[-1] == "base"

    # Changed code (a new source fingerprint) recomputes every stage's shapes.
    monkeypatch.setattr(compile_cache, "source_fingerprint", lambda: "edited")
    del traced[:]
    pipeline_store.load_pipeline(saved)
    assert traced == ["base", "tsr", "ssr"]


@pytest.mark.parametrize("cache_dir", [None, "gs://bucket/xla"])
def test_no_memo_without_a_local_compilation_cache(cache_dir):
    # On a bucket, pathlib would have written the memos to a local folder named "gs:".
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    try:
        assert compile_cache.memo_dir("param_shapes") is None
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
