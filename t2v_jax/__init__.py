"""t2v_jax: cascaded text-to-video diffusion in JAX / Flax linen."""

__version__ = "0.1.0"
