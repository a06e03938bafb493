"""The paper-scale TPU table: every Imagen Video stage on big slices, from exact state sizes and small TPU compiles.

A full paper stage does not compile on a 2-core, 24 GB host in a session (TPU compile time grows
with the widths: the paper base's sampler took 196 s at 1/32 width and 1541 s at full width, its
train step 18 min at 1/32; every compile needs ~10 GB of host memory), so each row combines:
  * exact per-chip bytes of the params, EMA params and AdamW state on the big slice (the abstract
    sharded train state: shapes only, nothing compiled; fsdp over every chip);
  * temporaries, FLOPs and HBM bytes from the TPU compiler for one chip (`--small`, default
    v5p:1x1x1: its 95 GB hold the widest compiles; compiles partitioned over 4 chips needed more
    than this host's 24 GB of memory), one sample, at two narrower widths (`--widths`: base
    channels, multiples of 128 so that no level is padded to the TPU's 128-lane tiles; below 128
    a shrunk model's activations cost ~3x their size and a law fitted there overstates the full
    width's), fitted per stage as
      temp(w) = a*w + g*P(w),   FLOPs(w) = p*w^2 + q*w,   bytes(w) = u*w^2 + v*w
    (w = base channels / the stage's own; P(w) the compile's parameter bytes per chip:
    activations grow with w; gradients, update intermediates and weight casts with the weights a
    chip holds, which on one chip are the whole model and on the big slice its fsdp share;
    weights and dense/conv FLOPs grow with w^2, attention's QK^T/AV FLOPs with w at fixed
    tokens), then extrapolated to w = 1 with the activation terms (a, v) times the big slice's
    per-chip batch and times the full width's own tile padding (`padding_factor`: 704 channels
    -> 768), and g times the bytes of the params one big-slice chip holds (fsdp share when
    training; replicated or sharded when sampling). Gathered layers' transient full weights are
    not in g*P (one layer at a time: small next to the rest). A stage at most one of whose
    widths is below its own compiles at its own width too; with a single full-width compile
    (128-channel stages) the figure is exact for one sample per chip and an upper bound (every
    term times the batch) for more. `--check STAGE:CHANNELS` compiles a third width of one stage
    and prints the law's prediction error there.
    Every stage compiles for the first `--small` slice's chip; the other chips compile only the
    `--cross` stages at the first width, and their rows use the first chip's law with its
    temporaries times the measured ratio there (per program, the largest over the --cross
    stages; the same program's temporaries differ by chip: v5e's compiler asks for ~13% more
    than v5p's at 128 channels, and refuses 256 channels on its 16 GB). Each row names its law.
  * a roofline step time max(FLOPs / peak, bytes / HBM bandwidth) from t2v_jax/perf/chips.py
    (collectives not counted: an upper bound on speed).
Where a training row does not fit, the tool halves the samples per chip in flight, keeping the
paper's batch by accumulating microbatches (train.grad_accum_steps), until it does and shows
that setting; at one sample per chip the knob left is splitting each sample over `tensor`, and
the next row shows that setting (mesh data,fsdp,2 with train.grad_accum_steps=2, and the
head_dim that gives every level an even head count where the config's does not), its
temporaries extrapolated as half a sample's activations plus a gradient accumulator (and, for a
stage trained on crops that is still too big, a row with the crops halved per side). A sampling
row whose replicated params do not fit is shown with Pipeline(param_sharding="sharded"); one
whose single video does not fit is followed by the row that splits each video's frames over F
chips (Pipeline(video_sharding="frames")), its temporaries, FLOPs and bytes by the frame-split
law (`width_law.fit_frame_split`) compiled for the --frames-law stage over --frame-splits chips
(2, 4 and 8): the law goes through the two largest splits, and the law through the two smallest
is checked at the largest (its error printed).

  python tools/paper_table.py --slices v5p-128,v5e-256 > table.md   # the docs table

Each compile runs `tools/aot_check.py --topology` in a subprocess (one at a time; the train step
and the sampler in separate ones, since one alone can need ~20 GB of host memory), timed and
with its peak host memory and the commit it compiled, and is cached in --cache by (stage, chip,
channels, program), so a rerun only compiles what is missing. The default cache,
docs/tpu_paper_table_compiles.json, is committed: the compiles take longer than a session of this
2-core machine, so each session adds what it compiled. Needs libtpu (the tpu extra).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time

from t2v_jax.perf.width_law import extrapolate, fit_frame_split, frame_split_ratio, predict

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAGES = ("base", "tsr1", "ssr1", "tsr2", "ssr2", "tsr3", "ssr3")  # the paper's order
GiB = 2**30


def _args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/imagen_video.py")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--slices", default="v5p-128,v5e-256", help="the table's TPU slices")
    parser.add_argument(
        "--small",
        default="v5p:1x1x1,v5e:1x1",
        help="per chip kind, the slice the shrunk programs compile for (the first: every stage)",
    )
    parser.add_argument(
        "--widths", default="128,256", help="the two fitted base-channel counts (x128: unpadded)"
    )
    parser.add_argument("--check", default=None, help="STAGE:CHANNELS compiled to test the law")
    parser.add_argument(
        "--cross", default="base", help="stages compiled for the other --small chips too"
    )
    parser.add_argument(
        "--cache",
        default=str(ROOT / "docs/tpu_paper_table_compiles.json"),
        help="the compiles made so far (committed: one compile takes a quarter of an hour or more)",
    )
    parser.add_argument(
        "--frames-law",
        default="tsr2",
        help="the stage whose sampler also compiles with one video's frames split over "
        "--frame-splits chips (video_sharding='frames'): the law "
        "behind the rows that split a video",
    )
    parser.add_argument(
        "--frame-splits",
        default="2,4,8",
        help="chips per video the --frames-law stage's sampler compiles over (2, 4, 8): the law "
        "goes through the two largest, and a third split checks the law through the two smallest",
    )
    parser.add_argument("--compile-only", action="store_true", help="fill the cache, no table")
    parser.add_argument(
        "--state-only",
        action="store_true",
        help="only the exact columns (no compiles): meshes, state bytes per chip",
    )
    return parser.parse_args(argv)  # fmt: skip


# ------------------------------------------------------------------------------------------
# Shrunk compiles (subprocesses: the TPU compile is the expensive part, and its memory is freed).


PROGRAMS = ("train", "sampler")  # compiled in separate processes: one alone needs up to ~20 GB
# A train row that does not fit at one sample per chip: the knob left is splitting each sample
# over `tensor` (with gradient accumulation, half a sample's activations per chip); the row
# after it shows that setting, extrapolated (docs/tpu_preflight.md has its small-scale compiles).
NO_FIT = "does not fit at 1 sample/chip: split each sample over tensor=2 (next row)"
# A sampling row whose one video is more than a chip holds: the row after it splits each
# video's frames over chips (Pipeline(video_sharding="frames")), extrapolated by the frame-split
# law, compiled with one video over each of --frame-splits chips.
SPLIT_VIDEO = "split each video's frames over chips (next row)"
SPLIT_SLICES = (2, 4, 8)  # chips per video split_slice has a slice for


def _compile(config: str, stage: str, small: str, channels: int, program: str) -> dict:
    """aot_check.py's JSON report of one program ("train": the train step, "sampler": the
    sampling programs; "sampler_frames": the sampler with one video's frames split over every
    chip of `small`) of one stage at `channels` base channels (the stage's own width:
    unchanged), one sample per chip on `small`, plus wall time, peak host RSS and commit."""
    out = pathlib.Path(
        f"/tmp/paper_table_{stage}_{small.replace(':', '_')}_c{channels}_{program}.json"
    )
    out.unlink(missing_ok=True)
    chips = _chip_count(small)
    cmd = ["/usr/bin/time", "-v", sys.executable, str(ROOT / "tools/aot_check.py"),
           "--topology", small, "--config", config, "--stages", stage, "--batch", str(chips),
           "--sample-batch", str(chips), "--sampler-params", "sharded", "--json", str(out),
           "--no-sampler" if program == "train" else "--no-train"]  # fmt: skip
    if program == "sampler_frames":
        cmd += ["--mesh", f"1,{chips},1", "--sample-batch", "1", "--video-sharding", "frames"]
    if channels != full_channels(config, stage):
        cmd += ["--set", f"model.base_channels={channels}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    peak = int(rss[1]) / 2**20 if rss else None
    if not out.exists() and "RESOURCE_EXHAUSTED" in proc.stderr:
        return _refused(program, proc.stderr, wall, peak)
    if not out.exists():  # e.g. killed by the OOM killer: "signal 9", and how far RSS got
        raise RuntimeError(
            f"{stage} {program} at {channels} channels on {small} failed (exit {proc.returncode}, "
            f"peak RSS {peak} GiB):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    (report,) = json.loads(out.read_text())
    if "error" in report:  # not cached: a fixed config or tool compiles it on the next run
        raise RuntimeError(f"{stage} at {channels} channels on {small}: {report['error']}")
    report["host"] = {"wall_s": round(wall, 1), "peak_rss_gib": peak, "commit": _git_head()}
    return report


def _refused(program: str, stderr: str, wall: float, peak: float | None) -> dict:
    """The report of a program the TPU compiler refused for lack of HBM: a measurement too (its
    message says what the temporaries need, e.g. the paper ssr3's sampler for one 128-frame
    1280x768 video on one chip: 430.72G), cached like a compiled one, with no cost analysis."""
    from t2v_jax.pipeline_sharding import refused_bytes

    needed = refused_bytes(RuntimeError(stderr))
    program = "train" if program == "train" else "sampler"  # as aot_check's reports name them
    return {
        program: {"temp_bytes": needed, "refused": True},
        f"{program}_cost": None,
        "compile_s": {"train_step" if program == "train" else "sampler": round(wall, 1)},
        "host": {"wall_s": round(wall, 1), "peak_rss_gib": peak, "commit": _git_head()},
    }


def merge_programs(train: dict, sampler: dict) -> dict:
    """One report from the train-only and the sampler-only reports of a stage: the sampler's
    fields (sampler*, text*) from the second, compile times of both, host wall summed and the
    peak the larger (the two processes ran one after the other)."""
    merged = {**train, **{k: v for k, v in sampler.items() if k.startswith(("sampler", "text"))}}
    merged["compile_s"] = {**train["compile_s"], **sampler["compile_s"]}
    peaks = [r["host"]["peak_rss_gib"] for r in (train, sampler)]
    merged["host"] = {
        "wall_s": train["host"]["wall_s"] + sampler["host"]["wall_s"],
        "peak_rss_gib": None if None in peaks else max(peaks),
        "commit": train["host"]["commit"],
    }
    return merged


def _git_head() -> str | None:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=False)  # fmt: skip
    return proc.stdout.strip() or None


def full_channels(config_path: str, stage: str) -> int:
    from t2v_jax import configlib

    return int(configlib.load_config(f"{config_path}:{stage}").model.base_channels)


def stage_widths(config_path: str, stage: str, widths: list[int]) -> list[int]:
    """The base channels a stage compiles at: the fitted widths below its own, then its own
    width where fewer than two are below it (a measured full-width point needs no law)."""
    full = full_channels(config_path, stage)
    below = [w for w in widths if w < full]
    return below if len(below) >= 2 else [*below, full]


def padding_factor(config_path: str, stage: str, split: int = 1) -> float:
    """The most any level's channels grow when padded to the TPU's 128-lane tiles (704 -> 768);
    `split`: each chip holding 1/split of every level's channels (a `tensor` axis)."""
    from t2v_jax import configlib

    model = configlib.load_config(f"{config_path}:{stage}").model
    levels = [model.base_channels * m // split for m in model.channel_mults]
    return max(-(-c // 128) * 128 / c for c in levels)


def _config_and_rules(config_path: str, stage: str):
    """A stage's config and its sharding rules (the config's, else the defaults)."""
    from t2v_jax import configlib, sharding

    config = configlib.load_config(f"{config_path}:{stage}")
    return config, sharding.rules_from_config(
        config.sharding.rules if "sharding" in config else None
    )


def _abstract_mesh(data: int, fsdp: int, tensor: int = 1):
    """A (data, fsdp, tensor) mesh of no devices: enough to shard shapes and check sizes."""
    from jax.sharding import AbstractMesh, AxisType

    from t2v_jax import sharding

    return AbstractMesh((data, fsdp, tensor), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def tensor_split(config_path: str, stage: str, chips: int, fsdp: int) -> dict:
    """How one stage splits every sample over tensor=2 on `chips` chips: the mesh and overrides.

    Heads shard over `tensor`, so each level needs an even head count: where the config's
    `head_dim` gives an odd one (the paper base: 704 / 64 = 11), the nearest head_dim (a
    multiple of 8, for the TPU's lanes) that divides every level into an even number of heads
    is proposed. The mesh keeps the state's fsdp (the largest every sharded width divides) and
    gives `data` the rest: three axes > 1 where chips > 2 * fsdp (docs/architecture.md names a
    known XLA:CPU problem with that case; unknown on TPU). Nothing compiles: `aot.check_divisibility`.
    Returns {"mesh": [data, fsdp, 2], "overrides": {key: value}} or {"error": str}.
    """
    from t2v_jax.perf import aot

    config, rules = _config_and_rules(config_path, stage)
    if chips % (2 * fsdp):
        return {"error": f"{chips} chips do not split into fsdp={fsdp} x tensor=2"}
    mesh = [chips // (2 * fsdp), fsdp, 2]
    abstract = _abstract_mesh(*mesh)
    model = config.model
    levels = [model.base_channels * m for m in model.channel_mults]
    head_dims = [model.get("head_dim")]
    if head_dims[0]:
        even = [h for h in range(8, max(levels) + 1, 8)
                if all(c % h == 0 and (c // h) % 2 == 0 for c in levels)]  # fmt: skip
        head_dims += sorted(even, key=lambda h: (abs(h - head_dims[0]), h))[:1]
    error = None
    for head_dim in head_dims:
        overrides = {} if head_dim == model.get("head_dim") else {"model.head_dim": head_dim}
        with config.unlocked():
            config.model.head_dim = head_dim
        try:
            aot.check_divisibility(config, abstract, rules, int(config.train.batch_size))
            return {"mesh": mesh, "overrides": overrides}
        except aot.PreflightError as e:
            error = error or str(e).splitlines()[-1].strip()
    return {"error": error}


def _frame_splits(text: str) -> list[int]:
    """--frame-splits: two or more increasing chip counts per video, each one of SPLIT_SLICES."""
    try:
        splits = [int(f) for f in text.split(",")]
    except ValueError:
        splits = []
    if len(splits) < 2 or splits != sorted(set(splits)) or not set(splits) <= set(SPLIT_SLICES):
        raise SystemExit(f"--frame-splits: two or more increasing values of {SPLIT_SLICES}, "
                         f"got {text!r}")  # fmt: skip
    return splits


def split_slice(small: str, chips: int) -> str:
    """The slice of `small`'s chip kind with `chips` (2, 4 or 8) chips: v5p:1x1x1 -> v5p:2x2x1;
    v5e:1x1 -> v5e:2x4 at 8."""
    kind, shape = small.split(":")
    rank = len(shape.split("x"))
    dims = {2: [2, 1, 1], 4: [2, 2, 1], 8: [2, 2, 2] if rank == 3 else [2, 4]}[chips][:rank]
    return f"{kind}:{'x'.join(map(str, dims))}"


def _chip_count(name: str) -> int:
    from t2v_jax.perf import chips

    return chips.parse_topology(name).num_chips


# ------------------------------------------------------------------------------------------
# Exact state bytes on the big slice (abstract mesh: no devices, nothing compiled).


def state_bytes(config_path: str, stage: str, chip_counts: list[int]) -> dict[int, dict]:
    """{chips: the mesh and per-chip bytes of params, EMA and AdamW state on it}.

    The mesh is (chips / fsdp, fsdp, 1) with the largest power-of-two fsdp that every sharded
    width divides (`aot.check_divisibility`): a width fsdp does not divide would be replicated
    whole (the paper base's 704-channel levels on fsdp=256 would put 2.7 GiB of params on
    every chip instead of 0.35 GiB), so the rest of the chips go to `data`.
    """
    import flax.linen as nn
    import jax

    from t2v_jax import sharding
    from t2v_jax.perf import aot

    config, rules = _config_and_rules(config_path, stage)
    init = aot._train_parts(config, _abstract_mesh(1, 1), rules, 1)[6]
    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))  # traced once, sharded per slice
    out = {}
    for n in chip_counts:
        fsdp = n
        while fsdp > 1:
            try:
                aot.check_divisibility(config, _abstract_mesh(n // fsdp, fsdp), rules, n)
                break
            except aot.PreflightError:
                fsdp //= 2
        shardings = sharding.logical_shardings(boxed, _abstract_mesh(n // fsdp, fsdp), rules)
        state = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            nn.unbox(boxed), shardings,
        )  # fmt: skip
        out[n] = {
            "mesh": [n // fsdp, fsdp, 1],
            "num_params": sum(x.size for x in jax.tree.leaves(state.params)),
            "params": aot._per_device_bytes(state.params),
            "ema": aot._per_device_bytes(state.ema_params),
            "opt": aot._per_device_bytes(state.opt_state),
            "params_replicated": sum(
                x.size * x.dtype.itemsize for x in jax.tree.leaves(state.params)
            ),
            "batch": int(config.train.batch_size),
        }
    return out


def main(argv=None) -> int:
    args = _args(argv)
    os.environ["JAX_PLATFORMS"] = "cpu"
    from t2v_jax.perf import chips

    stages = [s for s in args.stages.split(",") if s]  # none: e.g. only the frame-split law
    widths = [int(w) for w in args.widths.split(",")]
    if len(widths) != 2 or any(w % 128 for w in widths) or widths[0] >= widths[1]:
        raise SystemExit(f"--widths: two increasing multiples of 128 channels, got {args.widths}")
    frame_splits = _frame_splits(args.frame_splits)
    small = {chips.parse_topology(s).chip.name: s for s in args.small.split(",")}
    slices = [chips.parse_topology(s) for s in args.slices.split(",")]
    cache_path = pathlib.Path(args.cache)
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    check = args.check.split(":") if args.check else None
    if args.state_only:
        print(state_table(args.config, stages, slices, cache))
        cache_path.write_text(json.dumps(cache, indent=1))
        return 0

    def program(stage, where, channels, name):  # one program's report, cached once compiled
        key = f"{stage}|{where}|c{channels}|{name}"
        if key not in cache:
            print(f"compiling {key}", file=sys.stderr, flush=True)
            cache[key] = _compile(args.config, stage, where, channels, name)
            cache_path.write_text(json.dumps(cache, indent=1))
        return cache[key]

    def compiled(stage, kind, channels):
        return merge_programs(*(program(stage, small[kind], channels, p) for p in PROGRAMS))

    primary = next(iter(small))
    cross = [s for s in args.cross.split(",") if s] if args.cross else []
    # The law check's stage and third width first (whether the law holds decides whether the
    # rest is worth compiling), then every stage on the first chip, then --cross on the others
    # (their first width only: the chips' ratio there scales the first chip's law).
    if check:
        for channels in [*stage_widths(args.config, check[0], widths), int(check[1])]:
            compiled(check[0], primary, channels)
    for kind in small:
        for stage in stages if kind == primary else [s for s in stages if s in cross]:
            own = stage_widths(args.config, stage, widths)
            for channels in own if kind == primary else own[:1]:
                compiled(stage, kind, channels)
    frames_law = None
    if args.frames_law:  # one video over --frame-splits chips vs on one, at the stage's first width
        channels = stage_widths(args.config, args.frames_law, widths)[0]
        first = args.small.split(",")[0]
        whole = program(args.frames_law, first, channels, "sampler")
        splits = {f: program(args.frames_law, split_slice(first, f), channels, "sampler_frames")
                  for f in frame_splits}  # fmt: skip
        frames_law = (args.frames_law, channels, whole, splits)
    if args.compile_only:
        return 0
    print(table(args, stages, widths, slices, small, compiled, check, cache, cross, frames_law))
    cache_path.write_text(json.dumps(cache, indent=1))
    return 0


def table(args, stages, widths, slices, small, compiled, check, cache, cross, frames_law=None):
    from t2v_jax.perf import chips

    rows = [
        "| stage | slice (chips) | mesh data,fsdp,tensor | program | batch (per chip) | params+EMA+opt / chip | "
        "temp / chip (extrap.) | total / chip | fits | est. step (roofline) | fix | law compiled on |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    primary = next(iter(small))
    notes, host = [], []
    pads = {stage: padding_factor(args.config, stage) for stage in stages}

    def chip_ratio(kind):  # {program: temporaries on `kind` / on the first chip}, at one width
        measured = {p: [] for p in PROGRAMS}
        for stage in cross if kind != primary else ():
            c = stage_widths(args.config, stage, widths)[0]
            mine, ref = compiled(stage, kind, c), compiled(stage, primary, c)
            for p in PROGRAMS:
                measured[p].append(mine[p]["temp_bytes"] / ref[p]["temp_bytes"])
                notes.append(f"- {stage} {p} temporaries at {c} channels: {small[kind]} "
                             f"{mine[p]['temp_bytes'] / GiB:.3g} GiB, {small[primary]} "
                             f"{ref[p]['temp_bytes'] / GiB:.3g} GiB ({measured[p][-1]:.2f}x)")  # fmt: skip
        # The largest over the --cross stages, so that the rows stay upper estimates.
        return {p: max(r) if r else 1.0 for p, r in measured.items()}

    ratios = {kind: chip_ratio(kind) for kind in small}
    split = _frame_split_laws(frames_law, small[primary], notes) if frames_law else None

    def reports_of(stage, kind):  # {w: report}
        full = full_channels(args.config, stage)
        return {
            c / full: compiled(stage, kind, c) for c in stage_widths(args.config, stage, widths)
        }

    for stage in stages:
        for topo in slices:
            kind, n = topo.chip.name, topo.num_chips
            state = _cached_state(args.config, stage, slices, cache)[str(n)]
            reports = reports_of(stage, primary)
            ratio = ratios.get(kind, {p: 1.0 for p in PROGRAMS})
            law = small[primary] + (f" x {ratio['train']:.2f}/{ratio['sampler']:.2f} "
                                    f"({kind}, train/sampler)" if kind != primary and kind in small else "")  # fmt: skip
            train_batch = state["batch"]
            per_chip = max(1, train_batch // n)
            fixed, accum = None, 1
            while True:
                train = extrapolate(reports, per_chip, "train", pads[stage], state["params"])
                # Accumulating microbatches adds one fp32 copy of the chip's params share.
                train["temp"] = (train["temp"] + (accum > 1) * state["params"]) * ratio["train"]
                total = state["params"] + state["ema"] + state["opt"] + train["temp"]
                if total <= topo.chip.hbm_bytes or per_chip == 1:
                    break
                per_chip, accum = per_chip // 2, accum * 2  # the same batch, fewer in flight
                fixed = f"train.grad_accum_steps={accum}: {per_chip} per chip in flight"
            roof = chips.roofline(accum * train["flops"], accum * train["bytes_accessed"],
                                  topo.chip)  # fmt: skip
            mesh = ",".join(map(str, state["mesh"]))
            bound = " (upper bound)" if train["bound"] else ""
            held = state["params"] + state["ema"] + state["opt"]
            flight = f"{per_chip}" + (" in flight" if accum > 1 else "")
            rows.append(_row(stage, topo, mesh, "train" + bound, f"{train_batch} ({flight})",
                             held, train["temp"], total,
                             roof, fixed or ("" if total <= topo.chip.hbm_bytes else NO_FIT), law))  # fmt: skip
            if total > topo.chip.hbm_bytes:
                rows.append(_split_row(args.config, stage, topo, state, reports, ratio, train,
                                       held, law))  # fmt: skip
            refused = [r["sampler"]["temp_bytes"] for r in reports.values()
                       if r["sampler"].get("refused")]  # fmt: skip
            if refused:  # even one video at a narrower width is over a whole chip
                rows.append(_refused_row(stage, topo, mesh, max(refused), state, law))
                if split:
                    whole = {"temp": max(refused) * ratio["sampler"]}
                    rows.append(_frames_row(args.config, stage, topo, state, whole, split, law))
                continue
            resident, fix = state["params_replicated"], ""
            sample = extrapolate(reports, 1, "sampler", pads[stage], resident)
            if resident + sample["temp"] * ratio["sampler"] > topo.chip.hbm_bytes:
                resident, fix = state["params"], "param_sharding='sharded'"
                sample = extrapolate(reports, 1, "sampler", pads[stage], resident)
            sample["temp"] *= ratio["sampler"]
            if resident + sample["temp"] > topo.chip.hbm_bytes:
                fix = (f"{fix + ' is not enough: ' if fix else ''}one video's activations "
                       f"exceed a chip: {SPLIT_VIDEO}")  # fmt: skip
            roof = chips.roofline(sample["flops"], sample["bytes_accessed"], topo.chip)
            rows.append(_row(stage, topo, mesh, "sample step", f"{n} (1)", resident, sample["temp"],
                             resident + sample["temp"], roof, fix, law))  # fmt: skip
            if split and resident + sample["temp"] > topo.chip.hbm_bytes:
                rows.append(_frames_row(args.config, stage, topo, state, sample, split, law))
        own = stage_widths(args.config, stage, widths)
        kinds = [k for k in small if k == primary or stage in cross]
        for kind, c in ((k, c) for k in kinds for c in (own if k == primary else own[:1])):
            host.append(_host_row(stage, small[kind], c, compiled(stage, kind, c)))
    if check:
        stage, channels = check[0], int(check[1])
        for kind in [primary]:
            measured = compiled(stage, kind, channels)
            law = extrapolate(reports_of(stage, kind), 1, "train", 1.0, measured["params_bytes"])
            w = channels / full_channels(args.config, stage)
            for key, value in (("temp", measured["train"]["temp_bytes"]),
                               ("flops", measured["train_cost"]["flops"])):  # fmt: skip
                guess = predict(law[f"{key}_law"], w, measured["params_bytes"])
                notes.append(f"- {stage} train {key} at {channels} channels on {small[kind]}: law "
                             f"{guess:.4g}, compiled {value:.4g} ({guess / value - 1:+.1%})")  # fmt: skip
            host.append(_host_row(stage, f"{small[kind]} (law check)", channels, measured))
    if frames_law:
        stage, channels, _, splits = frames_law
        for f, r in splits.items():
            where = f"{split_slice(small[primary], f)} (one video, frames split)"
            host.append(_host_row(stage, where, channels, r))
    out = "\n".join(rows)
    out += (
        "\n\nLaw checks (a third width, compiled) and chip ratios (the other chips' rows use "
        "the first chip's law times these):\n" + "\n".join(notes)
        if notes
        else ""
    )
    out += ("\n\nCompiles (s: TPU compile; wall and peak RSS of the whole process):\n"
            "| stage | slice | base channels | train compile s | sampler compile s | wall s | peak RSS GiB |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(host))  # fmt: skip
    return out


def _host_row(stage: str, where: str, channels: int, report: dict) -> str:
    """A row of the compiles table: TPU compile seconds, and the process's wall and peak RSS."""
    compile_s, host = report["compile_s"], report["host"]
    return (f"| {stage} | {where} | {channels} | {compile_s.get('train_step', 0):.0f} | "
            f"{compile_s.get('sampler', 0):.0f} | {host['wall_s']:.0f} | "
            f"{host['peak_rss_gib']:.1f} |")  # fmt: skip


def _cached_state(config, stage, slices, cache) -> dict:
    key = f"state|{stage}"
    if key not in cache:
        counts = [t.num_chips for t in slices]
        cache[key] = {str(k): v for k, v in state_bytes(config, stage, counts).items()}
    return cache[key]


def state_table(config, stages, slices, cache) -> str:
    """The exact columns: per slice and stage, the mesh and what each chip holds (no compile)."""
    rows = [
        "| stage | params | slice (chips) | mesh data,fsdp,tensor | train batch (per chip) | "
        "params + EMA + AdamW / chip | sampling params / chip: replicated, sharded | "
        "replicated sampling params fit? |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage in stages:
        state = _cached_state(config, stage, slices, cache)
        for topo in slices:
            st = state[str(topo.num_chips)]
            data, fsdp, _ = st["mesh"]
            train = st["params"] + st["ema"] + st["opt"]
            # Sampling with sharded params splits over data x fsdp where widths divide; the
            # fsdp-only share is the upper bound shown.
            fits = "yes" if st["params_replicated"] < topo.chip.hbm_bytes else "**no**: sharded"
            rows.append(
                f"| {stage} | {st['num_params'] / 1e9:.2f}B | {topo.name} ({topo.num_chips}) | "
                f"{data},{fsdp},1 | {st['batch']} ({max(1, st['batch'] // topo.num_chips)}) | "
                f"{train / GiB:.2f} GiB | {st['params_replicated'] / GiB:.2f} GiB, <= "
                f"{st['params'] / GiB:.2f} GiB | {fits} |"
            )
    return "\n".join(rows)


def _split_row(config_path, stage, topo, state, reports, ratio, one_sample, held, law) -> str:
    """The train row of a stage split over tensor=2 with 2 accumulated microbatches: each chip
    holds half a sample's activations (the law's activation term times 1/2, padded at half the
    channels) plus a gradient accumulator (one more fp32 copy of its params share); it does the
    same work per step as at one sample per chip. Extrapolated, not compiled at this scale;
    params + EMA + AdamW are the fsdp share, an upper bound (tensor splits some further)."""
    from t2v_jax.perf import chips

    n = topo.num_chips
    accum = 2 * max(1, state["batch"] // n)  # half a sample per chip in flight
    split = tensor_split(config_path, stage, n, state["mesh"][1])
    if "error" in split:
        return (f"| {stage} | {topo.name} ({n}) | | train, tensor=2 | | | | | **no** | | "
                f"tensor=2 does not apply: {split['error']} | |")  # fmt: skip
    pad = padding_factor(config_path, stage, split=2)
    # data x fsdp halves, so each group has twice the samples, in 2 microbatches, over 2 chips.
    half = extrapolate(reports, 0.5, "train", pad, state["params"])
    temp = (half["temp"] + state["params"]) * ratio["train"]
    # The step's work per chip is the whole batch's share: `one_sample` is one sample's.
    roof = chips.roofline(accum / 2 * one_sample["flops"], accum / 2 * one_sample["bytes_accessed"],
                          topo.chip)  # fmt: skip
    fix = ", ".join([f"{k}={v}" for k, v in split["overrides"].items()]
                    + [f"train.grad_accum_steps={accum}: half a sample per chip in flight"])  # fmt: skip
    mesh, batch = ",".join(map(str, split["mesh"])), f"{state['batch']} (0.5 in flight)"
    crop = _smaller_crop(config_path, stage, half["temp"] * ratio["train"], held + temp,
                         topo.chip.hbm_bytes)  # fmt: skip
    if held + temp > topo.chip.hbm_bytes:
        fix += "; still too big: " + ("smaller crops (next row)" if crop else "chips with more HBM")
    row = _row(stage, topo, mesh, "train, tensor=2 (extrap.)", batch, held, temp, held + temp,
               roof, fix, law)  # fmt: skip
    if held + temp <= topo.chip.hbm_bytes or not crop:
        return row
    (h, w), share = crop
    temp -= half["temp"] * ratio["train"] * (1 - share)
    roof = chips.roofline(accum / 2 * one_sample["flops"] * share,
                          accum / 2 * one_sample["bytes_accessed"] * share, topo.chip)  # fmt: skip
    fix = f"stage.random_crop=({h}, {w}) and the above: {share:g} of the activations and FLOPs"
    return row + "\n" + _row(stage, topo, mesh, f"train, tensor=2, {h}x{w} crops (extrap.)",
                             batch, held, temp, held + temp, roof, fix, law)  # fmt: skip


def _smaller_crop(config_path, stage, activations, total, hbm):
    """((h, w), area share): the training crop halved per side (once or twice) that brings a
    too-big train row under `hbm`, scaling `activations` (of `total`) with the crop's area (the
    SR stages are convolutional; ssr3 has no spatial attention); None if none does or the stage
    is not trained on crops. Sides stay multiples of the U-Net's total downsampling."""
    from t2v_jax import configlib

    config = configlib.load_config(f"{config_path}:{stage}")
    crop = config.stage.get("random_crop")
    if not crop:
        return None
    step = 2 ** (len(config.model.channel_mults) - 1)
    for k in (1, 2):
        h, w = crop[0] >> k, crop[1] >> k
        share = 1 / 4**k
        if h % step or w % step:
            return None
        if total - activations * (1 - share) <= hbm:
            return (h, w), share
    return None


def _frame_split_laws(frames_law, small: str, notes: list[str]) -> dict[str, tuple]:
    """{temp / flops / bytes_accessed: (alpha, beta)}: a chip's share of one video's sampler
    figure with its frames split over F chips, alpha/F + beta (`width_law.fit_frame_split`),
    through the two largest splits compiled (the nearest to the table's rows, which split over 8
    chips or more); with three splits or more, the law through the two smallest is checked at
    the largest. `cost_analysis` counts a loop's body once, so a split whose FLOPs per chip fall
    below an exact split's (1/F of the whole video's: no partition of the same work does less)
    is one where the compiler turned dots into loops (windowed, collective matmuls): its FLOPs
    and bytes are undercounts and stay out of those two laws (its temporaries are real)."""
    stage, channels, whole, splits = frames_law
    getters = {
        "temp": lambda r: r["sampler"]["temp_bytes"],
        "flops": lambda r: r["sampler_cost"]["flops"],
        "bytes_accessed": lambda r: r["sampler_cost"]["bytes_accessed"],
    }
    flops = getters["flops"]
    undercounted = {f for f, r in splits.items() if flops(r) < 0.99 * flops(whole) / f}
    laws = {}
    for key, get in getters.items():
        points = {f: get(r) / get(whole) for f, r in splits.items()}
        usable = sorted(f for f in points if key == "temp" or f not in undercounted)
        if len(usable) < 2:
            raise SystemExit(f"--frame-splits: the {key} law needs two splits whose cost analysis "
                             f"counts every loop trip, got {usable} of {sorted(points)}")  # fmt: skip
        laws[key] = fit_frame_split({f: points[f] for f in usable[-2:]})
        measured = ", ".join(
            f"{f} chips {get(r):.4g} ({points[f]:.3f}x"
            f"{'; undercounted: loops, left out' if f not in usable else ''})"
            for f, r in splits.items()
        )
        notes.append(f"- frame-split law, {stage} sampler {key} per chip at {channels} channels: "
                     f"1 chip ({small}) {get(whole):.4g}, {measured}; share(F) = "
                     f"{laws[key][0]:.3f}/F {'-' if laws[key][1] < 0 else '+'} "
                     f"{abs(laws[key][1]):.3f} (through {usable[-2]} and {usable[-1]} chips)")  # fmt: skip
        if len(usable) >= 3:  # the law from the two smallest splits, at the largest
            near = fit_frame_split({f: points[f] for f in usable[:2]})
            f = usable[-1]
            guess = get(whole) * frame_split_ratio(near, f)
            notes.append(f"- frame-split law check, {stage} sampler {key} per chip over {f} chips: "
                         f"law through {usable[0]} and {usable[1]} chips {guess:.4g}, compiled "
                         f"{get(splits[f]):.4g} ({guess / get(splits[f]) - 1:+.1%})")  # fmt: skip
    return laws


def _frames_row(config_path, stage, topo, state, whole, split, law) -> str:
    """The sampling row with each video's frames split over F chips (video_sharding='frames'):
    the smallest power-of-two F that divides the frames and fits, the mesh (chips / F, F, 1),
    `whole` (one video on one chip: temp, and flops / bytes_accessed unless refused) times the
    frame-split law's share at F. Extrapolated, not compiled at this scale."""
    from t2v_jax import configlib
    from t2v_jax.perf import chips

    frames = int(configlib.load_config(f"{config_path}:{stage}").stage.frames)
    n, hbm = topo.num_chips, topo.chip.hbm_bytes

    def placed(f):  # (temporaries, resident params, their setting) at F chips per video
        temp = whole["temp"] * frame_split_ratio(split["temp"], f)
        if state["params_replicated"] + temp <= hbm:
            return temp, state["params_replicated"], ""
        return temp, state["params"], "param_sharding='sharded', "

    f = 1
    temp, resident, params = placed(f)
    while resident + temp > hbm and 2 * f <= n and frames % (2 * f) == 0:
        f *= 2
        temp, resident, params = placed(f)
    fix = f"{params}video_sharding='frames': {frames // f} of {frames} frames per chip"
    if resident + temp > hbm:
        fix += f"; still too big at {f} chips per video: chips with more HBM, or a finer split"
    roof = None  # refused on one chip: no cost analysis to scale
    if "flops" in whole:
        roof = chips.roofline(whole["flops"] * frame_split_ratio(split["flops"], f),
                              whole["bytes_accessed"] * frame_split_ratio(split["bytes_accessed"], f),
                              topo.chip)  # fmt: skip
    return _row(stage, topo, f"{n // f},{f},1", "sample step, frames split (extrap.)",
                f"{n // f} (1/{f} video)", resident, temp, resident + temp, roof, fix, law)  # fmt: skip


def _refused_row(stage, topo, mesh, needed, state, law) -> str:
    """A sampling row whose one-chip compile the TPU compiler refused: what it said one video
    needs (at the widest width refused: a lower bound where that is below the stage's own)."""
    return (f"| {stage} | {topo.name} ({topo.num_chips}) | {mesh} | sample step | "
            f"{topo.num_chips} (1) | {state['params'] / GiB:.2f} GiB | >= {needed / GiB:.2f} GiB "
            f"(compiler: one video on one chip) | | **no** | | one video's activations exceed a "
            f"chip: {SPLIT_VIDEO} | {law} |")  # fmt: skip


def _row(stage, topo, mesh, program, batch, state, temp, total, roof, fix, law) -> str:
    fits = "yes" if total <= topo.chip.hbm_bytes else "**no**"
    step = "" if roof is None else f"{roof['step_s'] * 1e3:.0f} ms ({roof['bound']})"
    return (f"| {stage} | {topo.name} ({topo.num_chips}) | {mesh} | {program} | {batch} | "
            f"{state / GiB:.2f} GiB | {temp / GiB:.2f} GiB | {total / GiB:.2f} / "
            f"{topo.chip.hbm_bytes / GiB:.0f} GiB | {fits} | {step} | {fix} | {law} |")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
