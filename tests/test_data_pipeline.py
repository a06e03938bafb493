"""Tests of the per-host grain input pipeline over the tiny `shapes` datasets."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from t2v_jax.data import pipeline
from t2v_jax.text.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    pipeline.prepare("shapes/tiny", path)
    pipeline.prepare("shapes/tiny_images", path)
    return path


def _source(data_dir, name="shapes/tiny", split="train"):
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)


def _iter(data_dir, stage, *, seed=0, batch_size=4, **kw):
    data_kw = {k: kw.pop(k) for k in list(kw) if k in ("image_name", "image_fraction", "shuffle")}
    cfg = pipeline.DataConfig(name="shapes/tiny", data_dir=data_dir, max_text_length=24, **data_kw)
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    return pipeline.make_train_iterator(
        cfg, stage, ByteTokenizer(), seed=seed, batch_size=batch_size, **kw
    )


BASE = pipeline.StageDataConfig(kind="base", frames=4, height=8, width=8)


def test_base_batch_layout(data_dir):
    batch = next(_iter(data_dir, BASE))
    assert set(batch) == {"video", "frame_mask", "text_ids", "text_mask"}
    assert batch["video"].shape == (4, 4, 8, 8, 3) and batch["video"].dtype == np.float32
    assert batch["video"].min() >= -1 and batch["video"].max() <= 1
    assert batch["frame_mask"].shape == (4, 4) and batch["frame_mask"].all()
    assert batch["text_ids"].shape == (4, 24) and batch["text_ids"].dtype == np.int32
    assert batch["text_mask"].dtype == bool


def test_clip_is_strided_frames_of_the_record(data_dir):
    stage = pipeline.StageDataConfig(kind="base", frames=3, height=16, width=16, frame_stride=2)
    src = _source(data_dir)
    it = _iter(data_dir, stage, return_labels=True, shuffle=False)
    for _ in range(3):
        batch = next(it)
        for video, index, caption, ids in zip(
            batch["video"], batch["index"], batch["caption"], batch["text_ids"], strict=True
        ):
            rec = src[int(index)]
            assert rec["caption"].decode() == caption
            np.testing.assert_array_equal(ids, ByteTokenizer().tokenize([caption], 24)[0][0])
            frames = np.round((video + 1) * 127.5).astype(np.uint8)
            starts = [
                s for s in range(8 - 4) if np.array_equal(frames, rec["video"][s : s + 5 : 2])
            ]
            assert starts, "clip is not frames s, s+2, s+4 of its record"


def test_ssr_low_res_is_box_downsample(data_dir):
    stage = pipeline.StageDataConfig(
        kind="ssr", frames=4, height=16, width=16, low_height=4, low_width=4
    )
    batch = next(_iter(data_dir, stage))
    assert batch["video"].shape == (4, 4, 16, 16, 3)
    assert batch["low_res"].shape == (4, 4, 4, 4, 3)
    v = batch["video"].astype(np.float64)
    expected = v.reshape(4, 4, 4, 4, 4, 4, 3).mean(axis=(3, 5))  # 4x4 block means
    np.testing.assert_allclose(batch["low_res"], expected, atol=1e-6)


def test_ssr_random_crop_shapes_and_consistency(data_dir):
    stage = pipeline.StageDataConfig(
        kind="ssr", frames=2, height=16, width=16, low_height=8, low_width=8, random_crop=(8, 6)
    )
    assert stage.video_shape == (2, 8, 6, 3) and stage.low_res_shape == (2, 4, 3, 3)
    batch = next(_iter(data_dir, stage))
    assert batch["video"].shape == (4, 2, 8, 6, 3)
    assert batch["low_res"].shape == (4, 2, 4, 3, 3)
    expected = batch["video"].reshape(4, 2, 4, 2, 3, 2, 3).mean(axis=(3, 5))
    np.testing.assert_allclose(batch["low_res"], expected, atol=1e-6)


def test_tsr_low_res_is_frame_subsample(data_dir):
    stage = pipeline.StageDataConfig(kind="tsr", frames=8, height=16, width=16, low_frames=2)
    batch = next(_iter(data_dir, stage))
    assert batch["video"].shape == (4, 8, 16, 16, 3)
    assert batch["low_res"].shape == (4, 2, 16, 16, 3)
    np.testing.assert_array_equal(batch["low_res"], batch["video"][:, ::4])


def test_base_downsamples_the_record(data_dir):
    src = _source(data_dir)
    batch = next(_iter(data_dir, BASE, return_labels=True))
    for video, index in zip(batch["video"], batch["index"], strict=True):
        rec = src[int(index)]["video"].astype(np.float64) / 127.5 - 1  # [8, 16, 16, 3]
        small = rec.reshape(8, 8, 2, 8, 2, 3).mean(axis=(2, 4))
        assert any(np.allclose(video, small[s : s + 4], atol=1e-5) for s in range(5))


def test_hosts_read_disjoint_shards_covering_the_split(data_dir):
    n = len(_source(data_dir))
    seen = []
    for host in range(4):
        it = _iter(
            data_dir,
            BASE,
            batch_size=3,
            process_index=host,
            process_count=4,
            num_epochs=1,
            return_labels=True,
        )
        indices = [int(i) for batch in it for i in batch["index"]]
        assert len(indices) == n // 4
        seen.append(set(indices))
    for a in range(4):
        for b in range(a + 1, 4):
            assert not seen[a] & seen[b]
    assert set().union(*seen) == set(range(n))


def test_state_restore_gives_identical_next_20_batches(data_dir):
    stage = pipeline.StageDataConfig(
        kind="ssr", frames=4, height=16, width=16, low_height=8, low_width=8, random_crop=(8, 8)
    )
    it = _iter(data_dir, stage, seed=3, batch_size=5)
    for _ in range(7):  # crosses an epoch boundary (48 records / 5 per batch)
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(20)]
    restored = _iter(data_dir, stage, seed=3, batch_size=5)
    restored.set_state(state)
    for want, got in zip(expected, [next(restored) for _ in range(20)], strict=True):
        assert want.keys() == got.keys()
        for k in want:
            np.testing.assert_array_equal(want[k], got[k])
    # A different seed is a different stream (so the check above is not vacuous).
    other = next(_iter(data_dir, stage, seed=4, batch_size=5))
    assert not np.array_equal(
        other["video"], next(_iter(data_dir, stage, seed=3, batch_size=5))["video"]
    )


def test_epochs_are_reshuffled(data_dir):
    it = _iter(data_dir, BASE, batch_size=8, return_labels=True, num_epochs=2)
    order = [int(i) for batch in it for i in batch["index"]]
    assert len(order) == 96
    assert sorted(order[:48]) == sorted(order[48:]) == list(range(48))
    assert order[:48] != order[48:]


def test_images_mixed_into_video_batches(data_dir):
    stage = pipeline.StageDataConfig(kind="base", frames=8, height=16, width=16)
    it = _iter(data_dir, stage, batch_size=4, image_name="shapes/tiny_images", image_fraction=0.5)
    for _ in range(3):
        batch = next(it)
        assert batch["video"].shape == (4, 8, 16, 16, 3)
        np.testing.assert_array_equal(batch["frame_mask"].all(axis=1), [True, True, False, False])
        np.testing.assert_array_equal(batch["frame_mask"].any(axis=1), [True, True, False, False])
        for images in batch["video"][2:]:  # independent stills: no two frames alike
            diffs = [np.abs(images[i] - images[i + 1]).max() for i in range(7)]
            assert min(diffs) > 0
    with pytest.raises(ValueError, match="tsr"):
        _iter(
            data_dir,
            pipeline.StageDataConfig(kind="tsr", frames=8, low_frames=4),
            image_name="shapes/tiny_images",
            image_fraction=0.5,
        )


def test_stage_config_validation():
    with pytest.raises(ValueError, match="low_frames"):
        pipeline.StageDataConfig(kind="tsr", frames=8, low_frames=3)
    with pytest.raises(ValueError, match="low_height"):
        pipeline.StageDataConfig(kind="ssr", height=16, width=16, low_height=5, low_width=8)
    with pytest.raises(ValueError, match="random_crop"):
        pipeline.StageDataConfig(height=16, width=16, random_crop=(32, 8))
    with pytest.raises(ValueError, match="base"):
        pipeline.StageDataConfig(kind="base", low_frames=2)
    with pytest.raises(ValueError, match="image_name"):
        pipeline.DataConfig(image_fraction=0.5)


def test_short_records_and_bad_hosts_raise(data_dir):
    with pytest.raises(ValueError, match="frames"):
        next(_iter(data_dir, pipeline.StageDataConfig(frames=5, frame_stride=2)))
    with pytest.raises(ValueError, match="process_index"):
        _iter(data_dir, BASE, process_index=4, process_count=4)


@pytest.mark.slow  # starts worker processes (~20 s on a 2-core CPU)
def test_worker_processes_give_the_same_batches_and_resume(data_dir):
    stage = pipeline.StageDataConfig(
        kind="ssr", frames=4, height=16, width=16, low_height=8, low_width=8
    )
    with _iter(data_dir, stage, seed=1) as it:
        want = [next(it) for _ in range(8)]
    with _iter(data_dir, stage, seed=1, worker_count=2) as it:
        got = [next(it) for _ in range(4)]
        state = json.loads(json.dumps(it.get_state()))
    with _iter(data_dir, stage, seed=1, worker_count=2) as it:
        it.set_state(state)
        got += [next(it) for _ in range(4)]
    for w, g in zip(want, got, strict=True):
        for k in w:
            np.testing.assert_array_equal(w[k], g[k])
