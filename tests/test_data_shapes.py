"""Tests of the synthetic `shapes` TFDS builder and its numpy renderer."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from t2v_jax.data import render, shapes


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    for name in ("shapes/tiny", "shapes/tiny_images"):
        tfds.builder(name, data_dir=path).download_and_prepare()
    return path


def _records(data_dir, name, split):
    src = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    return [src[i] for i in range(len(src))]


def _objects(record):
    """[(colour, shape, motion)] names of the present objects of a record."""
    o = record["objects"]
    motions = [*render.MOTION_NAMES, "none"]
    return [
        (render.COLOUR_NAMES[o["colour"][j]], render.SHAPES[o["shape"][j]], motions[o["motion"][j]])
        for j in range(shapes.MAX_OBJECTS)
        if o["present"][j]
    ]


def test_render_circle_area_and_centre_closed_form():
    # A big circle without antialiasing: pixel count ~ pi r^2, centroid = the given centre.
    obj = render.ShapeSpec("red", "circle", "right", y=0.5, x=0.3, size=0.2, speed=0.05)
    video = render.render_video([obj], 3, 100, 100, (0, 0, 0), antialias=False)
    assert video.shape == (3, 100, 100, 3) and video.dtype == np.uint8
    for t in range(3):
        mask = np.all(video[t] == render.COLOURS["red"], axis=-1)
        assert abs(mask.sum() - np.pi * 20**2) < 0.02 * np.pi * 20**2
        ys, xs = np.nonzero(mask)
        # Pixel centres are at i + 0.5; centre moves 5 px right per frame.
        np.testing.assert_allclose([ys.mean() + 0.5, xs.mean() + 0.5], [50, 30 + 5 * t], atol=0.1)
    assert np.all(video[:, 0, 0] == 0)


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match="colour"):
        render.ShapeSpec("pink", "circle", "up", 0.5, 0.5, 0.1)
    with pytest.raises(ValueError, match="frames"):
        render.render_video([], 0, 8, 8)


def test_splits_and_sizes(data_dir):
    src = tfds.data_source("shapes/tiny", data_dir=data_dir, download=False)
    assert {k: len(v) for k, v in src.items()} == {"train": 48, "test": 16, "heldout": 16}
    rec = src["train"][0]
    assert rec["video"].shape == (8, 16, 16, 3) and rec["video"].dtype == np.uint8


def test_labels_agree_with_pixels(data_dir):
    """Colour and centroid motion measured from the frames match the stored labels."""
    palette = np.array(list(render.COLOURS.values()), np.float64)
    checked = 0
    for rec in _records(data_dir, "shapes/tiny", "train"):
        video = rec["video"].astype(np.float64)  # [T, H, W, 3]
        t, h, w, _ = video.shape
        bg = rec["background"].astype(np.float64)
        o = rec["objects"]
        for j in range(int(rec["num_objects"])):
            colour = palette[o["colour"][j]]
            # Each pixel is bg + alpha * (colour - bg) with alpha = coverage (antialiased); pixels
            # of the other object (a different colour, never overlapping) are off that line.
            along = ((video - bg) @ (colour - bg)) / np.sum((colour - bg) ** 2)  # [T, H, W]
            residual = np.linalg.norm(video - bg - along[..., None] * (colour - bg), axis=-1)
            weights = np.where(residual < 12, np.clip(along, 0, 1), 0.0)
            assert np.all(weights.max(axis=(1, 2)) > 0.9), "object not fully drawn in a frame"
            # Measured colour of the fully covered pixels: nearest palette entry is the label.
            solid = video[weights > 0.9]  # [N, 3]
            nearest = np.argmin(np.linalg.norm(solid[:, None] - palette, axis=-1), axis=-1)
            assert np.all(nearest == o["colour"][j])
            yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
            cy = (weights * yy).sum(axis=(1, 2)) / weights.sum(axis=(1, 2))
            cx = (weights * xx).sum(axis=(1, 2)) / weights.sum(axis=(1, 2))
            measured = np.stack([cy - cy[0], cx - cx[0]], -1)  # displacement [T, 2] in px
            labelled = (o["position"][:, j] - o["position"][0, j]) * [h, w]
            np.testing.assert_allclose(measured, labelled, atol=0.25)
            # Direction of the measured motion is the labelled motion.
            dy, dx = measured[-1]
            direction = (
                ("down" if dy > 0 else "up")
                if abs(dy) > abs(dx)
                else ("right" if dx > 0 else "left")
            )
            assert direction == render.MOTION_NAMES[o["motion"][j]]
            # Constant speed: the labelled displacement is linear in time.
            np.testing.assert_allclose(
                labelled[-1] / (t - 1), np.diff(labelled, axis=0).mean(0), atol=1e-4
            )
            checked += 1
    assert checked >= 48


def test_objects_stay_inside_frame(data_dir):
    for rec in _records(data_dir, "shapes/tiny", "train"):
        o = rec["objects"]
        for j in range(int(rec["num_objects"])):
            p = o["position"][:, j]  # [T, 2] fractions; size is a radius in min(H, W) units
            assert np.all(p - o["size"][j] >= -1e-6) and np.all(p + o["size"][j] <= 1 + 1e-6)


def test_captions_name_the_labels(data_dir):
    templates_seen = set()
    for rec in _records(data_dir, "shapes/tiny", "train"):
        caption = rec["caption"].decode()
        objs = _objects(rec)
        first = caption.split(" and ")[0]
        colour, shape, motion = objs[0]
        assert f"{colour} {shape}" in first and motion in first
        for colour, shape, motion in objs[1:]:
            assert f"{colour} {shape} moving {motion}" in caption
        templates_seen.add(first.replace(colour, "C").replace(shape, "S").replace(motion, "M"))
    assert len(templates_seen) >= 4  # several templates are in use


def test_held_out_combos_only_in_heldout_split(data_dir):
    held = set(shapes.ShapesConfig(name="default").held_out)
    for split in ("train", "test"):
        for rec in _records(data_dir, "shapes/tiny", split):
            assert not set(_objects(rec)) & held
    for rec in _records(data_dir, "shapes/tiny", "heldout"):
        assert _objects(rec)[0] in held


def test_two_objects_present(data_dir):
    counts = [int(r["num_objects"]) for r in _records(data_dir, "shapes/tiny", "train")]
    assert 1 in counts and 2 in counts


def test_deterministic_from_seed(tmp_path, data_dir):
    cfg = shapes.ShapesConfig(name="x", height=16, width=16, frames=4)
    a = shapes.make_example(cfg, np.random.default_rng([0, 0, 3]))
    b = shapes.make_example(cfg, np.random.default_rng([0, 0, 3]))
    c = shapes.make_example(cfg, np.random.default_rng([1, 0, 3]))
    np.testing.assert_array_equal(a["video"], b["video"])
    assert a["caption"] == b["caption"]
    assert not np.array_equal(a["video"], c["video"])
    # A second build in another directory stores the same bytes.
    tfds.builder("shapes/tiny", data_dir=str(tmp_path)).download_and_prepare()
    for x, y in zip(
        _records(str(tmp_path), "shapes/tiny", "test"),
        _records(data_dir, "shapes/tiny", "test"),
        strict=True,
    ):
        np.testing.assert_array_equal(x["video"], y["video"])


def test_still_images_are_independent_frames(data_dir):
    recs = _records(data_dir, "shapes/tiny_images", "train")
    assert len(recs) == 24
    for rec in recs:
        caption = rec["caption"].decode()
        assert not any(m in caption.split() for m in render.MOTION_NAMES)
        assert np.all(rec["objects"]["motion"][rec["objects"]["present"]] == shapes.NO_MOTION)
        colour, shape, _ = _objects(rec)[0]
        assert colour in caption and shape in caption
        # Positions differ between frames (independent draws, not a trajectory).
        pos = rec["objects"]["position"][:, 0]
        assert len({tuple(p) for p in pos.round(4)}) == len(pos)


def test_config_validation():
    with pytest.raises(ValueError, match="held_out"):
        shapes.ShapesConfig(name="bad", held_out=(("red", "hexagon", "up"),))
    with pytest.raises(ValueError, match="frames"):
        shapes.ShapesConfig(name="bad", frames=0)
    with pytest.raises(ValueError, match="size_range"):
        shapes.ShapesConfig(name="bad", size_range=(0.2, 0.1))
    with pytest.raises(ValueError, match="travel_range"):
        shapes.ShapesConfig(name="bad", travel_range=(0.5, 1.5))


@pytest.mark.parametrize("config_name", ["32x16", "sweep32x16"])
def test_sizes_and_travel_follow_the_config(config_name):
    """Radii lie in `size_range`; the travel (first to last centre) is the `travel_range`
    fraction of the room along the motion axis, and the object never leaves the frame."""
    cfg = next(c for c in shapes.Shapes.BUILDER_CONFIGS if c.name == config_name)
    fractions = []
    for i in range(200):
        for obj in shapes.sample_scene(cfg, np.random.default_rng([7, i])):
            assert cfg.size_range[0] <= obj.size <= cfg.size_range[1]
            centres = render.object_centres(obj, cfg.frames, cfg.height, cfg.width) / cfg.height
            dy, _ = render.MOTIONS[obj.motion]
            along = centres[:, 0] if dy else centres[:, 1]
            fractions.append(abs(along[-1] - along[0]) / (1 - 2 * obj.size))
            assert np.all(centres - obj.size >= -1e-9) and np.all(centres + obj.size <= 1 + 1e-9)
    fractions = np.array(fractions)
    low, high = cfg.travel_range
    assert np.all(fractions >= low - 1e-9) and np.all(fractions <= high + 1e-9)
    # Uniform over the range: both ends are reached.
    assert fractions.min() < low + 0.05 and fractions.max() > high - 0.05
