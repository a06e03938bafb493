"""The `real_footage` TFDS builder (wheel-shipped clips and photos) and the bicubic SR degradation."""

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skimage")
tfds = pytest.importorskip("tensorflow_datasets")

from t2v_jax.data import pipeline, real_footage  # noqa: E402


def _pil_bicubic(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC))


def test_clips_are_views_of_the_training_clips_only(tmp_path):
    cfg = real_footage.RealFootageConfig(
        name="test_clips", source="clips", size=16, frames=4, zooms=(1, 2),
        views_per_zoom=(1, 2), max_source_frames=8,
    )  # fmt: skip
    real_footage.RealFootage(config=cfg, data_dir=str(tmp_path)).download_and_prepare()
    src = tfds.data_source("real_footage/test_clips", split="train", data_dir=str(tmp_path))
    records = [src[i] for i in range(len(src))]
    # 2 clips x 3 views x (8 frames // 4) clips per view.
    assert len(records) == 12
    captions = {r["caption"].decode() for r in records}
    assert captions == set(real_footage.TRAIN_CLIPS)
    assert not captions & set(real_footage.HELD_OUT_CLIPS)
    # Zoom 1 is the centre square of the whole frame, shrunk by Pillow's bicubic.
    bikes = real_footage.read_clip("bikes.mp4", max_frames=4)  # 640x272
    side = 272
    left = (640 - side) // 2
    want = np.stack([_pil_bicubic(f[:, left : left + side], (16, 16)) for f in bikes])
    zoom1 = [
        r["video"] for r in records if r["caption"] == b"bikes.mp4" and np.array_equal(
            r["video"], want)
    ]  # fmt: skip
    assert len(zoom1) == 1


def test_photos_are_independent_views_of_the_wheel_photos(tmp_path):
    cfg = real_footage.RealFootageConfig(
        name="test_photos", source="photos", size=16, frames=8, zooms=(1,), views_per_zoom=(1,)
    )
    real_footage.RealFootage(config=cfg, data_dir=str(tmp_path)).download_and_prepare()
    src = tfds.data_source("real_footage/test_photos", split="train", data_dir=str(tmp_path))
    # One whole-photo view per photo, 8 per record (16 photos).
    assert len(src) == len(real_footage.PHOTOS) // 8
    images = np.concatenate([src[i]["video"] for i in range(len(src))])
    camera = real_footage.read_photo("camera")  # grey 512x512 -> RGB
    assert camera.shape == (512, 512, 3)
    wholes = {}  # each photo's centre square, shrunk by Pillow's bicubic
    for name in real_footage.PHOTOS:
        photo = real_footage.read_photo(name)
        h, w, _ = photo.shape
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        wholes[name] = _pil_bicubic(photo[top : top + side, left : left + side], (16, 16))
    found = [[n for n, want in wholes.items() if np.array_equal(im, want)] for im in images]
    assert all(len(names) == 1 for names in found), found
    assert len({names[0] for names in found}) == len(images)  # independent: no photo twice


def test_bicubic_degradation_is_what_video_in_does_to_a_clip():
    from t2v_jax import video_in

    rng = np.random.default_rng(0)
    record = {"video": rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)}
    common = {"kind": "ssr", "frames": 4, "height": 16, "width": 16, "low_height": 8,
              "low_width": 8}  # fmt: skip
    bicubic = pipeline.StageDataConfig(**common, low_res_filter="bicubic")
    out = pipeline.stage_transform(record, bicubic, np.random.default_rng(1))
    video_u8 = np.round((out["video"] + 1) * 127.5).astype(np.uint8)
    want = np.stack([_pil_bicubic(f, (8, 8)) for f in video_u8])
    np.testing.assert_array_equal(np.round((out["low_res"] + 1) * 127.5).astype(np.uint8), want)
    # ... the same as a user's clip fitted to the stage's input.
    np.testing.assert_array_equal(video_in.resize_frames(video_u8, 8, 8), want)
    box = pipeline.StageDataConfig(**common)
    out_box = pipeline.stage_transform(record, box, np.random.default_rng(1))
    blocks = out_box["video"].reshape(4, 8, 2, 8, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(out_box["low_res"], blocks, atol=1e-6)
    with pytest.raises(ValueError, match="low_res_filter"):
        pipeline.StageDataConfig(**common, low_res_filter="lanczos")
