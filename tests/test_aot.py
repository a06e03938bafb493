"""Pod pre-flight: divisibility errors name the config field; a shrunk paper stage compiles on 64 fake devices."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import types

import jax
import pytest

from t2v_jax import configlib, sharding
from t2v_jax.perf import aot, width_law

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _paper_stage(name: str, shrink: int = 8):
    config = configlib.load_config(str(ROOT / f"configs/imagen_video.py:{name}"))
    return aot.shrink_config(config, shrink)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v5e", 16 * 2**30),
        ("v5p", 95 * 2**30),
        ("v5e=16GB", 16 * 10**9),
        ("chip=1.5GiB", int(1.5 * 2**30)),
        ("123456", 123456),
    ],
)
def test_parse_budget(text, expected):
    assert aot.parse_budget(text)[1] == expected


def test_parse_budget_rejects_unknown():
    with pytest.raises(ValueError, match="budget"):
        aot.parse_budget("v99")


def test_shrink_keeps_a_valid_config():
    from t2v_jax.models.config import UNetConfig

    config = _paper_stage("base", 8)
    model = configlib.from_config(UNetConfig, config.model, "model")
    assert model.base_channels == 704 // 8
    assert model.text_dim == 4096 // 8
    assert model.channel_mults == (1, 2, 4, 4)  # depth and shapes are kept


def test_shrunk_widths_round_up_to_split_over_the_mesh():
    base = configlib.load_config(str(ROOT / "configs/imagen_video.py:base"))  # 704 channels
    shrunk = aot.shrink_config(base, 32, multiple=4)  # 704 // 32 = 22 would not split over 4
    assert shrunk.model.base_channels == 24 and shrunk.model.text_dim == 4096 // 32
    assert aot.shrink_config(base, 16, multiple=4).model.base_channels == 44  # already splits
    mesh = jax.sharding.AbstractMesh((1, 4, 1), sharding.MESH_AXES)
    aot.check_divisibility(shrunk, mesh, sharding.DEFAULT_RULES, 4)  # raised before


def _fail_if_compiled(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("divisibility must be checked before lowering")

    monkeypatch.setattr(aot, "lower_train_step", boom)


def test_indivisible_heads_name_the_field_before_compiling(monkeypatch):
    _fail_if_compiled(monkeypatch)
    config = _paper_stage("tsr1", 8)  # attention at level 3: 256 channels
    config.model.head_dim = 128  # -> 2 heads, not divisible by tensor=8
    mesh = sharding.make_mesh(sharding.MeshConfig(1, 1, 8))
    with pytest.raises(aot.PreflightError, match=r"model\.head_dim.*2 heads.*tensor=8"):
        aot.preflight(config, mesh, batch_size=8)


def test_indivisible_batch_names_the_field_before_compiling(monkeypatch):
    _fail_if_compiled(monkeypatch)
    config = _paper_stage("base", 8)
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 4, 1))
    with pytest.raises(aot.PreflightError, match=r"train\.batch_size=12 .*data\*fsdp=8"):
        aot.preflight(config, mesh, batch_size=12)


def test_indivisible_channels_name_the_field(monkeypatch):
    _fail_if_compiled(monkeypatch)
    config = _paper_stage("ssr3", 8)  # base_channels 16
    config.model.base_channels = 12
    config.model.norm_groups = 4
    mesh = sharding.make_mesh(sharding.MeshConfig(1, 8, 1))
    with pytest.raises(aot.PreflightError, match=r"model\.base_channels=12 .*fsdp=8"):
        aot.preflight(config, mesh, batch_size=8)


def test_over_budget_names_the_program():
    report = aot.PreflightReport(
        stage="x", mesh={"data": 1, "fsdp": 1, "tensor": 1}, batch_size=1, sample_batch_size=1,
        num_params=1, params_bytes=4, ema_bytes=4, optimizer_bytes=8,
        train={"total_bytes": 2 * 2**30}, sampler={"total_bytes": 2**20}, compile_s={},
        budget_label="small", budget_bytes=2**30,
    )  # fmt: skip
    assert report.over_budget() == ["train step"]
    assert "DOES NOT FIT (train step)" in aot.format_report(report)


class _Compiled:
    """Stands in for a compiled program whose memory analysis says `total` bytes of arguments."""

    def __init__(self, total: int):
        self.total = total

    def memory_analysis(self):
        return types.SimpleNamespace(
            argument_size_in_bytes=self.total, output_size_in_bytes=0, temp_size_in_bytes=0,
            alias_size_in_bytes=0, generated_code_size_in_bytes=0,
        )  # fmt: skip

    def cost_analysis(self):
        return {}


def _fake_sampler_lowering(monkeypatch, replicated):
    """Sampler 'compiles' needing `replicated` bytes (or raising it) and 100 bytes sharded."""
    calls = []

    def compile_(sharded):
        if not sharded and isinstance(replicated, Exception):
            raise replicated
        return _Compiled(100 if sharded else replicated)

    def lower(config, mesh, params, batch, steps, guided, sharded, video_sharding="batch"):
        calls.append(sharded)
        return types.SimpleNamespace(compile=lambda: compile_(sharded))

    monkeypatch.setattr(aot, "lower_sampler_program", lower)
    return calls


@pytest.mark.parametrize(
    ("replicated", "budget", "layouts", "placement"),
    [
        (400, 500, [False], "replicated"),  # fits: one compile, as Pipeline's "auto"
        (1000, 500, [False, True], "sharded"),  # over the budget: compiled again, sharded
        # The TPU compiler refuses a program over the chip (measured on v5e-8, paper base).
        (jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: ... required for HLO temporaries "
                                    "(21.97G) exceeds available HBM (15.75G)."),
         16 * 2**30, [False, True], "sharded"),
    ],
)  # fmt: skip
def test_preflight_auto_sampler_layout(monkeypatch, replicated, budget, layouts, placement):
    calls = _fake_sampler_lowering(monkeypatch, replicated)
    out = aot._sampler_program(None, None, None, 8, 2, "auto", ("chip", budget), {}, 0)
    assert calls == layouts and out["sampler_param_sharding"] == placement
    if placement == "sharded":
        assert out["sampler"]["total_bytes"] == 100
        expected = 1000 if replicated == 1000 else int(21.97 * 2**30)
        assert out["sampler_replicated"]["total_bytes"] == expected


def test_preflight_auto_counts_the_resident_text_encoder(monkeypatch):
    # 400 bytes fit a 500-byte chip alone, not beside 200 bytes of text-encoder params.
    calls = _fake_sampler_lowering(monkeypatch, 400)
    out = aot._sampler_program(None, None, None, 8, 2, "auto", ("chip", 500), {}, 200)
    assert calls == [False, True] and out["sampler_param_sharding"] == "sharded"


@pytest.mark.slow
def test_shrunk_paper_stage_compiles_on_64_fake_devices(tmp_path):
    # A subprocess: the fake device count must be set before jax starts.
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    # tsr1 at 1/16 width and one ResBlock per level: the paper stage's video size, levels,
    # attention placement and sharding, compiled in ~2 min instead of ~10.
    config = tmp_path / "shrunk_imagen_video.py"
    config.write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('iv', {str(ROOT / 'configs/imagen_video.py')!r})\n"
        "iv = importlib.util.module_from_spec(spec); spec.loader.exec_module(iv)\n"
        "def get_config(arg):\n"
        "    config = iv.get_config(arg)\n"
        "    config.model.num_res_blocks = 1\n"
        "    return config\n"
    )
    cmd = [sys.executable, str(ROOT / "tools/aot_check.py"), "--config", str(config), "--stages", "tsr1",
           "--mesh", "8,8,1", "--batch", "64", "--shrink", "16", "--budget", "v5e",
           "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    (report,) = json.loads(out.read_text())
    assert report["fits"] and report["mesh"] == {"data": 8, "fsdp": 8, "tensor": 1}
    # FSDP over 8: each device holds ~1/8 of the fp32 params (small replicated leaves aside).
    full = report["num_params"] * 4
    assert full / 8 <= report["params_bytes"] < full / 4
    assert report["optimizer_bytes"] >= 2 * report["params_bytes"] * 0.9  # AdamW mu + nu
    assert report["train"]["temp_bytes"] > 0 and report["sampler"]["total_bytes"] > 0


def _paper_table():
    spec = importlib.util.spec_from_file_location("paper_table", ROOT / "tools/paper_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_table_width_law_recovers_a_known_law():
    # temp(w) = 3e9*w + 5e9*w^2 (activations + gathered weights), sampled at widths /32 and /16:
    law = lambda w: 3e9 * w + 5e9 * w * w
    lin, quad = width_law.fit([(1 / 32, law(1 / 32)), (1 / 16, law(1 / 16))])
    assert lin == pytest.approx(3e9) and quad == pytest.approx(5e9)
    assert width_law.predict((lin, quad), 1 / 8) == pytest.approx(law(1 / 8))
    # At full width and 4 samples per chip, only the activation term grows with the batch.
    reports = {1 / s: {"train": {"temp_bytes": law(1 / s)},
                       "train_cost": {"flops": law(1 / s), "bytes_accessed": law(1 / s)}}
               for s in (32, 16)}  # fmt: skip
    full = width_law.extrapolate(reports, 4, "train")
    assert full["temp"] == pytest.approx(4 * 3e9 + 5e9)
    assert full["flops"] == pytest.approx(4 * (3e9 + 5e9))


def test_paper_table_rebuilds_weight_sized_temporaries_from_a_chips_share():
    # Compiled on one chip, temporaries = activations (2e9 per unit width, per sample) + 1.5x
    # the weights the chip holds (gradients and the update): whole at w, P(w) = 4e9 w^2 + 1e8 w.
    weights = lambda w: 4e9 * w * w + 1e8 * w
    temp = lambda w, held: 2e9 * w + 1.5 * held
    reports = {w: {"params_bytes": weights(w), "train": {"temp_bytes": temp(w, weights(w))},
                   "train_cost": {"flops": 1.0, "bytes_accessed": 1.0}}
               for w in (128 / 704, 256 / 704)}  # fmt: skip
    assert width_law.fit_weights(
        [(w, r["params_bytes"], r["train"]["temp_bytes"]) for w, r in reports.items()]
    ) == pytest.approx((2e9, 1.5))
    # On a 64-way fsdp slice a chip holds 1/64 of the full model: 3 samples per chip, padded.
    share = weights(1.0) / 64
    full = width_law.extrapolate(reports, 3, "train", 1.25, weights_per_chip=share)
    assert full["temp"] == pytest.approx(3 * 2e9 * 1.25 + 1.5 * share)
    law = full["temp_law"]
    assert width_law.predict(law, 0.5, weights(0.5)) == pytest.approx(temp(0.5, weights(0.5)))


def test_paper_table_scales_another_chips_rows_by_their_measured_temporaries(tmp_path, capsys):
    """Rows of a chip compiled only at the first width use the first chip's law times the
    temporaries' ratio measured there; a row that cannot fit even at 1 sample per chip names
    the knobs left. The cache is made up: nothing compiles."""
    table = _paper_table()
    GiB = 2**30
    weights = lambda c: 4.0 * 5.7e9 * (c / 704) ** 2  # fp32 params at c base channels

    def report(c, train_temp, sampler_temp):
        base = {"params_bytes": weights(c), "compile_s": {"train_step": 1.0, "sampler": 1.0},
                "host": {"wall_s": 1.0, "peak_rss_gib": 1.0, "commit": "x"}}  # fmt: skip
        return {
            "train": {**base, "train": {"temp_bytes": train_temp},
                      "train_cost": {"flops": 1e12, "bytes_accessed": 1e11}},
            "sampler": {**base, "sampler": {"temp_bytes": sampler_temp},
                        "sampler_cost": {"flops": 1e11, "bytes_accessed": 1e10}},
        }  # fmt: skip

    # v5p: temporaries = 10 GiB per unit width (activations) + 1x the weights held.
    law = lambda c: 10 * GiB * c / 704 + weights(c)
    compiles = {("v5p:1x1x1", 128): report(128, law(128), 0.2 * GiB),
                ("v5p:1x1x1", 256): report(256, law(256), 0.3 * GiB),
                ("v5e:1x1", 128): report(128, 1.5 * law(128), 0.2 * GiB),
                # --check base:384: a third width whose temporaries are 10% over the law's
                ("v5p:1x1x1", 384): report(384, 1.1 * law(384), 0.4 * GiB)}  # fmt: skip
    cache = {f"base|{small}|c{c}|{p}": r[p] for (small, c), r in compiles.items() for p in r}
    share = 1.0 * GiB  # params per chip on the big slice
    cache["state|base"] = {str(n): {"mesh": [n // 64, 64, 1], "num_params": 5.7e9,
                                    "params": share, "ema": share, "opt": 2 * share,
                                    "params_replicated": weights(704), "batch": 256}
                           for n in (64, 256)}  # fmt: skip
    path = tmp_path / "cache.json"
    path.write_text(json.dumps(cache))
    table.main(["--stages", "base", "--slices", "v5p-128,v5e-256", "--cache", str(path),
                "--frames-law", ""])  # fmt: skip
    rows = {(r.split("|")[2].strip(), r.split("|")[4].strip()): r.split("|")
            for r in capsys.readouterr().out.splitlines()
            if r.startswith("| base |") and "| train" in r}  # fmt: skip
    pad = 768 / 704
    temp = lambda row: float(row[7].split()[0])
    v5p = 4 * 10 * pad + 1.0  # 4 samples per chip, padded; 1x the chip's 1 GiB share
    assert temp(rows["v5p:4x4x4 (64)", "train"]) == pytest.approx(v5p, abs=0.01)
    v5e = rows["v5e:16x16 (256)", "train"]
    assert temp(v5e) == pytest.approx(1.5 * (10 * pad + 1.0), abs=0.01)
    assert "x 1.50/1.00 (v5e" in v5e[12]
    assert "split each sample over tensor=2 (next row)" in v5e[11]  # 20.4 + 4 > 16
    # The next row: half a sample's activations (352 -> 384 channels padded) plus the chip's
    # params share twice (gradients, and the accumulator), on data,fsdp,tensor = 2,64,2 with
    # the paper base's 11 heads of 64 channels made 8 of 88.
    split = rows["v5e:16x16 (256)", "train, tensor=2 (extrap.)"]
    assert temp(split) == pytest.approx(1.5 * (0.5 * 10 * 384 / 352 + 2.0), abs=0.01)
    assert split[3].strip() == "2,64,2" and split[9].strip() == "yes"
    assert "model.head_dim=88, train.grad_accum_steps=2" in split[11]
    # The law checked at a third width: its note (law vs compiled) and its compile's row.
    table.main(["--stages", "base", "--slices", "v5p-128", "--cache", str(path), "--frames-law",
                "", "--check", "base:384"])  # fmt: skip
    out = capsys.readouterr().out
    assert (f"- base train temp at 384 channels on v5p:1x1x1: law {law(384):.4g}, compiled "
            f"{1.1 * law(384):.4g} (-9.1%)") in out  # fmt: skip
    assert "| base | v5p:1x1x1 (law check) | 384 | 1 | 1 | 2 | 1.0 |" in out


def test_paper_table_reports_a_sampler_the_compiler_refused(tmp_path, capsys, monkeypatch):
    """A one-chip sampler compile the TPU compiler refuses (RESOURCE_EXHAUSTED, its message
    naming the temporaries needed) is cached as that figure and shown as a row that does not
    fit; the train rows still come from the compiled train step; the next row splits each
    video's frames over the fewest chips that fit, by the frame-split law. Nothing compiles."""
    table = _paper_table()
    message = ("jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory on HBM, the "
               "total memory required for HLO temporaries (430.72G) exceeds available HBM "
               "(95.74G).\n\tMaximum resident set size (kbytes): 2097152\n")  # fmt: skip
    proc = lambda *a, **k: type("P", (), {"returncode": 1, "stdout": "", "stderr": message})()
    monkeypatch.setattr(table.subprocess, "run", proc)
    refused = table._compile("configs/imagen_video.py", "ssr3", "v5p:1x1x1", 128, "sampler")
    assert refused["sampler"] == {"temp_bytes": int(430.72 * 2**30), "refused": True}
    assert refused["host"]["peak_rss_gib"] == 2.0
    train = {"params_bytes": 1.3e9, "compile_s": {"train_step": 1.0},
             "host": {"wall_s": 1.0, "peak_rss_gib": 1.0, "commit": "x"},
             "train": {"temp_bytes": 2 * 2**30},
             "train_cost": {"flops": 1e12, "bytes_accessed": 1e11}}  # fmt: skip
    cache = {"ssr3|v5p:1x1x1|c128|train": train, "ssr3|v5p:1x1x1|c128|sampler": refused}
    # The frame-split law's compiles (tsr2 at its own 128 channels): one video on one chip, and
    # split over 2, 4 and 8 chips keeping 0.55, 0.30 and 0.175 of it: share(F) = 1/F + 0.05.
    cache.update(_frame_split_compiles({1: 1.0, 2: 0.55, 4: 0.30, 8: 0.175}))
    cache["state|ssr3"] = {str(n): {"mesh": [n // 64, 64, 1], "num_params": 3.3e8,
                                    "params": 2**28, "ema": 2**28, "opt": 2**29,
                                    "params_replicated": 1.3e9, "batch": 256}
                           for n in (64, 256)}  # fmt: skip
    path = tmp_path / "cache.json"
    path.write_text(json.dumps(cache))
    table.main(["--stages", "ssr3", "--slices", "v5p-128", "--cache", str(path)])
    out = capsys.readouterr().out
    rows = [r.split("|") for r in out.splitlines() if r.startswith("| ssr3")]
    (train_row,) = [r for r in rows if r[4].strip().startswith("train")]
    (sample_row,) = [r for r in rows if r[4].strip() == "sample step"]
    assert train_row[9].strip() == "yes" and ">= 430.72 GiB" in sample_row[7]
    assert sample_row[9].strip() == "**no**" and "split each video's frames" in sample_row[11]
    # 430.72 GiB x share(F) + 1.21 GiB of replicated params: F = 8 (75.4 GiB) is the first to
    # fit a v5p's 95 GiB; ssr3's 128 frames, 16 per chip; 64 chips as 8 videos of 8 chips.
    (split_row,) = [r for r in rows if r[4].strip() == "sample step, frames split (extrap.)"]
    assert float(split_row[7].split()[0]) == pytest.approx(430.72 * (1 / 8 + 0.05), abs=0.01)
    assert split_row[3].strip() == "8,8,1" and split_row[9].strip() == "yes"
    assert "video_sharding='frames': 16 of 128 frames per chip" in split_row[11]
    assert "temp per chip at 128 channels" in out and "share(F) = 1.000/F + 0.050" in out


def _frame_split_compiles(shares: dict[int, float], flops: dict[int, float] | None = None) -> dict:
    """Cached tsr2 sampler compiles (its own 128 channels) with one video over F chips, each
    chip keeping shares[F] of the one-chip figures (10 GiB, 1e12 FLOPs, 1e11 bytes; FLOPs and
    bytes flops[F] of them instead, where given)."""
    where = {1: "v5p:1x1x1", 2: "v5p:2x1x1", 4: "v5p:2x2x1", 8: "v5p:2x2x2"}
    cost = {**shares, **(flops or {})}
    return {
        f"tsr2|{where[f]}|c128|{'sampler' if f == 1 else 'sampler_frames'}": {
            "sampler": {"temp_bytes": share * 10 * 2**30},
            "sampler_cost": {"flops": cost[f] * 1e12, "bytes_accessed": cost[f] * 1e11},
            "compile_s": {"sampler": 100.0 * f},
            "host": {"wall_s": 110.0 * f, "peak_rss_gib": 4.0 + f},
        }
        for f, share in shares.items()
    }


def test_paper_table_fits_the_frame_split_law_at_the_largest_splits_and_checks_it(tmp_path, capsys):
    """Temporaries kept 0.55, 0.30, 0.20 of one chip's at 2, 4, 8 chips: the law goes through 4
    and 8 (0.8/F + 0.1); the law through 2 and 4 (1/F + 0.05) predicts 0.175 at 8, 12.5% under.
    The 8-chip FLOPs (0.06: below an exact split's 1/8, so loops counted once) stay out of the
    FLOPs law, which goes through 2 and 4. Nothing compiles (all cached); bad --frame-splits
    stop before anything runs."""
    table = _paper_table()
    cache = _frame_split_compiles({1: 1.0, 2: 0.55, 4: 0.30, 8: 0.20}, flops={8: 0.06})
    path = tmp_path / "cache.json"
    path.write_text(json.dumps(cache))
    table.main(["--stages", "", "--cross", "", "--slices", "v5p-128", "--cache", str(path)])
    out = capsys.readouterr().out
    notes = [n for n in out.splitlines() if n.startswith("- frame-split")]
    # The compiles table lists each split's compile (its slice, seconds, peak host memory).
    assert "| tsr2 | v5p:2x2x2 (one video, frames split) | 128 | 0 | 800 | 880 | 12.0 |" in out
    (temp_law,) = [n for n in notes if "law, tsr2 sampler temp" in n]
    assert "share(F) = 0.800/F + 0.100 (through 4 and 8 chips)" in temp_law
    (temp,) = [n for n in notes if n.startswith("- frame-split law check") and "temp" in n]
    assert "over 8 chips" in temp and "(-12.5%)" in temp
    assert (
        f"law through 2 and 4 chips {0.175 * 10 * 2**30:.4g}, compiled {0.20 * 10 * 2**30:.4g}"
        in temp
    )
    (flops_law,) = [n for n in notes if "law, tsr2 sampler flops" in n]
    assert "share(F) = 1.000/F + 0.050 (through 2 and 4 chips)" in flops_law
    assert "8 chips 6e+10 (0.060x; undercounted: loops, left out)" in flops_law
    assert not [n for n in notes if n.startswith("- frame-split law check") and "flops" in n]
    assert table.split_slice("v5p:1x1x1", 8) == "v5p:2x2x2"
    assert table.split_slice("v5e:1x1", 8) == "v5e:2x4"
    for bad in ("2", "4,2", "2,16", "2,x"):
        with pytest.raises(SystemExit, match=f"--frame-splits: two or more .* got '{bad}'"):
            table.main(["--cache", str(path), "--frame-splits", bad, "--compile-only"])


def test_paper_table_splits_a_sample_over_tensor_only_where_the_config_allows():
    table = _paper_table()
    paper = "configs/imagen_video.py"
    # 704, 1408, 2816 channels: 64-channel heads give 11 per level at 704, odd; 88 gives 8.
    assert table.tensor_split(paper, "base", 256, 64) == {
        "mesh": [2, 64, 2], "overrides": {"model.head_dim": 88}
    }  # fmt: skip
    assert table.tensor_split(paper, "tsr1", 256, 64) == {"mesh": [2, 64, 2], "overrides": {}}
    # ssr2's 160 channels do not split over fsdp=64 at all, whatever the heads.
    assert (
        "160 channels) is not divisible by conv_in's mesh axes fsdp=64"
        in (table.tensor_split(paper, "ssr2", 256, 64)["error"])
    )
    assert table.padding_factor(paper, "base", split=2) == pytest.approx(384 / 352)


def test_paper_table_compiles_unpadded_widths_and_bounds_a_single_full_width_point():
    table = _paper_table()
    paper = "configs/imagen_video.py"
    assert table.stage_widths(paper, "base", [128, 256]) == [128, 256]  # 704 channels
    assert table.stage_widths(paper, "ssr1", [128, 256]) == [128, 224]  # its own width measured
    assert table.stage_widths(paper, "ssr3", [128, 256]) == [128]  # 128 channels: itself
    assert table.padding_factor(paper, "base") == pytest.approx(768 / 704)  # 704 -> 6 x 128
    assert table.padding_factor(paper, "tsr1") == 1.0  # 256 x (1, 2, 4, 8)
    # The law's activation term grows by the full width's padding when it extrapolates...
    law = lambda w: 3e9 * w + 5e9 * w * w
    reports = {w: {"train": {"temp_bytes": law(w)},
                   "train_cost": {"flops": law(w), "bytes_accessed": law(w)}}
               for w in (128 / 704, 256 / 704)}  # fmt: skip
    assert width_law.extrapolate(reports, 2, "train", 1.25)["temp"] == pytest.approx(
        2 * 3e9 * 1.25 + 5e9
    )
    # ... and a lone full-width compile is exact for one sample per chip, a bound for more.
    one = {1.0: reports[256 / 704]}
    assert width_law.extrapolate(one, 1, "train")["temp"] == law(256 / 704)
    bound = width_law.extrapolate(one, 4, "train")
    assert bound["temp"] == 4 * law(256 / 704) and bound["bound"]
    # ... and a bound too where the one-chip compile held the whole model, not a chip's share.
    whole = {1.0: {**reports[256 / 704], "params_bytes": 8e9}}
    assert width_law.extrapolate(whole, 1, "train", weights_per_chip=1e8)["bound"]
    assert not width_law.extrapolate(whole, 1, "train", weights_per_chip=8e9)["bound"]


def test_config_overrides_reach_every_stage_and_bad_ones_stop_before_compiling():
    spec = importlib.util.spec_from_file_location("aot_check", ROOT / "tools/aot_check.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.config_overrides(["model.remat=save_dots", "stage.height=32", "x.y=(1, 2)"]) == {
        "model.remat": "save_dots",
        "stage.height": 32,
        "x.y": (1, 2),
    }
    with pytest.raises(ValueError, match="--set: expected FIELD=VALUE"):
        tool.config_overrides(["model.remat"])
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, str(ROOT / "tools/aot_check.py"), "--config", "configs/tiny.py",
           "--stages", "base,tsr", "--mesh", "1,1,1", "--set", "model.no_such_field=1"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr[-2000:]
    assert "--set / --config" in proc.stdout and "no_such_field" in proc.stdout
    assert "compiling" not in proc.stdout.lower()


def test_sr_stage_trained_on_crops_lowers_for_its_crops():
    # configs/shapes.py:ssr and the paper's SSR stages train on random crops; the pre-flight's
    # batch used the full frame with the crop's conditioning and could not lower them.
    config = configlib.load_config(str(ROOT / "configs/tiny.py:ssr"))
    config.stage.random_crop = (8, 8)  # of the 16x16 output; the input is 8x8
    spec = aot.train_batch_spec(config, 2)
    assert spec["video"].shape == (2, 8, 8, 8, 3)
    assert spec["low_res"].shape == (2, 8, 4, 4, 3)
    mesh = sharding.make_mesh(sharding.MeshConfig(), devices=jax.devices()[:1])
    _, _, batch = aot.lower_train_step(config, mesh, sharding.DEFAULT_RULES, 2)  # raised before
    assert batch["video"].shape == (2, 8, 8, 8, 3)


def test_paper_table_merges_separately_compiled_train_and_sampler_reports():
    """paper_table compiles the train step and the sampler in separate processes (one alone can
    need ~20 GB of host memory); merging the two one-program reports gives the train and sampler
    figures of a report that compiled both."""
    table = _paper_table()
    config = configlib.load_config(str(ROOT / "configs/tiny.py:tsr"))
    mesh = sharding.make_mesh(sharding.MeshConfig(1, 1, 1), jax.devices()[:1])

    def report(**programs):
        out = aot.preflight(config, mesh, batch_size=2, sample_batch_size=1, **programs).to_json()
        return {**out, "host": {"wall_s": 1.0, "peak_rss_gib": 2.0, "commit": "abc"}}

    both = report()
    train, sampler = report(sampler=False), report(train=False)
    assert not train["sampler"] and not sampler["train"]  # each compiled only its program
    sampler["host"]["peak_rss_gib"] = 3.0
    merged = table.merge_programs(train, sampler)
    for key in ("train", "sampler", "sampler_param_sharding", "num_params", "optimizer_bytes"):
        assert merged[key] == both[key], key
    assert sorted(merged["compile_s"]) == sorted(both["compile_s"])
    assert merged["host"] == {"wall_s": 2.0, "peak_rss_gib": 3.0, "commit": "abc"}


def test_a_loop_body_counts_once_in_cost_analysis_and_per_step_cost_counts_every_trip():
    # The compiler's cost analysis of a k-trip scan reports one body (so an accumulated train
    # step reports one microbatch); per_step_cost multiplies it back. Reference: the same k
    # matmuls unrolled, which the analysis counts in full.
    import jax.numpy as jnp

    w = jnp.ones((64, 64))

    def looped(c):
        return jax.lax.scan(lambda c, _: (c @ w, None), c, None, length=4)[0]

    def unrolled(c):
        for _ in range(4):
            c = c @ w
        return c

    def cost(fn):
        return aot._cost(jax.jit(fn).lower(w).compile())

    once, full = cost(looped), cost(unrolled)
    assert once["flops"] < 0.3 * full["flops"]  # the analysis saw one trip of four
    scaled = aot.per_step_cost(once, 4)
    assert abs(scaled["flops"] / full["flops"] - 1) < 0.01 and scaled["loop_trips"] == 4
    assert aot.per_step_cost(once, 1) is once


def test_paper_table_fixes_a_too_big_train_step_by_accumulation_then_smaller_crops(
    tmp_path, capsys
):
    """A train step over the chip is first run as accumulated microbatches (the batch stays the
    paper's); at one sample per chip, split over tensor=2; still too big on a stage trained on
    crops, on crops halved per side (a quarter of the activations). Made-up cache: 60 GiB of
    temporaries for one ssr3 sample (trained on 192x320 crops), 1 GiB of params share."""
    table = _paper_table()
    GiB = 2**30
    host = {"wall_s": 1.0, "peak_rss_gib": 1.0, "commit": "x"}
    cache = {
        "ssr3|v5p:1x1x1|c128|train": {
            "params_bytes": 1.3e9, "compile_s": {"train_step": 1.0}, "host": host,
            "train": {"temp_bytes": 60 * GiB}, "train_cost": {"flops": 1e12, "bytes_accessed": 1e11},
        },
        "ssr3|v5p:1x1x1|c128|sampler": {
            "compile_s": {"sampler": 1.0}, "host": host, "sampler": {"temp_bytes": GiB},
            "sampler_cost": {"flops": 1e11, "bytes_accessed": 1e10},
        },
        "state|ssr3": {str(n): {"mesh": [n // 64, 64, 1], "num_params": 3.3e8, "params": GiB,
                                "ema": GiB, "opt": 2 * GiB, "params_replicated": 1.3e9,
                                "batch": 256} for n in (64, 256)},
    }  # fmt: skip
    path = tmp_path / "cache.json"
    path.write_text(json.dumps(cache))
    table.main(["--stages", "ssr3", "--slices", "v5p-128,v5e-256", "--small", "v5p:1x1x1",
                "--cache", str(path), "--frames-law", ""])  # fmt: skip
    rows = {(r.split("|")[2].strip(), r.split("|")[4].strip()): r.split("|")
            for r in capsys.readouterr().out.splitlines() if r.startswith("| ssr3")}  # fmt: skip
    temp = lambda row: float(row[7].split()[0])
    # v5p-128: 4 samples per chip need 240 GiB; 1 in flight (4 accumulated) 60 + 1 (accumulator).
    v5p = rows["v5p:4x4x4 (64)", "train (upper bound)"]
    assert v5p[5].strip() == "256 (1 in flight)" and temp(v5p) == pytest.approx(61.0)
    assert "train.grad_accum_steps=4: 1 per chip in flight" in v5p[11]
    # v5e-256: half a sample per chip is 30 + 1 GiB, still too big; 96x160 crops: 7.5 + 1.
    half = rows["v5e:16x16 (256)", "train, tensor=2 (extrap.)"]
    assert temp(half) == pytest.approx(31.0) and "smaller crops (next row)" in half[11]
    crops = rows["v5e:16x16 (256)", "train, tensor=2, 96x160 crops (extrap.)"]
    assert temp(crops) == pytest.approx(8.5) and crops[9].strip() == "yes"
    assert "stage.random_crop=(96, 160)" in crops[11]


def test_a_law_with_negative_activations_falls_back_to_the_full_width_compile():
    # ssr2's train temporaries, measured: 19.3 GiB at 128 channels (2.73 GiB of params), 30.4
    # GiB at its own 160 (4.18 GiB): faster than act*w + g*P allows with act >= 0.
    GiB = 2**30
    reports = {
        w: {"params_bytes": p * GiB, "train": {"temp_bytes": t * GiB},
            "train_cost": {"flops": 1.0, "bytes_accessed": 1.0}}
        for w, p, t in ((0.8, 2.73, 19.35), (1.0, 4.18, 30.39))
    }  # fmt: skip
    out = width_law.extrapolate(reports, 2, "train", weights_per_chip=0.5 * GiB)
    assert out["bound"] and out["temp"] == pytest.approx(2 * 30.39 * GiB)


def test_paper_table_frames_row_with_no_split_to_try_says_it_does_not_fit():
    # One chip (nothing to split over): the row is the whole video, not fitting (was a NameError).
    table = _paper_table()
    GiB = 2**30
    topo = types.SimpleNamespace(num_chips=1, name="v5e:1x1",
                                 chip=types.SimpleNamespace(hbm_bytes=16 * GiB))  # fmt: skip
    state = {"params_replicated": GiB, "params": GiB}
    row = table._frames_row("configs/tiny.py", "base", topo, state, {"temp": 20 * GiB},
                            {"temp": (1.0, 0.0)}, "law").split("|")  # fmt: skip
    assert row[3].strip() == "1,1,1" and row[9].strip() == "**no**"
    assert "still too big at 1 chips per video: chips with more HBM" in row[11]
