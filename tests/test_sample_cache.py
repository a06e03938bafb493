"""The README's first command, twice: the second process reads every sampler program from the cache.

Each run is a fresh interpreter that calls `t2v-sample`'s main with the default arguments
(progress bar on) plus `--out` and `--compilation-cache`, and records which programs JAX wrote
to, read from and missed in the persistent compilation cache (its debug log lines name the
program and the cache key). Counted, not timed, so machine load cannot flake it.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

_PROBE = textwrap.dedent(
    """
    import json, logging, re, sys

    events = {"write": [], "hit": [], "miss": []}
    patterns = {
        "write": re.compile(r"Writing (\\S+) to persistent compilation cache with key '([^']+)'"),
        "hit": re.compile(r"Persistent compilation cache hit for '([^']+)' with key '([^']+)'"),
        "miss": re.compile(r"PERSISTENT COMPILATION CACHE MISS for '([^']+)' with key '([^']+)'"),
    }

    class Recorder(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            for kind, pattern in patterns.items():
                match = pattern.search(message)
                if match:
                    events[kind].append(list(match.groups()))

    for name in ("jax._src.compiler", "jax._src.compilation_cache"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(Recorder())
        logger.propagate = False

    from t2v_jax.cli.sample import main

    rc = main(sys.argv[1:])
    print(json.dumps({"rc": rc, **events}))
    """
)


def _run(tmp_path, name):
    # One CPU device as a user has (not conftest's 8 fake ones); optimization level 0 only
    # shortens the first run's compiles, and both runs use it, so their cache keys agree.
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0")
    args = ["a red circle moving right", "--out", str(tmp_path / f"{name}.mp4"),
            "--compilation-cache", str(tmp_path / "xla")]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "sampling: 100%" in proc.stderr  # the default progress bar was on
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0 and (tmp_path / f"{name}.mp4").stat().st_size > 0
    return result


@pytest.mark.slow  # two t2v-sample processes on the shipped demo (about 1.5 min on 2 cores)
def test_second_default_sample_process_compiles_nothing(tmp_path):
    first = _run(tmp_path, "first")
    written = {key: module for module, key in first["write"]}
    # Every stage's sampler program (four stages) was cacheable, progress bar and all.
    assert sum(module == "jit_stage_steps" for module in written.values()) == 4, first

    second = _run(tmp_path, "second")
    hits = {key for _, key in second["hit"]}
    assert set(written) <= hits, (written, second)
    # Nothing compiles at all, the small programs (noise, keys, clipping, text encoder) included:
    # the cache keeps programs however fast they compile.
    assert second["miss"] == [] and second["write"] == [], second
