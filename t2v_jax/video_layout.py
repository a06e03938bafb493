"""Where a `Pipeline` keeps the videos it samples on the mesh: whole per device, or split by frames.

"batch" (the default): each device holds whole videos; the batch is split over `data` x `fsdp`.
Right while one video's activations fit a device, and the fastest: the U-Net's layers need no
communication.

"frames": each video's frames are split over `fsdp`, the batch over `data` only. For stages
whose single video is more than a chip holds (measured by the TPU compiler for the paper
cascade, docs/tpu_preflight.md: tsr2's sampler needs ~19 GiB of temporaries for one 64-frame
video at its full width, tsr3's ~39 GiB, ssr3's 431 GiB), the frames are the natural cut: the
spatial layers (2-D convs, spatial attention) act on each frame alone, so only the temporal
layers (temporal convs' edge frames, temporal attention) exchange data between devices. The
U-Net's block boundaries pin `frames` to `fsdp` (`layers.constrain` under `activation_rules`),
so the compiler keeps activations split between blocks instead of gathering a whole video.
A stage's input video (`low`, a fraction of its output's size) and the text stay batch-split.

The noise is drawn with JAX's partitionable threefry (the default), so a sample's noise, and so
its video, does not depend on the layout (tests/test_video_layout.py: the same videos within the
one-uint8-level rule of docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec

from t2v_jax import axes, sharding
from t2v_jax.configlib import check_choice

VIDEO_SHARDING_MODES = ("batch", "frames")
FRAMES_AXIS = "fsdp"  # the mesh axis a video's frames are split over under "frames"


def check_mode(value: Any) -> str:
    """Validates a `video_sharding` argument ("batch" or "frames")."""
    return check_choice("video_sharding", value, VIDEO_SHARDING_MODES)


class VideoLayout:
    """The shardings of a sampled batch under `mode` ("batch" or "frames") on `mesh`."""

    def __init__(self, mesh: jax.sharding.Mesh, mode: str = "batch"):
        self.mesh, self.mode = mesh, check_mode(mode)
        self.batch_axes = ("data", "fsdp") if mode == "batch" else ("data",)

    @property
    def divisor(self) -> int:
        """The global batch must be a multiple of this (the devices the batch is split over)."""
        return math.prod(self.mesh.shape[a] for a in self.batch_axes)

    @property
    def frame_split(self) -> int:
        """How many devices share one video (1 under "batch")."""
        return self.mesh.shape[FRAMES_AXIS] if self.mode == "frames" else 1

    def batch(self, ndim: int = 1) -> NamedSharding:
        """Sharding of an array whose leading axis is the batch (text, keys, input videos)."""
        return NamedSharding(self.mesh, PartitionSpec(self.batch_axes, *([None] * (ndim - 1))))

    def video(self, ndim: int = 5) -> NamedSharding:
        """Sharding of a stage's output-sized video [B, T, H, W, C] (the sampler's state)."""
        if self.mode == "batch":
            return self.batch(ndim)
        return NamedSharding(
            self.mesh, PartitionSpec(self.batch_axes, FRAMES_AXIS, *([None] * (ndim - 2)))
        )

    def rules(self) -> sharding.Rules:
        """Activation rules for the U-Net's block boundaries: batch and frames as laid out here."""
        target = {axes.BATCH: self.batch_axes, axes.FRAMES: FRAMES_AXIS}
        return tuple(
            (name, target.get(name, mesh_axes)) for name, mesh_axes in sharding.DEFAULT_RULES
        )

    @contextlib.contextmanager
    def activation_rules(self) -> Iterator[None]:
        """Around tracing a stage: "frames" pins activations' frames to `fsdp`; "batch" changes
        nothing (the models' defaults, `sharding.DEFAULT_RULES`, or the caller's rules)."""
        if self.mode == "batch":
            yield
            return
        with nn.logical_axis_rules(self.rules()):
            yield

    def hint(self) -> str:
        """The end of a does-not-fit message: the knob that splits each video, if it is not on."""
        if self.mode == "frames":
            return ""
        return (
            "; or video_sharding='frames' on a mesh with fsdp > 1 (each video's frames split "
            "over fsdp: for one video bigger than a device)"
        )

    def check_stages(self, configs: Sequence[Any]) -> None:
        """Every stage's frame count splits evenly over the frames axis (a clear error if not)."""
        split = self.frame_split
        for cfg in configs:
            if cfg.frames % split:
                raise ValueError(
                    f"video_sharding='frames': stage {cfg.name} has {cfg.frames} frames, not a "
                    f"multiple of the mesh's {FRAMES_AXIS}={split} (the devices a video's frames "
                    "are split over); choose a mesh whose fsdp size divides every stage's frames"
                )
