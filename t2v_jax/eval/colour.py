"""sRGB -> CIELAB and the CIE76 colour difference (delta E*ab), for judging generated colours.

CIELAB is built so that Euclidean distance tracks perceived difference: a delta E of ~2 is just
noticeable, ~10 a clearly different shade, and the demo palette's closest pair (blue, purple) is
29 apart. An RGB distance does not work that way (the red-orange (237, 57, 33) is nearer orange's
RGB than its look suggests; in CIELAB it is 6 from red and 39 from orange).

Conventions: sRGB with the IEC 61966-2-1 transfer curve, the D65 white point (2 degree observer),
L* in [0, 100]; the same as `skimage.color.rgb2lab` with its defaults.
"""

from __future__ import annotations

import numpy as np

# Linear sRGB -> CIE XYZ (D65), IEC 61966-2-1.
_RGB_TO_XYZ = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB of sRGB colours.

    Args:
      rgb: [..., 3] sRGB values in 0..255 (uint8 or float).

    Returns:
      float64 [..., 3]: L* in [0, 100], a*, b*.
    """
    rgb = np.asarray(rgb, np.float64)
    if rgb.shape[-1:] != (3,):
        raise ValueError(f"rgb: expected a last dimension of 3, got shape {rgb.shape}")
    c = rgb / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE_D65
    # CIE's cube root with its linear toe below (6/29)^3.
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )


def delta_e(rgb_a: np.ndarray, rgb_b: np.ndarray) -> np.ndarray:
    """CIE76 colour difference (Euclidean distance in CIELAB) of sRGB colours [..., 3] (0..255)."""
    return np.linalg.norm(srgb_to_lab(rgb_a) - srgb_to_lab(rgb_b), axis=-1)
