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
            pathlib.Path(w).name for w in c.split()[c.split().index("--overwrite") + 1 :]
        ]
        + [f"{name}={folder}" for name, folder in _stage_from(c)]
        for c in calls
        if "export_students.py" in c
    }
    return proc, rounds, exports


def _stage_from(call):
    words = call.split()
    return [tuple(words[i + 1].split("=", 1)) for i, w in enumerate(words) if w == "--stage-from"]


def test_two_rounds_distill_every_stage_and_export_each_rounds_cascade(tmp_path, recording_python):
    proc, rounds, exports = _run(tmp_path, recording_python, STEPS="7")
    assert proc.returncode == 0, proc.stderr
    assert rounds == {
        "base_g": ("base", "guidance", "shapes_teacher", "base", "7"),
        "base_p16": ("base", "progressive", "base_g", None, "7"),
        "base_p8": ("base", "progressive", "base_p16", None, "7"),
        **{f"{s}_p8": (s, "progressive", "shapes_teacher", s, "7") for s in ("tsr", "ssr", "ssr2")},
        **{f"{s}_p4": (s, "progressive", f"{s}_p8", None, "7") for s in ("tsr", "ssr", "ssr2")},
    }
    assert exports == {
        "cascade_r0": ["base_g"],
        "cascade_r1": ["base_p16", "tsr_p8", "ssr_p8", "ssr2_p8"],
        "cascade_r2": ["base_p8", "tsr_p4", "ssr_p4", "ssr2_p4"],
    }


def test_round_three_halves_the_chosen_sr_stages_again(tmp_path, recording_python):
    proc, rounds, exports = _run(tmp_path, recording_python, ROUNDS="3")
    assert proc.returncode == 0, proc.stderr
    assert rounds["ssr2_p2"] == ("ssr2", "progressive", "ssr2_p4", None, "1000")
    assert not {"base_p4", "tsr_p2", "ssr_p2"} & set(rounds)  # by default SSR2 alone
    assert exports["cascade_r3"] == ["base_p8", "tsr_p4", "ssr_p4", "ssr2_p2"]
    (tmp_path / "python_calls.txt").unlink()
    proc, rounds, exports = _run(tmp_path, recording_python, ROUNDS="3", ROUND3_STAGES="ssr ssr2")
    assert proc.returncode == 0, proc.stderr
    assert rounds["ssr_p2"][2] == "ssr_p4" and "tsr_p2" not in rounds
    assert exports["cascade_r3"] == ["base_p8", "tsr_p4", "ssr_p2", "ssr2_p2"]


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


def test_a_finished_round_is_not_run_again(tmp_path, recording_python):
    (tmp_path / "runs" / "base_g" / "checkpoints" / "7").mkdir(parents=True)  # STEPS=7 reached
    (tmp_path / "runs" / "base_p16" / "checkpoints" / "3").mkdir(parents=True)  # not yet
    proc, rounds, exports = _run(tmp_path, recording_python, CHAINS="base", STEPS="7")
    assert proc.returncode == 0, proc.stderr
    assert sorted(rounds) == ["base_p16", "base_p8"]  # base_p16 resumes
    assert rounds["base_p16"][2] == "base_g" and exports == {"cascade_r0": ["base_g"]}


def test_sr_stages_pick_the_sr_chains_stages(tmp_path, recording_python):
    proc, rounds, exports = _run(tmp_path, recording_python, CHAINS="sr", SR_STAGES="ssr2")
    assert proc.returncode == 0, proc.stderr
    assert rounds == {"ssr2_p8": ("ssr2", "progressive", "shapes_teacher", "ssr2", "1000"),
                      "ssr2_p4": ("ssr2", "progressive", "ssr2_p8", None, "1000")}  # fmt: skip
    assert exports == {}


def test_kept_rounds_carry_the_plan_over_a_lost_root(tmp_path, recording_python):
    keep = tmp_path / "keep"
    proc, rounds, exports = _run(tmp_path, recording_python, KEEP=str(keep), ROUNDS="1")
    assert proc.returncode == 0, proc.stderr
    # Each finished round is kept as the teacher pipeline with its student in place.
    kept = ["base_g", "base_p16", "tsr_p8", "ssr_p8", "ssr2_p8"]
    assert {run: exports[run] for run in kept} == {run: [run] for run in kept}
    assert all(r[1] != "guidance" or r[3] == "base" for r in rounds.values())

    # A new machine: ROOT is empty, base_g and tsr_p8 are kept (committed) pipelines.
    (tmp_path / "python_calls.txt").unlink()
    for run in ("base_g", "tsr_p8"):
        (keep / run).mkdir(parents=True)
        (keep / run / "pipeline.json").write_text("{}")
    proc, rounds, exports = _run(tmp_path, recording_python, KEEP=str(keep))
    assert proc.returncode == 0, proc.stderr
    assert "base_g" not in rounds and "tsr_p8" not in rounds  # not distilled again
    assert rounds["base_p16"][2:4] == (str(keep / "base_g"), "base")
    assert rounds["tsr_p4"][2:4] == (str(keep / "tsr_p8"), "tsr")
    assert rounds["base_p8"][2:4] == ("base_p16", None)  # its workdir, not kept yet
    assert exports["cascade_r0"] == [f"base={keep / 'base_g'}"]
    assert exports["cascade_r1"] == ["base_p16", "ssr_p8", "ssr2_p8", f"tsr={keep / 'tsr_p8'}"]
    assert exports["cascade_r2"] == ["base_p8", "tsr_p4", "ssr_p4", "ssr2_p4"]

    # A workdir with a checkpoint wins over the kept pipeline (it resumes, in float32).
    (tmp_path / "python_calls.txt").unlink()
    (tmp_path / "runs" / "base_g" / "checkpoints" / "500").mkdir(parents=True)  # unfinished
    proc, rounds, exports = _run(tmp_path, recording_python, KEEP=str(keep), CHAINS="base")
    assert proc.returncode == 0, proc.stderr
    assert rounds["base_g"][2] == "shapes_teacher" and rounds["base_p16"][2:4] == ("base_g", None)
    assert exports["cascade_r0"] == ["base_g"]


@pytest.mark.parametrize("env,message", [
    ({"ROUNDS": "4"}, "ROUNDS: 0, 1, 2 or 3"),
    ({"ROUNDS": "3", "ROUND3_STAGES": "base"}, "ROUND3_STAGES: some of 'tsr ssr ssr2'"),
    ({"CHAINS": "base ssr"}, "CHAINS: 'base', 'sr' or both"),
    ({"CHAINS": " "}, "CHAINS: 'base', 'sr' or both"),
    ({"STEPS": "0"}, "STEPS: a positive integer"),
    ({"SR_STAGES": "tsr base"}, "SR_STAGES: some of 'tsr ssr ssr2'"),
])  # fmt: skip
def test_bad_settings_stop_before_distilling(tmp_path, recording_python, env, message):
    proc, rounds, exports = _run(tmp_path, recording_python, **env)
    assert proc.returncode == 2 and message in proc.stderr
    assert rounds == {} and exports == {}


def test_a_keep_folder_with_spaces_reaches_the_next_round_as_one_argument(tmp_path):
    # A stub python that records each argument on its own line (the shared one joins them).
    log = tmp_path / "args.txt"
    stub = tmp_path / "python"
    stub.write_text(f"#!/usr/bin/env bash\nprintf '%s\\n' \"$@\" --- >> '{log}'\n")
    stub.chmod(0o755)
    keep = tmp_path / "kept rounds"
    (keep / "base_g").mkdir(parents=True)
    (keep / "base_g" / "pipeline.json").write_text("{}")
    env = {**os.environ, "PYTHON": str(stub), "KEEP": str(keep), "CHAINS": "base", "ROUNDS": "1"}
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "runs")], env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    calls = [c.strip("\n").split("\n") for c in log.read_text().split("---\n") if c.strip()]
    (round_p16,) = [c for c in calls if c[:2] == ["-m", "t2v_jax.cli.distill"]
                    and any(a.endswith("/base_p16") for a in c)]  # fmt: skip
    assert f"--teacher={keep}/base_g" in round_p16 and "--teacher_stage=base" in round_p16
