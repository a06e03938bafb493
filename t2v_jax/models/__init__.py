"""The video U-Net (one module for the base, TSR and SSR stages) and its config."""

from t2v_jax.models.config import UNetConfig
from t2v_jax.models.unet3d import VideoUNet

__all__ = ["UNetConfig", "VideoUNet"]
