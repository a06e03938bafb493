"""Human-readable lines of a pre-flight report (`aot.PreflightReport`): GiB per chip, cost, roofline."""

from __future__ import annotations

from typing import Any


def _program_lines(name: str, mem: dict[str, int], seconds: float) -> list[str]:
    gib = lambda n: f"{n / 2**30:.4g} GiB"
    return [
        f"  {name:<11} {gib(mem.get('total_bytes', 0))} total = args "
        f"{gib(mem.get('argument_bytes', 0))} + out {gib(mem.get('output_bytes', 0))} - aliased "
        f"{gib(mem.get('alias_bytes', 0))} + temp {gib(mem.get('temp_bytes', 0))}; code "
        f"{gib(mem.get('code_bytes', 0))} (compiled in {seconds:.1f} s)"
    ]


def format_report(report: Any) -> str:
    """A few human-readable lines (GiB per chip; FLOPs and roofline time on a TPU topology)."""
    gib = lambda n: f"{n / 2**30:8.3f} GiB"
    mesh = " x ".join(f"{k}={v}" for k, v in report.mesh.items())
    where = (
        f"TPU compiler, {report.topology}"
        if report.platform == "tpu"
        else f"{report.platform.upper()} compiler on fake devices: an ESTIMATE of a TPU's memory"
    )
    lines = [
        f"stage {report.stage}: {report.num_params / 1e9:.3f}B params, mesh {mesh}, "
        f"train batch {report.batch_size}, sample batch {report.sample_batch_size} ({where})",
        f"  params      {gib(report.params_bytes)} per chip",
        f"  EMA params  {gib(report.ema_bytes)}",
        f"  optimizer   {gib(report.optimizer_bytes)}",
    ]
    if report.train:
        lines += _program_lines("train step", report.train, report.compile_s.get("train_step", 0))
    if report.text:
        lines += _program_lines(
            report.text_encoder, report.text, report.compile_s.get("text_encoder", 0)
        )
        lines.append(
            f"  {report.text_encoder} params {report.text_param_sharding}: "
            f"{gib(report.text_params_bytes)} per chip stay resident while the stages sample"
        )
    if report.sampler_replicated.get("refused"):
        lines.append(
            f"  sampler/replicated params: refused by the compiler, needs "
            f"{report.sampler_replicated['total_bytes'] / 2**30:.4g} GiB of temporaries"
        )
    elif report.sampler_replicated:
        lines += _program_lines(
            "sampler/replicated params (does not fit)", report.sampler_replicated, 0
        )
    if report.sampler:
        lines += _program_lines(
            f"sampler/{report.sampler_steps}, params {report.sampler_param_sharding}"
            + (", frames split" if report.sampler_video_sharding == "frames" else ""),
            report.sampler,
            report.compile_s.get("sampler", 0),
        )
    programs = (("train step", report.train_cost), ("sampler step", report.sampler_cost))
    for name, cost in programs:
        if cost:
            lines.append(
                f"  {name:<12} {cost['flops']:.4g} FLOP, {cost['bytes_accessed']:.4g} bytes "
                f"accessed per chip, {cost['pallas_kernels']} Pallas kernels"
            )
    for name, roof in report.rooflines().items():
        lines.append(
            f"  roofline {name}: {roof['step_s'] * 1e3:.4g} ms ({roof['bound']}-bound: compute "
            f"{roof['compute_s'] * 1e3:.4g} ms, HBM {roof['memory_s'] * 1e3:.4g} ms), "
            f"MFU <= {roof['mfu']:.1%} on {report.chip.name}"
        )
    if report.budget_bytes is not None:
        over = report.over_budget()
        verdict = "FITS" if not over else f"DOES NOT FIT ({', '.join(over)})"
        lines.append(f"  budget {report.budget_label}: {gib(report.budget_bytes)} -> {verdict}")
    return "\n".join(lines)
