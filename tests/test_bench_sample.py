"""`t2v-bench sample`: the whole t2v-sample command in a fresh process, then warm samples here."""

import json

import pytest

from t2v_jax.cli import bench as bench_cli
from t2v_jax.perf import bench, bench_sample


def test_sample_bench_rejects_bad_arguments_before_any_process(capsys):
    for kwargs, name in [({"processes": -1}, "processes"), ({"warm_calls": 0}, "warm_calls"),
                         ({"pipeline": "no_such_pipeline"}, "pipeline")]:  # fmt: skip
        with pytest.raises(ValueError, match=name):
            bench_sample.run_sample_benchmark(**kwargs)
    with pytest.raises(SystemExit):
        bench_cli.main(["sample", "--warm-calls", "0"])
    assert "warm_calls" in capsys.readouterr().err


@pytest.mark.slow  # one t2v-sample process on the tiny cascade (a cold compile), then warm calls
def test_sample_bench_times_a_saved_pipeline(tmp_path, capsys):
    folder = str(tmp_path / "pipeline")
    bench.save_tiny_pipeline(folder)
    json_out = tmp_path / "sample.json"
    assert bench_cli.main(["sample", "--pipeline", folder, "--processes", "1",
                           "--warm-calls", "2", "--out", str(json_out)]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert "t2v-sample, empty cache" in table and json_out.is_file()
    results = json.loads(json_out.read_text())
    assert results["empty_cache_s"] > 0 and results["warm_cache_s"] == []
    # The process wrote its programs to the benchmark's own new cache.
    assert results["cache_entries"] > 0
    assert len(results["warm_sample_s"]) == 2 and all(s > 0 for s in results["warm_sample_s"])
    assert list(results["stages_s"]) == ["base", "tsr", "ssr"]
    from t2v_jax.pipeline_store import load_pipeline

    assert results["num_steps"] == [s.config.num_steps for s in load_pipeline(folder).stages]
