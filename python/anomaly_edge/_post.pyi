"""Typed stub of the C++ extension anomaly_edge._post (cpp/bindings.cpp).

Users call :mod:`anomaly_edge.postprocess`, which wraps the post-processing functions, and
:func:`anomaly_edge.images.resize_for_network`, which uses :func:`box_downsample`.
"""

import numpy as np
import numpy.typing as npt

MAX_SIDE: int
"""Largest accepted side, in pixels, of a map or a frame."""

ISAS: tuple[str, ...]
"""Every instruction set the kernels exist for: ("baseline", "avx2", "avx512")."""

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

class Task:
    """What post-processing produces (an enum; anomaly_edge.Task maps onto it by name)."""

    classification: Task
    detection: Task
    segmentation: Task
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...

class Params:
    """Thresholds and normalisation statistics in raw map units, validated when built.

    Raises ValueError unless thresholds are finite float32 values, scales finite and > 0 and
    min_area >= 0. Read-only.
    """

    def __init__(
        self,
        image_threshold: float,
        pixel_threshold: float,
        image_scale: float,
        pixel_scale: float,
        min_area: int = 1,
    ) -> None: ...
    @property
    def image_threshold(self) -> float: ...
    @property
    def pixel_threshold(self) -> float: ...
    @property
    def image_scale(self) -> float: ...
    @property
    def pixel_scale(self) -> float: ...
    @property
    def min_area(self) -> int: ...

def postprocess(
    anomaly_map: npt.NDArray[np.float32],
    frame_height: int,
    frame_width: int,
    params: Params,
    task: Task = ...,
    heatmap: bool = False,
    raw_score: float | None = None,
) -> Result: ...
def postprocess_batch(
    anomaly_maps: npt.NDArray[np.float32],
    frame_sizes: list[tuple[int, int]],
    params: Params,
    task: Task = ...,
    heatmap: bool = False,
) -> list[Result]: ...
def stitch(
    tile_maps: npt.NDArray[np.float32],
    ys: list[int],
    xs: list[int],
    frame_height: int,
    frame_width: int,
    blend: str = "cosine",
) -> npt.NDArray[np.float32]:
    """Blend tile maps (rows * cols, h, w), tile (r, c) at index r * cols + c placed at
    (ys[r], xs[c]), into one (frame_height, frame_width) map: "cosine" weights fall smoothly to
    the tile edge across each overlap (no seams), "average" weighs covering tiles alike."""

def box_downsample(
    image: npt.NDArray[np.uint8], block_h: int, block_w: int
) -> npt.NDArray[np.uint8]:
    """Shrink a uint8 H x W (x C) image: each output pixel is the mean of one block_h x block_w
    block, rounded to nearest (ties to even); edge rows/columns that do not fill a block are
    left out."""

def cpu_features() -> dict[str, bool]:
    """{"sse2", "avx2", "avx512f", "avx512bw", "avx512vl"}: what this CPU (and OS) offer."""

def supported_isas() -> list[str]:
    """The instruction sets this build can run here, slowest first ("baseline" always)."""

def active_isa() -> str:
    """The instruction set in use: set_isa's, else $ANOMALY_EDGE_ISA, else the fastest."""

def set_isa(isa: str | None) -> None:
    """For tests and benchmarks: use `isa` from now on (None = back to the default).

    Raises ValueError for an unknown name or one this CPU cannot run. Every ISA gives
    bit-identical results.
    """
