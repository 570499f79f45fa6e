"""Typed stub of the C++ extension anomaly_edge._post (cpp/bindings.cpp).

Users call :mod:`anomaly_edge.postprocess`, which wraps these functions.
"""

import numpy as np
import numpy.typing as npt

MAX_SIDE: int
"""Largest accepted side, in pixels, of a map or a frame."""

BoxTuple = tuple[int, int, int, int, float, float, int]
"""(x1, y1, x2, y2, score, mean_score, area): frame pixels, x2/y2 exclusive; normalised scores;
area in map pixels."""

Result = tuple[
    float,  # normalised image score
    bool,  # label: raw score >= image threshold
    float,  # raw score
    list[BoxTuple],  # highest score first; empty for classification
    npt.NDArray[np.uint8] | None,  # mask (frame_height, frame_width), 0/255; segmentation only
    npt.NDArray[np.uint8] | None,  # heatmap (frame_height, frame_width); when asked for
]

def postprocess(
    anomaly_map: npt.NDArray[np.float32],
    frame_height: int,
    frame_width: int,
    image_threshold: float,
    pixel_threshold: float,
    image_scale: float,
    pixel_scale: float,
    min_area: int = 1,
    task: str = "segmentation",
    heatmap: bool = False,
    raw_score: float | None = None,
) -> Result: ...
def postprocess_batch(
    anomaly_maps: npt.NDArray[np.float32],
    frame_sizes: list[tuple[int, int]],
    image_threshold: float,
    pixel_threshold: float,
    image_scale: float,
    pixel_scale: float,
    min_area: int = 1,
    task: str = "segmentation",
    heatmap: bool = False,
) -> list[Result]: ...
