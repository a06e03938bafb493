"""Pod pre-flight: compile each paper-scale stage's train and sampler step for a fake device mesh.

Sets the number of fake CPU devices before jax starts, then for each stage of the config lowers
and compiles the sharded train step and one sampler step from shapes alone (no parameter is
allocated), prints per-device memory and exits non-zero when a stage does not split over the
mesh or does not fit the budget.

  python tools/aot_check.py --mesh 16,16,1 --batch 256 --budget v5p           # all 7 stages
  python tools/aot_check.py --stages base --mesh 1,64,1 --batch 64 --budget v5e=16GB
  python tools/aot_check.py --stages tsr1 --mesh 8,8,1 --batch 64 --shrink 8  # quick look

Cost: minutes per paper-scale stage on a 2-core CPU (compile only); seconds with --shrink.
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
        "--mesh",
        default="1,64,1",
        help="data,fsdp,tensor sizes; their product is the fake device count",
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
        help="divide every width by this (fast compiles; shapes and depth stay)",
    )
    parser.add_argument("--no-sampler", action="store_true", help="compile the train step only")
    parser.add_argument("--json", default=None, help="also write the reports to this file")
    parser.add_argument(
        "--full-codegen",
        action="store_true",
        help="full LLVM optimisation (slower compiles; memory is the same)",
    )
    return parser.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Runs the pre-flight; returns the exit status (0: every stage compiled and fits)."""
    args = _parse_args(argv)
    try:
        mesh_shape = tuple(int(x) for x in args.mesh.split(","))
    except ValueError:
        mesh_shape = ()
    if len(mesh_shape) != 3 or min(mesh_shape) < 1:
        print(f"--mesh: expected three positive ints data,fsdp,tensor, got {args.mesh!r}")
        return 2
    # Must happen before jax creates its CPU backend. LLVM optimisation only changes the code
    # that would run, not buffer assignment, so memory figures are the same without it.
    flags = f"--xla_force_host_platform_device_count={math.prod(mesh_shape)}"
    if not args.full_codegen:
        flags += " --xla_backend_optimization_level=0"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"

    import jax

    from t2v_jax import configlib, sharding
    from t2v_jax.perf import aot

    if len(jax.devices()) != math.prod(mesh_shape):
        print(f"jax already started with {len(jax.devices())} devices; run this as a script")
        return 2
    budget = aot.parse_budget(args.budget) if args.budget else None
    mesh = sharding.make_mesh(sharding.MeshConfig(*mesh_shape))
    reports, status = [], 0
    for stage in args.stages.split(","):
        config = configlib.load_config(f"{args.config}:{stage}")
        if args.shrink > 1:
            config = aot.shrink_config(config, args.shrink)
        try:
            report = aot.preflight(config, mesh, batch_size=args.batch,
                                   sample_batch_size=args.sample_batch, budget=budget,
                                   sampler=not args.no_sampler)  # fmt: skip
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
                "lower train.batch_size, or keep model.remat=True"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=1)
    return status


if __name__ == "__main__":
    sys.exit(main())
