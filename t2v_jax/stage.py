"""A cascade stage: what it produces and how it is sampled (`StageConfig`), its model and params.

Kept apart from `t2v_jax.cascade` (the `Pipeline` that samples the stages) so tools and the
training side can describe stages without the sampler.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any, Literal

from t2v_jax.diffusion import consistency, samplers, schedules
from t2v_jax.models.config import UNetConfig


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """What a stage produces and how it is sampled.

    Attributes:
      name: a label ("base", "tsr1", ...), shown in progress bars and errors.
      kind: "base" (from noise and text), "tsr" (more frames) or "ssr" (more pixels).
      frames, height, width: the stage's output size.
      low_frames, low_height, low_width: the size of the stage below (SR stages; 0 for base).
      fps: frames per second of this stage's output.
      num_steps: default number of denoising steps.
      sampler: "ddim", "ddpm" or "dpmpp_2m".
      time_grid: the log-SNRs the steps visit: "uniform" in the schedule's time (default; the
        grid distilled students are trained on) or "karras" (EDM's rho = 7 spacing: more steps
        at low noise, where fine detail is drawn; `samplers.sampling_log_snrs`).
      guidance_scale: classifier-free guidance weight w (1 = off).
      guidance_schedule: "constant" or "oscillating" (Imagen Video: w for the first
        `oscillate_after` steps, then alternating w and `low_guidance_scale`).
      thresholding: "none", "static" or "dynamic" thresholding of the predicted x0.
      dynamic_percentile: the quantile of |x0| used by dynamic thresholding.
      cond_noise_t: time t in [0, 1] of the noise added to the upsampled conditioning video at
        sampling (noise conditioning augmentation; 0 = clean).
      data_consistency: "bicubic" projects every step's x0 estimate onto the videos whose
        Pillow-bicubic shrink is the input (`t2v_jax.diffusion.consistency`; spatial SR stages
        whose input was made that way, e.g. real footage); "box" onto those whose area average
        is the input (stages trained with `low_res_filter="box"`, the demo's); "frames" (temporal
        SR stages) puts the input's frames back in their places (every frames // low_frames-th,
        as the training data took them); "none" (default) leaves it.
      spatial_upsample, temporal_upsample: how the stage below is brought to this stage's size
        (must match what the stage was trained with).
      schedule: the log-SNR schedule, shared by sampling and the conditioning augmentation.
    """

    name: str
    kind: Literal["base", "tsr", "ssr"]
    frames: int
    height: int
    width: int
    fps: float
    low_frames: int = 0
    low_height: int = 0
    low_width: int = 0
    num_steps: int = 32
    sampler: Literal["ddim", "ddpm", "dpmpp_2m"] = "ddim"
    time_grid: Literal["uniform", "karras"] = "uniform"
    guidance_scale: float = 1.0
    guidance_schedule: Literal["constant", "oscillating"] = "constant"
    oscillate_after: int = 0
    low_guidance_scale: float = 1.0
    thresholding: Literal["none", "static", "dynamic"] = "dynamic"
    dynamic_percentile: float = 0.995
    cond_noise_t: float = 0.0
    data_consistency: Literal["none", "bicubic", "box", "frames"] = "none"
    spatial_upsample: Literal["bilinear", "nearest"] = "bilinear"
    temporal_upsample: Literal["repeat", "interpolate"] = "repeat"
    schedule: schedules.ScheduleConfig = dataclasses.field(default_factory=schedules.ScheduleConfig)

    def __post_init__(self):
        for name in ("frames", "height", "width", "num_steps"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"stage {self.name}: {name} must be >= 1, got {getattr(self, name)}"
                )
        if self.kind != "base" and min(self.low_frames, self.low_height, self.low_width) < 1:
            raise ValueError(
                f"stage {self.name}: an SR stage needs low_frames/low_height/low_width"
            )
        if not 0.0 <= self.cond_noise_t <= 1.0:
            raise ValueError(f"stage {self.name}: cond_noise_t must be in [0, 1]")
        consistency.check_mode(self.data_consistency, f"stage {self.name}: data_consistency")
        samplers.check_time_grid(self.time_grid, f"stage {self.name}: time_grid")
        if self.data_consistency in consistency.SPATIAL_MODES and (
            self.kind != "ssr" or self.frames != self.low_frames
        ):
            raise ValueError(
                f"stage {self.name}: data_consistency={self.data_consistency!r} needs a spatial "
                f"SR stage (kind 'ssr', frames == low_frames), got kind {self.kind!r} with "
                f"{self.low_frames} -> {self.frames} frames"
            )
        if self.data_consistency == "frames" and (
            self.kind != "tsr"
            or (self.height, self.width) != (self.low_height, self.low_width)
            or self.frames % self.low_frames
        ):
            raise ValueError(
                f"stage {self.name}: data_consistency='frames' needs a temporal SR stage (kind "
                "'tsr', the same height and width as its input, frames a multiple of "
                f"low_frames), got kind {self.kind!r}, {self.low_frames}x{self.low_height}x"
                f"{self.low_width} -> {self.frames}x{self.height}x{self.width}"
            )

    @property
    def upsample_kind(self) -> str:
        time = self.frames != self.low_frames
        space = (self.height, self.width) != (self.low_height, self.low_width)
        return "spatiotemporal" if time and space else "temporal" if time else "spatial"


# How a stage is sampled rather than what its params were trained to do: a trained stage may be
# shipped or run with other values of these (tools/export_pipeline.py --stage-from).
SAMPLING_FIELDS = (
    "num_steps", "sampler", "time_grid", "guidance_scale", "guidance_schedule", "oscillate_after",
    "low_guidance_scale", "thresholding", "dynamic_percentile", "cond_noise_t", "data_consistency",
)  # fmt: skip


@dataclasses.dataclass
class Stage:
    """One stage of a cascade: sampling settings, architecture and parameters."""

    config: StageConfig
    model: UNetConfig
    params: Any


def check_chain(stages: Sequence[Stage]) -> None:
    """Raises ValueError unless `stages` chain into a pipeline.

    A base stage, or an SR stage for a pipeline that only upsamples given clips (`Pipeline.sample`
    with `init_video`), followed by SR stages whose input shapes are the output of the one below.
    """
    if not stages:
        raise ValueError("stages: a pipeline needs at least one stage")
    if stages[0].config.kind != "base" and stages[0].model.cond_channels == 0:
        raise ValueError(
            f"stages[0] ({stages[0].config.name}): an SR stage's model needs cond_channels > 0"
        )
    for i, (lower, upper) in enumerate(itertools.pairwise(stages), start=1):
        lo, up = lower.config, upper.config
        if up.kind == "base":
            raise ValueError(f"stages[{i}] ({up.name}): only the first stage may be a base stage")
        if (up.low_frames, up.low_height, up.low_width) != (lo.frames, lo.height, lo.width):
            raise ValueError(
                f"stages[{i}] ({up.name}) expects a {up.low_frames}x{up.low_height}x{up.low_width} "
                f"input but stages[{i - 1}] ({lo.name}) makes {lo.frames}x{lo.height}x{lo.width}"
            )
        if upper.model.cond_channels == 0:
            raise ValueError(
                f"stages[{i}] ({up.name}): an SR stage's model needs cond_channels > 0"
            )
