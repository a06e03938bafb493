"""tools/train_demo.sh's three ways to run: what it trains and how it exports (a stub python
records the commands, so nothing trains)."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "train_demo.sh"


def _run(tmp_path, python, **env):
    stub, recorded = python(tmp_path)
    sr = tmp_path / "sr"
    sr.mkdir(exist_ok=True)
    (sr / "pipeline.json").write_text("{}")
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "runs")],
        env={**os.environ, "PYTHON": str(stub), "OUT": str(tmp_path / "out"),
             **{k: v.replace("SR", str(sr)) for k, v in env.items()}},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    calls = recorded()
    trains = [c for c in calls if c.startswith("-m t2v_jax.cli.train")]
    exports = [c for c in calls if "export_pipeline.py" in c]
    return proc, trains, exports


def _stages(trains):
    """The stages the recorded t2v-train calls trained (each once, whatever its runs)."""
    return sorted({c.split(":")[-1].split()[0] for c in trains})


def test_one_go_trains_every_stage_and_exports_them_together(tmp_path, recording_python):
    proc, trains, (export,) = _run(tmp_path, recording_python)
    assert proc.returncode == 0, proc.stderr
    assert _stages(trains) == ["base", "ssr", "ssr2", "tsr"]
    assert "--stages base tsr ssr ssr2 --out" in export and "--stage-from" not in export


def test_split_runs_train_the_sr_stages_then_the_base_alone(tmp_path, recording_python):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    proc, trains, (export,) = _run(first, recording_python, SR_ONLY="1")
    assert proc.returncode == 0, proc.stderr
    assert _stages(trains) == ["ssr", "ssr2", "tsr"] and "--stages tsr ssr ssr2 --out" in export
    proc, trains, (export,) = _run(second, recording_python, SR_FROM="SR")
    assert proc.returncode == 0, proc.stderr
    assert _stages(trains) == ["base"]
    assert f"--stages base tsr ssr ssr2 --stage-from tsr,ssr,ssr2={second / 'sr'}" in export


def test_each_sr_stage_trains_from_scratch_then_continues_from_that_run(tmp_path, recording_python):
    proc, trains, _ = _run(tmp_path, recording_python, SR_ONLY="1")
    assert proc.returncode == 0, proc.stderr
    runs = tmp_path / "runs"
    for stage in ("tsr", "ssr", "ssr2"):
        scratch, continued = (
            c for c in trains if c.split()[2] == f"--config={ROOT}/configs/shapes.py:{stage}"
        )
        assert f"--workdir={runs}/{stage}_scratch" in scratch and "init_from" not in scratch
        # The export reads ROOT/<stage>: the continued run, warm-started from the scratch one.
        assert f"--workdir={runs}/{stage} " in continued + " "
        assert f"--config.train.init_from={runs}/{stage}_scratch" in continued
        assert "--config.train.num_steps=1000" in continued
    one_run = tmp_path / "one_run"
    one_run.mkdir()
    proc, trains, _ = _run(one_run, recording_python, SR_ONLY="1", SR_CONTINUE_STEPS="0")
    assert proc.returncode == 0, proc.stderr
    assert [c.split("--workdir=")[1].split()[0].rsplit("/", 1)[1] for c in trains] == [
        "tsr",
        "ssr",
        "ssr2",
    ]


@pytest.mark.parametrize("env,message", [
    ({"SR_FROM": "/nonexistent"}, "SR_FROM: no saved pipeline"),
    ({"SR_CONTINUE_STEPS": "-1"}, "SR_CONTINUE_STEPS: a count >= 0"),
    ({"SR_FROM": "SR", "SR_ONLY": "1"}, "set one of them"),
])  # fmt: skip
def test_bad_split_settings_stop_before_training(tmp_path, recording_python, env, message):
    proc, trains, exports = _run(tmp_path, recording_python, **env)
    assert proc.returncode == 2 and message in proc.stderr
    assert trains == [] and exports == []


@pytest.mark.parametrize("run,env,message", [
    ("tsr", {}, "a one-run SR run (no"),  # would resume as the continuation, at lr 5e-4
    ("ssr2_scratch", {"SR_CONTINUE_STEPS": "0"}, "ROOT holds two-run SR stages"),
])  # fmt: skip
def test_sr_runs_of_the_other_recipe_stop_before_training(
    tmp_path, recording_python, run, env, message
):
    (tmp_path / "runs" / run / "checkpoints").mkdir(parents=True)
    proc, trains, exports = _run(tmp_path, recording_python, **env)
    assert proc.returncode == 2 and message in proc.stderr
    assert trains == [] and exports == []
