"""t2v-bench: FLOP counting against closed form, the --quick run's JSON has every field, --compare's skip."""

import json

import jax
import jax.numpy as jnp
import pytest

from t2v_jax.perf import bench


def test_compiled_flops_of_a_matmul_is_2mnk():
    m, k, n = 64, 48, 32
    compiled = jax.jit(jnp.matmul).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    assert bench.compiled_flops(compiled) == pytest.approx(2 * m * n * k, rel=0.01)


def test_run_benchmarks_rejects_bad_arguments():
    with pytest.raises(ValueError, match="compare"):
        bench.run_benchmarks(quick=True, compare="diffusers")
    with pytest.raises(ValueError, match="repeats"):
        bench.run_benchmarks(quick=True, repeats=0)


def test_compare_without_an_index_is_skipped_with_a_reason(monkeypatch, tmp_path):
    import subprocess

    from t2v_jax.perf import bench_compare

    def offline(cmd, timeout):
        raise subprocess.CalledProcessError(
            1, cmd, stderr="ERROR: No matching distribution found for torch==2.13.0"
        )

    monkeypatch.setattr(bench_compare, "_run", offline)
    model = bench._stage_config("base", True).model.to_dict()
    out = bench_compare.compare_imagen_pytorch(model, bench.QUICK_SHAPE, 1, str(tmp_path / "v"))
    assert set(out) == {"skipped"}
    assert "torch==2.13.0" in out["skipped"] and "No matching distribution" in out["skipped"]


def test_quick_sets_the_fast_compile_flag_unless_given(monkeypatch):
    import os

    from t2v_jax.cli import bench as cli

    monkeypatch.setattr(bench, "run_benchmarks", lambda **kw: {"fake": True})
    monkeypatch.setattr(bench, "format_table", lambda r: "")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert cli.main(["--quick"]) == 0
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=8",
        "--xla_backend_optimization_level=0",
        "--xla_cpu_use_fusion_emitters=false",
    ]
    # A flag the user set wins; the other is still added.
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=2")
    assert cli.main(["--quick"]) == 0
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_backend_optimization_level=2",
        "--xla_cpu_use_fusion_emitters=false",
    ]
    monkeypatch.setenv("XLA_FLAGS", "")
    assert cli.main([]) == 0
    assert os.environ["XLA_FLAGS"] == ""


def _positive(x):
    return isinstance(x, int | float) and x > 0


@pytest.mark.slow
def test_quick_bench_emits_every_field(tmp_path, capsys):
    from t2v_jax.cli.bench import main

    out = tmp_path / "results.json"
    assert main(["--quick", "--repeats", "2", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert "| U-Net train step" in capsys.readouterr().out
    assert r["quick"] is True and r["device"]["platform"] == "cpu"
    assert "--xla_backend_optimization_level=0" in r["device"]["xla_flags"]
    assert "--xla_cpu_use_fusion_emitters=false" in r["device"]["xla_flags"]
    assert _positive(r["peak"]["flops_per_s"]) and r["peak"]["n"] == 2048
    assert _positive(r["text_encoder"]["prompts_per_s"])
    for name in ("forward", "train_step"):
        prog = r["unet"][name]
        for field in ("compile_s", "first_call_s", "seconds", "flops", "tflops_per_s"):
            assert _positive(prog[field]), (name, field)
        # MFU is FLOPs / time / peak: it must be consistent with the other fields.
        assert prog["mfu"] == pytest.approx(
            prog["flops"] / prog["seconds"] / r["peak"]["flops_per_s"]
        )
        assert 0 < prog["mfu"] < 1.5
    assert r["unet"]["num_params"] > 0
    sampler = r["sampler"]
    for phase in ("cold", "warm"):
        assert set(sampler[phase]["stages_s"]) == {"base", "tsr", "ssr"}
        assert sampler[phase]["cascade_s"] == pytest.approx(
            sum(sampler[phase]["stages_s"].values())
        )
    assert sampler["cold"]["cascade_s"] > sampler["warm"]["cascade_s"]  # cold compiles
    assert sampler["first_video_s"] >= sampler["load_s"] + sampler["cold"]["cascade_s"]
    startup = r["startup"]
    assert startup["cache_entries"] > 0
    # The second process reads its programs from the persistent cache instead of compiling.
    assert startup["cached"]["first_video_s"] < startup["cold"]["first_video_s"]
    assert _positive(r["memory"]["host_peak_rss_bytes"])
    assert _positive(sampler["peak_rss_bytes"])  # the sampling process's own peak
