"""Video in: bringing a user's clip or frames to a stage's input, and checking them first.

`Pipeline.sample(start_stage=k, init_video=clip)` feeds a clip to stage k as if the stage below
had made it; `Pipeline.sample(cond_frames=..., cond_mask=...)` gives the base stage some of its
frames. Both go through `fit_clip`, whose rules are:

- space: centre-crop to the target's aspect ratio (the largest centred window of that shape,
  so nothing is stretched), then resize with Pillow's bicubic filter, which is antialiased when
  it shrinks;
- time: without `clip_fps`, the T frames are spread over the target's F frames: frame j takes
  clip frame floor((j + 1/2) T / F), the middle of the j-th of F equal spans (T == F keeps
  every frame; the clip plays at the stage's frame rate, faster than it was shot when T > F).
  With `clip_fps`, frames are taken at the stage's rate from the start (frame j takes clip
  frame round(j clip_fps / stage_fps)), so motion keeps its speed and the rest is left out;
- what cannot map is refused with a ValueError naming the argument: fewer frames than the
  target (frames are never invented; start at a temporal SR stage for that), a clip too short
  for `clip_fps`, non-RGB or non-uint8 frames, an undecodable file.

Everything here runs on the host (numpy, Pillow): nothing compiles before the checks pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from t2v_jax.video_io import read_video


def load_clips(clip: Any, name: str) -> np.ndarray:
    """A path, a uint8 [T, H, W, 3] clip or a batch [N, T, H, W, 3] -> uint8 [N, T, H, W, 3]."""
    if isinstance(clip, str | os.PathLike):
        try:
            clip = read_video(clip)
        except (
            ValueError,
            OSError,
            RuntimeError,
        ) as e:  # imageio-ffmpeg raises RuntimeError/OSError
            raise ValueError(f"{name}: cannot decode {str(clip)!r}: {e}") from e
    clip = np.asarray(clip)
    if clip.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 frames, got dtype {clip.dtype}")
    if clip.ndim == 4:
        clip = clip[None]
    if clip.ndim != 5 or clip.shape[-1] != 3:
        raise ValueError(
            f"{name}: expected [T, H, W, 3] or [N, T, H, W, 3] RGB frames, got shape {clip.shape}"
        )
    if min(clip.shape) == 0:
        raise ValueError(f"{name}: empty clip, shape {clip.shape}")
    return clip


def centre_crop_box(height: int, width: int, aspect: float) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the largest centred window of aspect ratio `aspect` = w / h."""
    if width > aspect * height:  # too wide: keep the full height
        h, w = height, max(1, round(aspect * height))
    else:
        h, w = max(1, round(width / aspect)), width
    return (height - h) // 2, (width - w) // 2, h, w


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [..., h, w, 3] -> uint8 [..., height, width, 3], Pillow bicubic (antialiased)."""
    # Imported here: `cascade` imports this module, and Pillow need not load before a sample.
    from t2v_jax.data import transforms

    return transforms.bicubic_resize(frames, height, width)


def time_indices(
    num_in: int, num_out: int, *, clip_fps: float | None, stage_fps: float, name: str
) -> np.ndarray:
    """Which clip frame each of the target's `num_out` frames takes (see the module docstring)."""
    if clip_fps is None:
        if num_in < num_out:
            raise ValueError(
                f"{name}: {num_in} frames cannot fill the {num_out} frames this stage takes "
                "(frames are never invented: start at a temporal super-resolution stage)"
            )
        return ((np.arange(num_out) + 0.5) * num_in / num_out).astype(int)
    if not (isinstance(clip_fps, int | float) and np.isfinite(clip_fps) and clip_fps > 0):
        raise ValueError(f"clip_fps: expected a positive number, got {clip_fps!r}")
    idx = np.round(np.arange(num_out) * clip_fps / stage_fps).astype(int)
    if idx[-1] >= num_in:
        raise ValueError(
            f"{name}: {num_out} frames at {stage_fps:g} fps need {idx[-1] + 1} frames of a "
            f"{clip_fps:g} fps clip, it has {num_in}"
        )
    return idx


def fit_clip(
    clips: np.ndarray,
    frames: int,
    height: int,
    width: int,
    *,
    stage_fps: float,
    clip_fps: float | None = None,
    name: str = "init_video",
) -> np.ndarray:
    """uint8 [N, T, H, W, 3] -> uint8 [N, frames, height, width, 3] by the module's rules."""
    idx = time_indices(clips.shape[1], frames, clip_fps=clip_fps, stage_fps=stage_fps, name=name)
    clips = clips[:, idx]  # [N, frames, H, W, 3]
    top, left, h, w = centre_crop_box(clips.shape[2], clips.shape[3], width / height)
    clips = clips[:, :, top : top + h, left : left + w]
    return resize_frames(clips, height, width)


def to_model_range(video: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1], the models' data range (inverse of video_io.to_uint8)."""
    return video.astype(np.float32) / 127.5 - 1.0


def check_start_stage(start_stage: Any, stage_names: Sequence[str]) -> int:
    """The index of `start_stage` (an index or a stage name) in the cascade."""
    if isinstance(start_stage, str):
        if start_stage not in stage_names:
            raise ValueError(
                f"start_stage: no stage named {start_stage!r}; stages: {', '.join(stage_names)}"
            )
        return list(stage_names).index(start_stage)
    if isinstance(start_stage, bool) or not isinstance(start_stage, int | np.integer):
        raise ValueError(f"start_stage: expected a stage index or name, got {start_stage!r}")
    if not 0 <= start_stage < len(stage_names):
        raise ValueError(
            f"start_stage: {start_stage} is out of range; the cascade has stages 0.."
            f"{len(stage_names) - 1} ({', '.join(stage_names)})"
        )
    return int(start_stage)


def rows_for(clips: np.ndarray, num_prompts: int, per_prompt: int, name: str) -> np.ndarray:
    """One clip per sampled video: one clip for all, or one per prompt (repeated per video)."""
    if clips.shape[0] == 1:
        return np.repeat(clips, num_prompts * per_prompt, axis=0)
    if clips.shape[0] != num_prompts:
        raise ValueError(
            f"{name}: got {clips.shape[0]} clips for {num_prompts} prompts; give one clip, "
            "or one per prompt"
        )
    return np.repeat(clips, per_prompt, axis=0)


def frame_mask(cond_mask: Any, num_frames: int, num_rows: int) -> np.ndarray:
    """cond_mask ([T] or [N, T] of bools / 0-1) -> float32 [N or 1, T]; refuses an empty mask."""
    mask = np.asarray(cond_mask)
    if mask.dtype != bool and not np.all((mask == 0) | (mask == 1)):
        raise ValueError("cond_mask: expected booleans (or 0 / 1) marking the given frames")
    mask = mask.astype(bool)
    if mask.ndim == 1:
        mask = mask[None]
    if mask.ndim != 2 or mask.shape[1] != num_frames or mask.shape[0] not in (1, num_rows):
        raise ValueError(
            f"cond_mask: expected [{num_frames}] or [{num_rows}, {num_frames}] (one flag per "
            f"base-stage frame), got shape {np.shape(cond_mask)}"
        )
    if not mask.any(axis=1).all():
        raise ValueError("cond_mask: marks no frame (for some video); mark at least one")
    if mask.all():
        raise ValueError("cond_mask: marks every frame; there is nothing left to generate")
    return mask.astype(np.float32)


def prepare_cond_frames(
    cond_frames: Any,
    cond_mask: Any,
    *,
    num_prompts: int,
    per_prompt: int,
    frames: int,
    height: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The base stage's given frames and mask: (float32 [N, T, H, W, 3], float32 [N, T]).

    `cond_frames` holds either all T base-stage frames (those not marked are ignored) or just
    the marked ones, in order (then every video's mask marks the same number of frames). Each
    frame is centre-cropped and resized like `fit_clip`; no time resampling is done here.
    """
    if cond_mask is None:
        raise ValueError("cond_mask: required with cond_frames (which frames are given)")
    clips = rows_for(load_clips(cond_frames, "cond_frames"), num_prompts, per_prompt, "cond_frames")
    n = clips.shape[0]
    mask = np.broadcast_to(frame_mask(cond_mask, frames, n), (n, frames))
    given = clips.shape[1]
    if given != frames:
        counts = set(mask.sum(axis=1).astype(int).tolist())
        if counts != {given}:
            raise ValueError(
                f"cond_frames: {given} frames map neither onto the base stage's {frames} frames "
                f"nor onto the {sorted(counts)} frame(s) cond_mask marks"
            )
        full = np.zeros((n, frames, *clips.shape[2:]), np.uint8)
        for row in range(n):
            full[row, mask[row] > 0] = clips[row]
        clips = full
    top, left, h, w = centre_crop_box(clips.shape[2], clips.shape[3], width / height)
    clips = resize_frames(clips[:, :, top : top + h, left : left + w], height, width)
    return to_model_range(clips), np.ascontiguousarray(mask)


# Reconstruction guidance weight w_r by default (Ho et al. 2022 eq. 7). On the demo (docs/video_in.md)
# w_r = 2 followed the given frames' path best for prediction and image-to-video (w_r = 5 lost a
# direction from a single frame); on exact Gaussian data (tests/test_video_in_reconstruction.py)
# w_r ~ 5 brings the generated frames' mean closest to the true conditional mean.
DEFAULT_COND_WEIGHT = 2.0


class VideoIn:
    """`Pipeline.sample`'s video arguments, checked against the cascade before anything compiles.

    Attributes:
      start: the index of the first stage to run.
      prompts: the prompts given, or one empty prompt per clip when none are (text-free stages).
    """

    def __init__(
        self,
        stages: Sequence[Any],
        prompts: Any,
        *,
        start_stage: Any = 0,
        init_video: Any = None,
        clip_fps: float | None = None,
        cond_frames: Any = None,
        cond_mask: Any = None,
        cond_method: str = "reconstruction",
        cond_weight: float = DEFAULT_COND_WEIGHT,
    ):
        from t2v_jax.diffusion.reconstruction import check_method

        self._stages = stages
        self.start = check_start_stage(start_stage, [s.config.name for s in stages])
        self._clips = self._cond = None
        first = stages[self.start].config
        if first.kind != "base" and init_video is None:
            raise ValueError(
                f"init_video: required with start_stage={start_stage!r}"
                if self.start > 0
                else f"init_video: required, this pipeline starts with the {first.kind} stage "
                f"{first.name!r} (it upsamples given clips)"
            )
        if first.kind == "base" and init_video is not None:
            raise ValueError(
                "init_video: the base stage takes no input video (pass start_stage >= 1, or give "
                "the base stage frames with cond_frames / cond_mask)"
            )
        if init_video is not None:
            self._clips = load_clips(init_video, "init_video")
        if cond_frames is None and cond_mask is not None:
            raise ValueError("cond_frames: required with cond_mask")
        if cond_frames is not None:
            if first.kind != "base":
                raise ValueError("cond_frames: only the base stage takes given frames")
            check_method(cond_method)
            if not (
                isinstance(cond_weight, int | float)
                and not isinstance(cond_weight, bool)
                and np.isfinite(cond_weight)
                and cond_weight >= 0
            ):
                raise ValueError(f"cond_weight: expected a finite number >= 0, got {cond_weight!r}")
            self._cond = (cond_frames, cond_mask)
        self.cond_method = cond_method if cond_frames is not None else None
        self.cond_weight = float(cond_weight)
        self._clip_fps = clip_fps
        if prompts is None:
            reading = [s.config.name for s in stages[self.start :] if s.model.uses_text]
            if reading:
                raise ValueError(f"prompts: required, stages {', '.join(reading)} read text")
            if self._clips is None:
                raise ValueError("prompts: required without init_video")
            prompts = [""] * self._clips.shape[0]
        self.prompts = prompts

    def init_low(self, num_prompts: int, per_prompt: int) -> np.ndarray | None:
        """The start stage's input, float32 [N, t, h, w, 3] in [-1, 1] (None from the base)."""
        if self._clips is None:
            return None
        cfg = self._stages[self.start].config
        # The input's frame rate: the stage below's output, or (first stage) fps scaled by the
        # frames the stage adds.
        input_fps = (
            self._stages[self.start - 1].config.fps
            if self.start > 0
            else cfg.fps * cfg.low_frames / cfg.frames
        )
        clips = rows_for(self._clips, num_prompts, per_prompt, "init_video")
        fitted = fit_clip(
            clips,
            cfg.low_frames,
            cfg.low_height,
            cfg.low_width,
            stage_fps=input_fps,
            clip_fps=self._clip_fps,
        )
        return to_model_range(fitted)

    def known(self, num_prompts: int, per_prompt: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The base stage's given frames and mask (`prepare_cond_frames`), or None."""
        if self._cond is None:
            return None
        cfg = self._stages[0].config
        return prepare_cond_frames(
            *self._cond,
            num_prompts=num_prompts,
            per_prompt=per_prompt,
            frames=cfg.frames,
            height=cfg.height,
            width=cfg.width,
        )


def extend(
    pipeline: Any,
    video: Any,
    prompt: str,
    num_frames: int,
    *,
    context_frames: int | None = None,
    seed: int = 0,
    **sample_kwargs: Any,
) -> np.ndarray:
    """Continues `video` to `num_frames` frames, window by window through the whole cascade.

    Each window is one `pipeline.sample(prompt, cond_frames=..., cond_mask=...)`: its first
    `context_frames` base-stage frames are given (the video's last frames, at the base stage's
    frame rate: every r-th of the last r * context_frames output frames, r = output frames /
    base frames, the frame each base frame becomes under the TSR stages' repetition) and the
    rest are generated; the window's output after those frames is appended. Window w uses seed
    `seed + w`.

    Args:
      pipeline: a `Pipeline`.
      video: uint8 [T, H, W, 3] (or a path), centre-cropped and resized to the output size; it
        needs at least r * context_frames frames.
      prompt: the text of every window.
      num_frames: the length of the result (> T); the input's frames come first, unchanged.
      context_frames: base-stage frames given per window (default: half the base frames).
      seed: the first window's seed.
      **sample_kwargs: passed to `Pipeline.sample` (cond_method, cond_weight, num_steps, ...).

    Returns:
      uint8 [num_frames, H, W, 3] at the pipeline's output size and frame rate.
    """
    base, last = pipeline.stages[0].config, pipeline.stages[-1].config
    if last.frames % base.frames:
        raise ValueError(
            f"pipeline: its output's {last.frames} frames are not a multiple of the base "
            f"stage's {base.frames}; extend cannot line the windows up"
        )
    rate = last.frames // base.frames
    context = base.frames // 2 if context_frames is None else context_frames
    if isinstance(context, bool) or not isinstance(context, int) or not 0 < context < base.frames:
        raise ValueError(
            f"context_frames: expected an int in [1, {base.frames - 1}], got {context!r}"
        )
    clips = load_clips(video, "video")
    if clips.shape[0] != 1:
        raise ValueError(f"video: expected one video, got a batch of {clips.shape[0]}")
    top, left, h, w = centre_crop_box(clips.shape[2], clips.shape[3], last.width / last.height)
    out = resize_frames(clips[0, :, top : top + h, left : left + w], last.height, last.width)
    if out.shape[0] < rate * context:
        raise ValueError(
            f"video: {out.shape[0]} frames; a window's {context} context frames need the last "
            f"{rate * context}"
        )
    if (
        isinstance(num_frames, bool)
        or not isinstance(num_frames, int)
        or num_frames <= out.shape[0]
    ):
        raise ValueError(
            f"num_frames: expected an int larger than the video's {out.shape[0]} frames, "
            f"got {num_frames!r}"
        )
    mask = np.arange(base.frames) < context
    window = 0
    while out.shape[0] < num_frames:
        given = out[out.shape[0] - rate * context :: rate]  # [context, H, W, 3]
        new = pipeline.sample(
            prompt, cond_frames=given, cond_mask=mask, seed=seed + window, **sample_kwargs
        )[0]
        out = np.concatenate([out, new[rate * context :]])
        window += 1
    return out[:num_frames]
