"""Distillation rounds through the training loop on the tiny cascade, end to end: a guidance
round, a progressive round on its student and one on an SR stage, then the students exported
into the teacher pipeline as one distilled cascade (what tools/distill_demo.sh does)."""

import pathlib

import jax
import numpy as np
import pytest

from t2v_jax import pipeline_store, sharding
from t2v_jax.configlib import load_config
from t2v_jax.data import pipeline as data_pipeline
from t2v_jax.train import distill_task

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def _config(stage, data_dir):
    config = load_config(f"{CONFIGS / 'tiny.py'}:{stage}", {
        "train.num_steps": 2, "train.batch_size": 8, "checkpoint.every_steps": 2,
        "log.every_steps": 1,
    })  # fmt: skip
    config.data = {"name": "shapes/tiny", "data_dir": data_dir}
    return config


@pytest.mark.slow  # three small training runs (compiles of ~20-40 s each on 2 cores)
def test_rounds_run_and_their_students_export_as_one_cascade(build_tiny_pipeline, tmp_path):
    data_dir = str(tmp_path / "tfds")
    data_pipeline.prepare("shapes/tiny", data_dir)
    teacher_dir = str(build_tiny_pipeline().save(tmp_path / "teacher"))
    rounds = {
        "base_g": ("base", distill_task.DistillSettings("guidance", teacher_dir, "base")),
        "base_p": ("base", distill_task.DistillSettings("progressive", str(tmp_path / "base_g"))),
        "tsr_p": ("tsr", distill_task.DistillSettings("progressive", teacher_dir, "tsr")),
    }
    for run, (stage, settings) in rounds.items():
        result = distill_task.distill(_config(stage, data_dir), tmp_path / run, settings)
        assert result.status == "completed" and result.step == 2, (run, result.status)

    mesh = sharding.make_mesh(sharding.MeshConfig(), devices=jax.devices()[:1])
    teacher = pipeline_store.load_pipeline(teacher_dir, mesh=mesh)
    distill_task.export_students([tmp_path / "base_p", tmp_path / "tsr_p"], teacher,
                                 tmp_path / "out")  # fmt: skip
    distilled = pipeline_store.load_pipeline(tmp_path / "out", mesh=mesh)
    base, tsr, ssr = distilled.stages
    t_base, t_tsr, t_ssr = teacher.stages
    # The base: guidance input from round g, half the teacher's 4 steps from round p, DDIM.
    assert base.model.guidance_input and not t_base.model.guidance_input
    assert (base.config.num_steps, base.config.sampler) == (t_base.config.num_steps // 2, "ddim")
    assert tsr.config.num_steps == t_tsr.config.num_steps // 2 and not tsr.model.guidance_input
    # Each student's own weights (its run's EMA), the SSR stage untouched.
    for stage, run in ((base, "base_p"), (tsr, "tsr_p")):
        student, _, _ = distill_task.stage_from_workdir(tmp_path / run)
        for a, b in zip(jax.tree.leaves(stage.params), jax.tree.leaves(student.params),
                        strict=True):  # fmt: skip
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(ssr.params), jax.tree.leaves(t_ssr.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    video = distilled.sample(["a red circle"], seed=0, progress=False)
    assert video.shape[0] == 1 and video.dtype == np.uint8

    # A round kept as a pipeline stands in for its lost workdir: the same cascade again.
    again = distill_task.export_students([tmp_path / "tsr_p"], teacher, tmp_path / "again",
                                         stage_from={"base": tmp_path / "out"})  # fmt: skip
    for a, b in zip(jax.tree.leaves([s.params for s in again.stages]),
                    jax.tree.leaves([s.params for s in distilled.stages]), strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [s.config for s in again.stages] == [s.config for s in distilled.stages]
    with pytest.raises(ValueError, match="stage_from: .* has no stage 'sr'"):
        distill_task.export_students([], teacher, tmp_path / "none",
                                     stage_from={"sr": tmp_path / "out"})  # fmt: skip

    # Refused, nothing written: two students of one stage; a pipeline with another encoder.
    with pytest.raises(ValueError, match="two students of stage 'base'"):
        distill_task.export_students([tmp_path / "base_g", tmp_path / "base_p"], teacher,
                                     tmp_path / "two")  # fmt: skip
    other = build_tiny_pipeline(encoder_seed=2)
    with pytest.raises(ValueError, match="text encoder is not the one"):
        distill_task.export_students([tmp_path / "base_p"], other, tmp_path / "other")
    with pytest.raises(ValueError, match="two students of stage 'tsr'"):
        distill_task.export_students([tmp_path / "tsr_p"], teacher, tmp_path / "two",
                                     stage_from={"tsr": tmp_path / "out"})  # fmt: skip
    with pytest.raises(ValueError, match="text encoder is not the one"):
        distill_task.export_students([], other, tmp_path / "other",
                                     stage_from={"base": tmp_path / "out"})  # fmt: skip
    assert not (tmp_path / "two").exists() and not (tmp_path / "other").exists()
