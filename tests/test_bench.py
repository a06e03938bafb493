"""t2v-bench: FLOP counting against closed form, and the --quick run's JSON has every field."""

import json

import jax
import jax.numpy as jnp
import pytest

from t2v_jax import bench


def test_compiled_flops_of_a_matmul_is_2mnk():
    m, k, n = 64, 48, 32
    compiled = jax.jit(jnp.matmul).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    assert bench.compiled_flops(compiled) == pytest.approx(2 * m * n * k, rel=0.01)


def test_run_benchmarks_rejects_bad_arguments():
    with pytest.raises(ValueError, match="compare"):
        bench.run_benchmarks(quick=True, compare="diffusers")
    with pytest.raises(ValueError, match="repeats"):
        bench.run_benchmarks(quick=True, repeats=0)


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
    startup = r["startup"]
    assert startup["cache_entries"] > 0
    # The second process reads its programs from the persistent cache instead of compiling.
    assert startup["cached"]["first_video_s"] < startup["cold"]["first_video_s"]
    assert _positive(r["memory"]["host_peak_rss_bytes"])
