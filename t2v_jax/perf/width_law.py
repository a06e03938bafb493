"""Laws that carry small TPU compiles to paper scale (tools/paper_table.py, docs/tpu_preflight.md).

The width law: a stage's temporaries, FLOPs and HBM bytes per chip compiled at two narrower
widths (base channels), fitted and extrapolated to the stage's own width (`extrapolate`). The
frame-split law: how much of one video's sampler temporaries, FLOPs and bytes a chip keeps when
the video's frames are split over F chips (`Pipeline(video_sharding="frames")`), fitted as
alpha/F + beta from compiles at two split sizes (`fit_frame_split`).
"""

from __future__ import annotations


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(lin, quad) with y = lin*w + quad*w^2 through two (w, y) points."""
    (w1, y1), (w2, y2) = points
    quad = (y1 / w1 - y2 / w2) / (w1 - w2)
    return y1 / w1 - quad * w1, quad


def fit_weights(points: list[tuple[float, float, float]]) -> tuple[float, float]:
    """(act, per_weight) with y = act*w + per_weight*P through two (w, P, y) points.

    P is the compile's per-chip parameter bytes: what scales with the weights a chip holds
    (gradients, the optimizer update's intermediates, weight casts) rather than with w^2.
    """
    (w1, p1, y1), (w2, p2, y2) = points
    det = w1 * p2 - w2 * p1
    return (y1 * p2 - y2 * p1) / det, (w1 * y2 - w2 * y1) / det


def extrapolate(
    reports: dict[float, dict],
    per_chip_batch: int,
    program: str,
    pad: float = 1.0,
    weights_per_chip: float | None = None,
) -> dict:
    """Full-width temp bytes, FLOPs and HBM bytes of `program` ("train" / "sampler") per chip.

    `reports`: {w: aot_check report of the compile at width ratio w, one sample per chip}.
    Two widths: the law, with its activation terms times `pad` where it extrapolates past the
    widths compiled (they are multiples of 128 channels, unpadded; the full width may not be).
    With `weights_per_chip` (the parameter bytes one chip of the big slice holds), temporaries
    follow act*w + per_weight*P instead of a w^2 term: compiled on one chip, P is the whole
    model and so are its gradients, while on an fsdp slice each chip holds its share, so the
    weight-sized temporaries are rebuilt from the share ("temp_law": ("weights", act, per_weight)).
    A negative fitted weight term (temporaries that do not grow with the weights, e.g. a
    sampler's) is dropped and the activation term bounded by the larger of the two points'.
    A fit whose activation term comes out negative where the stage's own width was compiled
    falls back to that compile alone.
    One width (w = 1, measured): every term times the batch, an upper bound ("bound": True) for
    more than one sample per chip or where the compile held more weights than `weights_per_chip`.
    """
    pts = sorted(reports.items())
    cost = f"{program}_cost"
    get = lambda key, r: r[program]["temp_bytes"] if key == "temp" else r[cost][key]
    if len(pts) == 1:
        ((w, r),) = pts
        assert w == 1.0, "a single compile must be the stage's full width"
        out = {key: per_chip_batch * get(key, r) for key in ("temp", "flops", "bytes_accessed")}
        # Compiled holding more weights than a big-slice chip does: its weight-sized
        # temporaries are the whole model's, so the figure is an upper bound too.
        whole = weights_per_chip is not None and weights_per_chip < r.get("params_bytes", 0)
        return {**out, "bound": per_chip_batch > 1 or whole}
    if weights_per_chip is not None:
        act, per_weight = fit_weights([(w, r["params_bytes"], get("temp", r)) for w, r in pts])
        if act < 0 and pts[-1][0] == 1.0:  # grew faster than any such law (ssr2, 128 -> 160):
            return extrapolate(dict(pts[-1:]), per_chip_batch, program, pad, weights_per_chip)
    grow = pad if pts[-1][0] < 1.0 else 1.0
    out = {"bound": False}
    for key in ("temp", "flops", "bytes_accessed"):
        if key == "temp" and weights_per_chip is not None:
            if per_weight < 0:  # no weight-sized temporaries to see: activations only, bounded
                act, per_weight = max(get(key, r) / w for w, r in pts), 0.0
            out[key] = per_chip_batch * act * grow + per_weight * weights_per_chip
            out[f"{key}_law"] = ("weights", act, per_weight)
            continue
        lin, quad = fit([(w, get(key, r)) for w, r in pts])
        if key == "temp":  # activations (lin) grow with the batch; gathered weights do not
            out[key] = per_chip_batch * lin * grow + quad
        elif key == "flops":  # every FLOP is per sample
            out[key] = per_chip_batch * (lin + quad)
        else:  # weights are read once a step, activations per sample
            out[key] = per_chip_batch * lin * grow + quad
        out[f"{key}_law"] = (lin, quad)
    return out


def predict(law: tuple, w: float, params_bytes: float | None = None) -> float:
    """A law's value at width ratio w (a "weights" law also needs that compile's P)."""
    if law[0] == "weights":
        return law[1] * w + law[2] * params_bytes
    lin, quad = law
    return lin * w + quad * w**2


def fit_frame_split(points: dict[int, float]) -> tuple[float, float]:
    """(alpha, beta) with ratio(F) = alpha/F + beta through two {F: ratio} points.

    ratio(F): a chip's share of one video's figure (temporaries, FLOPs or HBM bytes) when the
    video's frames are split over F chips, relative to the whole video on one chip. A perfect
    split is alpha = 1, beta = 0; beta is what every chip keeps whatever F (gathered pieces,
    halo frames, replicated small tensors), alpha + beta - 1 the law's miss at F = 1.
    """
    (f1, r1), (f2, r2) = sorted(points.items())
    alpha = (r1 - r2) / (1 / f1 - 1 / f2)
    return alpha, r1 - alpha / f1


def frame_split_ratio(law: tuple[float, float], f: int) -> float:
    """A frame-split law's ratio at F chips (1 at F = 1: one chip holds the whole video)."""
    return 1.0 if f == 1 else law[0] / f + law[1]
