"""TPU topology pre-flight: slice names, clear errors, the roofline, and a real TPU compile (libtpu)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from t2v_jax.perf import aot, chips

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "name", "num_chips"),
    [
        ("v5p-128", "v5p:4x4x4", 64),  # v5p counts TensorCores: 2 per chip
        ("v4-16", "v4:2x2x2", 8),
        ("v5e-256", "v5e:16x16", 256),  # v5e counts chips
        ("v5litepod-4", "v5e:2x2", 4),
        ("v6e:4x4", "v6e:4x4", 16),
        ("V5P:2x2x1", "v5p:2x2x1", 4),
    ],
)
def test_slice_names(text, name, num_chips):
    topology = chips.parse_topology(text)
    assert (topology.name, topology.num_chips) == (name, num_chips)


@pytest.mark.parametrize(
    ("text", "bounds"),
    [("v5e:1x1", (1, 1, 1)), ("v5e:2x1", (2, 1, 1)), ("v5e-256", (2, 2, 1)),
     ("v5p:1x1x1", (1, 1, 1)), ("v5p-128", (2, 2, 1))],
)  # fmt: skip
def test_hosts_of_small_slices_hold_the_whole_grid(text, bounds):
    # libtpu's default 2x2x1 chips per host refuses "v5e:1x1" (a Colab TPU) as not divisible.
    assert chips.parse_topology(text).chips_per_host_bounds == bounds


@pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="needs libtpu: pip install '.[tpu]'"
)
def test_single_chip_topology_builds_a_mesh():
    code = (
        "from t2v_jax.perf import chips; m = chips.topology_mesh(chips.parse_topology('v5e:1x1'),"
        " (1, 1, 1)); print(m.devices.size, m.devices.flat[0].device_kind)"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[:2] == ["1", "TPU"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("v9-8", r"unknown chip or slice 'v9-8'.*known chips v4, v5e, v5p, v6e.*v5p-128"),
        ("v5p-100", r"not a standard v5p slice.*v5p-128"),
        ("v5e:2x2x2", r"v5e has a 2D chip grid"),
    ],
)
def test_bad_slice_names_list_the_known_ones(text, match):
    with pytest.raises(chips.TopologyError, match=match):
        chips.parse_topology(text)


def test_mesh_that_does_not_match_the_chips_says_both_numbers():
    with pytest.raises(chips.TopologyError, match=r"1\*8\*1 = 8 but v5p:4x4x4 has 64 chips"):
        chips.topology_mesh(chips.parse_topology("v5p-128"), (1, 8, 1))


def test_without_libtpu_the_error_says_how_to_install(monkeypatch):
    from jax.experimental import topologies

    def no_plugin(**kwargs):
        raise RuntimeError("Unable to initialize backend 'tpu'")

    monkeypatch.setattr(topologies, "get_topology_desc", no_plugin)
    monkeypatch.setattr(chips, "_libtpu_missing", lambda: True)
    with pytest.raises(chips.TopologyError, match=r'pip install -c constraints.txt "\.\[tpu\]"'):
        chips.topology_mesh(chips.parse_topology("v5e:2x2"), (1, 4, 1))


def test_roofline_is_the_slower_of_compute_and_memory():
    chip = chips.CHIPS["v5p"]
    compute_bound = chips.roofline(chip.peak_bf16_flops * 2, chip.hbm_bytes_per_s, chip)
    assert compute_bound["step_s"] == pytest.approx(2.0) and compute_bound["mfu"] == 1.0
    memory_bound = chips.roofline(chip.peak_bf16_flops, chip.hbm_bytes_per_s * 4, chip)
    assert memory_bound["step_s"] == pytest.approx(4.0)
    assert memory_bound["mfu"] == pytest.approx(0.25) and memory_bound["bound"] == "memory"


def test_every_chip_row_cites_its_source():
    for chip in chips.CHIPS.values():
        assert chip.source.startswith("https://") and chip.name in chip.source


_PALLAS_CONFIG = """
import importlib.util
spec = importlib.util.spec_from_file_location("tiny", {tiny!r})
tiny = importlib.util.module_from_spec(spec); spec.loader.exec_module(tiny)
def get_config(arg):
    config = tiny.get_config(arg)
    # 16x16 frames with attention at full resolution: 256-query spatial, 1024-query space-time
    # and cross attention, long enough for the Pallas kernel; "auto" must pick it on TPU.
    config.stage.height = config.stage.width = 16
    config.model.spatial_attention_resolutions = (1,)
    config.model.spacetime_attention_resolutions = (1,)
    config.model.attention_impl = "auto"
    return config
"""


needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="needs libtpu: pip install '.[tpu]'"
)


def _aot_check_tpu(tmp_path, name: str, *flags: str, timeout: int = 1500):
    """(stdout, the JSON report) of tools/aot_check.py --topology v5e:2x2 on the Pallas tiny
    base, run as a subprocess: the CLI must set JAX_PLATFORMS / ALLOW_MULTIPLE_LIBTPU_LOAD
    before jax starts."""
    config = tmp_path / "pallas_tiny.py"
    config.write_text(_PALLAS_CONFIG.format(tiny=str(ROOT / "configs/tiny.py")))
    out = tmp_path / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    cmd = [sys.executable, str(ROOT / "tools/aot_check.py"), "--topology", "v5e:2x2",
           "--config", str(config), "--stages", "base", "--json", str(out), *flags]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    (report,) = json.loads(out.read_text())
    return proc.stdout, report


@pytest.mark.slow
@needs_libtpu
def test_tiny_stage_compiles_with_the_tpu_compiler(tmp_path):
    stdout, report = _aot_check_tpu(tmp_path, "report", "--batch", "4")
    assert "TPU compiler, v5e:2x2" in stdout and "roofline train_step" in stdout
    assert report["platform"] == "tpu" and not report["estimate"] and report["fits"]
    assert report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert report["budget_bytes"] == chips.CHIPS["v5e"].hbm_bytes
    for program in ("train", "sampler"):
        assert report[program]["temp_bytes"] > 0 and report[program]["code_bytes"] > 0
        cost = report[f"{program}_cost"]
        assert cost["flops"] > 0 and cost["bytes_accessed"] > 0
        # Spatial, space-time and cross attention run as Pallas kernels (the backward pass
        # adds its own); temporal attention stays on XLA.
        assert cost["pallas_kernels"] >= 3
    assert set(report["roofline"]) == {"train_step", "sampler_step"}
    assert 0 < report["roofline"]["train_step"]["mfu"] <= 1


@pytest.mark.slow
@needs_libtpu
def test_frames_split_sampler_compiles_with_the_tpu_compiler(tmp_path):
    # One 8-frame video over the 4 chips of v5e:2x2 (video_sharding="frames", Pallas attention
    # on the frames folded frames-major) against one whole video per chip (batch 4).
    reports = {}
    for layout, batch in (("frames", 1), ("batch", 4)):
        _, reports[layout] = _aot_check_tpu(
            tmp_path, layout, "--no-train", "--mesh", "1,4,1", "--sample-batch", str(batch),
            "--video-sharding", layout, "--set", "stage.frames=8", timeout=900,
        )  # fmt: skip
    split, whole = reports["frames"], reports["batch"]
    assert split["platform"] == "tpu" and split["sampler_video_sharding"] == "frames"
    assert split["sampler_cost"]["pallas_kernels"] >= 3
    # Each chip does a quarter of one video's work (measured 0.256x the whole video's FLOPs).
    flops = split["sampler_cost"]["flops"] / whole["sampler_cost"]["flops"]
    assert 0.2 < flops < 0.35, flops


def test_report_labels_a_fake_device_run_an_estimate():
    report = aot.PreflightReport(
        stage="x", mesh={"data": 1, "fsdp": 1, "tensor": 1}, batch_size=1, sample_batch_size=1,
        num_params=1, params_bytes=4, ema_bytes=4, optimizer_bytes=8,
        train={"total_bytes": 2**20}, sampler={}, compile_s={},
    )  # fmt: skip
    assert report.to_json()["estimate"] and "ESTIMATE" in aot.format_report(report)
