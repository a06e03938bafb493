"""Launches t2v-train on a Cloud TPU VM slice: create, install, prepare, train, logs, restart, delete.

Every subcommand prints each gcloud command before running it (`+ gcloud ...`); with --dry-run it
only prints them. The slice's settings are flags shared by all subcommands; keep them in a file
with one argument per line and pass it as `@FILE` (argparse's fromfile), so that `restart` after a
preemption reuses exactly the settings `create` and `train` had:

  python tools/tpu_pod.py @pod.args create     # queued resource; waits until ACTIVE
  python tools/tpu_pod.py @pod.args install    # uv venv + t2v_jax[tpu] on every worker
  python tools/tpu_pod.py @pod.args prepare    # TFDS data (+ T5 embedding cache) into the bucket
  python tools/tpu_pod.py @pod.args train      # t2v-train under nohup on every worker
  python tools/tpu_pod.py @pod.args logs       # follow worker 0's log (--worker all: every tail)
  python tools/tpu_pod.py @pod.args state      # ACTIVE, WAITING_FOR_RESOURCES, SUSPENDED, ...
  python tools/tpu_pod.py @pod.args stop       # SIGTERM: each worker checkpoints and exits
  python tools/tpu_pod.py @pod.args restart    # after a preemption: recreate, install, train
  python tools/tpu_pod.py @pod.args delete

docs/tpu.md walks through a run. Flags and states follow the gcloud reference pages
https://cloud.google.com/sdk/gcloud/reference/compute/tpus/queued-resources/create,
https://cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/ssh and the queued-resource
states in https://cloud.google.com/tpu/docs/queued-resources and
https://cloud.google.com/python/docs/reference/tpu/latest/google.cloud.tpu_v2alpha1.types.QueuedResourceState.State.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

# TPU software (runtime) versions for JAX, by TPU generation, from
# https://cloud.google.com/tpu/docs/runtimes ("PyTorch and JAX" table).
RUNTIME_VERSIONS = {
    "v6e": "v2-alpha-tpuv6e",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",  # v5e's accelerator types are v5litepod-N
    "v4": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v2": "tpu-ubuntu2204-base",
}
# Queued-resource states (https://cloud.google.com/tpu/docs/queued-resources) and TPU VM node
# states: what `restart` does in each. A spot slice that was preempted is SUSPENDED (queued
# resource) or PREEMPTED (plain TPU VM); its disks are gone, so it is deleted and created again.
READY = {"ACTIVE", "READY"}
PENDING = {"ACCEPTED", "CREATING", "PROVISIONING", "WAITING_FOR_RESOURCES", "STARTING"}
GONE = {"SUSPENDING", "SUSPENDED", "PREEMPTED", "FAILED", "TERMINATED", "STOPPED", "NOT_FOUND"}
# On every worker: the checkout (configs live there), the venv, the log and the pid file.
REPO = "~/t2v_jax"
VENV = "~/t2v_venv"
LOG = "~/t2v_train.log"
PID = "~/t2v_train.pid"
PLACEHOLDER = "YOUR_ORG"


def runtime_version(accelerator_type: str) -> str:
    """The JAX runtime image for an accelerator type such as v5p-128 or v5litepod-16."""
    generation = accelerator_type.rsplit("-", 1)[0]
    if generation not in RUNTIME_VERSIONS:
        raise SystemExit(
            f"no default runtime version for {accelerator_type}: pass --runtime-version"
        )
    return RUNTIME_VERSIONS[generation]


class Pod:
    """Builds the gcloud commands for one slice and runs (or, in a dry run, prints) them."""

    def __init__(
        self,
        args: argparse.Namespace,
        call: Callable[[list[str]], int] = lambda cmd: subprocess.run(cmd).returncode,
        query: Callable[[list[str]], subprocess.CompletedProcess] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """`call` runs a command with its output on the terminal and returns its exit status;
        `query` runs one and captures its output; tests pass fakes of both and of `sleep`."""
        self.args = args
        self._call = call
        self._query = query or (lambda cmd: subprocess.run(cmd, capture_output=True, text=True))
        self._sleep = sleep

    # -- command builders ------------------------------------------------------------------------

    def _gcloud(self, *words: str) -> list[str]:
        project = [f"--project={self.args.project}"] if self.args.project else []
        return ["gcloud", "compute", "tpus", *words, f"--zone={self.args.zone}", *project]

    def ssh(self, command: str, worker: str = "all") -> list[str]:
        """`command` (one shell line) on `worker` ("all" or an index) of the slice."""
        name = self.args.name
        return self._gcloud("tpu-vm", "ssh", name, f"--worker={worker}", f"--command={command}")

    def create_command(self) -> list[str]:
        a = self.args
        version = a.runtime_version or runtime_version(a.accelerator_type)
        spot = ["--spot"] if a.spot else []
        if a.queued:
            return self._gcloud(
                "queued-resources", "create", a.name, f"--node-id={a.name}",
                f"--accelerator-type={a.accelerator_type}", f"--runtime-version={version}", *spot,
            )  # fmt: skip
        return self._gcloud(
            "tpu-vm", "create", a.name, f"--accelerator-type={a.accelerator_type}",
            f"--version={version}", *spot,
        )  # fmt: skip

    def state_command(self) -> list[str]:
        if self.args.queued:
            words = ("queued-resources", "describe", self.args.name)
            return [*self._gcloud(*words), "--format=value(state.state)"]
        return [*self._gcloud("tpu-vm", "describe", self.args.name), "--format=value(state)"]

    def delete_command(self) -> list[str]:
        kind = "queued-resources" if self.args.queued else "tpu-vm"
        force = ["--force"] if self.args.queued else []  # also deletes the queued resource's nodes
        return self._gcloud(kind, "delete", self.args.name, *force, "--quiet")

    def install_script(self) -> str:
        """Idempotent: clone (or update) the checkout, make the venv once, pip install [tpu]."""
        a = self.args
        repo = shlex.quote(a.source)
        ref = shlex.quote(a.ref)
        return " && ".join(
            [
                # The runtime images are Ubuntu 22.04 (Python 3.10); t2v_jax needs >= 3.11, so uv
                # brings its own Python into a venv.
                "python3 -m pip install --user -q -U uv",
                f"(test -d {REPO} || git clone -q {repo} {REPO})",
                f"git -C {REPO} fetch -q origin {ref}",
                f"git -C {REPO} checkout -q FETCH_HEAD",
                f"(test -x {VENV}/bin/python || ~/.local/bin/uv venv -q --python {a.python} {VENV})",
                f'~/.local/bin/uv pip install -q --python {VENV}/bin/python -e "$HOME/t2v_jax[tpu]"',
            ]
        )

    def train_argv(self) -> list[str]:
        """The t2v-train command line every worker runs (relative to the checkout)."""
        a = self.args
        argv = [
            f"{VENV}/bin/t2v-train",
            f"--config={a.config}:{a.stage}",
            f"--workdir={self.workdir}",
            f"--config.data.data_dir={self.data_dir}",
        ]
        if a.text_embeddings:
            argv.append(f"--config.data.text_embeddings={a.text_embeddings}")
        argv += [f"--config.{override}" for override in a.set]
        return argv

    def train_script(self) -> str:
        """Starts t2v-train in the background unless this worker already runs it (idempotent)."""
        train = " ".join(
            arg if arg.startswith("~/") else shlex.quote(arg) for arg in self.train_argv()
        )
        return (
            f'cd {REPO} && if test -f {PID} && kill -0 "$(cat {PID})" 2>/dev/null; '
            f'then echo "$(hostname): t2v-train already running"; '
            f"else nohup {train} >> {LOG} 2>&1 < /dev/null & echo $! > {PID}; "
            f'echo "$(hostname): t2v-train started, log {LOG}"; fi'
        )

    @property
    def workdir(self) -> str:
        return f"{self.args.bucket.rstrip('/')}/{self.args.run_name}/{self.args.stage}"

    @property
    def data_dir(self) -> str:
        return self.args.data_dir or f"{self.args.bucket.rstrip('/')}/tfds"

    # -- running ---------------------------------------------------------------------------------

    def execute(self, cmd: list[str]) -> None:
        """Prints `cmd`, then runs it (not in a dry run); a failure stops the tool."""
        print("+", shlex.join(cmd), flush=True)
        if self.args.dry_run:
            return
        if self._call(cmd) != 0:
            raise SystemExit(f"failed: {shlex.join(cmd)}")

    def state(self) -> str:
        """The slice's state (ACTIVE, SUSPENDED, ...; NOT_FOUND when it does not exist)."""
        cmd = self.state_command()
        print("+", shlex.join(cmd), flush=True)
        if self.args.dry_run:
            print(f"# dry run: assuming state {self.args.assume_state}")
            return self.args.assume_state
        result = self._query(cmd)
        if result.returncode != 0:
            if "NOT_FOUND" in result.stderr or "not found" in result.stderr.lower():
                return "NOT_FOUND"
            raise SystemExit(f"failed: {shlex.join(cmd)}\n{result.stderr}")
        return result.stdout.strip() or "UNKNOWN"

    def wait_until_ready(self) -> None:
        if self.args.dry_run:
            print(f"# waits until the state is {' or '.join(sorted(READY))}")
            return
        while (state := self.state()) not in READY:
            if state in GONE or state == "UNKNOWN":
                raise SystemExit(f"{self.args.name} is {state}: it will not become ready")
            print(f"# {self.args.name} is {state}; checking again in {self.args.poll_s:g} s")
            self._sleep(self.args.poll_s)

    # -- subcommands -----------------------------------------------------------------------------

    def create(self) -> None:
        self.execute(self.create_command())
        if self.args.wait:
            self.wait_until_ready()

    def install(self) -> None:
        self.execute(self.ssh(self.install_script()))

    def prepare(self) -> None:
        """Builds the TFDS datasets (and the embedding cache) into the bucket, on worker 0 only."""
        a = self.args
        python = f"cd {REPO} && {VENV}/bin/python"
        for dataset in a.dataset:
            code = f'from t2v_jax.data import pipeline; pipeline.prepare("{dataset}", "{self.data_dir}")'
            self.execute(self.ssh(f"{python} -c {shlex.quote(code)}", worker="0"))
        if a.t5:
            if not a.text_embeddings:
                raise SystemExit("--t5 needs --text-embeddings (where the cache is written)")
            words = ["tools/precompute_text_embeddings.py", "--t5", a.t5]
            words += ["--data_dir", self.data_dir, "--out", a.text_embeddings]
            for dataset in a.dataset:
                words += ["--dataset", dataset]
            self.execute(self.ssh(f"{python} {shlex.join(words)}", worker="0"))

    def train(self) -> None:
        self.execute(self.ssh(self.train_script()))

    def logs(self) -> None:
        a = self.args
        follow = "-f " if a.worker != "all" else ""  # one stream; --worker all shows each tail
        self.execute(self.ssh(f"tail -n {a.lines} {follow}{LOG}", worker=a.worker))

    def stop(self) -> None:
        """SIGTERM to t2v-train on every worker: it saves a checkpoint at the next step and exits."""
        self.execute(
            self.ssh(
                f'if test -f {PID} && kill -0 "$(cat {PID})" 2>/dev/null; '
                f'then kill -TERM "$(cat {PID})"; '
                f'echo "$(hostname): sent SIGTERM"; else echo "$(hostname): not running"; fi'
            )
        )

    def restart(self) -> None:
        """After a preemption: recreate the slice if it is gone, wait, install and train again.

        Idempotent: on a healthy slice whose workers still run t2v-train it changes nothing; a
        worker whose t2v-train exited starts it again, and t2v-train resumes from its workdir.
        (Where only some workers' processes exited, the others wait in collectives: `stop`, then
        `restart`.)
        """
        state = self.state()
        if state in GONE:
            print(f"# {self.args.name} is {state}: deleting and creating it again")
            if state != "NOT_FOUND":
                self.execute(self.delete_command())
            self.execute(self.create_command())
        elif state not in READY and state not in PENDING:
            raise SystemExit(f"{self.args.name} is {state}: not handled, look at it in the console")
        self.wait_until_ready()
        self.install()
        self.train()

    def delete(self) -> None:
        self.execute(self.delete_command())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], fromfile_prefix_chars="@")
    slice_ = parser.add_argument_group("the slice")
    slice_.add_argument("--name", required=True, help="TPU (and queued resource) name")
    slice_.add_argument("--zone", required=True, help="e.g. us-east5-a")
    slice_.add_argument("--project", default=None, help="default: gcloud's core/project")
    slice_.add_argument("--accelerator-type", default="v5p-128", help="e.g. v5p-128, v6e-64")
    slice_.add_argument("--runtime-version", default=None, help="default: by TPU generation")
    slice_.add_argument("--spot", action="store_true", help="Spot capacity (can be preempted)")
    slice_.add_argument(
        "--queued", action=argparse.BooleanOptionalAction, default=True,
        help="create through a queued resource (default) or directly as a TPU VM",
    )  # fmt: skip
    run = parser.add_argument_group("the run")
    run.add_argument(
        "--source",
        default=f"https://github.com/{PLACEHOLDER}/t2v_jax.git",
        help="git URL of the t2v_jax repository the workers clone and install",
    )
    run.add_argument("--ref", default="main", help="branch, tag or commit to install")
    run.add_argument("--python", default="3.12", help="Python version of the workers' venv")
    run.add_argument("--bucket", required=True, help="gs://BUCKET: data, caches and workdirs")
    run.add_argument("--run-name", default="imagen_video", help="workdir: BUCKET/RUN_NAME/STAGE")
    run.add_argument("--config", default="configs/imagen_video.py", help="in the checkout")
    run.add_argument("--stage", default="base", help="the config's argument (stage name)")
    run.add_argument("--data-dir", default=None, help="TFDS data_dir (default: BUCKET/tfds)")
    run.add_argument("--text-embeddings", default=None, help="the T5 embedding cache (gs://...)")
    run.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="config override passed as --config.FIELD=VALUE (repeatable)",
    )  # fmt: skip
    run.add_argument(
        "--dataset", action="append", default=[], help="TFDS name/config to prepare (repeatable)"
    )
    run.add_argument("--t5", default=None, help="prepare: T5 folder on worker 0 for the cache")
    tool = parser.add_argument_group("the tool")
    tool.add_argument("--dry-run", action="store_true", help="print the commands only")
    tool.add_argument(
        "--assume-state", default="SUSPENDED", help="dry run: the slice state `restart` assumes"
    )
    tool.add_argument("--poll-s", type=float, default=60.0, help="seconds between state checks")
    tool.add_argument("--no-wait", dest="wait", action="store_false", help="create: do not wait")
    tool.add_argument("--worker", default="0", help="logs: a worker index or all")
    tool.add_argument("--lines", type=int, default=100, help="logs: lines of each tail")
    parser.add_argument(
        "command",
        choices=(
            "create",
            "install",
            "prepare",
            "train",
            "logs",
            "stop",
            "state",
            "restart",
            "delete",
        ),
    )
    args = parser.parse_args(argv)
    if not args.bucket.startswith("gs://"):
        parser.error(f"--bucket must be a gs:// URL, got {args.bucket!r}")
    if PLACEHOLDER in args.source and args.command in ("install", "restart"):
        parser.error("set --source to the git URL of your t2v_jax repository (e.g. your fork)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pod = Pod(args)
    if args.command == "state":
        print(pod.state())
    else:
        getattr(pod, args.command)()
    return 0


if __name__ == "__main__":
    sys.exit(main())
