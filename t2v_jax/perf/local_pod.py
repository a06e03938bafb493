"""N local processes as one multi-host JAX run (a "local pod" over loopback), for tests and benchmarks.

Each process gets JAX's own `JAX_COORDINATOR_ADDRESS` (127.0.0.1 and a free port),
`JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`, `JAX_PLATFORMS=cpu` and its own fake CPU devices, so N
copies of one unchanged command (e.g. `t2v-train ...`, whose `train.distributed_init="auto"`
reads those variables) form a real distributed run: gloo collectives between the processes,
one coordinator, arrays that span processes. Output goes to one log file per process. `wait`
fails fast: when one process dies, the others (which would wait for it in a collective until
JAX's timeouts) are killed after a short grace period.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def with_fake_devices(xla_flags: str, count: int) -> str:
    """`xla_flags` with its fake CPU device count set to `count` (its other flags kept)."""
    flags = [
        f for f in xla_flags.split() if not f.startswith("--xla_force_host_platform_device_count")
    ]
    return " ".join([*flags, f"--xla_force_host_platform_device_count={count}"])


@dataclasses.dataclass
class ProcessResult:
    """How one process of the pod ended: its exit code (None: still running) and its log."""

    index: int
    returncode: int | None
    log_path: str

    @property
    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


class LocalPodError(RuntimeError):
    """A process of the local pod failed or the pod ran past its time limit."""


class LocalPod:
    """Starts `argv` as processes 0..N-1 of one distributed JAX run on this machine.

    Use as a context manager (every process still running is killed on exit):

        with LocalPod(["t2v-train", "--config=...", "--workdir=..."], 2) as pod:
            results = pod.wait(timeout_s=600)
    """

    def __init__(
        self,
        argv: Sequence[str],
        num_processes: int,
        *,
        devices_per_process: int = 4,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        log_dir: str | None = None,
        port: int | None = None,
    ):
        if num_processes < 1 or devices_per_process < 1:
            raise ValueError(
                f"num_processes={num_processes} and devices_per_process={devices_per_process} "
                "must be >= 1"
            )
        self.argv = list(argv)
        self.num_processes = num_processes
        self.devices_per_process = devices_per_process
        self.env = dict(env or {})
        self.cwd = cwd
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="local_pod_")
        self.address = f"{LOOPBACK}:{port or free_port()}"
        self.procs: list[subprocess.Popen] = []
        self._logs: list[str] = []

    def _process_env(self, index: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env.update(
            XLA_FLAGS=with_fake_devices(env.get("XLA_FLAGS", ""), self.devices_per_process),
            JAX_PLATFORMS="cpu",
            JAX_COORDINATOR_ADDRESS=self.address,
            JAX_NUM_PROCESSES=str(self.num_processes),
            JAX_PROCESS_ID=str(index),
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self) -> LocalPod:
        """Starts every process (process 0 first: it hosts the coordinator)."""
        if self.procs:
            raise RuntimeError("this LocalPod was already started")
        os.makedirs(self.log_dir, exist_ok=True)
        for index in range(self.num_processes):
            path = os.path.join(self.log_dir, f"process_{index}.log")
            self._logs.append(path)
            with open(path, "w", encoding="utf-8") as log:
                self.procs.append(
                    subprocess.Popen(
                        self.argv,
                        env=self._process_env(index),
                        cwd=self.cwd,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # a signal to one process reaches it alone
                    )
                )
        return self

    def results(self) -> list[ProcessResult]:
        """Each process's exit code so far (None while it runs) and log."""
        return [ProcessResult(i, p.poll(), self._logs[i]) for i, p in enumerate(self.procs)]

    def send_signal(self, index: int, sig: int) -> None:
        """Sends `sig` to process `index` only (e.g. SIGTERM to one host of the pod)."""
        self.procs[index].send_signal(sig)

    def kill(self) -> None:
        """SIGKILLs every process still running and reaps them."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            p.wait()

    def wait(
        self, timeout_s: float, *, check: bool = True, grace_s: float = 20.0
    ) -> list[ProcessResult]:
        """Waits for every process to exit; returns their results.

        If one exits non-zero, the rest get `grace_s` seconds and are then killed (they would
        otherwise hang in a collective). With `check`, raises `LocalPodError` (with each
        process's log tail) unless every process exited 0 within `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        failed_at = None
        while any(p.poll() is None for p in self.procs):
            now = time.monotonic()
            if failed_at is None and any(p.poll() not in (None, 0) for p in self.procs):
                failed_at = now
            if now > deadline or (failed_at is not None and now - failed_at > grace_s):
                self.kill()
                break
            time.sleep(0.05)
        results = self.results()
        if check and any(r.returncode != 0 for r in results):
            tails = "\n".join(
                f"--- process {r.index} (exit {r.returncode}) ---\n{r.log[-3000:]}" for r in results
            )
            raise LocalPodError(f"local pod {self.argv[:3]} failed:\n{tails}")
        return results

    def __enter__(self) -> LocalPod:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
