"""The network input chosen from the training images: their aspect ratio, a fixed short side.

Squashing an elongated part into a square throws detail away along its long axis (on a set of
500 x 1260 px images, a 640 x 256 input almost doubled PaDiM's AUPRO over 256 x 256). So when
the user names no input size, :func:`choose_input_size` keeps the median aspect ratio of the
training images, puts the short side at the model's base size (256, the size the backbones and
the published PaDiM/STFPM figures use), rounds the long side to a multiple of the backbone's
stride (so every feature map tiles the input exactly) and caps it at ``MAX_ASPECT`` times the
short side (beyond that the cost grows and tiling is the better tool). The shape is static in
the exported IR; the runtime resizes each frame to it.

A set whose images disagree on shape has no aspect to keep: when the middle half of the aspect
ratios spans more than ``MAX_ASPECT_SPREAD`` (their 75th percentile over their 25th), the input
is square. Measured on magnetic_tile (width/height from 0.36 to 2.6, interquartile 0.71-1.32,
spread 1.87), PaDiM with the defaults: square 256 x 256 scored 0.953 / 0.761 / 0.756 (image
AUROC / pixel AUROC / AUPRO) against 0.949 / 0.752 / 0.749 at the median aspect (288 x 256);
anomalib's layout in our code gained alike (0.945 / 0.739 / 0.754 against 0.941 / 0.730 /
0.745). The other shared sets hold one shape each (spread 1.0), so the rule leaves them be.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BASE_SIZE = 256
MAX_ASPECT = 4.0
DEFAULT_STRIDE = 16
MAX_ASPECT_SPREAD = 1.25  # interquartile spread of width/height beyond which the input is square


@dataclass(frozen=True)
class InputGeometry:
    """The chosen network input and why: ``size`` is (height, width)."""

    size: tuple[int, int]
    source: str  # "data" (chosen from the images) or "user" (--image-size)
    median_aspect: float | None = None  # width / height over the training images
    images_measured: int = 0
    aspect_spread: float = 1.0  # 75th over 25th percentile of width / height

    @property
    def shapes_agree(self) -> bool:
        """Whether the training images share one shape (so frames of another stand out)."""
        return self.aspect_spread <= MAX_ASPECT_SPREAD

    @property
    def train_aspect(self) -> float | None:
        """The aspect frames are compared with at run time; None when the training images
        varied too much in shape for any one to be expected."""
        return self.median_aspect if self.shapes_agree else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.size),
            "source": self.source,
            "median_aspect": None if self.median_aspect is None else round(self.median_aspect, 4),
            "aspect_spread": round(self.aspect_spread, 4),
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
    is robust to a few odd images; a set whose middle half disagrees on shape gets a square.
    """
    if not sizes:
        raise ValueError("no training image sizes to choose an input size from")
    log_aspects = np.log(np.array([w / h for h, w in sizes], dtype=np.float64))
    median = float(np.exp(np.median(log_aspects)))
    low, high = np.percentile(log_aspects, [25, 75])
    measured = InputGeometry((base, base), "data", median, len(sizes), float(np.exp(high - low)))
    # the aspect frames are expected to have, or a square where the images disagree on one
    aspect = measured.train_aspect or 1.0
    return dataclasses.replace(measured, size=size_for_aspect(aspect, base, stride, max_aspect))
