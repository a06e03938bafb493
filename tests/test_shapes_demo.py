"""The embedded demo: configs/shapes.py stages build (eval_shape only) and chain; export works."""

import pathlib

import jax
import numpy as np
import pytest

from t2v_jax import cascade
from t2v_jax.configlib import from_config, load_config
from t2v_jax.models.config import UNetConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHAPES = ROOT / "configs" / "shapes.py"
STAGES = ("base", "tsr", "ssr", "ssr2")


def _param_count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_shapes_stages_build_with_eval_shape_and_chain(load_tool):
    export = load_tool("export_pipeline")
    previous = None
    for name in STAGES:
        config = load_config(f"{SHAPES}:{name}")
        stage = export.sampling_stage_config(config)
        model = from_config(UNetConfig, config.model, f"{name}.model")
        assert model.text_dim == config.text.t5.d_model
        params = jax.eval_shape(
            lambda m=model, s=stage: cascade.init_stage_params(m, s, m.text_dim, jax.random.key(0))
        )
        # Small enough to train in about a CPU-hour, big enough to be a real U-Net.
        assert 1e5 < _param_count(params) < 1e7, (name, _param_count(params))
        if previous is None:
            assert stage.kind == "base" and model.cond_channels == 0
        else:
            assert (stage.low_frames, stage.low_height, stage.low_width) == (
                previous.frames, previous.height, previous.width,
            )  # fmt: skip
        previous = stage
    assert (previous.frames, previous.height, previous.width) == (16, 64, 64)


@pytest.mark.parametrize("name", STAGES)
def test_shapes_stage_is_accepted_by_the_trainer(name):
    # The trainer's own validation (data, text tower, model, stage shapes) and its full param
    # init, abstractly: nothing is allocated and no data is read.
    from t2v_jax.train import task as task_lib

    config = load_config(f"{SHAPES}:{name}", {"log.sample_every_steps": 0})
    task = task_lib.diffusion_task(config)
    trainable, frozen = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
    assert set(trainable) == ({"unet", "text"} if name == "base" else {"unet"})
    assert set(frozen) == (set() if name == "base" else {"text"})


def test_every_shapes_caption_fits_the_text_length():
    from t2v_jax.data import shapes
    from t2v_jax.text import ByteTokenizer

    config = load_config(f"{SHAPES}:base")
    data = shapes.ShapesConfig(name="probe", prob_two_objects=1.0, frames=2, height=8, width=8)
    captions = [shapes.make_example(data, np.random.default_rng(i))["caption"] for i in range(200)]
    longest = max(captions, key=len)
    _, _, truncated = ByteTokenizer().tokenize([longest], config.text.max_length)
    assert not truncated.any(), longest


def test_shapes_config_rejects_unknown_stage():
    with pytest.raises(ValueError, match="stage must be one of"):
        load_config(f"{SHAPES}:ssr3")


def _tiny_with_data(tmp_path):
    """configs/tiny.py + a `shapes/tiny` data section + a `text.path` field, as a config file."""
    config_file = tmp_path / "tiny_demo.py"
    config_file.write_text(
        "import importlib.util\n"
        "from ml_collections import config_dict\n"
        f"spec = importlib.util.spec_from_file_location('tiny', {str(ROOT / 'configs/tiny.py')!r})\n"
        "tiny = importlib.util.module_from_spec(spec); spec.loader.exec_module(tiny)\n"
        "def get_config(arg):\n"
        "    config = tiny.get_config(arg)\n"
        f"    config.data = {{'name': 'shapes/tiny', 'data_dir': {str(tmp_path / 'tfds')!r}}}\n"
        "    config.text.path = config_dict.placeholder(str)\n"
        "    return config\n"
    )
    return str(config_file)


def _save_stage(config, workdir, step=2):
    """A stage checkpoint as the trainer writes it, without training: the trainer's initial
    state (same task, optimizer, shardings, Checkpointer) at `step`, with EMA params that differ
    from the params as a trained run's do. Returns the saved state on the host."""
    import jax.numpy as jnp

    from t2v_jax import configlib
    from t2v_jax.train import checkpoint as ckpt_lib
    from t2v_jax.train import loop
    from t2v_jax.train import state as state_lib
    from t2v_jax.train import task as task_lib

    task = task_lib.diffusion_task(config)
    train_cfg = from_config(state_lib.TrainConfig, config.train, "train")
    optimizer, _ = state_lib.make_optimizer(train_cfg)
    # One device: orbax writes replicated arrays replica-parallel, as ~20k small eager slices
    # (a minute of this test) on the tiny config's 8-way data mesh; the export restores the
    # checkpoint onto that mesh all the same.
    mesh, rules = loop._mesh_and_rules(config, jax.devices()[:1])
    init = state_lib.make_init_fn(task.init_params, optimizer)
    state, _ = state_lib.create_train_state(init, config.seed, mesh, rules)
    ema = jax.jit(lambda t: jax.tree.map(lambda x: 0.5 * x + jnp.float32(0.125), t))
    state = state.replace(step=state.step + step, ema_params=ema(state.ema_params))
    ckpt = ckpt_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints",
                                 ckpt_lib.CheckpointConfig(async_save=False))  # fmt: skip
    ckpt.save(step, state, {"position": step}, configlib.to_dict(config), force=True)
    ckpt.close()
    return jax.device_get(state)


def test_export_pipeline_from_stage_checkpoints(tmp_path, load_tool):
    """tools/export_pipeline.py on tiny base + TSR checkpoints in the trainer's layout: it ships
    the EMA params (bf16-rounded), the base stage's T5, a pipeline that samples, and it refuses
    a stage trained on another T5. (The checkpoints are saved initial states, not trained ones:
    training adds minutes of compiles and nothing the export reads.)"""
    import ml_dtypes

    from t2v_jax.pipeline_format import flatten_params
    from t2v_jax.pipeline_store import load_pipeline

    export = load_tool("export_pipeline")
    config_file = _tiny_with_data(tmp_path)
    runs = tmp_path / "runs"
    base = _save_stage(load_config(f"{config_file}:base"), runs / "base")
    text_dir = runs / "base" / "text_encoder"
    export.export(config_file, ["base"], [runs / "base"], text_dir, text_encoder_only=True)
    tsr = _save_stage(load_config(f"{config_file}:tsr", {"text.path": str(text_dir)}), runs / "tsr")
    # The TSR stage's frozen T5 is the one the base stage exported, read back from text.path.
    for a, b in zip(jax.tree.leaves(tsr.frozen["text"]), jax.tree.leaves(base.frozen["text"]),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)

    path = export.main(["--config", config_file, "--workdir", str(runs), "--stages", "base", "tsr",
                        "--out", str(tmp_path / "pipeline")])  # fmt: skip
    pipe = load_pipeline(path)
    assert pipe.output_shape == (8, 8, 8, 3)
    to_bf16 = lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32)
    for stage, saved in zip(pipe.stages, (base, tsr), strict=True):
        shipped = flatten_params(stage.params)
        expected = flatten_params(saved.ema_params["unet"])
        assert sorted(shipped) == sorted(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(np.asarray(shipped[name]), to_bf16(value), err_msg=name)
    for a, b in zip(jax.tree.leaves(pipe.text_encoder.params), jax.tree.leaves(base.frozen["text"]),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    videos = pipe.sample(["a red circle moving right"], num_steps=2, progress=False)
    assert videos.shape == (1, 8, 8, 8, 3) and videos.dtype == np.uint8

    # A stage trained on another (here: differently seeded, frozen random) T5 is refused.
    _save_stage(load_config(f"{config_file}:tsr", {"seed": 1}), tmp_path / "other" / "tsr")
    with pytest.raises(ValueError, match="not trained on the first stage's text encoder"):
        export.export(config_file, ["base", "tsr"], [runs / "base", tmp_path / "other" / "tsr"],
                      tmp_path / "refused")  # fmt: skip
    assert not (tmp_path / "refused").exists()


def _base_and_tsr_runs(tmp_path, load_tool):
    """(export tool, config file, runs root, TSR config): saved base and TSR stage checkpoints,
    the TSR trained on the base's exported T5, as tools/train_demo.sh's runs are laid out."""
    export = load_tool("export_pipeline")
    config_file = _tiny_with_data(tmp_path)
    runs = tmp_path / "runs"
    _save_stage(load_config(f"{config_file}:base"), runs / "base")
    text_dir = runs / "base" / "text_encoder"
    export.export(config_file, ["base"], [runs / "base"], text_dir, text_encoder_only=True)
    tsr_config = load_config(f"{config_file}:tsr", {"text.path": str(text_dir)})
    _save_stage(tsr_config, runs / "tsr")
    return export, config_file, runs, tsr_config


def test_export_pipeline_takes_stages_from_a_saved_pipeline(tmp_path, load_tool):
    """`--stage-from`: a cascade whose stages trained in different sessions. The TSR stage comes
    from a saved pipeline (there is no TSR workdir in the second root), the base from its
    checkpoint; a saved stage under another config, or a stage the pipeline lacks, is refused
    before anything is written."""
    from t2v_jax.pipeline_format import flatten_params
    from t2v_jax.pipeline_store import load_pipeline

    export, config_file, runs, _ = _base_and_tsr_runs(tmp_path, load_tool)
    first = export.export(config_file, ["base", "tsr"], [runs / "base", runs / "tsr"],
                          tmp_path / "first")  # fmt: skip

    later = tmp_path / "later"  # a new session's root: the base's checkpoint only
    later.mkdir()
    (later / "base").symlink_to(runs / "base", target_is_directory=True)
    path = export.main(["--config", config_file, "--workdir", str(later), "--stages", "base", "tsr",
                        "--stage-from", f"tsr={first}", "--out", str(tmp_path / "joined")])  # fmt: skip
    joined, reference = load_pipeline(path), load_pipeline(first)
    for got, want in zip(joined.stages, reference.stages, strict=True):
        assert got.config == want.config and got.model == want.model
        got_p, want_p = flatten_params(got.params), flatten_params(want.params)
        assert sorted(got_p) == sorted(want_p)
        for name, value in want_p.items():
            np.testing.assert_array_equal(np.asarray(got_p[name]), np.asarray(value), err_msg=name)

    # How a stage is sampled comes from the config; what it was trained to do must match.
    resampled = load_pipeline(export.export(
        config_file, ["base", "tsr"], [later / "base", later / "tsr"], tmp_path / "resampled",
        overrides={"sampling.num_steps": 3, "sampling.sampler": "ddpm"}, stage_from={"tsr": first},
    ))  # fmt: skip
    assert [(s.config.num_steps, s.config.sampler) for s in resampled.stages] == [(3, "ddpm")] * 2
    with pytest.raises(ValueError, match="has another stage config"):
        export.export(config_file, ["base", "tsr"], [later / "base", later / "tsr"],
                      tmp_path / "refused", overrides={"diffusion.schedule.logsnr_min": -19.0},
                      stage_from={"tsr": first})  # fmt: skip
    base_only = export.export(config_file, ["base"], [runs / "base"], tmp_path / "base_only")
    with pytest.raises(ValueError, match="has no stage 'tsr'"):
        export.export(config_file, ["base", "tsr"], [later / "base", later / "tsr"],
                      tmp_path / "refused", stage_from={"tsr": base_only})  # fmt: skip
    assert not (tmp_path / "refused").exists()


def test_warm_start_from_a_saved_pipeline(tmp_path, load_tool):
    """train.init_from=PIPELINE: a stage of a saved pipeline (its params as shipped, bf16) starts
    a new run's params and EMA params, the pipeline's T5 its frozen text encoder; a pipeline
    without this config's stage is refused naming the field."""
    from t2v_jax import configlib
    from t2v_jax.pipeline_format import flatten_params
    from t2v_jax.pipeline_store import load_pipeline
    from t2v_jax.train import checkpoint as ckpt_lib
    from t2v_jax.train import loop
    from t2v_jax.train import state as state_lib
    from t2v_jax.train import task as task_lib

    export, config_file, runs, tsr_config = _base_and_tsr_runs(tmp_path, load_tool)
    saved = load_pipeline(export.export(config_file, ["base", "tsr"], [runs / "base", runs / "tsr"],
                                        tmp_path / "pipeline"))  # fmt: skip

    # A fresh TSR state (another seed: nothing equal by chance), as the trainer makes it.
    task = task_lib.diffusion_task(tsr_config)
    optimizer, _ = state_lib.make_optimizer(
        configlib.from_config(state_lib.TrainConfig, tsr_config.train, "train")
    )
    mesh, rules = loop._mesh_and_rules(tsr_config, jax.devices()[:1])
    init = state_lib.make_init_fn(task.init_params, optimizer)
    fresh, _ = state_lib.create_train_state(init, 7, mesh, rules)
    ckpt_cfg = ckpt_lib.CheckpointConfig(async_save=False)
    warm = jax.device_get(loop._warm_start(fresh, str(tmp_path / "pipeline"), ckpt_cfg, "tsr"))
    shipped = flatten_params(saved.stages[1].params)
    for tree in (warm.params["unet"], warm.ema_params["unet"]):
        got = flatten_params(tree)
        assert sorted(got) == sorted(shipped)
        for name, value in shipped.items():
            np.testing.assert_array_equal(got[name], np.asarray(value, np.float32), err_msg=name)
    for a, b in zip(jax.tree.leaves(warm.frozen["text"]),
                    jax.tree.leaves(saved.text_encoder.params), strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(warm.step) == 0
    with pytest.raises(ValueError, match=r"train.init_from=.*has no stage 'ssr'"):
        loop._warm_start(fresh, str(tmp_path / "pipeline"), ckpt_cfg, "ssr")


def test_shipped_shapes_samples_as_its_config_says(load_tool):
    # The built-in pipelines carry their own sampling settings; a change to configs/shapes.py's
    # sampling (or a re-export that loses it) must not leave them disagreeing. "shapes_teacher"
    # samples as the config says; "shapes", its progressive distillation (two rounds, three for
    # the 64x64 SSR), takes a quarter of the steps (an eighth) with DDIM on the uniform grid the
    # students were distilled on, and keeps every other setting (guidance, thresholding, data
    # consistency) of its teacher.
    from t2v_jax.pipeline_store import load_pipeline
    from t2v_jax.stage import SAMPLING_FIELDS

    export = load_tool("export_pipeline")
    teacher, distilled = load_pipeline("shapes_teacher"), load_pipeline("shapes")
    for pipe in (teacher, distilled):
        assert [s.config.name for s in pipe.stages] == list(STAGES)
    for taught, student in zip(teacher.stages, distilled.stages, strict=True):
        want = export.sampling_stage_config(load_config(f"{SHAPES}:{taught.config.name}"))
        for field in SAMPLING_FIELDS:
            assert getattr(taught.config, field) == getattr(want, field), (want.name, field)
        rounds = 3 if want.name == "ssr2" else 2
        assert student.config.num_steps == want.num_steps // 2**rounds, want.name
        assert (student.config.sampler, student.config.time_grid) == ("ddim", "uniform")
        for field in set(SAMPLING_FIELDS) - {"num_steps", "sampler", "time_grid"}:
            assert getattr(student.config, field) == getattr(want, field), (want.name, field)
