"""Image files, one way everywhere: which files are images, how they decode, how folders list.

A file becomes a frame here; what a frame must be (colour format, size) is
:mod:`anomaly_edge.images`, which this module builds on.

Training, the runtime, image-folder streams and the command line all read images through this
module, so a file gives the network the same pixels whichever path it takes:

* 8-bit files as they are; 16-bit files scaled to 8 bits with rounding (``v * 255 / 65535``,
  so 65535 -> 255 and 32768 -> 128); float files from [0, 1] or [0, 255];
* grey stays grey until a colour frame is asked for (then the channel is replicated), alpha is
  dropped, EXIF orientation is applied (as ``cv2.imread`` does);
* a side longer than :data:`MAX_IMAGE_SIDE` is refused with a clear error, never a traceback.

Only NumPy and OpenCV: the runtime must not import torch.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from anomaly_edge.errors import InvalidInputError
from anomaly_edge.images import MAX_IMAGE_SIDE, ColorFormat, check_size

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_SIDE",
    "is_image_file",
    "list_images",
    "natural_key",
    "read_image",
    "read_mask",
    "to_uint8",
]

# The files every command treats as images (what OpenCV decodes).
IMAGE_SUFFIXES = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".bmp",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".jp2",
    }
)

# Any depth and 1 or 3 channels (alpha dropped), EXIF orientation applied.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


def is_image_file(path: Path) -> bool:
    """A visible regular file with an image suffix."""
    return (
        path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()
    )


def natural_key(path: Path) -> list[int | str]:
    """Sort key that puts ``frame_2.png`` before ``frame_10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def list_images(
    folder: str | Path, *, recursive: bool = False, natural_order: bool = False
) -> list[Path]:
    """Image files in ``folder`` (sub-folders too with ``recursive``), hidden files skipped.

    Sorted by name, or in natural order (numbers by value) for frame sequences.
    Raises :class:`InvalidInputError` when ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"{folder} is not a folder")
    found = folder.rglob("*") if recursive else folder.iterdir()
    images = [
        p
        for p in found
        if is_image_file(p)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(images, key=natural_key) if natural_order else sorted(images)


def read_image(path: str | Path, color: ColorFormat | str = ColorFormat.BGR) -> np.ndarray:
    """Read an image file as a uint8 frame: ``H x W x 3`` in ``color`` (BGR or RGB), or
    ``H x W`` for ``"GRAY"``. Raises :class:`InvalidInputError` saying what is wrong."""
    color = ColorFormat.parse(color)
    image = to_uint8(_decode(Path(path), _DECODE_FLAGS), path)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if color is ColorFormat.GRAY:
        return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)  # same for RGB: equal channels
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if color is ColorFormat.RGB else image


def read_mask(path: str | Path) -> np.ndarray:
    """A ground-truth mask as bool ``H x W``: any non-zero pixel (in any channel) is marked."""
    mask = _decode(Path(path), cv2.IMREAD_UNCHANGED, what="mask")
    return (mask.max(axis=2) if mask.ndim == 3 else mask) > 0


def to_uint8(image: np.ndarray, source: object = "the image") -> np.ndarray:
    """The one bit-depth rule: uint8 as is, uint16 scaled with rounding, floats from [0, 1]
    (or [0, 255] when larger values occur) clipped."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        finite = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        peak = 1.0 if finite.size == 0 or float(finite.max()) <= 1.0 else 255.0
        scaled: np.ndarray = np.clip(np.rint(finite * (255.0 / peak)), 0, 255)
        return scaled.astype(np.uint8)
    raise InvalidInputError(
        f"{source} has pixel type {image.dtype}, which anomaly-edge cannot "
        "read; save it as 8- or 16-bit PNG"
    )


def _decode(path: Path, flags: int, what: str = "image") -> np.ndarray:
    if not path.exists():
        raise InvalidInputError(f"{what} file {path} does not exist")
    if path.is_dir():
        raise InvalidInputError(f"{path} is a folder, not an {what} file")
    # imdecode instead of imread: imread cannot open non-ASCII paths on every platform and
    # prints warnings instead of failing.
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        image = cv2.imdecode(data, flags) if data.size else None
    except cv2.error as exc:  # e.g. more pixels than OpenCV's decoder limit
        raise InvalidInputError(
            f"{path} cannot be decoded: {str(exc).strip().splitlines()[-1]}"
        ) from None
    if image is None or image.size == 0:
        raise InvalidInputError(
            f"{path} is not an {what} OpenCV can decode (empty, truncated, too large or another "
            f"file type); supported types: {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    check_size(image.shape[0], image.shape[1], path)
    return image
