"""Judging a spatial super-resolution stage: PSNR, SSIM and sharpness against bicubic upsampling.

A clip the stage never saw is the truth; its antialiased bicubic downsample is the low-resolution
input; the SR stage's samples and plain bicubic upsampling of the same input are scored against
the truth. A diffusion SR stage draws samples: the mean of several samples scores higher PSNR
than any one of them (it is the posterior mean's estimate) but is blurry, so the sharpness of
single samples is reported beside it: the energy of the frequencies the low-resolution input
cannot hold (above its Nyquist limit), relative to the truth's (1 = as sharp as the truth,
bicubic well below 1).

All metrics work on uint8-range floats ([0, 255]), per clip over every frame and channel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from t2v_jax.video_in import resize_frames

# Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, population
# statistics; scores are averaged over the windows that fit inside the frame.
SSIM_SIGMA, SSIM_RADIUS, SSIM_K1, SSIM_K2 = 1.5, 5, 0.01, 0.03
DATA_RANGE = 255.0

# (low uint8 [T, h, w, 3], num_samples) -> uint8 [num_samples, T, H, W, 3]
Upsampler = Callable[[np.ndarray, int], np.ndarray]


def psnr(x: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over the whole clip (inf for identical clips)."""
    mse = np.mean((np.asarray(x, np.float64) - np.asarray(truth, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(DATA_RANGE**2 / mse))


def _gaussian_window() -> np.ndarray:
    r = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    g = np.exp(-(r**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()  # [11], separable


def _filter_valid(img: np.ndarray) -> np.ndarray:
    """Gaussian-weighted window means of [..., H, W], at every window that fits (valid mode)."""
    g = _gaussian_window()
    n = g.size
    rows = sum(g[i] * img[..., i : img.shape[-2] - n + 1 + i, :] for i in range(n))
    return sum(g[j] * rows[..., :, j : img.shape[-1] - n + 1 + j] for j in range(n))


def ssim(x: np.ndarray, truth: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004) of uint8-range clips [..., H, W, C], per channel and frame."""
    x = np.moveaxis(np.asarray(x, np.float64), -1, -3)  # [..., C, H, W]
    y = np.moveaxis(np.asarray(truth, np.float64), -1, -3)
    if x.shape != y.shape:
        raise ValueError(f"x: shape {x.shape} differs from truth's {y.shape}")
    if min(x.shape[-2:]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"x: frames must be at least {2 * SSIM_RADIUS + 1} pixels a side")
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    mx, my = _filter_valid(x), _filter_valid(y)
    vx = _filter_valid(x * x) - mx**2
    vy = _filter_valid(y * y) - my**2
    cov = _filter_valid(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def high_frequency_energy(video: np.ndarray, factor: int) -> float:
    """Spectral energy of [T, H, W, C] above the Nyquist limit of a `factor`-times smaller frame.

    A frequency (fy, fx) in cycles per pixel counts when max(|fy|, |fx|) > 0.5 / factor.
    """
    v = np.moveaxis(np.asarray(video, np.float64), -1, -3)  # [T, C, H, W]
    power = np.abs(np.fft.fft2(v - v.mean(axis=(-2, -1), keepdims=True))) ** 2
    fy = np.abs(np.fft.fftfreq(v.shape[-2]))[:, None]
    fx = np.abs(np.fft.fftfreq(v.shape[-1]))[None, :]
    return float(power[..., np.maximum(fy, fx) > 0.5 / factor].sum())


def sharpness(x: np.ndarray, truth: np.ndarray, factor: int) -> float:
    """High-frequency energy of x relative to the truth's (1 = as sharp as the truth)."""
    return high_frequency_energy(x, factor) / high_frequency_energy(truth, factor)


def downsample(video: np.ndarray, factor: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> [T, H / factor, W / factor, 3], antialiased bicubic (Pillow)."""
    _, h, w, _ = video.shape
    if h % factor or w % factor:
        raise ValueError(f"video: {h}x{w} frames are not a multiple of factor {factor}")
    return resize_frames(video, h // factor, w // factor)


def bicubic(factor: int) -> Upsampler:
    """The baseline: Pillow bicubic upsampling by `factor` (deterministic; samples repeat)."""

    def upsample(low: np.ndarray, num_samples: int) -> np.ndarray:
        _, h, w, _ = low.shape
        up = resize_frames(low, h * factor, w * factor)
        return np.repeat(up[None], num_samples, axis=0)

    return upsample


def _scores(videos: np.ndarray, truth: np.ndarray, factor: int) -> dict[str, float]:
    return {
        "psnr": psnr(videos, truth),
        "ssim": ssim(videos, truth),
        "sharpness": sharpness(videos, truth, factor),
    }


def evaluate_clip(
    upsampler: Upsampler, truth: np.ndarray, factor: int, num_samples: int = 8
) -> dict[str, dict[str, float]]:
    """Scores `upsampler` and bicubic on one clip (uint8 [T, H, W, 3]).

    Returns:
      {"single": mean over samples of each sample's scores, "mean": the scores of the samples'
      pixel mean, "bicubic": bicubic upsampling's}, each {"psnr", "ssim", "sharpness"}.
    """
    low = downsample(truth, factor)
    samples = np.asarray(upsampler(low, num_samples), np.float64)  # [S, T, H, W, 3]
    if samples.shape != (num_samples, *truth.shape):
        raise ValueError(
            f"upsampler: returned shape {samples.shape}, expected {(num_samples, *truth.shape)}"
        )
    singles = [_scores(s, truth, factor) for s in samples]
    return {
        "single": {k: float(np.mean([s[k] for s in singles])) for k in singles[0]},
        "mean": _scores(samples.mean(axis=0), truth, factor),
        "bicubic": _scores(bicubic(factor)(low, 1)[0], truth, factor),
    }


def evaluate(
    upsampler: Upsampler, clips: Sequence[np.ndarray], factor: int, num_samples: int = 8
) -> dict[str, float]:
    """Means over clips of `evaluate_clip`, flattened, with the PSNR / SSIM gains over bicubic.

    Keys: "{single,mean,bicubic}_{psnr,ssim,sharpness}", "{single,mean}_psnr_gain_db",
    "{single,mean}_ssim_gain", "clips".
    """
    if not clips:
        raise ValueError("clips: need at least one clip")
    per_clip = [evaluate_clip(upsampler, c, factor, num_samples) for c in clips]
    out: dict[str, float] = {"clips": len(clips)}
    for kind in ("single", "mean", "bicubic"):
        for metric in ("psnr", "ssim", "sharpness"):
            out[f"{kind}_{metric}"] = float(np.mean([r[kind][metric] for r in per_clip]))
    for kind in ("single", "mean"):
        out[f"{kind}_psnr_gain_db"] = out[f"{kind}_psnr"] - out["bicubic_psnr"]
        out[f"{kind}_ssim_gain"] = out[f"{kind}_ssim"] - out["bicubic_ssim"]
    return out
