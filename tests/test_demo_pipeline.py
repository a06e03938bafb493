"""The shipped demo: load_pipeline("shapes") works from the installed package, offline."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Runs in a fresh interpreter whose working directory is not the checkout, so `import t2v_jax`
# resolves to the installed package (CI installs it non-editable, as the README says).
_PROBE = textwrap.dedent(
    """
    import importlib.metadata, json, pathlib, sys
    import numpy as np
    import t2v_jax
    from t2v_jax import pipeline_store

    dist = importlib.metadata.distribution("t2v_jax")
    direct = dist.read_text("direct_url.json")
    editable = bool(direct and json.loads(direct).get("dir_info", {}).get("editable"))
    pipe = pipeline_store.load_pipeline("shapes")
    videos = pipe.sample(["a red circle moving right"], num_steps=[12, 6, 6], seed=0,
                         progress=False)
    print(json.dumps({
        "module": str(pathlib.Path(t2v_jax.__file__).resolve().parent),
        "assets": str(pipeline_store.builtin_path("shapes").resolve()),
        "editable": editable,
        "shape": list(videos.shape),
        "dtype": str(videos.dtype),
        "pixel_std": float(videos.std()),
        "same_again": bool((pipe.sample(["a red circle moving right"], num_steps=[12, 6, 6],
                                        seed=0, progress=False) == videos).all()),
        "fps": pipe.fps,
    }))
    """
)


@pytest.mark.slow  # loads three stages and compiles their samplers (about a minute on 2 cores)
def test_builtin_shapes_pipeline_loads_and_samples_from_the_installed_package(tmp_path):
    # Nothing but the installed package; one CPU device as a user has (not the 8 fake ones).
    env = dict(os.environ, PYTHONPATH="", XLA_FLAGS="--xla_backend_optimization_level=0")
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # The weights come from the package's own folder, wherever it was installed.
    assert result["assets"].startswith(result["module"] + os.sep), result
    if not result["editable"]:
        assert "site-packages" in result["module"], result
    assert result["shape"] == [1, 16, 32, 32, 3] and result["dtype"] == "uint8"
    assert result["fps"] == 8
    # Not a blank frame, and a fixed seed reproduces the video exactly.
    assert result["pixel_std"] > 5 and result["same_again"], result
