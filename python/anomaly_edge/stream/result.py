"""What the stream engine hands to sinks, observers and the caller: one processed frame.

Kept apart from the engine so that sinks, event consumers and the web view can name it
without importing the engine (which imports them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from anomaly_edge.prediction import Prediction
from anomaly_edge.stream.drift import DriftWarning


@dataclass
class FrameResult:
    """One processed frame.

    Attributes:
        index: the frame's position in the source (see :class:`~anomaly_edge.stream.Frame`).
        timestamp: seconds into the video (files) or since the first frame (live, folders).
        frame: the decoded BGR image the prediction was made on.
        prediction: what the model found.
        latency: seconds from the end of decoding to the result reaching the sinks.
        wall_time: ``time.time()`` when the frame was decoded.
        name: the image's file name for folder and glob sources, else None.
        source: the name of the source (camera) the frame came from (``cam1`` unless named).
        drift: set on the frame that raised this source's score drift warning.
    """

    index: int
    timestamp: float
    frame: np.ndarray
    prediction: Prediction
    latency: float = 0.0
    wall_time: float = 0.0
    name: str | None = None
    source: str = "cam1"
    drift: DriftWarning | None = None
    _annotated: dict[float, np.ndarray] = field(default_factory=dict, repr=False)

    def annotated(self, alpha: float = 0.4) -> np.ndarray:
        """The frame with the prediction drawn on it (computed once, shared by the sinks)."""
        if alpha not in self._annotated:
            from anomaly_edge.visualize import draw_prediction

            self._annotated[alpha] = draw_prediction(self.frame, self.prediction, alpha=alpha)
        return self._annotated[alpha]
