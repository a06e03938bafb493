"""The text-use probe: swapped captions, clip rendering, and its verdict on text-free vs text-reading stages."""

import dataclasses
import pathlib

import jax
import numpy as np
import pytest

from t2v_jax import cascade
from t2v_jax.data import render
from t2v_jax.eval import text_probe
from t2v_jax.eval.shapes_judge import judge_video, measure_video

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_swapped_combos_change_exactly_one_word():
    rng = np.random.default_rng(0)
    for combo in [
        ("red", "circle", "left"),
        ("white", "triangle", "up"),
        ("cyan", "square", "down"),
    ]:
        swaps = text_probe.swapped_combos(combo, rng)
        assert swaps["true"] == combo
        for i, cond in enumerate(("colour", "shape", "motion")):
            changed = [a != b for a, b in zip(swaps[cond], combo, strict=True)]
            assert changed == [j == i for j in range(3)], (cond, swaps[cond])
        assert swaps["motion"][2] == text_probe.OPPOSITE[combo[2]]
        assert swaps["colour"][0] in render.COLOUR_NAMES and swaps["shape"][1] in render.SHAPES


@pytest.mark.parametrize("data_config", ["32x16", "sweep32x16"])
def test_rendered_clips_show_their_labels(data_config):
    videos, combos = text_probe.render_clips(12, 8, 32, 32, seed=3, data_config_name=data_config)
    assert videos.shape == (12, 8, 32, 32, 3) and videos.dtype == np.float32
    assert videos.min() >= -1.0 and videos.max() <= 1.0
    coverage = []
    for video, combo in zip(videos, combos, strict=True):
        frames = np.round((video + 1.0) * 127.5).astype(np.uint8)
        verdict = judge_video(frames)
        assert (verdict["colour"], verdict["shape"], verdict["motion"]) == combo
        coverage.append(measure_video(frames)["foreground"])
    # The clips follow the named config's object sizes (radius 0.12-0.2 vs 0.18-0.26 of the side).
    low, high = text_probe.data_config(data_config).size_range
    mean_area = np.pi * (low**2 + low * high + high**2) / 3  # E[pi r^2], r uniform
    assert abs(np.mean(coverage) / mean_area - 1) < 0.25, (np.mean(coverage), mean_area)


@pytest.fixture(scope="module")
def tiny_pipeline(build_tiny_pipeline):
    return build_tiny_pipeline(one_device=False, encoder_seed=0, params_seed=1)


@pytest.mark.filterwarnings("ignore:.*truncated")  # tiny T5: max_length 16
def test_probe_sees_no_gap_for_a_text_free_stage_and_a_gap_for_a_text_reading_one(tiny_pipeline):
    kwargs = {"num_clips": 4, "noise_levels": (0.5, 0.9)}
    reading = text_probe.text_use_probe(tiny_pipeline, **kwargs)
    assert set(reading["loss"]) == set(text_probe.CONDITIONS) and reading["t"] == [0.5, 0.9]
    assert all(np.isfinite(v).all() for v in reading["loss"].values())
    assert reading["relative_gap"]["true"] == [0.0, 0.0]
    # Random weights read the text: the null text and a changed word move the loss.
    assert all(abs(g) > 1e-6 for g in reading["relative_gap"]["null"])

    base = tiny_pipeline.stages[0]
    blind_model = dataclasses.replace(base.model, cross_attention=False, use_pooled_text=False)
    params = cascade.init_stage_params(
        blind_model, base.config, tiny_pipeline.text_encoder.d_model, jax.random.key(2)
    )
    blind = cascade.Pipeline(
        tiny_pipeline.text_encoder,
        [cascade.Stage(base.config, blind_model, params), *tiny_pipeline.stages[1:]],
        tiny_pipeline.mesh,
    )
    ignoring = text_probe.text_use_probe(blind, **kwargs)
    for cond in text_probe.CONDITIONS:
        assert ignoring["loss"][cond] == ignoring["loss"]["true"], cond
    table = text_probe.format_table(ignoring)
    assert "motion gap" in table and "+0.0%" in table


def test_probe_rejects_bad_arguments(tiny_pipeline):
    with pytest.raises(ValueError, match="num_clips"):
        text_probe.text_use_probe(tiny_pipeline, num_clips=0)
    with pytest.raises(ValueError, match="noise_levels"):
        text_probe.text_use_probe(tiny_pipeline, noise_levels=(0.0, 0.5))
    with pytest.raises(ValueError, match="data_config='nope'; must be one of"):
        text_probe.text_use_probe(tiny_pipeline, data_config_name="nope")
