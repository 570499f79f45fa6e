"""Frames as arrays: their colour format, the checks they pass and the resize to the network.

The runtime takes uint8 frames as OpenCV produces them: ``H x W x 3`` (BGR by default, or RGB)
or ``H x W`` grey. Everything else is refused with a message that says how to convert it,
because a silently misread frame gives a plausible but wrong anomaly score.

Image files become such arrays in :mod:`anomaly_edge.media`, which builds on this module (never
the other way round): a frame's way in runs media -> images -> the network.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

from anomaly_edge import _post
from anomaly_edge.errors import InvalidInputError

__all__ = [
    "MAX_IMAGE_SIDE",
    "ColorFormat",
    "check_frame",
    "check_size",
    "network_image",
    "resize_for_network",
]

# The longest side the resize kernels take; a larger image is refused rather than half-read.
MAX_IMAGE_SIDE = 32768


class ColorFormat(str, Enum):
    """The channel layout of the frames a model is given."""

    BGR = "BGR"  # OpenCV's order: cv2.imread, cv2.VideoCapture
    RGB = "RGB"  # PIL, imageio, most camera SDKs
    GRAY = "GRAY"  # single-channel cameras

    @classmethod
    def parse(cls, value: str | ColorFormat) -> ColorFormat:
        try:
            return cls(value.upper() if isinstance(value, str) else value)
        except ValueError:
            choices = ", ".join(c.value for c in cls)
            raise InvalidInputError(
                f"unknown color format {value!r}: choose one of {choices}"
            ) from None

    @property
    def channels(self) -> int:
        return 1 if self is ColorFormat.GRAY else 3


def check_size(height: int, width: int, source: object = "the image") -> None:
    """Refuse images with a side the resize kernels cannot take."""
    if max(height, width) > MAX_IMAGE_SIDE:
        raise InvalidInputError(
            f"{source} is {width}x{height} pixels; the longest side anomaly-edge reads is "
            f"{MAX_IMAGE_SIDE} px: downscale or crop it first"
        )


def resize_for_network(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 image (H x W or H x W x C) to ``size`` = (height, width): the one resize
    both training and the runtime use, so a deployed model sees what the trained one saw.

    Shrinking averages blocks of whole pixels (exact, no aliasing of fine textures) and then
    interpolates linearly over the remaining factor below 2; enlarging is linear. For integer
    factors this equals ``cv2.INTER_AREA``, at a fraction of its cost: the block means run in
    our C++ kernel, which rounds as OpenCV does (1080p -> 256: about 1 ms against 2.5 ms),
    except 2x2 blocks, for which OpenCV has a faster vectorised path of its own.
    """
    import cv2

    height, width = image.shape[:2]
    out_h, out_w = size
    if (height, width) == (out_h, out_w):
        return image
    block_h, block_w = max(1, height // out_h), max(1, width // out_w)
    if block_h > 1 or block_w > 1:
        # Whole blocks only (drop the few edge rows/columns that do not fill one), so the
        # average is over exactly block_h x block_w pixels.
        cropped = image[: height // block_h * block_h, : width // block_w * block_w]
        if (block_h, block_w) == (2, 2):
            image = cv2.resize(cropped, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
        else:
            image = _post.box_downsample(cropped, block_h, block_w)
    if image.shape[:2] != (out_h, out_w):
        image = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return image


def check_frame(frame: object, color: ColorFormat = ColorFormat.BGR) -> np.ndarray:
    """Validate a frame for a model that takes ``color`` frames.

    Returns the frame as a uint8 array of shape ``H x W x C`` (a view when possible; C = 3,
    or 1 for grey). Grey frames are accepted by colour models too (see
    :func:`network_image`). Anything that cannot be interpreted unambiguously raises
    :class:`InvalidInputError` with the conversion to apply.
    """
    if frame is None:
        raise InvalidInputError(
            "the frame is None: the image could not be read (check the path, or whether "
            "the camera/video returned a frame)"
        )
    if not isinstance(frame, np.ndarray):
        raise InvalidInputError(
            f"expected a numpy array (or an image path), got {type(frame).__name__}"
        )
    if frame.size == 0:
        raise InvalidInputError(f"the frame is empty (shape {frame.shape})")
    if frame.dtype != np.uint8:
        raise InvalidInputError(_dtype_advice(frame.dtype))
    frame = _as_hwc(frame)
    check_size(frame.shape[0], frame.shape[1], f"the frame (shape {frame.shape})")
    channels = frame.shape[2]
    if channels == 4:
        code = "cv2.COLOR_BGRA2BGR" if color is not ColorFormat.RGB else "cv2.COLOR_RGBA2RGB"
        raise InvalidInputError(
            f"the frame has 4 channels (shape {frame.shape}); drop the alpha channel first, "
            f"e.g. frame = cv2.cvtColor(frame, {code})"
        )
    if channels not in (1, 3):
        raise InvalidInputError(
            f"the frame has {channels} channels (shape {frame.shape}); expected H x W x 3 "
            "colour or H x W grey"
        )
    if color is ColorFormat.GRAY and channels == 3:
        raise InvalidInputError(
            f"the model was opened with color='GRAY' but the frame has 3 channels (shape "
            f"{frame.shape}); convert it (cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)) or open the "
            "model with color='BGR'"
        )
    return frame


def network_image(
    frame: np.ndarray, size: tuple[int, int], color: ColorFormat, *, copy: bool = True
) -> np.ndarray:
    """A checked ``H x W x C`` frame -> the contiguous ``h x w x C`` uint8 image the compiled
    graph takes (a new array, so the caller may reuse its buffer at once). With
    ``copy=False`` it may be ``frame`` itself, or a view of it, not necessarily contiguous
    (for a caller that copies it anyway)."""
    if frame.shape[2] == 3 and frame.shape[:2] == size:  # the network's size: only the copy
        return np.array(frame, order="C") if copy else frame
    import cv2

    resized = resize_for_network(frame if frame.shape[2] == 3 else frame[:, :, 0], size)
    if resized.ndim == 2:
        if color is ColorFormat.GRAY:
            resized = resized[:, :, None]
        else:  # a grey frame for a colour model: expand it, after resizing (3x less work)
            resized = cv2.cvtColor(resized, cv2.COLOR_GRAY2BGR)  # same for RGB: equal channels
    if copy and (np.may_share_memory(resized, frame) or not resized.flags.c_contiguous):
        resized = np.array(resized, order="C")  # a copy
    return resized


def _as_hwc(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return frame[:, :, None]
    if frame.ndim == 3:
        if frame.shape[2] > 4 and frame.shape[0] in (1, 3):
            raise InvalidInputError(
                f"the frame looks channel-first (shape {frame.shape}); pass H x W x C, "
                "e.g. frame.transpose(1, 2, 0)"
            )
        return frame
    if frame.ndim == 4 and frame.shape[0] == 1:
        raise InvalidInputError(
            f"the frame has a batch axis (shape {frame.shape}); pass one H x W x C frame "
            "(frame[0]), or a list of frames to predict_batch"
        )
    raise InvalidInputError(
        f"expected an H x W x 3 or H x W frame, got an array of shape {frame.shape}"
    )


def _dtype_advice(dtype: np.dtype) -> str:
    if dtype == np.uint16:
        return (
            "the frame is 16-bit (uint16); the model takes 8-bit frames: scale it, e.g. "
            "(frame >> 8).astype(np.uint8), or cv2.normalize(frame, None, 0, 255, "
            "cv2.NORM_MINMAX, dtype=cv2.CV_8U) for images that do not use the full range"
        )
    if np.issubdtype(dtype, np.floating):
        return (
            f"the frame is {dtype}; the model takes uint8 frames (0-255): for floats in "
            "[0, 1] use (frame * 255).clip(0, 255).astype(np.uint8)"
        )
    if dtype == np.bool_:
        return "the frame is boolean (a mask?); the model takes uint8 images (0-255)"
    return f"the frame is {dtype}; the model takes uint8 frames (0-255)"
