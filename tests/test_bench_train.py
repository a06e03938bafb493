"""t2v-bench train: synthetic batches have the pipeline's structure; the tiny config's real step runs."""

import json

import jax
import numpy as np
import pytest

from t2v_jax.perf import bench, bench_train


@pytest.mark.parametrize(
    ("name", "text_key", "text_dtype"),
    [("tiny", "text_ids", np.int32), ("demo", "text_ids", np.int32),
     ("paper", "text_emb", np.float32)],
)  # fmt: skip
def test_synthetic_batch_has_the_pipeline_structure(name, text_key, text_dtype):
    config, _ = bench_train.load_bench_config(name)
    experiment = bench_train.bench_experiment(config, 2)
    batch = bench_train.synthetic_batch(experiment, 2)
    stage = experiment.stage
    assert set(batch) == {"video", "frame_mask", "text_mask", text_key}
    assert batch["video"].shape == (2, stage.frames, stage.height, stage.width, 3)
    assert batch["video"].dtype == np.float32 and np.abs(batch["video"]).max() <= 1
    assert batch["frame_mask"].dtype == bool and batch["frame_mask"].all()
    length = experiment.text.max_length
    assert batch["text_mask"].shape == (2, length) and batch["text_mask"].dtype == bool
    assert batch["text_mask"][:, 0].all()  # a prefix of each row is text
    assert batch[text_key].dtype == text_dtype and batch[text_key].shape[:2] == (2, length)
    if text_key == "text_ids":  # padding is id 0 exactly where the mask is False
        assert ((batch["text_ids"] != 0) == batch["text_mask"]).all()


def test_paper_stage_is_shrunk_but_keeps_its_structure():
    config, overrides = bench_train.load_bench_config("paper", 16, 4, 1)
    assert overrides == {"shrink": 16, "stage.frames": 4, "model.num_res_blocks": 1}
    assert (config.stage.frames, config.stage.height, config.stage.width) == (4, 24, 40)
    assert config.model.base_channels == 704 // 16 and config.model.text_dim == 4096 // 16
    assert config.model.channel_mults == (1, 2, 4, 4) and config.model.dtype == "bfloat16"


def test_bench_experiment_builds_each_task_without_data():
    from t2v_jax.train import task as task_lib

    for name in bench_train.CONFIGS:
        config, _ = bench_train.load_bench_config(name)
        task = task_lib.diffusion_task(bench_train.bench_experiment(config, 2))
        assert task.sample_fn is None


def test_run_train_benchmarks_rejects_bad_arguments():
    with pytest.raises(ValueError, match="configs"):
        bench_train.run_train_benchmarks(["huge"])
    with pytest.raises(ValueError, match="steps"):
        bench_train.run_train_benchmarks(["tiny"], steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        bench_train.run_train_benchmarks(["tiny"], batch_size=0)


def test_synthetic_train_state_is_laid_out_like_the_library_state():
    from t2v_jax import configlib, sharding
    from t2v_jax.train import state as state_lib
    from t2v_jax.train import task as task_lib

    config, _ = bench_train.load_bench_config("tiny")
    experiment = bench_train.bench_experiment(config, 2)
    task = task_lib.diffusion_task(experiment)
    optimizer, _ = state_lib.make_optimizer(
        configlib.from_config(state_lib.TrainConfig, experiment.train, "train")
    )
    init = state_lib.make_init_fn(task.init_params, optimizer)
    mesh = bench.one_device_mesh()
    rules = sharding.rules_from_config(experiment.sharding.rules)
    state, _, _ = bench.synthetic_train_state(init, optimizer, mesh, rules)
    abstract, _ = state_lib.state_shardings(init, mesh, rules)
    assert jax.tree.structure(state) == jax.tree.structure(abstract)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(abstract), strict=True):
        assert (got.shape, got.dtype) == (want.shape, want.dtype)
    assert "text" in state.frozen  # the tiny config's frozen T5 runs in the step
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_cli_train_passes_its_arguments(monkeypatch, capsys):
    from t2v_jax.cli.bench import main

    seen = {}

    def fake_run(configs, **kwargs):
        seen.update(configs=configs, **kwargs)
        return {"fake": True}

    monkeypatch.setattr(bench_train, "run_train_benchmarks", fake_run)
    monkeypatch.setattr(bench_train, "format_train_table", lambda r: "TABLE")
    argv = ["train", "--configs", "tiny", "paper", "--steps", "2", "--repeats", "1",
            "--batch", "4", "--paper-shrink", "8"]  # fmt: skip
    assert main(argv) == 0
    assert seen == {"configs": ["tiny", "paper"], "steps": 2, "repeats": 1, "batch_size": 4,
                    "paper_shrink": 8, "paper_frames": 4, "paper_res_blocks": 1}  # fmt: skip
    assert "TABLE" in capsys.readouterr().out


def _positive(x):
    return isinstance(x, int | float) and x > 0


@pytest.mark.slow
def test_train_bench_times_the_tiny_config(tmp_path, capsys):
    from t2v_jax.cli.bench import main

    out = tmp_path / "train.json"
    argv = ["train", "--configs", "tiny", "--steps", "2", "--repeats", "2", "--batch", "2",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "| tiny (float32) |" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert list(r["configs"]) == ["tiny"] and r["steps"] == 2
    tiny = r["configs"]["tiny"]
    assert tiny["config"] == "configs/tiny.py:base" and tiny["text"] == "token ids"
    assert tiny["stage_shape"] == [4, 8, 8] and tiny["batch"] == 2
    for field in ("num_params", "frozen_params", "compile_s", "first_step_s", "step_s",
                  "flops_per_step", "mfu"):  # fmt: skip
        assert _positive(tiny[field]), field
    assert tiny["steps_per_s"] == pytest.approx(1 / tiny["step_s"])
    assert tiny["examples_per_s"] == pytest.approx(2 / tiny["step_s"])
    assert tiny["mfu"] == pytest.approx(
        tiny["flops_per_step"] / tiny["step_s"] / r["peak"]["flops_per_s"]
    )
    # The steps trained (finite loss, nothing skipped), as the first steps of t2v-train would.
    assert np.isfinite(tiny["loss"]) and tiny["skipped_steps"] == 0
