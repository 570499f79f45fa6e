"""Anomaly detection on video streams: the Python API behind ``anomaly-edge run``.

One engine (:class:`StreamRunner`) runs a model over one source or many. Iterate over
results in frame order::

    from anomaly_edge import AnomalyModel
    from anomaly_edge.stream import EventsSink, VideoSink, run

    model = AnomalyModel("model.xml", task="detection")
    for result in run(
        model,
        "rtsp://camera/stream",
        sinks=[VideoSink("annotated.mp4"), EventsSink("events.jsonl")],
    ):
        if result.prediction.label:
            print(result.index, result.prediction.score, result.prediction.boxes)

or call :meth:`StreamRunner.run`, which returns a :class:`StreamSummary`. Several cameras
share the model fairly: give a list of sources or :class:`Camera` s (:func:`load_config`
reads them from a TOML file), or call :func:`run_many`. Sources: video files, image folders
and globs, camera indices, RTSP/HTTP/... URLs (:func:`open_source`). Sinks:
:class:`VideoSink`, :class:`EventsSink`, :class:`SnapshotSink`, :class:`WindowSink`,
:class:`StatusLine`, or any object with ``write(result)`` and ``close()``. Each source has a
:class:`DriftMonitor` (on by default) that warns once when its normal frames' scores drift
out of the model's normal range. Every event names its source
(:mod:`anomaly_edge.stream.events`).
"""

from anomaly_edge.stream.config import Camera, load_config
from anomaly_edge.stream.drift import DriftMonitor, DriftWarning
from anomaly_edge.stream.engine import FrameObserver, SourceLane, StreamRunner, run, run_many
from anomaly_edge.stream.events import EventLog
from anomaly_edge.stream.result import FrameResult
from anomaly_edge.stream.sinks import EventsSink, Sink, SnapshotSink, VideoSink, WindowSink
from anomaly_edge.stream.sources import Frame, ReconnectPolicy, Source, SourceError, open_source
from anomaly_edge.stream.stats import StreamStats, StreamSummary
from anomaly_edge.stream.status import StatusLine, format_summary

__all__ = [
    "Camera",
    "DriftMonitor",
    "DriftWarning",
    "EventLog",
    "EventsSink",
    "Frame",
    "FrameObserver",
    "FrameResult",
    "ReconnectPolicy",
    "Sink",
    "SnapshotSink",
    "Source",
    "SourceError",
    "SourceLane",
    "StatusLine",
    "StreamRunner",
    "StreamStats",
    "StreamSummary",
    "VideoSink",
    "WindowSink",
    "format_summary",
    "load_config",
    "open_source",
    "run",
    "run_many",
]
