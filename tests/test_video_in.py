"""Video in: start anywhere in the cascade, given base-stage frames, and the checks before compile."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2v_jax import cascade, video_in, video_io
from t2v_jax.data import transforms
from t2v_jax.diffusion import consistency, samplers, schedules
from t2v_jax.models.unet3d import VideoUNet
from t2v_jax.upsample import upsample_video

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pipe(build_tiny_pipeline):
    return build_tiny_pipeline()


def _by_hand(pipe, prompts, low, start, seed, num_steps, project=False):
    """Stages start.. as the docs describe them, from the pieces: one `samplers.sample` each
    (`project`: each step's x0 projected onto the stage's input, consistency.project)."""
    emb, mask = pipe.text_encoder.encode(prompts)
    n = len(prompts)
    for i in range(start, len(pipe.stages)):
        stage = pipe.stages[i]
        cfg, module = stage.config, VideoUNet(stage.model)
        keys = jax.vmap(
            lambda r, i=i: jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), i), r)
        )(jnp.arange(n, dtype=jnp.uint32))
        up = upsample_video(low, (cfg.frames, cfg.height, cfg.width), cfg.upsample_kind)
        lam = jnp.full((n,), schedules.log_snr(jnp.float32(cfg.cond_noise_t), cfg.schedule))
        noise = samplers.per_sample_normal(
            jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys), up.shape
        )
        cond = {
            "text_emb": emb,
            "text_mask": mask,
            "cond_video": schedules.add_noise(up, noise, lam),
            "cond_log_snr": lam,
        }
        assert cfg.guidance_scale == 1.0  # the tiny SR stages run unguided

        def model_fn(params, x, log_snr, c, module=module):
            return module.apply({"params": params}, x, log_snr, c["text_emb"], c["text_mask"],
                                cond_video=c["cond_video"], cond_log_snr=c["cond_log_snr"])  # fmt: skip

        shape = (n, cfg.frames, cfg.height, cfg.width, 3)
        x = samplers.sample(model_fn, stage.params, keys, cond, shape, num_steps,
                            sampler=cfg.sampler, schedule_cfg=cfg.schedule,
                            thresholding=cfg.thresholding, dynamic_percentile=cfg.dynamic_percentile,
                            project_x0=(lambda x0, y=low: consistency.project(x0, y)) if project else None)  # fmt: skip
        low = jnp.clip(x, -1.0, 1.0)
    return np.clip(np.round((np.asarray(low) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def test_start_stage_equals_running_the_stages_by_hand(pipe):
    # A clip already at the TSR stage's input size (4 frames of 8x8): fit_clip is the identity.
    clip = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    prompts = ["a red circle"]  # batch 1: the same programs as extend's below
    got = pipe.sample(
        prompts, start_stage="tsr", init_video=clip, seed=7, num_steps=2, progress=False
    )
    low = jnp.asarray(clip[None], jnp.float32) / 127.5 - 1.0
    want = _by_hand(pipe, prompts, low, 1, 7, 2)
    assert got.shape == want.shape == (1, 8, 16, 16, 3)
    # Same keys, same programs up to XLA's float reduction order: within one uint8 level.
    diff = np.abs(got.astype(int) - want)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


def test_given_frames_run_in_the_base_stage(pipe):
    # A fresh model's attention outputs are zero-initialised, so its frames do not interact and
    # reconstruction guidance has nothing to act through; perturbed params make them interact.
    base = pipe.stages[0]
    leaves, tree = jax.tree.flatten(base.params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    noisy = [
        x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)
    ]
    mixing = cascade.Pipeline(
        pipe.text_encoder,
        [cascade.Stage(base.config, base.model, jax.tree.unflatten(tree, noisy))],
        mesh=pipe.mesh,
    )
    frame = np.full((1, 8, 8, 3), 200, np.uint8)  # image-to-video: frame 0 given
    mask = [True, False, False, False]
    run = lambda method, weight: mixing.sample(
        "a red circle", cond_frames=frame, cond_mask=mask, cond_method=method, cond_weight=weight,
        seed=1, num_steps=2, progress=False)  # fmt: skip
    replaced, guided, unguided = (
        run("replacement", 5.0),
        run("reconstruction", 5.0),
        run("reconstruction", 0.0),
    )
    assert replaced.shape == (1, 4, 8, 8, 3)
    # w_r = 0 is replacement (the weight is traced: same program as w_r = 5); w_r = 5 is not.
    np.testing.assert_array_equal(unguided, replaced)
    assert np.abs(guided.astype(int) - replaced).max() > 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_stage": 3, "init_video": np.zeros((4, 8, 8, 3), np.uint8)}, "start_stage: 3 is out of range"),
        ({"start_stage": "nope", "init_video": np.zeros((4, 8, 8, 3), np.uint8)}, "start_stage: no stage"),
        ({"start_stage": 1}, "init_video: required"),
        ({"init_video": np.zeros((4, 8, 8, 3), np.uint8)}, "init_video: the base stage"),
        ({"start_stage": 1, "init_video": "/nonexistent/clip.mp4"}, "init_video: cannot decode"),
        ({"start_stage": 1, "init_video": np.zeros((3, 8, 8, 3), np.uint8)}, "init_video: 3 frames cannot fill"),
        ({"start_stage": 1, "init_video": np.zeros((4, 8, 8, 3), np.float32)}, "init_video: expected uint8"),
        ({"start_stage": 1, "init_video": np.zeros((4, 8, 8), np.uint8)}, "init_video: expected .T, H, W, 3."),
        ({"start_stage": 1, "init_video": np.zeros((4, 8, 8, 3), np.uint8), "clip_fps": 8.0}, "init_video: 4 frames at 4 fps need 7"),
        ({"cond_frames": np.zeros((1, 8, 8, 3), np.uint8), "cond_mask": [0, 0, 0, 0]}, "cond_mask: marks no frame"),
        ({"cond_frames": np.zeros((1, 8, 8, 3), np.uint8), "cond_mask": [1, 1, 1, 1]}, "cond_mask: marks every frame"),
        ({"cond_frames": np.zeros((1, 8, 8, 3), np.uint8), "cond_mask": [1, 0]}, r"cond_mask: expected \[4\]"),
        ({"cond_frames": np.zeros((3, 8, 8, 3), np.uint8), "cond_mask": [1, 0, 0, 0]}, "cond_frames: 3 frames map neither"),
        ({"cond_frames": np.zeros((1, 8, 8, 3), np.uint8)}, "cond_mask: required"),
        ({"cond_mask": [1, 0, 0, 0]}, "cond_frames: required"),
        ({"cond_frames": np.zeros((1, 8, 8, 3), np.uint8), "cond_mask": [1, 0, 0, 0], "cond_method": "paste"}, "cond_method"),
        ({"cond_frames": np.zeros((1, 8, 8, 3), np.uint8), "cond_mask": [1, 0, 0, 0], "cond_weight": -1.0}, "cond_weight"),
    ],
)  # fmt: skip
def test_bad_video_input_is_refused_before_anything_compiles(pipe, kwargs, message, monkeypatch):
    monkeypatch.setattr(jax, "jit", _no_compiling)
    monkeypatch.setattr(pipe.text_encoder, "encode", _no_compiling)
    with pytest.raises(ValueError, match=message):
        pipe.sample(["a", "b"], progress=False, **kwargs)


def _no_compiling(*args, **kwargs):
    raise AssertionError("compiled or encoded before the input was checked")


def test_prompts_are_optional_only_when_no_stage_run_reads_text(pipe):
    with pytest.raises(ValueError, match="prompts: required, stages tsr, ssr read text"):
        pipe.sample(None, start_stage=1, init_video=np.zeros((4, 8, 8, 3), np.uint8))
    # A text-free last stage (the shapes demo's SSR): one empty prompt per clip.
    stages = [_FakeStage("base", True), _FakeStage("ssr", False)]
    clips = np.zeros((3, 4, 8, 8, 3), np.uint8)
    assert video_in.VideoIn(stages, None, start_stage=1, init_video=clips).prompts == [""] * 3


class _FakeStage:
    def __init__(self, name, uses_text):
        self.config = type("Config", (), {"name": name, "kind": name})()
        self.model = type("Model", (), {"uses_text": uses_text})()


def test_fit_clip_crops_the_centre_and_spreads_the_frames():
    # 10 frames of 6x12, each frame filled with its index; the centre 6x6 square has a marker.
    clip = (
        np.zeros((1, 10, 6, 12, 3), np.uint8) + np.arange(10, dtype=np.uint8)[:, None, None, None]
    )
    clip[:, :, :, :3] = 255  # left quarter: cropped away by a square target
    out = video_in.fit_clip(clip, 4, 6, 6, stage_fps=4.0)
    # Frame j takes clip frame floor((j + 1/2) * 10 / 4) = 1, 3, 6, 8.
    assert out.shape == (1, 4, 6, 6, 3)
    np.testing.assert_array_equal(out[0, :, 0, 0, 0], [1, 3, 6, 8])
    assert (out < 255).all()
    # clip_fps: 8 fps clip, 4 fps stage: every second frame from the start.
    out = video_in.fit_clip(clip, 4, 6, 6, stage_fps=4.0, clip_fps=8.0)
    np.testing.assert_array_equal(out[0, :, 0, 0, 0], [0, 2, 4, 6])
    assert video_in.centre_crop_box(6, 12, 1.0) == (0, 3, 6, 6)
    assert video_in.centre_crop_box(12, 6, 1.0) == (3, 0, 6, 6)


def test_upsample_cli_never_writes_over_its_input(tmp_path, capsys):
    from t2v_jax.cli import upsample

    clip = tmp_path / "in.gif"
    video_io.write_video(np.zeros((4, 8, 8, 3), np.uint8), clip)
    before = clip.read_bytes()
    assert upsample.main([str(clip), "--out", str(clip)]) == 2
    assert "is the input" in capsys.readouterr().err
    assert upsample.main([str(clip), "--out", str(clip), "--overwrite"]) == 2
    assert clip.read_bytes() == before
    taken = tmp_path / "taken.mp4"
    taken.write_bytes(b"mine")
    assert upsample.main([str(clip), "--out", str(taken)]) == 2
    assert "already exists" in capsys.readouterr().err and taken.read_bytes() == b"mine"
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    assert upsample.main([str(broken), "--out", str(tmp_path / "o.mp4")]) == 2
    assert "input: cannot decode" in capsys.readouterr().err
    assert upsample.start_stage("tsr,ssr", ["base", "tsr", "ssr"]) == 1
    assert upsample.start_stage("2", ["base", "tsr", "ssr"]) == 2
    for bad in ("base,tsr,ssr", "tsr", "ssr,tsr", "x"):
        with pytest.raises(ValueError, match="--stages"):
            upsample.start_stage(bad, ["base", "tsr", "ssr"])


def test_extend_gives_each_window_the_last_frames_at_the_base_rate(pipe, monkeypatch):
    video = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    calls = []
    sample = pipe.sample

    def spy(prompt, **kwargs):
        calls.append(kwargs)
        return sample(prompt, **kwargs)

    monkeypatch.setattr(pipe, "sample", spy)
    out = video_in.extend(pipe, video, "a red circle", 12, num_steps=2, progress=False)
    # 8 output frames per window, 2 base frames (= 4 output frames) of context: +4 per window.
    assert out.shape == (12, 16, 16, 3) and len(calls) == 2
    np.testing.assert_array_equal(out[:4], video)
    # Window 1's context: output frames 4 and 6 (the first of each pair of repeated frames).
    np.testing.assert_array_equal(calls[1]["cond_frames"], out[[4, 6]])
    assert list(calls[1]["cond_mask"]) == [True, True, False, False] and calls[1]["seed"] == 1
    with pytest.raises(ValueError, match="num_frames"):
        video_in.extend(pipe, video, "a red circle", 4)
    with pytest.raises(ValueError, match="video: 3 frames"):
        video_in.extend(pipe, video[:3], "a red circle", 12)


def test_a_pipeline_of_sr_stages_only_upsamples_given_clips(pipe, tmp_path, monkeypatch):
    # The shape of the built-in "real_sr" pipeline: one SSR stage, no base stage.
    sr_only = cascade.Pipeline(pipe.text_encoder, [pipe.stages[2]], mesh=pipe.mesh)
    clip = np.random.default_rng(2).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    got = sr_only.sample("a red circle", init_video=clip, seed=3, num_steps=2, progress=False)
    low = jnp.asarray(clip[None], jnp.float32) / 127.5 - 1.0
    want = _by_hand(sr_only, ["a red circle"], low, 0, 3, 2)
    assert got.shape == want.shape == (1, 8, 16, 16, 3)
    diff = np.abs(got.astype(int) - want)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    from t2v_jax.pipeline_store import load_pipeline

    loaded = load_pipeline(sr_only.save(tmp_path / "sr_only"), mesh=pipe.mesh)
    assert [s.config.kind for s in loaded.stages] == ["ssr"]
    monkeypatch.setattr(jax, "jit", _no_compiling)
    with pytest.raises(ValueError, match="init_video: required, this pipeline starts with the ssr"):
        sr_only.sample("a red circle")
    with pytest.raises(ValueError, match="cond_frames: only the base stage"):
        sr_only.sample(
            "a red circle", init_video=clip, cond_frames=clip[:1], cond_mask=[1] + [0] * 7
        )
    from t2v_jax.cli import upsample

    assert upsample.start_stage(None, ["ssr"], first_sr=0) == 0
    assert upsample.start_stage("ssr", ["ssr"], first_sr=0) == 0
    no_cond = cascade.Stage(pipe.stages[0].config, pipe.stages[0].model, None)
    with pytest.raises(ValueError, match=r"stages\[0\].*needs cond_channels > 0"):
        cascade.check_chain([cascade.Stage(pipe.stages[2].config, no_cond.model, None)])


def test_an_sr_stage_with_data_consistency_projects_each_step_onto_its_input(pipe):
    # The tiny SSR stage with data_consistency="bicubic" run by the pipeline equals the sampler
    # run by hand with every step's x0 projected onto the given clip (the projection itself is
    # checked against closed forms in tests/test_consistency.py), and its output shrinks back
    # to the clip more closely than the same stage's without it.
    stage = pipe.stages[2]
    clip = np.random.default_rng(2).integers(80, 180, (8, 8, 8, 3), dtype=np.uint8)
    low = jnp.asarray(clip[None], jnp.float32) / 127.5 - 1.0
    outs = {}
    for mode in ("bicubic", "none"):
        config = dataclasses.replace(stage.config, data_consistency=mode)
        sr = cascade.Pipeline(pipe.text_encoder, [dataclasses.replace(stage, config=config)],
                              mesh=pipe.mesh)  # fmt: skip
        outs[mode] = sr.sample("a red circle", init_video=clip, seed=3, num_steps=2,
                               progress=False)  # fmt: skip
        want = _by_hand(sr, ["a red circle"], low, 0, 3, 2, project=mode == "bicubic")
        diff = np.abs(outs[mode].astype(int) - want)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (mode, diff.max())
    shrink_err = {
        mode: np.abs(transforms.bicubic_resize(v[0], 8, 8).astype(int) - clip).mean()
        for mode, v in outs.items()
    }
    assert shrink_err["bicubic"] < shrink_err["none"] / 2, shrink_err


def test_a_tsr_stage_with_frames_consistency_keeps_its_input_frames(pipe):
    # The tiny TSR stage (4 -> 8 frames, 8x8) with data_consistency="frames" returns the given
    # clip's frames in the places the training data took them from (every 2nd frame), to within
    # the uint8 rounding; without it the model redraws them.
    stage = pipe.stages[1]
    assert (stage.config.low_frames, stage.config.frames) == (4, 8)
    clip = np.random.default_rng(4).integers(40, 220, (4, 8, 8, 3), dtype=np.uint8)
    err = {}
    for mode in ("frames", "none"):
        config = dataclasses.replace(stage.config, data_consistency=mode)
        tsr = cascade.Pipeline(pipe.text_encoder, [dataclasses.replace(stage, config=config)],
                               mesh=pipe.mesh)  # fmt: skip
        out = tsr.sample("a red circle", init_video=clip, seed=3, num_steps=2, progress=False)
        assert out.shape == (1, 8, 8, 8, 3)
        err[mode] = np.abs(out[0, ::2].astype(int) - clip).max()
    assert err["frames"] <= 1 and err["none"] > 20, err
