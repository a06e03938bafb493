"""TFDS features shared by the project's dataset builders."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds


def video_feature(frames: int, height: int, width: int) -> tfds.features.Tensor:
    """uint8 [frames, height, width, 3] stored as a zlib-compressed Tensor.

    A Tensor feature rather than `tfds.features.Video`, so that reading (array_record through
    `tfds.data_source`) needs no TensorFlow.
    """
    return tfds.features.Tensor(
        shape=(frames, height, width, 3), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
    )
