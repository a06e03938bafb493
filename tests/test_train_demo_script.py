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
    trained = [c.split(":")[-1].split()[0] for c in calls if c.startswith("-m t2v_jax.cli.train")]
    exports = [c for c in calls if "export_pipeline.py" in c]
    return proc, sorted(trained), exports


def test_one_go_trains_every_stage_and_exports_them_together(tmp_path, recording_python):
    proc, trained, (export,) = _run(tmp_path, recording_python)
    assert proc.returncode == 0, proc.stderr
    assert trained == ["base", "ssr", "ssr2", "tsr"]
    assert "--stages base tsr ssr ssr2 --out" in export and "--stage-from" not in export


def test_split_runs_train_the_sr_stages_then_the_base_alone(tmp_path, recording_python):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    proc, trained, (export,) = _run(first, recording_python, SR_ONLY="1")
    assert proc.returncode == 0, proc.stderr
    assert trained == ["ssr", "ssr2", "tsr"] and "--stages tsr ssr ssr2 --out" in export
    proc, trained, (export,) = _run(second, recording_python, SR_FROM="SR")
    assert proc.returncode == 0, proc.stderr
    assert trained == ["base"]
    assert f"--stages base tsr ssr ssr2 --stage-from tsr,ssr,ssr2={second / 'sr'}" in export


@pytest.mark.parametrize("env,message", [
    ({"SR_FROM": "/nonexistent"}, "SR_FROM: no saved pipeline"),
    ({"SR_FROM": "SR", "SR_ONLY": "1"}, "set one of them"),
])  # fmt: skip
def test_bad_split_settings_stop_before_training(tmp_path, recording_python, env, message):
    proc, trained, exports = _run(tmp_path, recording_python, **env)
    assert proc.returncode == 2 and message in proc.stderr
    assert trained == [] and exports == []
