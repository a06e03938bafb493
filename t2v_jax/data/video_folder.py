"""TFDS builder `video_folder`: the user's own folder of videos + captions, cut into fixed clips.

The folder holds video files (mp4, webm, avi, mov, mkv, gif) and a captions file, either CSV with
a `file,caption` header or JSONL lines `{"file": ..., "caption": ...}`; `file` is relative to the
folder. Each video is decoded with imageio-ffmpeg, resampled in time to `fps` (nearest source
frame at t = k / fps), resized to cover (height, width) and centre cropped, and cut into
consecutive non-overlapping clips of `frames` frames (the leftover tail is dropped). Files that
cannot be decoded, have no caption, or are too short are skipped, logged, and counted in a report
stored in the dataset's metadata (`read_report`); they never stop the build.

Usage (no TensorFlow needed):
  cfg = VideoFolderConfig(name="my_clips", video_dir="/data/clips", frames=16, fps=8,
                          height=64, width=64)
  VideoFolder(config=cfg, data_dir=DIR).download_and_prepare()
  src = tfds.data_source("video_folder/my_clips", data_dir=DIR, download=False)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from t2v_jax.data import transforms
from t2v_jax.data.features import video_feature

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".gif")


@dataclasses.dataclass(eq=False)
class VideoFolderConfig(tfds.core.BuilderConfig):
    """One prepared variant of a video folder.

    Attributes:
      video_dir: the folder of videos.
      captions: path of the captions file (CSV or JSONL, by extension); default: the first of
        captions.csv / captions.jsonl found in `video_dir`.
      frames: frames per clip.
      fps: target frame rate (None: keep the source rate).
      height, width: stored clip resolution (cover-resize, then centre crop).
      max_clips_per_video: cap on clips taken from one file (None: all).
    """

    video_dir: str = ""
    captions: str | None = None
    frames: int = 16
    fps: float | None = 8.0
    height: int = 64
    width: int = 64
    max_clips_per_video: int | None = None

    def __post_init__(self):
        if not self.video_dir:
            raise ValueError("VideoFolderConfig.video_dir must name a folder of videos")
        for name in ("frames", "height", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"VideoFolderConfig.{name}={getattr(self, name)}; must be >= 1")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"VideoFolderConfig.fps={self.fps}; must be > 0 or None")


def read_captions(path: str) -> dict[str, str]:
    """{file: caption} from a CSV (`file,caption` header) or JSONL captions file."""
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    elif path.endswith(".csv"):
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise ValueError(f"captions={path!r}; must end in .csv or .jsonl")
    try:
        return {str(r["file"]): str(r["caption"]) for r in rows}
    except KeyError as e:
        raise ValueError(f"captions file {path!r}: every row needs 'file' and 'caption'") from e


def decode_video(path: str, cfg: VideoFolderConfig) -> tuple[np.ndarray, float]:
    """Decodes, resamples to cfg.fps and fits to (height, width).

    Frames are resized as they stream in, so a long HD video never sits in memory at full size.

    Returns:
      (uint8 [N, height, width, 3], the source frame rate).

    Raises:
      OSError / RuntimeError / ValueError from ffmpeg on unreadable input.
    """
    # Imported here: the ffmpeg binary wheel is only needed to decode video files, not to train
    # on `shapes` or on cached data (a lean accelerator image can leave it out).
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(path)
    meta = next(gen)
    src_fps = float(meta["fps"])
    if not src_fps > 0:
        raise ValueError(f"{path}: unusable frame rate {meta['fps']!r}")
    w, h = meta["size"]
    # The exact frame count needs a full decode; select by time instead: output frame k takes
    # the source frame nearest to k / fps, decided as source frames stream past.
    step = src_fps / cfg.fps if cfg.fps is not None else 1.0
    out, k = [], 0
    for i, raw in enumerate(gen):
        frame = np.frombuffer(raw, np.uint8).reshape(h, w, 3)
        while round(k * step) == i:
            out.append(transforms.fit_video(frame[None], cfg.height, cfg.width)[0])
            k += 1
    if not out:
        return np.zeros((0, cfg.height, cfg.width, 3), np.uint8), src_fps
    return np.stack(out), src_fps


class VideoFolder(tfds.core.GeneratorBasedBuilder):
    """A folder of captioned videos as fixed-length clips (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}  # noqa: RUF012 (TFDS reads a class attribute)
    # No built-in configs: every folder is the user's; pass `config=VideoFolderConfig(...)`.
    BUILDER_CONFIGS = []  # noqa: RUF012

    def __init__(self, *, file_format: str | None = "array_record", **kwargs):
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Clips of {cfg.frames} frames at {cfg.fps} fps from {cfg.video_dir}.",
            features=tfds.features.FeaturesDict(
                {
                    "video": video_feature(cfg.frames, cfg.height, cfg.width),  # [T, H, W, 3]
                    "caption": tfds.features.Text(),
                    "file": tfds.features.Text(),
                    "clip_index": tfds.features.Scalar(dtype=np.int32),
                    "start_time": tfds.features.Scalar(dtype=np.float32),  # seconds
                }
            ),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # local files only
        return {"train": self._generate_examples()}

    def _captions_path(self) -> str:
        cfg = self.builder_config
        if cfg.captions:
            return cfg.captions
        for name in ("captions.csv", "captions.jsonl"):
            path = os.path.join(cfg.video_dir, name)
            if os.path.exists(path):
                return path
        raise ValueError(f"no captions file given and none in {cfg.video_dir} (captions.csv/jsonl)")

    def _generate_examples(self) -> Iterator[tuple[str, dict]]:
        cfg = self.builder_config
        captions = read_captions(self._captions_path())
        files = sorted(f for f in os.listdir(cfg.video_dir) if f.lower().endswith(VIDEO_EXTENSIONS))
        report = {
            "videos": 0,
            "clips": 0,
            "broken": {},
            "no_caption": [],
            "too_short": [],
            "missing": sorted(set(captions) - set(files)),
        }
        for name in files:
            if name not in captions:
                report["no_caption"].append(name)
                continue
            try:
                frames, src_fps = decode_video(os.path.join(cfg.video_dir, name), cfg)
            except (OSError, RuntimeError, ValueError, StopIteration) as e:
                # A broken file is the user's data problem, never a reason to lose the build.
                logging.warning("video_folder: skipping unreadable %s: %s", name, e)
                report["broken"][name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
                continue
            num_clips = len(frames) // cfg.frames
            if cfg.max_clips_per_video is not None:
                num_clips = min(num_clips, cfg.max_clips_per_video)
            if num_clips == 0:
                report["too_short"].append(name)
                continue
            report["videos"] += 1
            fps = cfg.fps or src_fps
            for c in range(num_clips):
                report["clips"] += 1
                start = c * cfg.frames
                yield (
                    f"{name}:{c}",
                    {
                        "video": frames[start : start + cfg.frames],
                        "caption": captions[name],
                        "file": name,
                        "clip_index": np.int32(c),
                        "start_time": np.float32(start / fps),
                    },
                )
        report["skipped"] = (
            len(report["broken"]) + len(report["no_caption"]) + len(report["too_short"])
        )
        logging.info("video_folder report: %s", json.dumps(report))
        # DatasetInfo writes its metadata after generation, so the report lands in metadata.json.
        self.info.metadata["report"] = report


def read_report(builder: tfds.core.DatasetBuilder) -> dict:
    """The build report of a prepared `video_folder` dataset.

    Returns:
      {'videos', 'clips', 'skipped': counts; 'broken': {file: error}; 'no_caption',
       'too_short', 'missing' (captioned files not in the folder): lists of file names}.
    """
    return dict(builder.info.metadata["report"])
