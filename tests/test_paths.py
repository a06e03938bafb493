"""gs:// paths stay URLs all the way through the trainer, the data cache and the outputs.

No network: fsspec's in-memory filesystem is registered for the `gs` protocol, so the very code
that talks to a bucket (etils.epath over fsspec) runs against memory. Orbax's checkpoints go
through tensorstore's own GCS driver instead, so for them the test checks the path they are
given, not the bytes.
"""

import os
import sys

import flax.linen as nn
import fsspec
import jax
import ml_collections
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from t2v_jax import axes, paths
from t2v_jax.data import pipeline
from t2v_jax.text import cache as cache_lib
from t2v_jax.train import loop


@pytest.fixture
def fake_gcs():
    """`gs://` backed by fsspec's in-memory filesystem, through epath's own fsspec backend.

    Keys keep their `gs://` prefix (the memory filesystem strips only `memory://`).
    """
    from etils.epath import backend

    fs = MemoryFileSystem()  # its store is class-level: what epath writes lands here too
    fs.store.clear()
    for protocol in ("gs", "gcs"):  # epath asks fsspec for "gcs"
        fsspec.register_implementation(protocol, MemoryFileSystem, clobber=True)
    backend.fsspec_backend._get_filesystem.cache_clear()
    yield fs
    fs.store.clear()
    registry = sys.modules["fsspec.registry"]._registry
    registry.pop("gs", None)
    registry.pop("gcs", None)
    backend.fsspec_backend._get_filesystem.cache_clear()


def test_as_path_keeps_urls_and_joins_inside_them():
    path = paths.as_path("gs://bucket/run") / "checkpoints"
    assert os.fspath(path) == "gs://bucket/run/checkpoints"
    assert paths.is_url(path) and not paths.is_url("/tmp/run")
    assert os.fspath(paths.as_path("~/run")) == os.path.expanduser("~/run")


def test_remote_folder_round_trip(fake_gcs, tmp_path):
    local = tmp_path / "src"
    (local / "sub").mkdir(parents=True)
    (local / "a.json").write_text('{"x": 1}')
    (local / "sub" / "b.bin").write_bytes(b"\x00\x01\x02")
    paths.upload_folder(local, "gs://bucket/folder")
    assert fake_gcs.cat("gs://bucket/folder/sub/b.bin") == b"\x00\x01\x02"
    staged = paths.stage_local("gs://bucket/folder", tmp_path / "cache")
    with open(os.path.join(staged, "a.json")) as f:
        assert f.read() == '{"x": 1}'
    with open(os.path.join(staged, "sub", "b.bin"), "rb") as f:
        assert f.read() == b"\x00\x01\x02"
    assert paths.stage_local(tmp_path / "src") == str(tmp_path / "src")  # local stays as is


def test_caption_embedding_cache_on_a_bucket(fake_gcs, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # stage_local's default cache under ~/.cache
    rng = np.random.default_rng(0)
    captions = ["a red circle", "a blue square moving left"]
    lengths = np.array([3, 5])
    emb = rng.standard_normal((2, 6, 4)).astype(np.float32)
    emb[np.arange(6)[None, :] >= lengths[:, None]] = 0
    cache = cache_lib.EmbeddingCache(
        embeddings=np.concatenate([emb[0, :3], emb[1, :5]]).astype(np.float16),
        offsets=np.array([0, 3, 8]),
        truncated=np.zeros(2, bool),
        max_length=6,
    )
    pipeline.save_caption_embeddings("gs://bucket/emb", captions, cache)
    assert sorted(fake_gcs.ls("gs://bucket/emb", detail=False)) == [
        "gs://bucket/emb/captions.json", "gs://bucket/emb/embeddings.safetensors"
    ]  # fmt: skip
    rows, loaded = pipeline.load_caption_embeddings("gs://bucket/emb")
    assert rows == {c: i for i, c in enumerate(captions)}
    got, mask = loaded.lookup([1, 0])
    np.testing.assert_allclose(got[0], emb[1], atol=1e-2)  # stored as float16
    assert mask.sum(axis=1).tolist() == [5, 3]
    assert not os.path.exists("gs:")


def test_tensorboard_and_samples_of_a_gs_workdir_go_to_the_bucket(fake_gcs):
    workdir = paths.as_path("gs://bucket/run")
    metrics = loop._Metrics(workdir, global_batch=8)
    metrics.scalars(1, {"loss": 0.5})
    metrics.close()
    events = fake_gcs.ls("gs://bucket/run/tensorboard", detail=False)
    assert len(events) == 1 and fake_gcs.size(events[0]) > 0
    videos = np.zeros((2, 3, 4, 4, 3), np.float32)
    grid = loop._write_samples(workdir, 7, videos)
    png = fake_gcs.cat("gs://bucket/run/samples/step_7.png")
    assert png.startswith(b"\x89PNG") and grid.shape == (8, 12, 3)
    assert not os.path.exists("gs:")


class _Stop(Exception):
    pass


def test_train_hands_orbax_the_gs_workdir_unchanged(fake_gcs, monkeypatch, tmp_path):
    """`t2v-train --workdir gs://...` must never become the local path `gs:/...`."""
    monkeypatch.chdir(tmp_path)
    seen = []

    def fake_checkpointer(directory, cfg, **kw):
        seen.append(directory)
        raise _Stop

    monkeypatch.setattr(loop.ckpt_lib, "Checkpointer", fake_checkpointer)

    def init_params(rng):
        w = nn.with_logical_partitioning(nn.initializers.lecun_normal(), (axes.CONV_IN, axes.MLP))
        return {"w": w(rng, (3, 8))}, {}

    config = ml_collections.ConfigDict(
        {"mesh": {"data": -1}, "train": {"batch_size": 8, "num_steps": 2}}
    )
    task = loop.Task(init_params, lambda *a: (0.0, {}), lambda: iter(()))
    with pytest.raises(_Stop):
        loop.train(config, "gs://bucket/run", task, devices=jax.devices())
    assert [os.fspath(d) for d in seen] == ["gs://bucket/run/checkpoints"]
    assert fake_gcs.isdir("gs://bucket/run")
    assert not os.listdir(tmp_path)  # nothing local, no `gs:` folder


def test_warm_start_from_a_bucket_reads_the_bucket(fake_gcs):
    """The warm-start source is looked up in the bucket (and found empty), not on local disk."""
    fake_gcs.pipe("gs://bucket/other/README", b"not a run")
    with pytest.raises(ValueError, match="init_from='gs://bucket/other': no checkpoints/"):
        loop._warm_start(None, "gs://bucket/other", loop.ckpt_lib.CheckpointConfig())


def test_pipeline_saves_to_and_loads_from_a_bucket(fake_gcs, tmp_path, monkeypatch):
    from t2v_jax import pipeline_store
    from t2v_jax.perf.bench import save_tiny_pipeline

    monkeypatch.setenv("HOME", str(tmp_path))  # the local copy of the bucket folder
    save_tiny_pipeline(str(tmp_path / "tiny"))
    pipe = pipeline_store.load_pipeline(str(tmp_path / "tiny"))
    pipe.save("gs://bucket/pipes/tiny")
    assert fake_gcs.exists("gs://bucket/pipes/tiny/pipeline.json")
    with pytest.raises(ValueError, match="already exists"):
        pipe.save("gs://bucket/pipes/tiny")  # nothing a user saved is overwritten unasked
    again = pipeline_store.load_pipeline("gs://bucket/pipes/tiny")
    for a, b in zip(pipe.stages, again.stages, strict=True):
        for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(ValueError, match="holds no pipeline.json"):
        pipeline_store.load_pipeline("gs://bucket/pipes/missing")
    assert not os.path.exists("gs:")
