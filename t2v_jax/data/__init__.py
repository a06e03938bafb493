"""Datasets (TFDS builders) and the host-sharded input pipeline.

Import a builder module (`t2v_jax.data.shapes`, `.video_folder`, `.real_footage`) to register it with
TFDS; `t2v_jax.data.pipeline` imports them all.
"""
