"""Pure-numpy renderer of the synthetic moving-shapes videos (used by the `shapes` builder and eval).

Coordinates are resolution independent: an object's centre at frame 0 is given as a fraction of
the frame height/width, its size as a radius in units of min(height, width), and its speed as the
displacement per frame in units of the frame extent along its motion axis. The same `ShapeSpec`
therefore renders the same scene at 16x16 or 128x128, which is what lets the eval tool reuse it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

# Saturated, well separated RGB values: a nearest-colour classifier on rendered (or generated)
# pixels can tell them apart even after blurring by a low-res model.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 80, 240),
    "yellow": (240, 225, 30),
    "white": (245, 245, 245),
    "purple": (150, 50, 210),
    "orange": (250, 140, 20),
    "cyan": (30, 220, 230),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Unit direction (dy, dx) in image coordinates (y grows downwards).
MOTIONS: dict[str, tuple[int, int]] = {
    "left": (0, -1),
    "right": (0, 1),
    "up": (-1, 0),
    "down": (1, 0),
}
# Dark backgrounds only, so every object colour keeps a large contrast with the background.
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (24, 24, 24),
    (16, 16, 40),
    (36, 20, 20),
)
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
MOTION_NAMES: tuple[str, ...] = tuple(MOTIONS)


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
    """One object of a scene, in resolution-independent units (see the module docstring).

    Attributes:
      colour: a key of `COLOURS`.
      shape: one of `SHAPES`.
      motion: a key of `MOTIONS`, or "none" for a still object.
      y: centre at frame 0, fraction of the frame height (0 = top).
      x: centre at frame 0, fraction of the frame width (0 = left).
      size: radius in units of min(height, width).
      speed: displacement per frame in units of the frame extent along the motion axis.
    """

    colour: str
    shape: str
    motion: str
    y: float
    x: float
    size: float
    speed: float = 0.0

    def __post_init__(self):
        if self.colour not in COLOURS:
            raise ValueError(f"colour={self.colour!r}; allowed: {', '.join(COLOURS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape={self.shape!r}; allowed: {', '.join(SHAPES)}")
        if self.motion not in MOTIONS and self.motion != "none":
            raise ValueError(f"motion={self.motion!r}; allowed: {', '.join(MOTIONS)}, none")
        if not self.size > 0:
            raise ValueError(f"size={self.size!r}; must be > 0")


def object_centres(obj: ShapeSpec, frames: int, height: int, width: int) -> np.ndarray:
    """Pixel-unit centre (y, x) of `obj` at every frame.

    Returns:
      float64 [T, 2]; pixel (i, j) covers [i, i+1) x [j, j+1), so its centre is (i+0.5, j+0.5).
    """
    dy, dx = MOTIONS.get(obj.motion, (0, 0))
    t = np.arange(frames, dtype=np.float64)
    y = obj.y * height + dy * obj.speed * height * t
    x = obj.x * width + dx * obj.speed * width * t
    return np.stack([y, x], axis=-1)


def _coverage(shape: str, py: np.ndarray, px: np.ndarray, r: float) -> np.ndarray:
    """Boolean inside-test of sample points (py, px) relative to the object centre."""
    if shape == "circle":
        return py * py + px * px <= r * r
    if shape == "square":
        # Half side r*sqrt(pi)/2 gives the square the circle's area, so size means "same area".
        s = r * 0.886
        return (np.abs(py) <= s) & (np.abs(px) <= s)
    # Upward triangle with apex (-r, 0) and base corners (r, -r), (r, r): inside when below the
    # apex's two edges and above the base.
    return (py <= r) & (np.abs(px) <= (py + r) / 2)


def render_video(
    objects: Sequence[ShapeSpec],
    frames: int,
    height: int,
    width: int,
    background: Sequence[int] = (0, 0, 0),
    *,
    antialias: bool = True,
) -> np.ndarray:
    """Renders moving shapes over a plain background.

    Args:
      objects: the scene; later objects are drawn over earlier ones.
      frames, height, width: output size.
      background: RGB of the background, ints in [0, 255].
      antialias: average a 4x4 grid of samples per pixel (else one sample at the pixel centre).

    Returns:
      uint8 [T, H, W, 3].
    """
    if frames < 1 or height < 1 or width < 1:
        raise ValueError(f"frames, height, width must be >= 1, got {frames}, {height}, {width}")
    if len(background) != 3:
        raise ValueError(f"background must be an RGB triple, got {background!r}")
    ss = 4 if antialias else 1
    video = np.empty((frames, height, width, 3), np.float64)
    video[:] = np.asarray(background, np.float64)
    scale = min(height, width)
    for obj in objects:
        centres = object_centres(obj, frames, height, width)  # [T, 2]
        r = obj.size * scale
        colour = np.asarray(COLOURS[obj.colour], np.float64)
        for t, (cy, cx) in enumerate(centres):
            # Only the pixels of the object's bounding box can be covered: sample just those.
            y0, y1 = max(0, int(np.floor(cy - r))), min(height, int(np.ceil(cy + r)) + 1)
            x0, x1 = max(0, int(np.floor(cx - r))), min(width, int(np.ceil(cx + r)) + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            # Sample positions inside each pixel of the box, relative to the centre (pixel units).
            py = y0 + (np.arange((y1 - y0) * ss) + 0.5) / ss - cy  # [h*ss]
            px = x0 + (np.arange((x1 - x0) * ss) + 0.5) / ss - cx  # [w*ss]
            inside = _coverage(obj.shape, py[:, None], px[None, :], r).astype(np.float64)
            alpha = inside.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3))[..., None]
            box = video[t, y0:y1, x0:x1]
            video[t, y0:y1, x0:x1] = box * (1 - alpha) + alpha * colour
    return np.clip(np.round(video), 0, 255).astype(np.uint8)
