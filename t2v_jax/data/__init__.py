"""Datasets (TFDS builders) and the host-sharded input pipeline.

Import a builder module (`t2v_jax.data.shapes`, `t2v_jax.data.video_folder`) to register it with
TFDS; `t2v_jax.data.pipeline` imports both.
"""
