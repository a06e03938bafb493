"""tools/distill_demo.sh's plan: which rounds it runs, from which teachers, and which students
each exported cascade holds (a stub python records the commands, so nothing trains)."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "distill_demo.sh"


def _run(tmp_path, python, **env):
    stub, recorded = python(tmp_path)
    runs = tmp_path / "runs"
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(runs)],
        env={**os.environ, "PYTHON": str(stub), **env}, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    calls = recorded()
    rounds = {}
    for call in calls:
        if call.startswith("-m t2v_jax.cli.distill"):
            flags = dict(f.lstrip("-").split("=", 1) for f in call.split()[2:])
            run = pathlib.Path(flags["workdir"]).name
            teacher = flags["teacher"].replace(str(runs) + "/", "")
            rounds[run] = (flags["config"].split(":")[-1], flags["mode"], teacher,
                           flags.get("teacher_stage"), flags["config.train.num_steps"])  # fmt: skip
    exports = {
        pathlib.Path(c.split("--out ")[1].split()[0]).name: [
            pathlib.Path(w).name for w in c.split("--overwrite ")[1].split()
        ]
        for c in calls
        if "export_students.py" in c
    }
    return proc, rounds, exports


def test_two_rounds_distill_every_stage_and_export_each_rounds_cascade(tmp_path, recording_python):
    proc, rounds, exports = _run(tmp_path, recording_python, STEPS="7")
    assert proc.returncode == 0, proc.stderr
    assert rounds == {
        "base_g": ("base", "guidance", "shapes", "base", "7"),
        "base_p16": ("base", "progressive", "base_g", None, "7"),
        "base_p8": ("base", "progressive", "base_p16", None, "7"),
        **{f"{s}_p8": (s, "progressive", "shapes", s, "7") for s in ("tsr", "ssr", "ssr2")},
        **{f"{s}_p4": (s, "progressive", f"{s}_p8", None, "7") for s in ("tsr", "ssr", "ssr2")},
    }
    assert exports == {
        "cascade_r0": ["base_g"],
        "cascade_r1": ["base_p16", "tsr_p8", "ssr_p8", "ssr2_p8"],
        "cascade_r2": ["base_p8", "tsr_p4", "ssr_p4", "ssr2_p4"],
    }


def test_one_round_stops_after_round_one(tmp_path, recording_python):
    proc, rounds, exports = _run(tmp_path, recording_python, ROUNDS="1", TEACHER="/teacher/pipe")
    assert proc.returncode == 0, proc.stderr
    assert sorted(rounds) == ["base_g", "base_p16", "ssr2_p8", "ssr_p8", "tsr_p8"]
    assert rounds["tsr_p8"][2] == "/teacher/pipe"
    assert sorted(exports) == ["cascade_r0", "cascade_r1"]


def test_chains_split_the_base_and_sr_rounds_over_runs(tmp_path, recording_python):
    (tmp_path / "base").mkdir(), (tmp_path / "sr").mkdir()
    proc, rounds, exports = _run(tmp_path / "base", recording_python, CHAINS="base")
    assert proc.returncode == 0, proc.stderr
    assert sorted(rounds) == ["base_g", "base_p16", "base_p8"]
    assert exports == {"cascade_r0": ["base_g"]}  # the later rounds' cascades need SR students
    proc, rounds, exports = _run(tmp_path / "sr", recording_python, CHAINS="sr")
    assert proc.returncode == 0, proc.stderr
    assert sorted(rounds) == sorted(f"{s}_p{n}" for s in ("tsr", "ssr", "ssr2") for n in (8, 4))
    assert exports == {}


@pytest.mark.parametrize("env,message", [
    ({"ROUNDS": "3"}, "ROUNDS: 0, 1 or 2"),
    ({"CHAINS": "base ssr"}, "CHAINS: 'base', 'sr' or both"),
    ({"CHAINS": " "}, "CHAINS: 'base', 'sr' or both"),
    ({"STEPS": "0"}, "STEPS: a positive integer"),
])  # fmt: skip
def test_bad_settings_stop_before_distilling(tmp_path, recording_python, env, message):
    proc, rounds, exports = _run(tmp_path, recording_python, **env)
    assert proc.returncode == 2 and message in proc.stderr
    assert rounds == {} and exports == {}
