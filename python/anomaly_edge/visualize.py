"""Draw a :class:`~anomaly_edge.Prediction` onto its frame: the picture an operator looks at.

It runs once per video frame, so it sticks to uint8 OpenCV operations (no full-frame float
arithmetic in NumPy) and touches the whole frame at most a few times.

* segmentation: on a flagged frame, a colour heatmap blended over the frame where the map says
  something (``prediction.heatmap`` when the model computed one, otherwise the mask):
  transparent well below the image threshold, growing to ``alpha`` at it; and the outline of
  the anomalous regions. A frame labelled Normal is left as it is: the decision
  (:func:`anomaly_edge.postprocess.postprocess`) gives it no region;
* detection: the boxes, each with its score;
* classification: a coloured border around the whole frame;
* always: a banner in the top-left corner that says why: the label and the score against the
  threshold (``Anomaly 0.73 >= 0.50``; scores are normalised, 0.5 is the threshold in use).
"""

from __future__ import annotations

import cv2
import numpy as np

from anomaly_edge.errors import InvalidInputError
from anomaly_edge.prediction import Prediction, Task

# BGR colours: red says "look here", green says "all good".
ANOMALY_COLOUR = (0, 0, 255)
NORMAL_COLOUR = (0, 170, 0)
TEXT_COLOUR = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX
# Heatmap values (normalised map x 255; 128 = the image threshold) below which the overlay is
# transparent, and from which it is fully ``alpha``: a blue wash over normal parts hides them.
HEAT_TRANSPARENT_BELOW = 64
HEAT_OPAQUE_FROM = 128
# The banner's text is this share of the frame's short side, however large the frame.
TEXT_HEIGHT_SHARE = 0.035


def draw_prediction(frame: np.ndarray, prediction: Prediction, *, alpha: float = 0.4) -> np.ndarray:
    """Return a new BGR image, the size of ``frame``, with ``prediction`` drawn on it.

    Args:
        frame: the image the prediction was made on: uint8 HxW (grey), HxWx1, HxWx3 (BGR)
            or HxWx4 (BGRA). It is not modified.
        prediction: what the model said about ``frame``.
        alpha: opacity of the segmentation overlay, 0 (invisible) to 1 (opaque).
    """
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"alpha must be between 0 and 1, got {alpha}")
    canvas = _to_bgr(frame)
    height, width = canvas.shape[:2]
    style = _Style.for_size(height, width)
    task = Task.parse(prediction.task)
    if task is Task.SEGMENTATION:
        _draw_segmentation(canvas, prediction, alpha, style)
    elif task is Task.DETECTION:
        _draw_boxes(canvas, prediction, style)
    else:
        colour = ANOMALY_COLOUR if prediction.label else NORMAL_COLOUR
        cv2.rectangle(canvas, (0, 0), (width - 1, height - 1), colour, style.border)
    _draw_banner(canvas, prediction, style)
    return canvas


class _Style:
    """Line widths and font sizes in proportion to the frame, from thumbnails to 20 MP."""

    def __init__(self, font_scale: float) -> None:
        self.font_scale = font_scale
        self.thickness = max(1, round(2 * font_scale))
        self.border = max(3, round(6 * font_scale))
        self.pad = max(2, round(8 * font_scale))

    @classmethod
    def for_size(cls, height: int, width: int) -> _Style:
        # Hershey simplex capitals are about 22 px tall at scale 1: the text keeps the same
        # share of the short side at any size, and never shrinks below legible (~10 px).
        text_px = TEXT_HEIGHT_SHARE * min(height, width)
        return cls(max(0.45, text_px / 22.0))


def _to_bgr(frame: np.ndarray) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        raise InvalidInputError(
            "draw_prediction needs a uint8 image (HxW grey or HxWx3 BGR), got "
            f"{type(frame).__name__} {getattr(frame, 'dtype', '')}"
        )
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 3:
        bgr: np.ndarray = frame.copy()  # numpy's stubs type this copy as Any
        return bgr
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    raise InvalidInputError(f"draw_prediction needs an HxW or HxWx3 image, got shape {frame.shape}")


def _fit(plane: np.ndarray | None, height: int, width: int) -> np.ndarray | None:
    """The mask/heatmap at the canvas size (they normally already are)."""
    if plane is None:
        return None
    if plane.ndim == 3:
        plane = plane[:, :, 0]
    if plane.dtype != np.uint8:
        plane = np.clip(plane, 0, 255).astype(np.uint8)
    if plane.shape != (height, width):
        plane = cv2.resize(plane, (width, height), interpolation=cv2.INTER_NEAREST)
    return plane


def _draw_segmentation(
    canvas: np.ndarray, prediction: Prediction, alpha: float, style: _Style
) -> None:
    height, width = canvas.shape[:2]
    mask = _fit(prediction.mask, height, width)
    heatmap = _fit(prediction.heatmap, height, width)
    if not prediction.label:
        return  # nothing flagged: nothing drawn over the part
    if heatmap is not None:
        _blend_heatmap(canvas, heatmap, alpha)
    elif mask is not None and cv2.countNonZero(mask):
        # Only the anomalous pixels are tinted; the rest of the frame stays untouched.
        tinted = np.empty_like(canvas)
        tinted[:] = ANOMALY_COLOUR
        cv2.addWeighted(canvas, 1.0 - alpha, tinted, alpha, 0.0, dst=tinted)
        cv2.copyTo(tinted, mask, canvas)
    if mask is not None:
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, ANOMALY_COLOUR, style.thickness + 1)


def _blend_heatmap(canvas: np.ndarray, heatmap: np.ndarray, alpha: float) -> None:
    """JET colours (blue ... red) where the map rises towards the threshold, with an opacity
    that grows from 0 (well below it) to ``alpha`` (at and above it)."""
    ramp = HEAT_OPAQUE_FROM - HEAT_TRANSPARENT_BELOW
    if alpha == 0.0 or int(heatmap.max()) <= HEAT_TRANSPARENT_BELOW:
        return  # nothing meaningful to show: the frame stays untouched
    # Only the rows and columns where the overlay shows cost work.
    y, x, h, w = _bounding_rect(heatmap > HEAT_TRANSPARENT_BELOW)
    heat = heatmap[y : y + h, x : x + w]
    region = canvas[y : y + h, x : x + w]
    # uint8 arithmetic throughout (saturating OpenCV calls): weight 0..255 stands for 0..1.
    levels = np.arange(256, dtype=np.float32)
    opacity = np.clip((levels - HEAT_TRANSPARENT_BELOW) / ramp, 0.0, 1.0) * alpha
    weight = cv2.LUT(heat, np.round(255 * opacity).astype(np.uint8))
    weight = cv2.cvtColor(weight, cv2.COLOR_GRAY2BGR)
    coloured = cv2.applyColorMap(heat, cv2.COLORMAP_JET)
    kept = cv2.subtract(region, cv2.multiply(region, weight, scale=1 / 255))
    cv2.add(kept, cv2.multiply(coloured, weight, scale=1 / 255), dst=region)


def _bounding_rect(selected: np.ndarray) -> tuple[int, int, int, int]:
    """(y, x, height, width) of the smallest rectangle holding every True pixel."""
    x, y, w, h = cv2.boundingRect(selected.view(np.uint8))
    return y, x, h, w


def _draw_boxes(canvas: np.ndarray, prediction: Prediction, style: _Style) -> None:
    for box in prediction.boxes:
        # Box x2/y2 are exclusive; cv2.rectangle's corners are inclusive.
        top_left = (int(box.x1), int(box.y1))
        bottom_right = (int(box.x2) - 1, int(box.y2) - 1)
        cv2.rectangle(canvas, top_left, bottom_right, ANOMALY_COLOUR, style.thickness + 1)
        _label(canvas, f"{box.score:.2f}", top_left, ANOMALY_COLOUR, style, above=True)


def _draw_banner(canvas: np.ndarray, prediction: Prediction, style: _Style) -> None:
    colour = ANOMALY_COLOUR if prediction.label else NORMAL_COLOUR
    # Normalised scores put the threshold in use at 0.5: the banner says which side it is on.
    text = (
        f"{prediction.label_name} {prediction.score:.2f} {'>=' if prediction.label else '<'} 0.50"
    )
    _label(canvas, text, (0, 0), colour, style, above=False)


def _label(
    canvas: np.ndarray,
    text: str,
    anchor: tuple[int, int],
    colour: tuple[int, int, int],
    style: _Style,
    *,
    above: bool,
) -> None:
    """Text on a filled background, above ``anchor`` (boxes) or below it (the banner)."""
    (text_w, text_h), baseline = cv2.getTextSize(text, FONT, style.font_scale, style.thickness)
    box_h = text_h + baseline + 2 * style.pad
    box_w = text_w + 2 * style.pad
    x = min(max(anchor[0], 0), max(canvas.shape[1] - box_w, 0))
    y = anchor[1] - box_h if above else anchor[1]
    if y < 0:  # no room above the box: put the label inside it
        y = anchor[1]
    cv2.rectangle(canvas, (x, y), (x + box_w - 1, y + box_h - 1), colour, cv2.FILLED)
    origin = (x + style.pad, y + style.pad + text_h)
    cv2.putText(
        canvas, text, origin, FONT, style.font_scale, TEXT_COLOUR, style.thickness, cv2.LINE_AA
    )
