"""From a raw anomaly map to a :class:`~anomaly_edge.Prediction`: the Python face of the C++
post-processor (``anomaly_edge._post``).

Example::

    params = PostprocessParams.from_metadata(model_metadata, min_area=4)
    prediction = postprocess(anomaly_map, frame.shape[:2], params, "segmentation")

The C++ work runs with the GIL released, and both functions are safe to call from several
threads at once.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence
from typing import Any, Protocol, cast

import numpy as np

from anomaly_edge import _post
from anomaly_edge.errors import InvalidInputError
from anomaly_edge.prediction import Box, Prediction, Task


class ThresholdSource(Protocol):
    """What :meth:`PostprocessParams.from_metadata` reads (a ``ModelMetadata`` has it; named
    by shape so that this module needs nothing from the metadata's)."""

    @property
    def image_threshold(self) -> float: ...
    @property
    def pixel_threshold(self) -> float: ...
    @property
    def image_scale(self) -> float: ...
    @property
    def pixel_scale(self) -> float: ...


__all__ = ["PostprocessParams", "postprocess", "postprocess_batch", "stitch_tiles"]

FrameSize = tuple[int, int]

_NATIVE_TASKS = {task: getattr(_post.Task, task.value) for task in Task}


@dataclasses.dataclass(frozen=True)
class PostprocessParams:
    """Thresholds and normalisation statistics, in raw anomaly-map units.

    ``normalised = clip((raw - threshold) / scale + 0.5, 0, 1)``: 0.5 sits on the threshold.
    Every score a user sees (image score, box scores, the heatmap) is in one unit, the
    image's (``image_threshold``/``image_scale``), so a box never out-scores its image.
    ``pixel_scale`` is carried for the metadata (Model API's ``normalization_scale``) only.

    The decision, one for all three tasks (see :func:`postprocess`): an image is anomalous when
    its raw score is >= ``image_threshold``; a Normal image has no box and an empty mask; on an
    anomalous image a region is a connected part of the map >= ``pixel_threshold`` whose peak
    alone would flag the image (drawn at the image threshold where the map's peak stays under
    the pixel threshold). Regions with fewer than
    ``min_area`` map pixels are dropped, except the one holding the map's peak.
    """

    image_threshold: float
    pixel_threshold: float
    image_scale: float
    pixel_scale: float
    min_area: int = 1
    _native: _post.Params = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Python checks types (a bool or a str is no threshold); the C++ library checks values,
        # in one place (check_params), when the native twin is built.
        for name in ("image_threshold", "pixel_threshold", "image_scale", "pixel_scale"):
            object.__setattr__(self, name, _number(getattr(self, name), name))
        if not _is_int(self.min_area):
            raise TypeError(f"min_area must be an int, got {type(self.min_area).__name__}")
        object.__setattr__(self, "min_area", int(self.min_area))
        try:
            native = _post.Params(
                self.image_threshold,
                self.pixel_threshold,
                self.image_scale,
                self.pixel_scale,
                self.min_area,
            )
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        object.__setattr__(self, "_native", native)

    @classmethod
    def from_metadata(cls, metadata: ThresholdSource, min_area: int = 1) -> PostprocessParams:
        """The parameters an exported model carries in its metadata."""
        return cls(
            image_threshold=metadata.image_threshold,
            pixel_threshold=metadata.pixel_threshold,
            image_scale=metadata.image_scale,
            pixel_scale=metadata.pixel_scale,
            min_area=min_area,
        )

    def replace(self, **changes: float | int) -> PostprocessParams:
        """A copy with some fields changed, e.g. ``params.replace(pixel_threshold=0.7)``."""
        # Each field's type and value are checked by __post_init__, as for a new instance.
        return dataclasses.replace(self, **cast("dict[str, Any]", changes))


def postprocess(
    anomaly_map: np.ndarray,
    frame_size: FrameSize,
    params: PostprocessParams,
    task: Task | str = "segmentation",
    *,
    heatmap: bool = False,
    raw_score: float | None = None,
) -> Prediction:
    """Turn one raw anomaly map into a :class:`~anomaly_edge.Prediction`.

    Label, boxes and mask are one decision, computed once in C++:

    * ``label`` is ``raw_score >= image_threshold``;
    * an image labelled Normal carries no box and an all-zero mask;
    * an image labelled Anomaly carries at least one box and a non-empty mask, and the map's
      peak lies inside one of its boxes. Its regions are the 8-connected components of
      ``map >= pixel_threshold`` whose own maximum reaches the image threshold (each would
      flag the image by itself): the pixel threshold shapes their outline. Where the map's
      peak stays below the pixel threshold, the regions are drawn at the image threshold
      instead, so no flagged image goes without one. When a ``raw_score`` from elsewhere
      flags an image whose map stays below the image threshold, the region around the map's
      peak is reported. The mask covers exactly
      the reported regions; where bilinear smoothing would leave a one-pixel region with no
      frame pixel, the frame pixels of that map pixel are marked.

    Box scores and the heatmap are in the image score's unit (0.5 = the image threshold).
    The raw map stays on ``prediction.anomaly_map``.

    Args:
        anomaly_map: float32 map at model resolution, shape (h, w) (leading axes of size 1,
            as in a model's (1, 1, h, w) output, are dropped).
        frame_size: (height, width) of the original frame; boxes, mask and heatmap are in
            its pixel coordinates.
        params: thresholds and normalisation, usually ``PostprocessParams.from_metadata``.
        task: "classification" (score, label), "detection" (+ boxes) or "segmentation"
            (+ boxes and a uint8 0/255 mask at frame resolution).
        heatmap: also return a uint8 heatmap (normalised map x 255) at frame resolution.
        raw_score: the image's raw score; defaults to the maximum of the map.

    Raises:
        TypeError: the map is not a float32 ndarray, or an argument has the wrong type.
        ValueError: bad shape, NaN/inf in the map, a frame size outside 1..32768, ...
    """
    # Every frame of a stream comes through here: the common argument types take the short
    # way through the checks (a few microseconds a frame), everything else the full one.
    task = task if type(task) is Task else Task.parse(task)
    _check_params(params)
    if not (type(anomaly_map) is np.ndarray and anomaly_map.ndim == 2):
        anomaly_map = _squeeze(anomaly_map, "anomaly_map", 2)
    height, width = _frame_size(frame_size, "frame_size")
    if raw_score is not None:
        raw_score = _finite_float(raw_score, "raw_score")
    try:
        result = _post.postprocess(
            anomaly_map,
            height,
            width,
            params._native,
            _NATIVE_TASKS[task],
            bool(heatmap),
            raw_score,
        )
    except ValueError as exc:  # e.g. NaN in the map: one exception type for every bad input
        raise InvalidInputError(str(exc)) from None
    return _prediction(result, task, anomaly_map)


def postprocess_batch(
    anomaly_maps: np.ndarray,
    frame_sizes: Sequence[FrameSize] | FrameSize,
    params: PostprocessParams,
    task: Task | str = "segmentation",
    *,
    heatmap: bool = False,
) -> list[Prediction]:
    """:func:`postprocess` for N maps of one shape in one call (one GIL release).

    Args:
        anomaly_maps: float32 array (N, h, w) (or (N, 1, h, w)).
        frame_sizes: one (height, width) per map (a list, or an (N, 2) int array), or a
            single (height, width) for all.
        params, task, heatmap: as in :func:`postprocess`; each raw score is its map's maximum.
    """
    task = Task.parse(task)
    _check_params(params)
    anomaly_maps = _squeeze(anomaly_maps, "anomaly_maps", 3)
    count = anomaly_maps.shape[0]
    if isinstance(frame_sizes, np.ndarray) and frame_sizes.ndim == 2:  # (N, 2) array
        frame_sizes = [tuple(row) for row in frame_sizes]
    if _is_frame_size(frame_sizes):
        sizes = [_frame_size(frame_sizes, "frame_sizes")] * count
    else:
        if not isinstance(frame_sizes, Sequence):
            raise TypeError("frame_sizes must be a (height, width) pair or a list of them")
        if len(frame_sizes) != count:
            raise InvalidInputError(
                f"frame_sizes has {len(frame_sizes)} entries for {count} anomaly maps: "
                "give one (height, width) per map, or a single pair for all"
            )
        sizes = [_frame_size(s, f"frame_sizes[{i}]") for i, s in enumerate(frame_sizes)]
    try:
        results = _post.postprocess_batch(
            anomaly_maps, sizes, params._native, _NATIVE_TASKS[task], bool(heatmap)
        )
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    return [_prediction(r, task, anomaly_maps[i]) for i, r in enumerate(results)]


def stitch_tiles(
    tile_maps: np.ndarray,
    ys: Sequence[int],
    xs: Sequence[int],
    frame_size: FrameSize,
    blend: str = "cosine",
) -> np.ndarray:
    """Blend tile maps into one frame map in C++ (the GIL is released).

    Args:
        tile_maps: float32 ``(rows * cols, h, w)`` (a model's ``(N, 1, h, w)`` output is
            accepted too); tile (r, c) is item ``r * cols + c``.
        ys, xs: first row of each tile row, first column of each tile column (ascending,
            starting at 0, the last tile ending on the frame's edge, no gaps).
        frame_size: (height, width) of the frame map.
        blend: ``"cosine"`` (weights fall smoothly to the tile edge across each overlap:
            no seams) or ``"average"``; see :class:`anomaly_edge.tiles.TileLayout`.

    Raises:
        TypeError: not a float32 array, or starts that are not ints.
        InvalidInputError: shapes, starts or sizes that do not fit, NaN/inf in the maps.
    """
    if isinstance(tile_maps, np.ndarray) and tile_maps.ndim == 4 and tile_maps.shape[1] == 1:
        tile_maps = tile_maps[:, 0]
    height, width = frame_size
    try:
        return _post.stitch(tile_maps, list(ys), list(xs), int(height), int(width), blend)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None


# ---- helpers ---------------------------------------------------------------------------------


def _prediction(result: _post.Result, task: Task, anomaly_map: np.ndarray) -> Prediction:
    score, label, raw_score, boxes, mask, heat = result
    return Prediction(
        score=score,
        label=label,
        raw_score=raw_score,
        task=task,
        anomaly_map=anomaly_map,
        boxes=[_box(*b) for b in boxes],
        mask=mask,
        heatmap=heat,
    )


_new = object.__new__


def _box(x1: int, y1: int, x2: int, y2: int, score: float, mean_score: float, area: int) -> Box:
    # Box is a frozen dataclass, whose __init__ sets each field through object.__setattr__;
    # filling the instance dict directly is twice as fast, which counts with 100 boxes a frame.
    box = _new(Box)
    box.__dict__.update(x1=x1, y1=y1, x2=x2, y2=y2, score=score, mean_score=mean_score, area=area)
    return box


def _check_params(params: object) -> None:
    if not isinstance(params, PostprocessParams):
        raise TypeError(
            f"params must be a PostprocessParams, got {type(params).__name__}: build one with "
            "PostprocessParams(...) or PostprocessParams.from_metadata(model.metadata)"
        )


def _squeeze(array: object, name: str, ndim: int) -> np.ndarray:
    """Drop leading axes of size 1 down to ``ndim`` axes; the extension checks the rest."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32, got {type(array).__name__}")
    squeezed: np.ndarray = array
    while squeezed.ndim > ndim and squeezed.shape[0] == 1:
        squeezed = squeezed[0]
    if squeezed.ndim > ndim and ndim == 3 and squeezed.shape[1] == 1:
        squeezed = squeezed[:, 0]  # (N, 1, h, w) model output
    return squeezed


def _is_frame_size(value: object) -> bool:
    if isinstance(value, np.ndarray):  # e.g. np.array(frame.shape[:2])
        return value.shape == (2,) and np.issubdtype(value.dtype, np.integer)
    return isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_is_int, value))


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _frame_size(value: object, name: str) -> FrameSize:
    limit = _post.MAX_SIDE
    if type(value) is tuple and len(value) == 2:  # the usual (height, width) of plain ints
        height, width = value
        if (
            type(height) is int
            and type(width) is int
            and 1 <= height <= limit
            and 1 <= width <= limit
        ):
            return height, width
    if not _is_frame_size(value):
        raise TypeError(f"{name} must be a (height, width) pair of ints, got {value!r}")
    height, width = (operator.index(v) for v in value)  # type: ignore[attr-defined]
    if not (1 <= height <= limit and 1 <= width <= limit):
        raise InvalidInputError(
            f"{name} must be (height, width) with each side between 1 and {limit}, "
            f"got {(height, width)}"
        )
    return height, width


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def _finite_float(value: object, name: str) -> float:
    result = _number(value, name)
    if not math.isfinite(result):
        raise InvalidInputError(f"{name} must be a finite number, got {result}")
    return result
