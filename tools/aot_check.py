"""Pod pre-flight: compile each stage's train step and sampler for a TPU slice (or fake devices).

With --topology (needs libtpu, the `tpu` extra) the real TPU compiler compiles, on this host and
without any TPU, the sharded train step and the `Pipeline`'s own sampling program for the
slice's chips, and reports per chip: memory (arguments, outputs, temporaries, code) against the
chip's HBM, FLOPs and bytes from the TPU cost analysis, and a roofline step time with its MFU.
Without --topology the programs are compiled by XLA:CPU for fake devices: an estimate of a
TPU's memory only (CPU kernels, no TPU padding, no cost model). Exits non-zero when a stage does
not split over the mesh or does not fit the budget.

  python tools/aot_check.py --topology v5p-128 --mesh 1,64,1 --batch 64     # all 7 stages
  python tools/aot_check.py --topology v5e:2x2 --config configs/tiny.py --stages base --batch 4
  python tools/aot_check.py --stages base --mesh 1,64,1 --batch 64 --budget v5e=16GB  # no libtpu
  python tools/aot_check.py --stages tsr1 --mesh 8,8,1 --batch 64 --shrink 8  # quick look
  python tools/aot_check.py --topology v5e-8 --stages base --no-train --text-encoder t5-xxl

Cost: minutes per paper-scale stage on a 2-core CPU (compile only); seconds with --shrink or
configs/tiny.py. docs/tpu_preflight.md has measured compile times and host memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        default="configs/imagen_video.py",
        help="experiment config file whose get_config(STAGE) gives each stage",
    )
    parser.add_argument(
        "--stages",
        default="base,tsr1,ssr1,tsr2,ssr2,tsr3,ssr3",
        help="comma-separated stage names (the config's get_config arguments)",
    )
    parser.add_argument(
        "--topology",
        default=None,
        help="TPU slice to compile for with the TPU compiler: v5p-128, v5e-256, v5p:4x4x4, "
        "v5e:8x8, v4:2x2x2, v6e:4x4 (needs libtpu: the tpu extra)",
    )
    parser.add_argument(
        "--mesh",
        default=None,
        help="data,fsdp,tensor sizes; their product is the chip count (default with --topology: "
        "1,CHIPS,1) or the fake device count (default 1,64,1)",
    )
    parser.add_argument("--batch", type=int, default=64, help="global training batch")
    parser.add_argument(
        "--sample-batch",
        type=int,
        default=None,
        help="global sampling batch (default: data*fsdp, one per device)",
    )
    parser.add_argument(
        "--budget",
        default=None,
        help="per-device memory: v4, v5e, v5p, v6e, h100, NAME=16GB, 16GiB, bytes",
    )
    parser.add_argument(
        "--shrink",
        type=int,
        default=1,
        help="divide every width by this, rounded up to split over fsdp x tensor (fast "
        "compiles; shapes and depth stay)",
    )
    parser.add_argument("--no-sampler", action="store_true", help="compile the train step only")
    parser.add_argument(
        "--no-train", action="store_true", help="compile the sampling programs only"
    )
    parser.add_argument(
        "--sampler-params",
        default="auto",
        choices=("auto", "replicated", "sharded"),
        help="the sampler's params as Pipeline(param_sharding=...) lays them out; auto: "
        "replicated unless that does not fit the budget",
    )
    parser.add_argument(
        "--video-sharding",
        default="batch",
        choices=("batch", "frames"),
        help="the sampled videos as Pipeline(video_sharding=...) lays them out: whole per "
        "device, or each video's frames split over fsdp (for videos bigger than a chip)",
    )
    parser.add_argument(
        "--text-encoder",
        default=None,
        choices=("t5-xxl",),
        help="also compile the sampling pipeline's text encoder (its params stay resident)",
    )
    parser.add_argument(
        "--sample-steps", type=int, default=2, help="denoising steps of the compiled sampler"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="config override for every stage, repeatable, e.g. --set model.remat=save_dots "
        "--set stage.height=32 (VALUE is read as a Python literal, else as a string)",
    )
    parser.add_argument("--json", default=None, help="also write the reports to this file")
    parser.add_argument(
        "--full-codegen",
        action="store_true",
        help="full LLVM optimisation (slower compiles; memory is the same)",
    )
    return parser.parse_args(argv)  # fmt: skip


def config_overrides(items: list[str]) -> dict[str, object]:
    """`--set FIELD=VALUE` items -> {field: value}; raises ValueError naming a malformed one."""
    import ast

    out = {}
    for item in items:
        field, sep, text = item.partition("=")
        if not sep or not field.strip():
            raise ValueError(f"--set: expected FIELD=VALUE, got {item!r}")
        try:
            out[field.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[field.strip()] = text
    return out


def _mesh_shape(text: str) -> tuple[int, ...] | None:
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        return None
    return shape if len(shape) == 3 and min(shape) >= 1 else None


def main(argv: list[str] | None = None) -> int:
    """Runs the pre-flight; returns the exit status (0: every stage compiled and fits)."""
    args = _parse_args(argv)
    # Only what is safe before jax starts: chip names and mesh sizes are checked here.
    from t2v_jax.perf import chips

    topology = None
    if args.topology:
        try:
            topology = chips.parse_topology(args.topology)
        except chips.TopologyError as e:
            print(e)
            return 2
    try:
        overrides = config_overrides(args.set)
    except ValueError as e:
        print(e)
        return 2
    mesh_text = args.mesh or (f"1,{topology.num_chips},1" if topology else "1,64,1")
    mesh_shape = _mesh_shape(mesh_text)
    if mesh_shape is None:
        print(f"--mesh: expected three positive ints data,fsdp,tensor, got {mesh_text!r}")
        return 2
    if topology:
        # The programs are compiled for the slice's chips; this process needs no accelerator,
        # so it must not claim one. ALLOW_MULTIPLE_LIBTPU_LOAD lets it start beside another
        # process that holds libtpu's lockfile (a TPU job, or any JAX process with libtpu).
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"
    else:
        # Must happen before jax creates its CPU backend. LLVM optimisation only changes the
        # code that would run, not buffer assignment, so memory figures are the same without it.
        flags = f"--xla_force_host_platform_device_count={math.prod(mesh_shape)}"
        if not args.full_codegen:
            flags += " --xla_backend_optimization_level=0"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
        os.environ["JAX_PLATFORMS"] = "cpu"

    import jax

    from t2v_jax import configlib, sharding
    from t2v_jax.perf import aot

    if topology:
        try:
            mesh = chips.topology_mesh(topology, mesh_shape)
        except chips.TopologyError as e:
            print(e)
            return 2
    else:
        if len(jax.devices()) != math.prod(mesh_shape):
            print(f"jax already started with {len(jax.devices())} devices; run this as a script")
            return 2
        mesh = sharding.make_mesh(sharding.MeshConfig(*mesh_shape))
    budget = aot.parse_budget(args.budget) if args.budget else None
    if budget is None and topology:
        budget = (topology.chip.name, topology.chip.hbm_bytes)
    stages = args.stages.split(",")
    try:  # every config and override is checked before the first compile
        configs = [configlib.load_config(f"{args.config}:{s}", overrides) for s in stages]
    except configlib.ConfigError as e:
        print(f"--set / --config: {e}")
        return 2
    reports, status = [], 0
    for stage, config in zip(stages, configs, strict=True):
        if args.shrink > 1:
            # Rounded up to split over the mesh's fsdp x tensor chips, as the full widths do.
            config = aot.shrink_config(config, args.shrink, mesh_shape[1] * mesh_shape[2])
        try:
            report = aot.preflight(config, mesh, batch_size=args.batch,
                                   sample_batch_size=args.sample_batch, budget=budget,
                                   sampler=not args.no_sampler, sampler_steps=args.sample_steps,
                                   topology=topology, train=not args.no_train,
                                   sampler_params=args.sampler_params,
                                   text_encoder=args.text_encoder,
                                   video_sharding=args.video_sharding)  # fmt: skip
        except aot.PreflightError as e:
            print(f"FAIL {e}")
            reports.append({"stage": stage, "error": str(e)})
            status = 1
            continue
        print(aot.format_report(report), flush=True)
        reports.append(report.to_json())
        if report.over_budget():
            status = 1
            print(
                f"FAIL stage {stage}: the {', '.join(report.over_budget())} needs more than "
                f"{budget[0]}'s {budget[1] / 2**30:.1f} GiB per device; raise fsdp/tensor, "
                "lower train.batch_size, use a stronger model.remat policy (save_dots, then "
                "full), or sample with --sampler-params sharded (Pipeline(param_sharding='sharded'))"
                + (
                    "; a sampler whose one video is too big: --video-sharding frames "
                    "(Pipeline(video_sharding='frames'), frames split over fsdp)"
                    if "sampler" in report.over_budget() and args.video_sharding == "batch"
                    else ""
                )
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=1)
    return status


if __name__ == "__main__":
    sys.exit(main())
