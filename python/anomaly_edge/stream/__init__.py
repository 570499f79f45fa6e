"""Anomaly detection on video streams: the Python API behind ``anomaly-edge run``.

Iterate over results in frame order::

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

or hand a callback to :meth:`StreamRunner.run`, which returns a :class:`StreamSummary`.
Sources: video files, image folders and globs, camera indices, RTSP/HTTP/... URLs
(:func:`open_source`). Sinks: :class:`VideoSink`, :class:`EventsSink`, :class:`SnapshotSink`,
:class:`WindowSink`, :class:`StatusLine`, or any object with ``write(result)`` and ``close()``.
:class:`DriftMonitor` warns once when normal frames' scores drift out of the model's normal
range (on by default in :class:`StreamRunner`; usable on its own with ``model.predict``).

Several cameras through one model: :func:`run_many` / :class:`MultiStreamRunner` with
:class:`Camera` s (or :func:`load_config` for a TOML file).
"""

from anomaly_edge.stream.config import Camera, load_config
from anomaly_edge.stream.drift import DriftMonitor, DriftWarning
from anomaly_edge.stream.events import EventLog
from anomaly_edge.stream.multi import MultiStreamRunner, MultiSummary, run_many
from anomaly_edge.stream.pipeline import FrameResult, StreamRunner, run
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
    "FrameResult",
    "MultiStreamRunner",
    "MultiSummary",
    "ReconnectPolicy",
    "Sink",
    "SnapshotSink",
    "Source",
    "SourceError",
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
