"""Diffusion core: log-SNR schedules, the v-objective, guidance/thresholding and samplers."""

from t2v_jax.diffusion.guidance import (
    GuidanceConfig,
    dynamic_threshold,
    guidance_weight,
    guided_model_fn,
    static_threshold,
    threshold,
)
from t2v_jax.diffusion.objectives import (
    LossConfig,
    augment_conditioning,
    diffusion_loss,
    drop_cond,
    drop_text,
    loss_weight,
)
from t2v_jax.diffusion.samplers import (
    SAMPLERS,
    ddim_step,
    ddpm_step,
    dpmpp_2m_step,
    predict,
    sample,
    sampling_log_snrs,
)
from t2v_jax.diffusion.schedules import (
    ScheduleConfig,
    add_noise,
    alpha_sigma,
    eps_from_v,
    log_snr,
    t_from_log_snr,
    v_from_x_eps,
    x_from_v,
)

__all__ = [
    "SAMPLERS",
    "GuidanceConfig",
    "LossConfig",
    "ScheduleConfig",
    "add_noise",
    "alpha_sigma",
    "augment_conditioning",
    "ddim_step",
    "ddpm_step",
    "diffusion_loss",
    "dpmpp_2m_step",
    "drop_cond",
    "drop_text",
    "dynamic_threshold",
    "eps_from_v",
    "guidance_weight",
    "guided_model_fn",
    "log_snr",
    "loss_weight",
    "predict",
    "sample",
    "sampling_log_snrs",
    "static_threshold",
    "t_from_log_snr",
    "threshold",
    "v_from_x_eps",
    "x_from_v",
]
