"""The SR evaluation tool is itself checked: closed forms, a loop-by-loop SSIM, known upsamplers."""

import numpy as np
import pytest

from t2v_jax.eval import sr_eval


def _clip(seed=0, frames=2, size=32):
    """A smooth random clip with detail at every scale (a 1/f spectrum), uint8 [T, H, W, 3]."""
    rng = np.random.default_rng(seed)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij"))
    spectrum = rng.standard_normal((frames, 3, size, size)) / np.maximum(f, 1.0 / size)
    img = np.real(np.fft.ifft2(spectrum))
    img = (img - img.mean()) / img.std() * 40 + 128
    return np.clip(np.moveaxis(img, 1, -1), 0, 255).astype(np.uint8)


def _ssim_by_loops(x, y):
    """Wang et al. 2004 written out: every 11x11 window, Gaussian weights, population stats."""
    r = np.arange(-5, 6)
    w = np.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scores = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cov = (w * (a - ma) * (b - mb)).sum()
            scores.append(
                ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
            )
    return np.mean(scores)


def test_psnr_and_ssim_closed_forms_and_loops():
    a = np.full((1, 16, 16, 3), 100.0)
    assert sr_eval.psnr(a, a + 5.0) == pytest.approx(10 * np.log10(255**2 / 25))
    assert sr_eval.psnr(a, a) == float("inf")
    # Constant frames: only the luminance term is left, (2 m n + C1) / (m^2 + n^2 + C1).
    c1 = (0.01 * 255) ** 2
    assert sr_eval.ssim(a, a + 20.0) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))
    x = _clip(1, frames=1, size=20).astype(float)
    y = np.clip(x + np.random.default_rng(2).normal(0, 25, x.shape), 0, 255)
    want = np.mean([_ssim_by_loops(x[0, ..., c], y[0, ..., c]) for c in range(3)])
    assert sr_eval.ssim(x, y) == pytest.approx(want, rel=1e-9)
    assert 0.2 < want < 0.95  # a real, partial match
    with pytest.raises(ValueError, match="at least 11 pixels"):
        sr_eval.ssim(a[:, :8, :8], a[:, :8, :8])


def test_bicubic_against_itself_gains_nothing_and_better_upsamplers_score_higher():
    clips = [_clip(3), _clip(4)]
    result = sr_eval.evaluate(sr_eval.bicubic(2), clips, factor=2)
    assert result["single_psnr_gain_db"] == 0.0 and result["mean_psnr_gain_db"] == 0.0
    assert result["single_ssim_gain"] == 0.0
    assert result["bicubic_sharpness"] < 0.7  # bicubic loses the band above the input's Nyquist

    # A known-better upsampler: the truth plus independent noise per sample (std 3 levels).
    truth_of = {sr_eval.downsample(c, 2).tobytes(): c for c in clips}

    def noisy_truth(low, num_samples):
        rng = np.random.default_rng(0)
        truth = truth_of[low.tobytes()].astype(float)
        return np.clip(truth + rng.normal(0, 3, (num_samples, *truth.shape)), 0, 255).round()

    better = sr_eval.evaluate(noisy_truth, clips, factor=2)
    assert better["single_psnr_gain_db"] > 5.0 and better["single_ssim_gain"] > 0.05
    # Averaging 8 samples removes noise: higher PSNR, but less high-frequency energy than one
    # sample, which is why sharpness is reported for single samples.
    assert better["mean_psnr_gain_db"] > better["single_psnr_gain_db"] + 3.0
    assert better["single_sharpness"] > better["mean_sharpness"] > result["bicubic_sharpness"]
    assert sr_eval.sharpness(clips[0], clips[0], 2) == 1.0


def test_eval_sr_stage_set_overrides_sampling_fields_and_names_bad_ones(load_tool):
    from t2v_jax.stage import Stage, StageConfig

    tool = load_tool("eval_sr")
    config = StageConfig(name="s", kind="ssr", frames=4, height=16, width=16, fps=8,
                         low_frames=4, low_height=8, low_width=8)  # fmt: skip
    stage = Stage(config, model=None, params=None)
    got = tool.override_stage(stage, ["data_consistency=bicubic", "num_steps=8"]).config
    assert (got.data_consistency, got.num_steps, got.sampler) == ("bicubic", 8, config.sampler)
    for bad in (["num_steps=eight"], ["colour=red"], ["schedule=cosine"], ["num_steps"],
                ["data_consistency=lanczos"], ["frames=8"]):  # fmt: skip
        with pytest.raises(SystemExit, match="--stage-set"):
            tool.override_stage(stage, bad)
