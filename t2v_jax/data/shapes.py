"""TFDS builder `shapes`: synthetic captioned moving-shapes videos, offline and seed-deterministic.

Each example is a short video of one or two coloured shapes moving left/right/up/down at constant
speed over a dark background, a caption drawn from several templates ("a red circle moving
right", "red circle sliding right", ...) and the structured labels that produced it, so quality
(colour, shape, motion accuracy) can be measured. Listed (colour, shape, motion) combinations can
be held out of `train`/`test`: they then appear only in the `heldout` split, which measures
compositional generalisation. `still_images` configs hold image-text data for joint image-video
training: each example is T independent still images sharing one caption.

Usage (no TensorFlow needed):
  import t2v_jax.data.shapes  # registers the builder
  src = tfds.data_source("shapes/tiny", data_dir=DIR)  # prepares it on first use (seconds)
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from t2v_jax.data import render
from t2v_jax.data.features import video_feature

MAX_OBJECTS = 2
# Index used in the `motion` label of still objects (after the four motion names).
NO_MOTION = len(render.MOTION_NAMES)

_DEFAULT_HELD_OUT = (
    ("red", "triangle", "up"),
    ("green", "circle", "left"),
    ("blue", "square", "down"),
    ("yellow", "circle", "right"),
)

_MOTION_WORDS = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
# Video caption templates: {a} article of the colour, {c} colour, {s} shape, {m} bare direction, {mt} "to the right"/"up".
_VIDEO_TEMPLATES = (
    "{a} {c} {s} moving {m}",
    "{a} {c} {s} moves {mt}",
    "{c} {s} sliding {m}",
    "the {c} {s} travels {mt}",
    "{a} {c} {s} going {m}",
)
_IMAGE_TEMPLATES = ("{a} {c} {s}", "a picture of {a} {c} {s}", "{c} {s}", "a {s} that is {c}")


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """Size, length, counts and vocabulary of one `shapes` variant.

    Attributes:
      height, width, frames: video size.
      num_train, num_test, num_heldout: examples per split (`heldout` exists iff `held_out`).
      prob_two_objects: probability of a second object (always a different colour).
      held_out: (colour, shape, motion) combinations excluded from train/test.
      still_images: each example is `frames` independent still images of one caption.
      antialias: 4x4 supersampling per pixel.
      size_range: (low, high) of an object's radius, in units of min(height, width).
      travel_range: (low, high) of the distance a moving object covers in the clip, as a
        fraction of the room it has along its motion axis (1: from one edge to the other).
      seed: base seed; example i of split s uses np.random.default_rng([seed, s, i]).
    """

    height: int = 32
    width: int = 32
    frames: int = 16
    num_train: int = 20_000
    num_test: int = 512
    num_heldout: int = 512
    prob_two_objects: float = 0.3
    held_out: tuple[tuple[str, str, str], ...] = _DEFAULT_HELD_OUT
    still_images: bool = False
    antialias: bool = True
    size_range: tuple[float, float] = (0.12, 0.2)
    travel_range: tuple[float, float] = (0.3, 0.6)
    seed: int = 0

    def __post_init__(self):
        for name in ("height", "width", "frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; must be >= 1")
        if not 0.0 <= self.prob_two_objects <= 1.0:
            raise ValueError(f"prob_two_objects={self.prob_two_objects}; must be in [0, 1]")
        low, high = self.size_range
        if not 0.0 < low <= high < 0.5:
            raise ValueError(f"size_range={self.size_range}; must satisfy 0 < low <= high < 0.5")
        low, high = self.travel_range
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                f"travel_range={self.travel_range}; must satisfy 0 <= low <= high <= 1"
            )
        for combo in self.held_out:
            c, s, m = combo
            if c not in render.COLOURS or s not in render.SHAPES or m not in render.MOTIONS:
                raise ValueError(f"held_out entry {combo!r} is not a (colour, shape, motion)")


def _config(name: str, size: int, frames: int, n: int, **kw) -> ShapesConfig:
    kind = "still images" if kw.get("still_images") else "videos"
    return ShapesConfig(
        name=name,
        description=f"{size}x{size} {kind}, {frames} frames, {n} train examples",
        height=size,
        width=size,
        frames=frames,
        num_train=n,
        **kw,
    )


class Shapes(tfds.core.GeneratorBasedBuilder):
    """Synthetic captioned moving shapes (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}  # noqa: RUF012 (TFDS reads a class attribute)
    BUILDER_CONFIGS = [  # noqa: RUF012
        _config("tiny", 16, 8, 48, num_test=16, num_heldout=16),
        _config("tiny_images", 16, 8, 24, num_test=8, still_images=True),
        _config("32x16", 32, 16, 20_000),
        # Larger objects that sweep (nearly) edge to edge: the direction then decides where the
        # object is in every frame, which a text-conditioned model learns far more easily than
        # a few pixels of drift from a random start (the embedded demo trains on this).
        _config("sweep32x16", 32, 16, 20_000, size_range=(0.18, 0.26), travel_range=(0.75, 1.0)),
        # The same scenes (example i of a split uses the same seed) at 64x64: the demo's second
        # SSR stage (32x32 -> 64x64) trains on crops of these; 8000 clips cover its steps.
        _config("sweep64x16", 64, 16, 8000, size_range=(0.18, 0.26), travel_range=(0.75, 1.0)),
        _config("64x16", 64, 16, 20_000),
        _config("128x16", 128, 16, 10_000),
        _config("images32x16", 32, 16, 10_000, still_images=True),
        _config("images64x16", 64, 16, 10_000, still_images=True),
    ]

    def __init__(self, *, file_format: str | None = "array_record", **kwargs):
        # array_record is what `tfds.data_source` + grain read without TensorFlow.
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        k = MAX_OBJECTS
        features = tfds.features.FeaturesDict(
            {
                "video": video_feature(cfg.frames, cfg.height, cfg.width),  # [T, H, W, 3]
                "caption": tfds.features.Text(),
                "background": tfds.features.Tensor(shape=(3,), dtype=np.uint8),
                "num_objects": tfds.features.Scalar(dtype=np.int32),
                # Per-object labels, padded to MAX_OBJECTS (`present` marks the real ones).
                "objects": tfds.features.FeaturesDict(
                    {
                        "present": tfds.features.Tensor(shape=(k,), dtype=np.bool_),
                        "colour": tfds.features.Tensor(shape=(k,), dtype=np.int32),
                        "shape": tfds.features.Tensor(shape=(k,), dtype=np.int32),
                        "motion": tfds.features.Tensor(shape=(k,), dtype=np.int32),
                        "size": tfds.features.Tensor(shape=(k,), dtype=np.float32),
                        "speed": tfds.features.Tensor(shape=(k,), dtype=np.float32),
                        # Centre (y, x) per frame as fractions of (H, W); position[0] = start.
                        "position": tfds.features.Tensor(
                            shape=(cfg.frames, k, 2), dtype=np.float32
                        ),
                    }
                ),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Synthetic moving shapes. Label indices: colour in "
                f"{list(render.COLOUR_NAMES)}, shape in {list(render.SHAPES)}, motion in "
                f"{[*render.MOTION_NAMES, 'none']}."
            ),
            features=features,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        splits = {
            "train": self._generate_examples(0, cfg.num_train),
            "test": self._generate_examples(1, cfg.num_test),
        }
        if cfg.held_out and not cfg.still_images:
            splits["heldout"] = self._generate_examples(2, cfg.num_heldout)
        return splits

    def _generate_examples(self, split_id: int, count: int) -> Iterator[tuple[int, dict]]:
        cfg = self.builder_config
        for i in range(count):
            rng = np.random.default_rng([cfg.seed, split_id, i])
            yield i, make_example(cfg, rng, heldout=split_id == 2)


def _combos(cfg: ShapesConfig, heldout: bool) -> list[tuple[str, str, str]]:
    held = set(cfg.held_out)
    every = itertools.product(render.COLOUR_NAMES, render.SHAPES, render.MOTION_NAMES)
    return [c for c in every if (c in held) == heldout]


def _extent(cfg: ShapesConfig, size: float) -> tuple[float, float]:
    """Half-extent of an object of `size` as fractions of (height, width)."""
    r = size * min(cfg.height, cfg.width)
    return r / cfg.height, r / cfg.width


def _sample_moving(cfg: ShapesConfig, rng: np.random.Generator, combo) -> render.ShapeSpec:
    colour, shape, motion = combo
    size = float(rng.uniform(*cfg.size_range))
    ry, rx = _extent(cfg, size)
    dy, dx = render.MOTIONS[motion]
    # Travel a `travel_range` fraction of the free room along the motion axis, so motion is
    # visible and the object stays fully inside the frame for the whole clip.
    r_axis, r_perp = (ry, rx) if dy else (rx, ry)
    free = 1.0 - 2 * r_axis
    travel = float(rng.uniform(*cfg.travel_range)) * free if cfg.frames > 1 else 0.0
    sign = dy or dx
    if sign > 0:
        along = float(rng.uniform(r_axis, 1.0 - r_axis - travel))
    else:
        along = float(rng.uniform(r_axis + travel, 1.0 - r_axis))
    perp = float(rng.uniform(r_perp, 1.0 - r_perp))
    y, x = (along, perp) if dy else (perp, along)
    speed = travel / max(cfg.frames - 1, 1)
    return render.ShapeSpec(colour, shape, motion, y, x, size, speed)


def _apart(cfg: ShapesConfig, a: render.ShapeSpec, b: render.ShapeSpec) -> bool:
    """True if the two objects never overlap (bounding circles) during the clip."""
    ca = render.object_centres(a, cfg.frames, cfg.height, cfg.width)
    cb = render.object_centres(b, cfg.frames, cfg.height, cfg.width)
    gap = (a.size + b.size) * min(cfg.height, cfg.width)
    return bool(np.all(np.linalg.norm(ca - cb, axis=-1) > gap))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _caption(rng: np.random.Generator, objs: list[render.ShapeSpec], still: bool) -> str:
    first = objs[0]
    template = _IMAGE_TEMPLATES if still else _VIDEO_TEMPLATES
    text = template[int(rng.integers(len(template)))].format(
        a=_article(first.colour),
        c=first.colour,
        s=first.shape,
        m=first.motion,
        mt=_MOTION_WORDS.get(first.motion, ""),
    )
    for other in objs[1:]:
        text += f" and {_article(other.colour)} {other.colour} {other.shape}"
        if not still:
            text += f" moving {other.motion}"
    return text


def sample_scene(
    cfg: ShapesConfig, rng: np.random.Generator, *, heldout: bool = False
) -> list[render.ShapeSpec]:
    """Draws the objects of one video example (first object from the held-out combos if asked)."""
    first = _sample_moving(cfg, rng, _pick(rng, _combos(cfg, heldout)))
    objs = [first]
    if rng.uniform() < cfg.prob_two_objects:
        # A different colour keeps captions unambiguous and objects separable by colour; retry a
        # few times for a trajectory that never overlaps the first (deterministic from rng).
        options = [c for c in _combos(cfg, False) if c[0] != first.colour]
        for _ in range(20):
            second = _sample_moving(cfg, rng, _pick(rng, options))
            if _apart(cfg, first, second):
                objs.append(second)
                break
    return objs


def _pick(rng: np.random.Generator, options: list):
    if not options:
        raise ValueError("held_out leaves no (colour, shape, motion) combination to sample")
    return options[int(rng.integers(len(options)))]


def make_example(cfg: ShapesConfig, rng: np.random.Generator, *, heldout: bool = False) -> dict:
    """One example (video, caption, labels) as the builder stores it."""
    background = render.BACKGROUNDS[int(rng.integers(len(render.BACKGROUNDS)))]
    if cfg.still_images:
        objs, frames, positions = _still_frames(cfg, rng, background)
    else:
        objs = sample_scene(cfg, rng, heldout=heldout)
        frames = render.render_video(
            objs, cfg.frames, cfg.height, cfg.width, background, antialias=cfg.antialias
        )
        positions = [
            render.object_centres(o, cfg.frames, cfg.height, cfg.width)
            / np.array([cfg.height, cfg.width])
            for o in objs
        ]
    k = MAX_OBJECTS
    position = np.zeros((cfg.frames, k, 2), np.float32)
    for j, p in enumerate(positions):
        position[:, j] = p
    pad = lambda vals, dtype, fill=0: np.array(vals + [fill] * (k - len(vals)), dtype)
    motion_ids = [
        render.MOTION_NAMES.index(o.motion) if o.motion in render.MOTIONS else NO_MOTION
        for o in objs
    ]
    return {
        "video": frames,
        "caption": _caption(rng, objs, cfg.still_images),
        "background": np.array(background, np.uint8),
        "num_objects": np.int32(len(objs)),
        "objects": {
            "present": pad([True] * len(objs), np.bool_, False),
            "colour": pad([render.COLOUR_NAMES.index(o.colour) for o in objs], np.int32),
            "shape": pad([render.SHAPES.index(o.shape) for o in objs], np.int32),
            "motion": pad(motion_ids, np.int32),
            "size": pad([o.size for o in objs], np.float32),
            "speed": pad([o.speed for o in objs], np.float32),
            "position": position,
        },
    }


def _still_frames(cfg: ShapesConfig, rng: np.random.Generator, background):
    """`frames` independent still scenes of the same (colour, shape) objects (one caption)."""
    n = 2 if rng.uniform() < cfg.prob_two_objects else 1
    colours = rng.choice(len(render.COLOUR_NAMES), size=n, replace=False)
    kinds = [render.SHAPES[int(rng.integers(len(render.SHAPES)))] for _ in range(n)]
    sizes = [float(rng.uniform(*cfg.size_range)) for _ in range(n)]
    images, positions = [], [[] for _ in range(n)]
    for _ in range(cfg.frames):
        # Resample positions until the objects do not overlap (few tries; keep the last draw).
        for _ in range(20):
            objs = []
            for j in range(n):
                ry, rx = _extent(cfg, sizes[j])
                y, x = rng.uniform(ry, 1 - ry), rng.uniform(rx, 1 - rx)
                colour = render.COLOUR_NAMES[int(colours[j])]
                objs.append(render.ShapeSpec(colour, kinds[j], "none", y, x, sizes[j]))
            if n == 1 or _apart(dataclasses.replace(cfg, frames=1), objs[0], objs[1]):
                break
        images.append(
            render.render_video(objs, 1, cfg.height, cfg.width, background, antialias=cfg.antialias)
        )
        for j, o in enumerate(objs):
            positions[j].append((o.y, o.x))
    return objs, np.concatenate(images), [np.array(p) for p in positions]
