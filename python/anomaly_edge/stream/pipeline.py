"""The asynchronous pipeline: decode thread -> OpenVINO requests -> sinks, in frame order.

Three threads share the work:

* the decode thread (:class:`~anomaly_edge.stream.feed.FrameFeed`) reads the source ahead;
* the inference thread keeps ``model.num_requests`` frames in flight with
  :meth:`AnomalyModel.submit`, collects finished ones with :meth:`AnomalyModel.ready`
  (submission order, post-processing done in C++ outside the GIL) and queues them;
* the caller's thread takes results in order, feeds the sinks and gets each
  :class:`FrameResult` from the iterator.

Every queue is bounded, so a slow sink slows the inference thread, which slows decoding of a
file (every frame is processed) or makes a live source drop stale frames (counted).
:meth:`StreamRunner.stop` (safe from a signal handler) stops decoding; the frames already
in flight finish and reach the sinks, then the sinks are closed.

At interpreter exit every runner still going is stopped and its threads joined while Python
is whole (a thread still inside OpenCV or OpenVINO when the interpreter tears itself down
would abort the process); its sinks are closed, so their files are complete.
"""

from __future__ import annotations

import atexit
import enum
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np

from anomaly_edge.errors import InvalidInputError
from anomaly_edge.prediction import Prediction
from anomaly_edge.stream.drift import DriftMonitor, DriftWarning, calibrate_command
from anomaly_edge.stream.feed import FrameFeed
from anomaly_edge.stream.sources import Frame, ReconnectPolicy, Source, open_source
from anomaly_edge.stream.stats import StreamStats, StreamSummary

if TYPE_CHECKING:
    from anomaly_edge.model import AnomalyModel
    from anomaly_edge.stream.sinks import Sink

log = logging.getLogger("anomaly_edge.stream")


class _Marker(enum.Enum):
    # An enum member rather than a bare object() so that `item is _END` narrows the type.
    END = "end"


_END: Final = _Marker.END  # marks the end of the results queue
_IDLE_POLL_S = 0.1  # wait for a frame when nothing is in flight
_BUSY_POLL_S = 0.002  # ... and when results may be finishing meanwhile
_EXIT_GRACE_S = 10.0  # at exit: how long a consumer in another thread gets to finish
_JOIN_S = 15.0  # at exit: how long a pipeline thread gets to end (a network read may hang)


class _StoppableAtExit(Protocol):
    def _shut_down_at_exit(self) -> None: ...


# Every runner that was started (one camera or several): stopped, joined and its outputs
# closed by the hook below if the program exits while it still runs.
_LIVE_RUNNERS: weakref.WeakSet[_StoppableAtExit] = weakref.WeakSet()


@atexit.register
def _stop_live_runners() -> None:
    for runner in list(_LIVE_RUNNERS):
        runner._shut_down_at_exit()


@dataclass
class FrameResult:
    """One processed frame.

    Attributes:
        index: the frame's position in the source (see :class:`Frame`).
        timestamp: seconds into the video (files) or since the first frame (live, folders).
        frame: the decoded BGR image the prediction was made on.
        prediction: what the model found.
        latency: seconds from the end of decoding to the result reaching the caller.
        wall_time: ``time.time()`` when the frame was decoded.
        name: the image's file name for folder and glob sources, else None.
    """

    index: int
    timestamp: float
    frame: np.ndarray
    prediction: Prediction
    latency: float = 0.0
    wall_time: float = 0.0
    name: str | None = None
    drift: DriftWarning | None = None  # set on the frame that raised the run's drift warning
    _annotated: dict[float, np.ndarray] = field(default_factory=dict, repr=False)

    def annotated(self, alpha: float = 0.4) -> np.ndarray:
        """The frame with the prediction drawn on it (computed once, shared by the sinks)."""
        if alpha not in self._annotated:
            from anomaly_edge.visualize import draw_prediction

            self._annotated[alpha] = draw_prediction(self.frame, self.prediction, alpha=alpha)
        return self._annotated[alpha]


class StreamRunner:
    """Runs a model over a source; iterate over it for :class:`FrameResult` s in frame order.

    Example::

        from anomaly_edge import AnomalyModel
        from anomaly_edge.stream import StreamRunner, EventsSink, VideoSink

        model = AnomalyModel("model.xml")
        runner = StreamRunner(
            model, "line3.mp4", sinks=[VideoSink("annotated.mp4"), EventsSink("events.jsonl")]
        )
        for result in runner:
            if result.prediction.label:
                print(result.index, result.prediction.score)
        print(runner.summary)

    Args:
        model: an :class:`~anomaly_edge.AnomalyModel`, or the path of an IR to load with
            default settings.
        source: a :class:`Source` or anything :func:`open_source` accepts.
        sinks: objects with ``write(result)`` and ``close()`` (see
            :mod:`anomaly_edge.stream.sinks`); written in frame order, closed at the end.
        max_frames: stop after this many frames (None: until the source ends).
        heatmap: ask for ``Prediction.heatmap`` (nicer segmentation overlays, more work).
        reconnect: retry policy of live sources (when ``source`` is not opened yet).
        timeout: network timeout in seconds (when ``source`` is not opened yet).
        drift: watch for score drift (:mod:`anomaly_edge.stream.drift`) and warn once on
            the ``anomaly_edge.stream`` logger, in :attr:`FrameResult.drift` and the stats;
            ``True`` (default) uses the model's recorded normal range, ``False`` turns it
            off, or pass a :class:`DriftMonitor`.
    """

    def __init__(
        self,
        model: AnomalyModel | str | os.PathLike[str],
        source: Source | str | int | os.PathLike[str],
        *,
        sinks: Iterable[Sink] = (),
        max_frames: int | None = None,
        heatmap: bool = False,
        reconnect: ReconnectPolicy | None = None,
        timeout: float = 10.0,
        drift: bool | DriftMonitor = True,
    ) -> None:
        if max_frames is not None and max_frames < 1:
            raise InvalidInputError(f"max_frames must be at least 1, got {max_frames}")
        if isinstance(model, (str, os.PathLike)):
            from anomaly_edge.model import AnomalyModel

            model = AnomalyModel(model)
        self.model = model
        self.source = open_source(source, reconnect=reconnect, timeout=timeout)
        self.sinks: list[Sink] = list(sinks)
        self.max_frames = max_frames
        self.heatmap = heatmap
        self.stats = StreamStats()
        self.drift = self._drift_monitor(drift)
        self.summary: StreamSummary | None = None
        # Requests that can run at once; the results queue holds a few more so that the
        # inference thread rarely waits on the sinks.
        self._in_flight_limit = max(1, int(getattr(model, "num_requests", 1) or 1))
        self._feed = FrameFeed(self.source)
        self._results: queue.Queue[tuple[Frame, Prediction] | _Marker] = queue.Queue(
            maxsize=self._in_flight_limit + 2
        )
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._infer, name="anomaly-edge-infer", daemon=True)
        self._started = False
        self._consumer: threading.Thread | None = None  # the thread iterating over results
        self._abandoned = False  # nobody takes results any more (interpreter exit)
        self._finish_lock = threading.Lock()
        self._finished = threading.Event()  # sinks closed, summary made

    def _drift_monitor(self, drift: bool | DriftMonitor) -> DriftMonitor | None:
        if not isinstance(drift, bool):
            return drift
        metadata = getattr(self.model, "metadata", None)
        if not drift or metadata is None:
            return None
        command = calibrate_command(
            str(getattr(self.model, "path", "MODEL.xml")),
            str(getattr(self.source, "description", "SOURCE")),
        )
        return DriftMonitor.from_metadata(metadata, self.model.image_threshold, command=command)

    # ---- control ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop reading the source; in-flight frames still finish. Safe from signal handlers
        and other threads (it only sets flags)."""
        self._stop.set()
        self._feed.stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, callback: Callable[[FrameResult], Any] | None = None) -> StreamSummary:
        """Process the whole source, calling ``callback`` with each result; returns the summary."""
        for result in self:
            if callback is not None:
                callback(result)
        assert self.summary is not None
        return self.summary

    # ---- the caller's side -----------------------------------------------------------------

    def __iter__(self) -> Iterator[FrameResult]:
        if self._started:
            raise RuntimeError("a StreamRunner runs once; create a new one")
        self._started = True
        self._consumer = threading.current_thread()
        _LIVE_RUNNERS.add(self)
        self.stats.started = time.monotonic()  # the clock starts now, not at construction
        self._feed.start()
        self._thread.start()
        finished = False
        try:
            while True:
                item = self._results.get()
                if item is _END:
                    break
                result = self._deliver(item)
                yield result
            finished = True
        finally:
            try:
                if not finished:  # the caller left early or a sink failed: wind down quickly
                    self.stop()
                    self._discard_until_end()
                self._thread.join()
                self._feed.join(timeout=5.0)
            finally:  # even when a second Ctrl-C cuts the wait short: complete the files
                self._finish()
        if self._error is not None:
            raise self._error

    def _deliver(self, item: tuple[Frame, Prediction]) -> FrameResult:
        frame, prediction = item
        result = FrameResult(
            index=frame.index,
            timestamp=frame.timestamp,
            frame=frame.image,
            prediction=prediction,
            latency=time.monotonic() - frame.captured,
            wall_time=frame.wall_time,
            name=frame.name,
        )
        self._update_counters()
        self.stats.record(result.latency, bool(prediction.label))
        if self.drift is not None:
            result.drift = self.drift.update(prediction.raw_score, bool(prediction.label))
            self.stats.drift_frames = self.drift.drift_frames
            if result.drift is not None:
                self.stats.drift_warnings += 1
                log.warning("%s", result.drift.message)
        for sink in self.sinks:
            sink.write(result)
        return result

    def _update_counters(self) -> None:
        self.stats.dropped = self._feed.dropped
        self.stats.corrupt = self.source.corrupt
        self.stats.missing = self.source.missing
        self.stats.reconnects = self.source.reconnects

    def _discard_until_end(self) -> None:
        while True:
            try:
                if self._results.get(timeout=_IDLE_POLL_S) is _END:
                    return
            except queue.Empty:
                if not self._thread.is_alive():  # the end marker went elsewhere (exit)
                    return

    def _shut_down_at_exit(self) -> None:
        """Stop, end every pipeline thread and close the sinks, from an atexit hook."""
        if not self._started or self._finished.is_set():
            return
        self.stop()
        consumer = self._consumer
        if (
            consumer is not None
            and consumer is not threading.current_thread()
            and consumer.is_alive()
            and self._finished.wait(_EXIT_GRACE_S)
        ):
            return  # the consumer's thread reached the end and closed the sinks itself
        # The consumer is this thread (a loop left without closing the iterator) or gone:
        # results have nowhere to go, so the inference thread drops them and ends.
        self._abandoned = True
        self._thread.join(_JOIN_S)
        self._feed.join(_JOIN_S)
        try:
            self._finish()
        except Exception as exc:  # at exit there is nobody left to raise to
            log.error("closing the outputs at exit failed: %s", exc)

    def _finish(self) -> None:
        with self._finish_lock:  # once, whoever comes first: the consumer or the exit hook
            if self._finished.is_set():
                return
            try:
                self._finish_once()
            finally:
                self._finished.set()

    def _finish_once(self) -> None:
        self._update_counters()
        if self._error is not None:
            self.stats.stop_reason = "error"
        elif self._feed.error is not None:
            self.stats.stop_reason = "source_lost"
            self._error = self._feed.error
        elif self.stats.missing and self.stats.stop_reason == "end":
            self.stats.stop_reason = "truncated"  # the file ended before its stated length
        self.summary = self.stats.summary()
        errors = []
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # close the others regardless; report the first failure
                errors.append(exc)
        if errors and self._error is None:
            self._error = errors[0]

    # ---- the inference thread --------------------------------------------------------------

    def _infer(self) -> None:
        submitted = 0
        emitted = 0
        try:
            while not self._stop.is_set():
                if self.max_frames is not None and submitted >= self.max_frames:
                    self.stats.stop_reason = "max_frames"
                    break
                in_flight = submitted - emitted
                frame = self._feed.get(_BUSY_POLL_S if in_flight else _IDLE_POLL_S)
                if frame is None:
                    if self._feed.finished:
                        break
                else:
                    self.model.submit(frame.image, frame, heatmap=self.heatmap)
                    submitted += 1
                emitted += self._forward(self.model.ready())
            else:
                self.stats.stop_reason = "stopped"
        except BaseException as exc:  # surfaces in the caller's thread after the drain
            self._error = exc
        finally:
            self._feed.stop()
            try:
                self._forward(self.model.drain())
            except BaseException as exc:
                if self._error is None:
                    self._error = exc
            self._put(_END)

    def _forward(self, done: list[tuple[Frame, Prediction]]) -> int:
        for item in done:
            self._put(item)
        return len(done)

    def _put(self, item: tuple[Frame, Prediction] | _Marker) -> None:
        while not self._abandoned:
            try:
                self._results.put(item, timeout=_IDLE_POLL_S)
                return
            except queue.Full:
                pass


def run(
    model: AnomalyModel | str | os.PathLike[str],
    source: Source | str | int | os.PathLike[str],
    **options: Any,
) -> Iterator[FrameResult]:
    """Iterate over the results of ``model`` on ``source``, in frame order.

    ``options`` are those of :class:`StreamRunner` (sinks, max_frames, heatmap, reconnect,
    timeout). Leaving the loop early stops the stream and closes the sinks::

        for result in anomaly_edge.stream.run(model, "rtsp://camera/stream"):
            if result.prediction.label:
                alarm(result.index, result.prediction.score)
    """
    return iter(StreamRunner(model, source, **options))
