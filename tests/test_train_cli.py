"""`t2v-train`: runs a real tiny stage from a config file, exits 0, and resumes from its workdir."""

import os
import pathlib
import subprocess
import sys

import pytest

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def _run(config_file, workdir, *extra):
    # Inherit conftest's XLA_FLAGS (8 devices, fast compiles at optimisation level 0).
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "t2v_jax.cli.train", f"--config={config_file}:base",
           f"--workdir={workdir}", "--config.train.num_steps=2", "--config.checkpoint.every_steps=1",
           "--config.log.every_steps=1", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def test_missing_flags_are_reported():
    out = subprocess.run([sys.executable, "-m", "t2v_jax.cli.train"], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode != 0
    assert "--config" in out.stderr and "--workdir" in out.stderr


@pytest.mark.slow
def test_cli_trains_then_resumes_from_the_workdir(tmp_path):
    # The tiny config plus a data section pointing at a temp TFDS dir.
    config_file = tmp_path / "cfg.py"
    config_file.write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('tiny', {str(CONFIGS / 'tiny.py')!r})\n"
        "tiny = importlib.util.module_from_spec(spec); spec.loader.exec_module(tiny)\n"
        "def get_config(arg):\n"
        "    config = tiny.get_config(arg)\n"
        f"    config.data = {{'name': 'shapes/tiny', 'data_dir': {str(tmp_path / 'tfds')!r}}}\n"
        "    return config\n"
    )
    first = _run(config_file, tmp_path / "run")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "finished at step 2" in first.stdout
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["1", "2"]
    again = _run(config_file, tmp_path / "run", "--config.train.num_steps=3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr and "at step 2" in again.stderr
    assert "finished at step 3" in again.stdout
