"""The self-contained demo: a procedural dataset and video, and the command that uses them.

:func:`make_dataset` writes a small brushed-metal dataset with scratches, holes, stains and
missing pieces (exact masks) in the MVTec AD layout; :func:`render_video` renders the same
material sliding past a camera, with defects at known frames. Both need only NumPy and OpenCV.
:func:`run_demo` (``anomaly-edge demo``) trains, exports and runs a model on them; it needs the
``train`` extra.
"""

from typing import Any

from anomaly_edge.demo.dataset import make_dataset, render_sample
from anomaly_edge.demo.defects import DEFECT_TYPES
from anomaly_edge.demo.video import VideoTruth, render_video

__all__ = [
    "DEFECT_TYPES",
    "VideoTruth",
    "make_dataset",
    "render_sample",
    "render_video",
    "run_demo",
]


def __getattr__(name: str) -> Any:
    # The demo runner pulls in the training stack; the generators must not.
    if name == "run_demo":
        from anomaly_edge.demo.run import run_demo

        return run_demo
    raise AttributeError(f"module 'anomaly_edge.demo' has no attribute {name!r}")
