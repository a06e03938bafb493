"""colab/*.ipynb are stored clean and run headless on CPU (nbclient) with tiny parameters.

The slow tests replace each notebook's `parameters` cell with tiny values, execute it in a fresh
kernel and append one probe cell that saves the notebook's variables, then check real outcomes:
the videos and files it made, the steps it trained and resumed from, the pipeline it saved.
"""

import json
import os
import pathlib

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
COLAB = ROOT / "colab"
TINY = ROOT / "configs" / "tiny.py"
NOTEBOOKS = ("sample.ipynb", "train_tpu.ipynb")
PROMPTS = ["red circle", "blue square up", "green"]  # within tiny.py's 16 text bytes

nbformat = pytest.importorskip("nbformat")
# jupyter_client starts the kernel with subprocess (fork, then exec at once) after this process
# has started JAX's threads, and JAX warns about any fork.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")


def _assert_same_video(a, b):
    # Another process samples the same pipeline and seed: frames agree to within one uint8 level
    # (XLA's float reduction order), while a different model or seed changes nearly all pixels.
    diff = np.abs(a.astype(int) - b)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_clean_with_a_parameters_cell_first(name):
    nb = nbformat.read(COLAB / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    cells = _code_cells(nb)
    assert "parameters" in cells[0].metadata.get("tags", [])
    assert all(not c.outputs and c.execution_count is None for c in cells), "strip the outputs"
    # Thin entry point: the notebook calls t2v_jax and defines no model of its own.
    source = "\n".join(c.source for c in cells)
    assert "import t2v_jax" in source
    assert "flax" not in source and "nn.Module" not in source and "jax.numpy" not in source


def _execute(name, parameters, probe, tmp_path, monkeypatch):
    """Runs colab/`name` with its parameters cell replaced and `probe` appended; returns the nb."""
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(COLAB / name, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    cell.source = parameters
    nb.cells.append(nbformat.v4.new_code_cell(probe))
    # The kernel is another process: it inherits conftest's XLA_FLAGS (8 fake CPU devices, fast
    # compiles) and JAX_PLATFORMS through the environment; point its compilation cache (the
    # notebooks enable one) at the tests' cache.
    assert "--xla_force_host_platform_device_count=8" in os.environ["XLA_FLAGS"]
    monkeypatch.setenv("T2V_JAX_COMPILATION_CACHE", jax.config.jax_compilation_cache_dir)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,  # per cell
        startup_timeout=300,  # a kernel start can take minutes on a loaded 2-core machine
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    return nb


def _outputs(nb, output_type, key=None):
    found = []
    for cell in _code_cells(nb):
        for out in cell.outputs:
            if out.output_type == output_type:
                found.append(out.get("text", "") if key is None else out.get("data", {}).get(key))
    return [f for f in found if f]


@pytest.mark.slow  # a kernel start plus three tiny stages compiled (persistent cache helps)
def test_sample_notebook_samples_shows_and_loads_a_users_pipeline(tmp_path, monkeypatch):
    from t2v_jax import cascade, read_video
    from t2v_jax.configlib import load_config

    configs = [load_config(f"{TINY}:{stage}") for stage in ("base", "tsr", "ssr")]
    encoder = cascade.text_encoder_from_config(configs[0].text, jax.random.key(1))
    pipe = cascade.build_pipeline(configs, encoder, jax.random.key(0))
    saved = pipe.save(tmp_path / "tiny_pipeline")
    expected = pipe.sample(PROMPTS, num_steps=2, seed=5, progress=False)
    out_dir = tmp_path / "videos"
    parameters = (
        f"T2V_JAX_SOURCE = {str(ROOT)!r}\n"
        f"PIPELINE = {str(saved)!r}\n"
        f"PROMPTS = {PROMPTS!r}\n"
        "NUM_STEPS = 2\nGUIDANCE_SCALE = None\nSEED = 5\n"
        f"OUT_DIR = {str(out_dir)!r}\n"
        "COMPILATION_CACHE = None\n"
        f"USER_PIPELINE = {str(saved)!r}\n"
        f"USER_PROMPTS = {PROMPTS[:1]!r}\n"
    )
    probe = f"import numpy\nnumpy.savez({str(tmp_path / 'probe.npz')!r}, videos=videos, user=user_videos)"
    nb = _execute("sample.ipynb", parameters, probe, tmp_path, monkeypatch)

    probe = np.load(tmp_path / "probe.npz")
    assert probe["videos"].shape == (3, 8, 16, 16, 3) and probe["videos"].dtype == np.uint8
    _assert_same_video(probe["videos"], expected)  # the notebook really sampled that pipeline
    # The user's-pipeline section loaded the folder again: same seed, same first video.
    assert probe["user"].shape == (1, 8, 16, 16, 3)
    _assert_same_video(probe["user"][0], expected[0])
    files = sorted(out_dir.glob("*.mp4")) + sorted((out_dir / "user").glob("*.mp4"))
    assert [p.name for p in files] == ["00.mp4", "01.mp4", "02.mp4", "00.mp4"]
    for path in files:
        assert read_video(path).shape == (8, 16, 16, 3), path
    html = "".join(_outputs(nb, "display_data", "text/html"))
    assert html.count("<video") == 4 and html.count("data:video/mp4;base64,") == 4


@pytest.mark.slow  # a kernel start, two tiny training runs and a sampler compile
def test_train_notebook_trains_resumes_and_samples_the_ema(tmp_path, monkeypatch):
    import importlib.util

    from t2v_jax import load_pipeline, read_video

    workdir = tmp_path / "run"
    overrides = {"data.data_dir": str(tmp_path / "tfds"), "log.every_steps": 1}
    parameters = (
        f"T2V_JAX_SOURCE = {str(ROOT)!r}\n"
        f"CONFIG = {f'{TINY}:base'!r}\n"
        f"OVERRIDES = {overrides!r}\n"
        f"WORKDIR = {str(workdir)!r}\n"
        "TRAIN_STEPS = 2\nRESUME_STEPS = 2\nPLOT_EVERY = 1\n"
        f"PROMPTS = {PROMPTS[:2]!r}\n"
        "SAMPLE_STEPS = 2\nSEED = 0\nCOMPILATION_CACHE = None\n"
    )
    probe = (
        "import json\n"
        "state = {'steps': live.steps, 'losses': live.losses, 'first': first.step,\n"
        "         'second': second.step, 'resumed_at': resumed_at,\n"
        "         'checkpoints': checkpoint_steps(), 'mesh': dict(mesh.shape)}\n"
        f"json.dump(state, open({str(tmp_path / 'probe.json')!r}, 'w'))\n"
        f"import numpy\nnumpy.save({str(tmp_path / 'ema_videos.npy')!r}, ema_videos)\n"
    )
    nb = _execute("train_tpu.ipynb", parameters, probe, tmp_path, monkeypatch)

    state = json.loads((tmp_path / "probe.json").read_text())
    assert state["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}  # every (fake) local device
    assert (state["first"], state["resumed_at"], state["second"]) == (2, 2, 4)
    assert state["steps"] == [1, 2, 3, 4]  # the resumed run continued at step 3
    assert all(np.isfinite(state["losses"])) and len(state["losses"]) == 4
    assert state["checkpoints"] == [2, 4]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [2, 4]
    logs = "".join(_outputs(nb, "stream"))
    assert "resumed from" in logs and "at step 2" in logs
    if importlib.util.find_spec("matplotlib") is None:
        assert "step 4: loss" in logs  # the plot's print fallback
    else:
        assert _outputs(nb, "display_data", "image/png")

    ema_videos = np.load(tmp_path / "ema_videos.npy")
    assert ema_videos.shape == (2, 4, 8, 8, 3) and ema_videos.dtype == np.uint8
    assert ema_videos.std() > 1.0
    files = sorted((workdir / "ema_samples").glob("*.mp4"))
    assert [read_video(p).shape for p in files] == [(4, 8, 8, 3)] * 2
    # The saved one-stage pipeline (EMA U-Net + the T5 it trained with) gives the same videos.
    pipe = load_pipeline(workdir / "pipeline")
    assert pipe.output_shape == (4, 8, 8, 3) and [s.config.name for s in pipe.stages] == ["base"]
    _assert_same_video(pipe.sample(PROMPTS[:2], num_steps=2, seed=0, progress=False), ema_videos)
