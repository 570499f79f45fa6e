"""The network input chosen from the training images: their aspect ratio, a fixed short side.

Squashing an elongated part into a square throws detail away along its long axis (on a set of
500 x 1260 px images, a 640 x 256 input almost doubled PaDiM's AUPRO over 256 x 256). So when
the user names no input size, :func:`choose_input_size` keeps the median aspect ratio of the
training images, puts the short side at the model's base size (256, the size the backbones and
the published PaDiM/STFPM figures use), rounds the long side to a multiple of the backbone's
stride (so every feature map tiles the input exactly) and caps it at ``MAX_ASPECT`` times the
short side (beyond that the cost grows and tiling is the better tool). The shape is static in
the exported IR; the runtime resizes each frame to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BASE_SIZE = 256
MAX_ASPECT = 4.0
DEFAULT_STRIDE = 16


@dataclass(frozen=True)
class InputGeometry:
    """The chosen network input and why: ``size`` is (height, width)."""

    size: tuple[int, int]
    source: str  # "data" (chosen from the images) or "user" (--image-size)
    median_aspect: float | None = None  # width / height over the training images
    images_measured: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.size),
            "source": self.source,
            "median_aspect": None if self.median_aspect is None else round(self.median_aspect, 4),
            "images_measured": self.images_measured,
        }


def image_sizes(paths: Iterable[str | Path]) -> list[tuple[int, int]]:
    """(height, width) of each image, read from the file header where Pillow can; files it
    cannot open are decoded as training decodes them, which names any broken file."""
    from PIL import Image

    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Exception:  # any Pillow failure: the training reader decides
            from anomaly_edge.train.data import read_rgb

            height, width = read_rgb(path).shape[:2]
        sizes.append((int(height), int(width)))
    return sizes


def round_to_stride(length: float, stride: int) -> int:
    """``length`` rounded to the nearest positive multiple of ``stride``."""
    return max(stride, round(length / stride) * stride)


def size_for_aspect(
    aspect: float,
    base: int = BASE_SIZE,
    stride: int = DEFAULT_STRIDE,
    max_aspect: float = MAX_ASPECT,
) -> tuple[int, int]:
    """(height, width) with the short side ``base`` and width / height close to ``aspect``.

    The long side is rounded to ``stride`` and capped at ``max_aspect * base`` (itself
    rounded down to ``stride``).
    """
    if not aspect > 0 or not np.isfinite(aspect):
        raise ValueError(f"aspect ratio must be a positive number, got {aspect!r}")
    if base % stride:
        raise ValueError(f"base size {base} is not a multiple of the stride {stride}")
    cap = max(base, int(max_aspect * base) // stride * stride)
    ratio = max(aspect, 1.0 / aspect)
    long_side = min(cap, max(base, round_to_stride(base * ratio, stride)))
    return (base, long_side) if aspect >= 1.0 else (long_side, base)


def choose_input_size(
    sizes: Sequence[tuple[int, int]],
    base: int = BASE_SIZE,
    stride: int = DEFAULT_STRIDE,
    max_aspect: float = MAX_ASPECT,
) -> InputGeometry:
    """The input for training images of these (height, width) sizes (see module docstring).

    The median of the aspect ratios (taken on their logarithm, so 2:1 and 1:2 weigh the same)
    is robust to a few odd images in a set of varied sizes.
    """
    if not sizes:
        raise ValueError("no training image sizes to choose an input size from")
    aspects = np.array([w / h for h, w in sizes], dtype=np.float64)
    median = float(np.exp(np.median(np.log(aspects))))
    return InputGeometry(
        size_for_aspect(median, base, stride, max_aspect), "data", median, len(sizes)
    )
