"""write_video / read_video round trips for every format, and the output-path checks."""

import os

import numpy as np
import pytest

from t2v_jax import video_io


def _moving_square(t=6, h=32, w=48):
    video = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        video[i, 8:20, 4 + 4 * i : 16 + 4 * i] = (230, 40, 30)
    return video


@pytest.mark.parametrize("suffix, tol", [(".mp4", 12), (".gif", 8), (".webp", 0)])
def test_animation_round_trip(tmp_path, suffix, tol):
    video = _moving_square()
    path = video_io.write_video(video, tmp_path / f"v{suffix}", fps=8)
    back = video_io.read_video(path)
    assert back.shape == video.shape and back.dtype == np.uint8
    # Codec loss is small on flat colours; mean error is a robust check of frame order too.
    assert np.abs(back.astype(int) - video).mean() <= tol / 4
    # The square's horizontal centroid moves right frame after frame, as written.
    xs = [np.nonzero(f[..., 0] > 128)[1].mean() for f in back]
    assert np.all(np.diff(xs) > 2)


def test_mp4_fps_and_odd_sizes(tmp_path):
    import imageio_ffmpeg

    video = _moving_square(t=10, h=15, w=21)
    path = video_io.write_video(video, tmp_path / "odd.mp4", fps=5)
    frames, secs = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert frames == 10 and abs(secs - 2.0) < 0.25
    back = video_io.read_video(path)
    assert back.shape == (10, 16, 22, 3)  # padded by one edge pixel for yuv420p


def test_png_grid(tmp_path):
    from PIL import Image

    video = _moving_square(t=10, h=4, w=5)
    path = video_io.write_video(video, tmp_path / "grid.png")
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * 4, 8 * 5, 3)
    np.testing.assert_array_equal(grid[:4, 5:10], video[1])
    np.testing.assert_array_equal(grid[4:8, 5:10], video[9])
    assert not grid[4:8, 10:].any()


def test_float_videos_are_converted(tmp_path):
    video = np.full((2, 4, 4, 3), -1.0, np.float32)
    video[1] = 1.0
    assert video_io.to_uint8(video)[0].max() == 0 and video_io.to_uint8(video)[1].min() == 255


def test_output_path_errors(tmp_path):
    video = _moving_square(t=2)
    with pytest.raises(ValueError, match="unsupported video suffix '.avi'"):
        video_io.write_video(video, tmp_path / "a.avi")
    with pytest.raises(ValueError, match="does not exist"):
        video_io.write_video(video, tmp_path / "missing" / "a.mp4")
    existing = tmp_path / "keep.gif"
    existing.write_bytes(b"user data")
    with pytest.raises(ValueError, match="already exists"):
        video_io.write_video(video, existing)
    assert existing.read_bytes() == b"user data"
    video_io.write_video(video, existing, overwrite=True)
    assert existing.read_bytes() != b"user data"
    with pytest.raises(ValueError, match=r"expected \[T, H, W, 3\]"):
        video_io.write_video(video[0], tmp_path / "b.gif")
    with pytest.raises(ValueError, match="fps"):
        video_io.write_video(video, tmp_path / "c.gif", fps=0)
    assert sorted(os.listdir(tmp_path)) == ["keep.gif"]  # no temp files left behind


def test_unwritable_folder(tmp_path, monkeypatch):
    # Tests run as root here, where every folder is writable; simulate a read-only one.
    real_access = os.access
    monkeypatch.setattr(
        video_io.os, "access", lambda p, mode: False if p == tmp_path else real_access(p, mode)
    )
    with pytest.raises(ValueError, match="not writable"):
        video_io.write_video(_moving_square(t=2), tmp_path / "a.mp4")
