"""colab/*.ipynb are stored clean and run headless on CPU (nbclient) with tiny parameters.

The slow tests replace each notebook's `parameters` cell with tiny values, execute it in a fresh
kernel and append one probe cell that saves the notebook's variables, then check real outcomes:
the videos and files it made, the steps it trained and resumed from, the pipeline it saved.

The install cell (the same in both notebooks) runs here against fake /dev and /sys trees, fake
installed jax distributions, a fake pip (subprocess.run) and a fake jax backend: the runtimes it
must survive (TPU v4 and v5e/v6e, GPU, CPU) cannot all be had on a CPU machine.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
COLAB = ROOT / "colab"
TINY = ROOT / "configs" / "tiny.py"
NOTEBOOKS = ("sample.ipynb", "train_tpu.ipynb")
PROMPTS = ["red circle", "blue square up", "green"]  # within tiny.py's 16 text bytes

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
    nbformat = pytest.importorskip("nbformat")
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
    nbformat = pytest.importorskip("nbformat")
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


# -- the install cell ----------------------------------------------------------------------------

PLACEHOLDER = "https://github.com/YOUR_ORG/t2v_jax.git"


def _cell(name, cell_id):
    nb = json.loads((COLAB / name).read_text())
    (cell,) = [c for c in nb["cells"] if c.get("id") == cell_id]
    return "".join(cell["source"])


def test_install_cell_is_the_same_in_both_notebooks():
    # One install logic: a fix made in one notebook only fails here.
    cells = {_cell(name, "install") for name in NOTEBOOKS}
    assert len(cells) == 1
    sources = {_cell(name, "parameters").splitlines()[1] for name in NOTEBOOKS}
    assert sources == {f'T2V_JAX_SOURCE = "{PLACEHOLDER}"  # or a local checkout folder'}


def _fake_dist(site, name, version, top_level):
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(top_level + "\n")
    return info


class Runtime:
    """A fake runtime for the install cell: /dev and /sys trees, the jax build it came with (as
    installed distributions), `nvidia-smi` or not, a pip that records its commands, a jax
    module with a chosen backend, and whether t2v_jax is already importable."""

    def __init__(self, tmp_path, monkeypatch):
        self.tmp, self.monkeypatch = tmp_path, monkeypatch
        self.root = tmp_path / "root"
        (self.root / "dev").mkdir(parents=True)
        self.site = tmp_path / "site"
        self.site.mkdir()
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.commands, self.kills = [], []
        self.pip_results = []  # exit statuses of the pip calls in turn (default 0)
        self.on_pip = lambda argv: None
        self.backend = "cpu"
        for var in ("TPU_ACCELERATOR_TYPE", "COLAB_TPU_ADDR"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("PATH", str(self.bin))  # only the fake tools below
        monkeypatch.chdir(tmp_path)  # where the cell would clone t2v_jax_repo
        monkeypatch.setattr(subprocess, "run", self._run)
        monkeypatch.setattr(os, "kill", lambda pid, sig: self.kills.append((pid, sig)))
        fake_jax = types.SimpleNamespace(__version__="0.9.0", default_backend=lambda: self.backend)
        monkeypatch.setitem(sys.modules, "jax", fake_jax)

    def dev(self, *names):
        for name in names:
            (self.root / "dev" / name).parent.mkdir(parents=True, exist_ok=True)
            (self.root / "dev" / name).touch()

    def vfio_group(self, group, vendor):
        self.dev(f"vfio/{group}", "vfio/vfio")
        pci = self.root / f"sys/kernel/iommu_groups/{group}/devices/0000:00:0{group}.0"
        pci.mkdir(parents=True)
        (pci / "vendor").write_text(vendor + "\n")

    def nvidia_smi(self):
        (self.bin / "nvidia-smi").write_text("#!/bin/sh\n")
        (self.bin / "nvidia-smi").chmod(0o755)

    def jax_build(self, **versions):
        """Installs fake distributions, e.g. jax="0.9.0", libtpu="0.0.20"."""
        self.monkeypatch.syspath_prepend(str(self.site))
        for name, version in versions.items():
            _fake_dist(self.site, name, version, name)

    def not_installed(self):
        real = importlib.util.find_spec
        find = lambda name, *a: None if name == "t2v_jax" else real(name, *a)
        self.monkeypatch.setattr(importlib.util, "find_spec", find)

    def _run(self, argv, *args, **kwargs):
        self.commands.append(list(argv))
        status = 0
        if argv[1:4] == ["-m", "pip", "install"]:
            status = self.pip_results.pop(0) if self.pip_results else 0
            if status == 0:
                self.on_pip(argv)
        return subprocess.CompletedProcess(argv, status)

    @property
    def pip_calls(self):
        return [c for c in self.commands if c[1:4] == ["-m", "pip", "install"]]

    def run_cell(self, source=str(ROOT)):
        """Executes the install cell; returns its namespace."""
        cell = _cell("sample.ipynb", "install")
        assert cell.count('ROOT = pathlib.Path("/")') == 1
        cell = cell.replace('ROOT = pathlib.Path("/")', f"ROOT = pathlib.Path({str(self.root)!r})")
        namespace = {"T2V_JAX_SOURCE": source, "__name__": "__main__"}
        exec(compile(cell, "install_cell", "exec"), namespace)
        return namespace


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    return Runtime(tmp_path, monkeypatch)


def _pins(argv):
    assert argv.count("-c") == 1, argv
    return pathlib.Path(argv[argv.index("-c") + 1]).read_text().splitlines()


@pytest.mark.parametrize(
    "kind, extra, backend",
    [
        ("tpu_v4_accel", "tpu", "tpu"),  # /dev/accel0..3
        ("tpu_v5e_vfio", "tpu", "tpu"),  # /dev/vfio/<n> of Google's PCI vendor, no /dev/accel
        ("tpu_env", "tpu", "tpu"),  # TPU_ACCELERATOR_TYPE set by the runtime
        ("gpu", "cuda", "gpu"),
        ("other_vfio", None, "cpu"),  # a non-TPU VFIO device (e.g. a Mellanox 0x15b3) on a CPU host
    ],
)
def test_install_cell_installs_the_runtimes_extra_and_keeps_its_jax(runtime, kind, extra, backend):
    # Mutations caught: dropping the /dev/vfio check (a v5e/v6e runtime then gets the CPU
    # requirement and the backend check expects a CPU), counting any VFIO group as a TPU, no
    # constraints (pip free to replace the runtime's jax build), no [extra].
    if kind == "tpu_v4_accel":
        runtime.dev("accel0", "accel1")
    elif kind == "tpu_v5e_vfio":
        runtime.vfio_group(0, "0x1ae0")
        runtime.vfio_group(1, "0x1ae0")
    elif kind == "tpu_env":
        runtime.monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5litepod-8")
    elif kind == "gpu":
        runtime.nvidia_smi()
    else:
        runtime.vfio_group(96, "0x15b3")
    runtime.jax_build(jax="0.9.0", jaxlib="0.9.0", libtpu="0.0.20")
    runtime.not_installed()
    runtime.backend = backend
    namespace = runtime.run_cell()

    assert namespace["EXPECTED_BACKEND"] == backend
    assert namespace["REPO_DIR"] == ROOT
    (pip,) = runtime.pip_calls
    requirement = f"{ROOT}[{extra}]" if extra else str(ROOT)
    assert pip[:6] == [sys.executable, "-m", "pip", "install", "-q", requirement]
    assert {"jax==0.9.0", "jaxlib==0.9.0", "libtpu==0.0.20"} <= set(_pins(pip))
    assert runtime.commands == [pip] and not runtime.kills  # nothing replaced: no restart


@pytest.mark.parametrize("source", [PLACEHOLDER, "git+" + PLACEHOLDER])
def test_install_cell_stops_before_pip_on_the_placeholder_source(runtime, source):
    # Mutation caught: dropping the check (git would fail to clone YOUR_ORG's repository, deep in
    # a CalledProcessError) or moving it after a git or pip call.
    runtime.dev("accel0")
    runtime.not_installed()
    with pytest.raises(Exception, match="set T2V_JAX_SOURCE in the parameters cell") as stop:
        runtime.run_cell(source)
    assert runtime.commands == []
    assert stop.value._render_traceback_() == [f"Stop: {stop.value}"]  # one line, no traceback


def test_install_cell_clones_a_git_source_once(runtime):
    runtime.not_installed()
    namespace = runtime.run_cell("git+https://github.com/acme/t2v_jax.git")
    clone, pip = runtime.commands
    assert clone[:2] == ["git", "clone"] and clone[-2:] == [
        "https://github.com/acme/t2v_jax.git",
        str(runtime.tmp / "t2v_jax_repo"),
    ]
    assert pip[5] == str(runtime.tmp / "t2v_jax_repo") == str(namespace["REPO_DIR"])


def test_install_cell_falls_back_to_the_extras_jax_when_the_runtimes_is_too_old(runtime):
    # Mutation caught: no fallback (the pinned install's resolver error ends the cell).
    runtime.dev("accel0")
    runtime.jax_build(jax="0.4.1", jaxlib="0.4.1", libtpu="0.0.1")
    runtime.not_installed()
    runtime.pip_results = [1, 0]  # the pinned install cannot resolve; the unpinned one can
    runtime.backend = "tpu"
    runtime.run_cell()
    pinned, unpinned = runtime.pip_calls
    assert "jax==0.4.1" in _pins(pinned)
    assert unpinned == [sys.executable, "-m", "pip", "install", "-q", f"{ROOT}[tpu]"]


@pytest.mark.parametrize("colab", [False, True])
def test_install_cell_restarts_when_pip_replaced_an_imported_package(runtime, colab):
    # jax is imported in this kernel (the fake module stands for it) and pip upgrades it: the
    # kernel must restart. On Colab the cell kills its own kernel (Colab starts a fresh one);
    # elsewhere it stops and says so. Mutation caught: no check (the cell would go on with the
    # old jax in memory and the new one on disk).
    runtime.dev("accel0")
    runtime.jax_build(jax="0.9.0", jaxlib="0.9.0", libtpu="0.0.20")
    runtime.not_installed()
    jax_info = runtime.site / "jax-0.9.0.dist-info"

    def upgrade_jax(argv):
        jax_info.rename(runtime.site / "jax-0.10.2.dist-info")
        text = (runtime.site / "jax-0.10.2.dist-info" / "METADATA").read_text()
        (runtime.site / "jax-0.10.2.dist-info" / "METADATA").write_text(
            text.replace("0.9.0", "0.10.2")
        )

    runtime.on_pip = upgrade_jax
    if colab:
        runtime.monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    with pytest.raises(Exception, match=r"pip replaced .*jax.*restart the runtime"):
        runtime.run_cell()
    assert runtime.kills == ([(os.getpid(), 9)] if colab else [])


def test_install_cell_checks_the_backend_it_expects(runtime):
    # A TPU runtime whose jax fell back to the CPU (the TPU held by another process, or a CPU jax
    # installed over the TPU one): one message naming both. t2v_jax is already installed here, so
    # pip is not called. Mutation caught: dropping the backend check.
    runtime.vfio_group(0, "0x1ae0")
    runtime.backend = "cpu"
    with pytest.raises(Exception, match="jax 0.9.0 runs on cpu, not tpu"):
        runtime.run_cell()
    assert runtime.commands == []
    runtime.backend = "tpu"
    assert runtime.run_cell()["REPO_DIR"] == ROOT  # the editable checkout; nothing installed
