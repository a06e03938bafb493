"""Upsampling methods of the lower stage's video, against closed forms."""

import numpy as np
import pytest

from t2v_jax.upsample import upsample_video


def test_nearest_and_interpolate_methods():
    low = np.arange(2 * 2 * 2 * 1, dtype=np.float32).reshape(1, 2, 2, 2, 1)
    near = np.asarray(upsample_video(low, (2, 4, 4), "spatial", spatial_method="nearest"))
    np.testing.assert_array_equal(near[0, :, :, :, 0], low[0, :, :, :, 0].repeat(2, 1).repeat(2, 2))
    ramp = np.array([0.0, 4.0], np.float32).reshape(1, 2, 1, 1, 1)
    lin = np.asarray(upsample_video(ramp, (4, 1, 1), "temporal", temporal_method="interpolate"))
    # Half-frame centres: outputs sit at low-res positions -0.25, 0.25, 0.75, 1.25 (edges clamp).
    np.testing.assert_allclose(lin.ravel(), [0.0, 1.0, 3.0, 4.0], atol=1e-6)
    with pytest.raises(ValueError, match="spatial_method must be one of bilinear, nearest"):
        upsample_video(low, (2, 4, 4), "spatial", spatial_method="cubic")
    with pytest.raises(ValueError, match="temporal_method must be one of repeat, interpolate"):
        upsample_video(low, (4, 2, 2), "temporal", temporal_method="blend")
