"""The stream engine: one model over one or many sources, results in frame order per source.

::

    sources ─► decode threads ─► one inference thread ─► one request pool ─► per source: drift,
    (one each)  (FrameFeed)       (round robin)           (the model)         sinks, events,
                                                                              observers

The same engine serves one camera and many; nothing below depends on how many there are,
except the default of ``wait_for_live``: a live source down at the start is waited for when
others can run meanwhile; alone, it fails at once, so a typo in a URL is reported at once.

* **Fair share.** The inference thread takes the next frame round robin from the sources
  that have one ready, so each gets an equal share of the model when all are busy, and an
  idle one costs nothing. It uses only the model's ``submit``/``ready``/``drain``.
* **Per-source settings.** Thresholds, task and minimum area are set on the model just
  before a source's frame is submitted (the model applies the settings in force at
  submission), so sources share one compiled model but not one sensitivity. Thresholds are
  raw score units, as ``model.image_threshold`` is (see :class:`Camera` for the 0-1 unit).
* **Per-source drift.** Each source has its own :class:`~anomaly_edge.stream.DriftMonitor`
  (on by default), since each camera drifts on its own.
* **One event record.** Every event names its source, one camera or many
  (:mod:`anomaly_edge.stream.events`); they go through one :class:`EventLog` (JSON Lines,
  MQTT, webhook, web view).
* **Isolation.** Each source has its own decode thread (stale live frames dropped and
  counted), reconnections, sinks and counters. A source whose input is lost or whose sink
  fails stops alone; the others go on. No source has more than ``num_requests + 2`` frames
  between submission and its sinks, so a slow sink slows only its own source.

Two ways to take the results: iterate over the runner (results of every source reach the
sinks on the caller's thread, which a window needs), or :meth:`StreamRunner.start` /
:meth:`StreamRunner.join` (each source delivers on a thread of its own). At interpreter
exit a runner still going is stopped, its frames in flight finished and its outputs closed.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import logging
import math
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import numpy as np

from anomaly_edge.errors import InvalidInputError
from anomaly_edge.prediction import Prediction, Task
from anomaly_edge.stream.config import Camera, check_unique
from anomaly_edge.stream.drift import DriftMonitor, calibrate_command
from anomaly_edge.stream.events import EventLog, action_event, result_events
from anomaly_edge.stream.feed import FrameFeed
from anomaly_edge.stream.late_source import open_or_defer
from anomaly_edge.stream.outputs import OutputHealth
from anomaly_edge.stream.result import FrameResult
from anomaly_edge.stream.sinks import Sink, SnapshotSink, VideoSink
from anomaly_edge.stream.sources import Frame, ReconnectPolicy, Source, open_source
from anomaly_edge.stream.stats import StreamStats, StreamSummary, combined_summary

if TYPE_CHECKING:
    from anomaly_edge.model import AnomalyModel

log = logging.getLogger("anomaly_edge.stream")

SourceSpec: TypeAlias = "Source | Camera | str | int | os.PathLike[str]"


class _End(enum.Enum):
    """The end-of-results marker of a source's queue (an enum, so mypy narrows it)."""

    END = enum.auto()


_END: Final = _End.END
_BUSY_POLL_S = 0.002  # nothing to submit, frames in flight: results may finish any moment
_IDLE_POLL_S = 0.005  # nothing to submit, nothing in flight: waiting for the sources
_EXIT_GRACE_S = 10.0  # at exit: how long the sources get to finish their frames in flight
_JOIN_S = 15.0  # at exit: how long a thread gets to end (a network read may hang)

# Every runner started and not finished: stopped and its outputs closed at exit.
_LIVE_RUNNERS: weakref.WeakSet[StreamRunner] = weakref.WeakSet()


@atexit.register
def _stop_live_runners() -> None:
    for runner in list(_LIVE_RUNNERS):
        runner._shut_down_at_exit()


@dataclass(frozen=True)
class SourceSettings:
    """What the model applies to one source's frames (raw score units)."""

    task: Task
    image_threshold: float
    pixel_threshold: float
    min_area: int


class FrameObserver:
    """Sees every processed frame of every source (metrics, web view); override what you need.

    Called on the thread that delivers the source's results: return quickly.
    """

    def attach(self, runner: StreamRunner) -> None:
        """Called once by the runner it observes, before the run starts."""

    def frame(self, lane: SourceLane, result: FrameResult, inference_s: float) -> None:
        pass

    def close(self) -> None:
        pass


# What a source's queue carries: the frame, its prediction and the inference seconds.
_Delivery = tuple[Frame, Prediction, float]


@dataclass(eq=False)
class SourceLane:
    """One source's share of the run: its source, feed, sinks, drift monitor and counters."""

    camera: Camera
    source: Source
    sinks: list[Sink]
    settings: SourceSettings
    heatmap: bool
    capacity: int
    drift: DriftMonitor | None = None
    stats: StreamStats = field(default_factory=StreamStats)
    feed: FrameFeed = field(init=False)
    # Written by the inference thread only:
    submitted: int = 0
    forwarded: int = 0
    input_done: bool = False
    ended: bool = False
    # Written by the delivering thread only:
    delivered: int = 0
    size: tuple[int, int] | None = None  # the last frame's width and height
    resolution_changes: int = 0
    same_frames: int = 0  # frames in a row identical to the one before (a frozen camera)
    frozen_warned: bool = False
    _previous: Any = None  # a sample of the last frame's pixels
    error: BaseException | None = None
    summary: StreamSummary | None = None

    def __post_init__(self) -> None:
        self.feed = FrameFeed(self.source)
        # Bounded by `capacity` (see can_take); shared by every lane when iterating.
        self.results: queue.Queue[tuple[SourceLane, _Delivery | _End]] = queue.Queue()

    @property
    def name(self) -> str:
        return self.camera.name

    @property
    def dropped(self) -> int:
        return self.feed.dropped

    @property
    def corrupt(self) -> int:
        return self.source.corrupt

    @property
    def reconnects(self) -> int:
        return self.source.reconnects

    @property
    def state(self) -> str:
        if self.summary is not None:
            return "failed" if self.error is not None else "ended"
        return "stopping" if self.input_done else "running"

    def can_take(self) -> bool:
        if self.input_done or self.error is not None:
            return False
        limit = self.camera.max_frames
        if limit is not None and self.submitted >= limit:
            return False
        return self.submitted - self.delivered < self.capacity


class StreamRunner:
    """Runs one model over one or several sources (see the module docstring).

    One source, results in frame order::

        from anomaly_edge import AnomalyModel
        from anomaly_edge.stream import EventsSink, StreamRunner, VideoSink

        model = AnomalyModel("model.xml")
        runner = StreamRunner(model, "line3.mp4", sinks=[VideoSink("annotated.mp4")])
        for result in runner:
            if result.prediction.label:
                print(result.index, result.prediction.score)
        print(runner.summary)

    Several cameras, each delivering on its own thread::

        runner = StreamRunner(
            model,
            [Camera("line1", "rtsp://10.0.0.21/s1"), Camera("line2", "line2.mp4")],
            events="events.jsonl",
        )
        summary = runner.run()
        print(summary.sources["line1"].frames, summary.errors)

    Args:
        model: the model (its request pool is shared), or the path of an IR to load.
        sources: one source (a :class:`Source`, anything :func:`open_source` accepts, or a
            :class:`Camera`), or several: a list (unnamed ones are ``cam1``, ``cam2``, ...)
            or a mapping name -> source.
        sinks: extra sinks: a list (one source only), or ``sinks(camera) -> list``.
        events: a JSON Lines path for every source's events, or an :class:`EventLog` with
            consumers already attached (MQTT, webhook, ...), or None.
        observers: :class:`FrameObserver` s (metrics, web view).
        max_frames: stop each source after this many frames (a Camera's own limit wins).
        heatmap: heatmaps for segmentation sources (nicer overlays, more work).
        alpha: overlay opacity of the videos and overlay snapshots of cameras.
        reconnect, timeout: live sources' retry policy and network timeout.
        drift: watch each source for score drift and warn once per source (log, events,
            :attr:`FrameResult.drift`, stats); ``True`` (default) uses the model's
            recorded normal range, ``False`` turns it off.
        on_result: ``on_result(result)`` for every frame, on the delivering thread.
        wait_for_live: a live source (camera index, URL) that is down at the start is
            retried in the background like a reconnection, instead of failing at once;
            None (default): when there are several sources, so the others run meanwhile.
        start_attempts: how many times such a source is tried again (with the
            reconnection's backoff, capped at its ``max_delay``) before it counts as lost;
            None: the reconnection's ``attempts``.
    """

    def __init__(
        self,
        model: AnomalyModel | str | os.PathLike[str],
        sources: SourceSpec | Iterable[SourceSpec] | Mapping[str, Any],
        *,
        sinks: Iterable[Sink] | Callable[[Camera], list[Sink]] = (),
        events: EventLog | str | os.PathLike[str] | None = None,
        observers: Iterable[FrameObserver] = (),
        max_frames: int | None = None,
        heatmap: bool = False,
        alpha: float = 0.4,
        reconnect: ReconnectPolicy | None = None,
        timeout: float = 10.0,
        drift: bool = True,
        on_result: Callable[[FrameResult], Any] | None = None,
        wait_for_live: bool | None = None,
        start_attempts: int | None = None,
    ) -> None:
        if max_frames is not None and max_frames < 1:
            raise InvalidInputError(f"max_frames must be at least 1, got {max_frames}")
        if isinstance(model, (str, os.PathLike)):
            from anomaly_edge.model import AnomalyModel

            model = AnomalyModel(Path(model))
        self.model = model
        cameras, opened = _as_cameras(sources)
        if max_frames is not None:
            cameras = [c if c.max_frames else replace(c, max_frames=max_frames) for c in cameras]
        self.cameras = cameras
        if not callable(sinks):
            fixed = list(sinks)
            if fixed and len(cameras) > 1:
                raise InvalidInputError(
                    "a list of sinks needs one source; with several, give sinks(camera) -> list"
                )
            sinks = _fixed_sinks(fixed)
        self.events = _event_log(events)
        self.observers = list(observers)
        self.on_result = on_result
        self.stats = StreamStats()  # every source together (status line, summary)
        self.summary: StreamSummary | None = None
        self._stats_lock = threading.Lock()
        self._stop = threading.Event()
        self._finished = threading.Event()  # every lane delivered its last result
        self._closed = threading.Event()  # outputs closed, summary made
        self._close_lock = threading.Lock()
        self._error: BaseException | None = None  # the model's: every source stops
        self._started = False
        self._iterating = False
        self._consumer: threading.Thread | None = None
        self._lane_threads: list[threading.Thread] = []
        # The model's own settings, put back at the end: whoever shares it finds it as it was.
        self._original = SourceSettings(
            Task(model.task), model.image_threshold, model.pixel_threshold, model.min_area
        )
        self._applied: SourceSettings | None = self._original
        self._next = 0
        policy = reconnect or ReconnectPolicy()
        start_policy = (
            policy if start_attempts is None else replace(policy, attempts=start_attempts)
        )
        capacity = max(1, int(getattr(model, "num_requests", 1) or 1)) + 2
        if wait_for_live is None:
            wait_for_live = len(cameras) > 1
        self.lanes: list[SourceLane] = []
        try:
            for camera in cameras:
                settings = self._settings_for(camera)
                if opened is not None:
                    source = opened
                elif wait_for_live:
                    source = open_or_defer(camera.source, policy, timeout, start_policy)
                else:
                    source = open_source(camera.source, reconnect=policy, timeout=timeout)
                lane = SourceLane(camera, source, [], settings, heatmap=False, capacity=capacity)
                self.lanes.append(lane)
                lane.heatmap = heatmap and settings.task == Task.SEGMENTATION
                lane.drift = self._drift_monitor(lane) if drift else None
                _add_file_sinks(lane.sinks, camera, source, alpha)
                lane.sinks.extend(sinks(camera))
        except BaseException:
            if opened is not None and not self.lanes:
                opened.close()
            self._close_unstarted()
            raise
        self._lanes_by_name = {lane.name: lane for lane in self.lanes}
        for observer in self.observers:
            observer.attach(self)
        self._thread = threading.Thread(target=self._infer, name="anomaly-edge-infer", daemon=True)

    # ---- one source -------------------------------------------------------------------------

    @property
    def source(self) -> Source:
        """The source, when there is one (with several, see :attr:`lanes`)."""
        return self._only_lane("source").source

    @property
    def sinks(self) -> list[Sink]:
        """The source's sinks, when there is one; add to it before the run starts."""
        return self._only_lane("sinks").sinks

    @sinks.setter
    def sinks(self, value: list[Sink]) -> None:
        self._only_lane("sinks").sinks = list(value)

    def _only_lane(self, what: str) -> SourceLane:
        if len(self.lanes) != 1:
            raise InvalidInputError(
                f"runner.{what} needs one source; this runner has {len(self.lanes)}: "
                "use runner.lanes"
            )
        return self.lanes[0]

    # ---- control ---------------------------------------------------------------------------

    def start(self) -> StreamRunner:
        """Start every source and the inference thread, each source delivering on a thread
        of its own; returns at once. :meth:`join` waits for the end."""
        self._begin(iterating=False)
        for lane in self.lanes:
            thread = threading.Thread(
                target=self._deliver_lane,
                args=(lane,),
                daemon=True,
                name=f"anomaly-edge-deliver-{lane.name}",
            )
            self._lane_threads.append(thread)
            thread.start()
        return self

    def _begin(self, iterating: bool) -> None:
        if self._started:
            raise RuntimeError("a StreamRunner runs once; create a new one")
        self._started = True
        self._iterating = iterating
        self._consumer = threading.current_thread()
        if iterating:  # one queue for every source: the caller's thread delivers them all
            shared = self.lanes[0].results
            for lane in self.lanes:
                lane.results = shared
        _LIVE_RUNNERS.add(self)
        self.stats.started = time.monotonic()  # the clock starts now, not at construction
        for lane in self.lanes:
            lane.stats.started = self.stats.started
            lane.feed.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop reading every source; frames in flight still finish. Safe from signal
        handlers and other threads (it only sets flags)."""
        self._stop.set()
        for lane in self.lanes:
            lane.feed.stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once every source has finished (waits at most ``timeout`` seconds)."""
        return self._finished.wait(timeout)

    def join(self) -> StreamSummary:
        """Wait for the end, close the outputs and return the summary (after :meth:`start`).

        A source's own failure (lost input, failing sink) is in :attr:`StreamSummary.errors`
        while another source ended well; the model's failure, or every source's, is raised
        (the summary is made first)."""
        while not self._finished.wait(0.5):  # short waits keep signal handlers responsive
            pass
        self._close()
        self._raise_failure()
        assert self.summary is not None
        return self.summary

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error
        if self.lanes and all(lane.error is not None for lane in self.lanes):
            error = self.lanes[0].error
            assert error is not None
            raise error

    def run(self, callback: Callable[[FrameResult], Any] | None = None) -> StreamSummary:
        """Process every source to its end and return the summary.

        With ``callback``, every result reaches it (and the sinks) on the calling thread, as
        when iterating; without, each source delivers on a thread of its own
        (:meth:`start`, :meth:`join`)."""
        if callback is None:
            return self.start().join()
        for result in self:
            callback(result)
        assert self.summary is not None
        return self.summary

    # ---- iterating: the caller's thread delivers --------------------------------------------

    def __iter__(self) -> Iterator[FrameResult]:
        """Results as they come: in frame order within each source, every source's sinks
        written from the caller's thread. Leaving the loop early stops the run and closes
        the outputs; failures are raised at the end as by :meth:`join`."""
        self._begin(iterating=True)
        shared = self.lanes[0].results
        pending = len(self.lanes)
        finished = False
        try:
            while pending:
                lane, item = shared.get()
                if item is _END:
                    self._finish_lane(lane)
                    pending -= 1
                    continue
                result = self._deliver_item(lane, item)
                if result is not None:
                    yield result
            finished = True
        finally:
            if not finished:  # the caller left early or a second Ctrl-C: wind down quickly
                self.stop()
                self._discard_shared(pending)
            self._close()
        self._raise_failure()

    def _discard_shared(self, pending: int) -> None:
        """Drop what is still in flight (nobody takes it: the outputs end where the caller
        stopped), up to every source's end, and close each source's outputs."""
        shared = self.lanes[0].results
        while pending:
            try:
                lane, item = shared.get(timeout=0.1)
            except queue.Empty:
                if not self._thread.is_alive() and shared.empty():
                    break  # the end markers went nowhere (exit while the thread hung)
                continue
            if item is _END:
                self._finish_lane(lane)
                pending -= 1
        for lane in self.lanes:
            if lane.summary is None:
                self._finish_lane(lane)

    # ---- live settings and state (web view, status line) -----------------------------------

    def lane(self, name: str) -> SourceLane:
        try:
            return self._lanes_by_name[name]
        except KeyError:
            raise InvalidInputError(
                f"no camera named {name!r}; cameras: {', '.join(self._lanes_by_name)}"
            ) from None

    def set_thresholds(
        self,
        name: str,
        *,
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
        by: str = "api",
    ) -> dict[str, Any]:
        """Change a source's thresholds (raw units) from the next frame on; the change is an
        event (``"event": "thresholds_changed"``) naming who made it. Returns that event."""
        lane = self.lane(name)
        changes = {}
        for key, value in (
            ("image_threshold", image_threshold),
            ("pixel_threshold", pixel_threshold),
        ):
            if value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise InvalidInputError(f"{key} must be a finite number, got {value!r}")
            changes[key] = float(value)
        if not changes:
            raise InvalidInputError("give image_threshold and/or pixel_threshold")
        old = lane.settings
        # One assignment, so the inference thread sees the old settings or the new ones.
        lane.settings = replace(
            old,
            image_threshold=changes.get("image_threshold", old.image_threshold),
            pixel_threshold=changes.get("pixel_threshold", old.pixel_threshold),
        )
        if lane.drift is not None and "image_threshold" in changes:
            # The drift limit sits half way to the threshold: watch against the new one.
            lane.drift = self._drift_monitor(lane)
        record = action_event(
            name,
            "thresholds_changed",
            by=by,
            **{key: {"old": getattr(old, key), "new": value} for key, value in changes.items()},
        )
        self.events.emit(record)
        log.info(
            "%s: thresholds changed by %s: %s",
            name,
            by,
            ", ".join(f"{k} {getattr(old, k):g} -> {v:g}" for k, v in changes.items()),
        )
        return record

    def status(self) -> list[dict[str, Any]]:
        """Each source's live state: counters, fps, latency, settings."""
        out = []
        for lane in self.lanes:
            stats = lane.stats
            latency = stats.recent_latency_ms()
            out.append(
                {
                    "name": lane.name,
                    "source": lane.source.description,
                    "state": lane.state,
                    "frames": stats.frames,
                    "anomalies": stats.anomalies,
                    "fps": round(stats.recent_fps(), 2) if stats.frames else 0.0,
                    "latency_ms": None
                    if latency is None
                    else {"p50": round(latency[0], 1), "p95": round(latency[1], 1)},
                    "dropped": lane.dropped,
                    "corrupt": lane.corrupt,
                    "reconnects": lane.reconnects,
                    "drift": stats.drift_warnings > 0,
                    "task": lane.settings.task.value,
                    "image_threshold": lane.settings.image_threshold,
                    "pixel_threshold": lane.settings.pixel_threshold,
                    "error": None if lane.error is None else str(lane.error),
                }
            )
        return out

    def render_status(self) -> str:
        """One line for the terminal: each source's fps and anomalies, and the total."""
        parts = []
        total = 0.0
        for lane in self.lanes:
            fps = lane.stats.recent_fps() if lane.stats.frames and lane.summary is None else 0.0
            total += fps
            text = f"{lane.name} {lane.stats.frames} fr {fps:.1f} fps {lane.stats.anomalies} anom"
            if lane.dropped:
                text += f" {lane.dropped} drop"
            if lane.stats.drift_warnings:
                text += " DRIFT"
            if lane.summary is not None:
                text += " (failed)" if lane.error is not None else " (done)"
            parts.append(text)
        parts.append(f"total {total:.1f} fps")
        return " | ".join(parts)

    # ---- the inference thread --------------------------------------------------------------

    def _settings_for(self, camera: Camera) -> SourceSettings:
        model = self.model
        image, pixel = camera.resolved_thresholds(getattr(model, "metadata", None))
        return SourceSettings(
            task=Task(camera.task) if camera.task else Task(model.task),
            image_threshold=image if image is not None else model.image_threshold,
            pixel_threshold=pixel if pixel is not None else model.pixel_threshold,
            min_area=camera.min_area if camera.min_area is not None else model.min_area,
        )

    def _drift_monitor(self, lane: SourceLane) -> DriftMonitor | None:
        metadata = getattr(self.model, "metadata", None)
        if metadata is None:
            return None
        command = calibrate_command(
            str(getattr(self.model, "path", "MODEL.xml")), str(lane.source.description)
        )
        return DriftMonitor.from_metadata(metadata, lane.settings.image_threshold, command=command)

    def _apply(self, settings: SourceSettings) -> None:
        if settings is self._applied:
            return
        model = self.model
        if model.task != settings.task:
            model.task = settings.task
        if model.image_threshold != settings.image_threshold:
            model.image_threshold = settings.image_threshold
        if model.pixel_threshold != settings.pixel_threshold:
            model.pixel_threshold = settings.pixel_threshold
        if model.min_area != settings.min_area:
            model.min_area = settings.min_area
        self._applied = settings

    def _infer(self) -> None:
        lanes = self.lanes
        count = len(lanes)
        in_flight = 0
        try:
            while not all(lane.ended for lane in lanes):
                if self._stop.is_set():
                    for lane in lanes:
                        self._input_done(lane, "stopped")
                submitted = False
                for offset in range(count):
                    position = (self._next + offset) % count
                    lane = lanes[position]
                    if not lane.can_take():
                        self._check_input(lane)
                        continue
                    # One source: wait on its feed (woken by the next frame) rather than poll.
                    wait = (_BUSY_POLL_S if in_flight else _IDLE_POLL_S) if count == 1 else 0
                    frame = lane.feed.get(wait)
                    if frame is None:
                        self._check_input(lane)
                        continue
                    self._apply(lane.settings)
                    self.model.submit(
                        frame.image, (lane, frame, time.monotonic()), heatmap=lane.heatmap
                    )
                    lane.submitted += 1
                    in_flight += 1
                    self._next = (position + 1) % count
                    submitted = True
                    break
                in_flight -= self._forward(self.model.ready())
                self._end_finished(lanes)
                if not submitted and not (count == 1 and lanes[0].can_take()):
                    time.sleep(_BUSY_POLL_S if in_flight else _IDLE_POLL_S)
        except BaseException as exc:  # the model failed: every source stops
            self._error = exc
            log.error("inference failed, stopping every source: %s", exc)
        finally:
            for lane in lanes:
                lane.feed.stop()
                lane.input_done = True
            try:
                self._forward(self.model.drain())
            except BaseException as exc:
                if self._error is None:
                    self._error = exc
            try:
                self._apply(self._original)
            except BaseException as exc:
                log.error("could not restore the model's settings: %s", exc)
            for lane in lanes:
                if not lane.ended:
                    lane.ended = True
                    lane.results.put((lane, _END))

    def _check_input(self, lane: SourceLane) -> None:
        if lane.input_done:
            return
        limit = lane.camera.max_frames
        if lane.error is not None:
            self._input_done(lane, "error")
        elif limit is not None and lane.submitted >= limit:
            self._input_done(lane, "max_frames")
        elif lane.feed.finished:
            self._input_done(lane, "end")

    def _input_done(self, lane: SourceLane, reason: str) -> None:
        if not lane.input_done:
            lane.input_done = True
            if lane.stats.stop_reason == "end":
                lane.stats.stop_reason = reason
            lane.feed.stop()

    def _end_finished(self, lanes: list[SourceLane]) -> None:
        for lane in lanes:
            if lane.input_done and not lane.ended and lane.forwarded == lane.submitted:
                lane.ended = True
                lane.results.put((lane, _END))

    def _forward(self, done: list[tuple[Any, Prediction]]) -> int:
        now = time.monotonic()
        for (lane, frame, submitted_at), prediction in done:
            lane.forwarded += 1
            lane.results.put((lane, (frame, prediction, now - submitted_at)))
        return len(done)

    # ---- delivery: each source's thread, or the caller's ------------------------------------

    def _deliver_lane(self, lane: SourceLane) -> None:
        try:
            while True:
                _, item = lane.results.get()
                if item is _END:
                    break
                self._deliver_item(lane, item)
        finally:
            self._finish_lane(lane)

    def _deliver_item(self, lane: SourceLane, item: _Delivery) -> FrameResult | None:
        """Hand one result to the source's drift monitor, sinks, events and observers; a
        failure stops this source alone. None when the source had already failed."""
        try:
            if lane.error is None:
                return self._deliver_one(lane, *item)
        except BaseException as exc:
            self._fail(lane, exc)
        finally:
            lane.delivered += 1
        return None

    def _deliver_one(
        self, lane: SourceLane, frame: Frame, prediction: Prediction, inference_s: float
    ) -> FrameResult:
        result = FrameResult(
            index=frame.index,
            timestamp=frame.timestamp,
            frame=frame.image,
            prediction=prediction,
            latency=time.monotonic() - frame.captured,
            wall_time=frame.wall_time,
            name=frame.name,
            source=lane.name,
        )
        anomalous = bool(prediction.label)
        _watch_camera(lane, frame)
        stats = lane.stats
        stats.record(result.latency, anomalous)
        if lane.drift is not None:
            result.drift = lane.drift.update(prediction.raw_score, anomalous)
            stats.drift_frames = lane.drift.drift_frames
            if result.drift is not None:
                stats.drift_warnings += 1
                log.warning("%s", result.drift.message)
        stats.dropped, stats.corrupt = lane.dropped, lane.corrupt
        stats.missing, stats.reconnects = lane.source.missing, lane.reconnects
        with self._stats_lock:
            self.stats.record(result.latency, anomalous)
            self._sum_counters()
        for sink in lane.sinks:
            sink.write(result)
        for record in result_events(result, lane.camera.all_frames):
            self.events.emit(record, result)
        for observer in self.observers:
            observer.frame(lane, result, inference_s)
        if self.on_result is not None:
            self.on_result(result)
        return result

    def _sum_counters(self) -> None:
        total = self.stats
        lanes = [lane.stats for lane in self.lanes]
        total.dropped = sum(s.dropped for s in lanes)
        total.corrupt = sum(s.corrupt for s in lanes)
        total.missing = sum(s.missing for s in lanes)
        total.reconnects = sum(s.reconnects for s in lanes)
        total.drift_warnings = sum(s.drift_warnings for s in lanes)
        total.drift_frames = sum(s.drift_frames for s in lanes)

    def _fail(self, lane: SourceLane, exc: BaseException) -> None:
        lane.error = exc
        lane.stats.stop_reason = "error"
        lane.feed.stop()
        others = "; the other sources go on" if len(self.lanes) > 1 else ""
        log.error("%s stopped: %s%s", lane.name, exc, others)

    def _finish_lane(self, lane: SourceLane) -> None:
        if lane.summary is not None:
            return
        for sink in lane.sinks:
            try:
                sink.close()
            except Exception as exc:
                if lane.error is None:
                    lane.error = exc
                    lane.stats.stop_reason = "error"
                log.error("%s: closing %s failed: %s", lane.name, type(sink).__name__, exc)
        stats = lane.stats
        stats.dropped, stats.corrupt, stats.reconnects = lane.dropped, lane.corrupt, lane.reconnects
        stats.missing = lane.source.missing
        if lane.error is None and lane.feed.error is not None:
            lane.error = lane.feed.error
            stats.stop_reason = "source_lost"
            others = "; the other sources go on" if len(self.lanes) > 1 else ""
            log.error("%s: %s%s", lane.name, lane.feed.error, others)
        elif self._error is not None and lane.error is None:
            stats.stop_reason = "error"
        elif stats.missing and stats.stop_reason == "end":
            stats.stop_reason = "truncated"  # the file ended before its stated length
        lane.summary = stats.summary()
        if all(other.summary is not None for other in self.lanes):
            self._finished.set()

    def _close(self) -> None:
        """Once, whoever comes first (the consumer or the exit hook): close the event
        consumers and observers and make the summary."""
        with self._close_lock:
            if self._closed.is_set():
                return
            try:
                self._thread.join(_JOIN_S)
                for thread in self._lane_threads:
                    thread.join(_JOIN_S)
                for lane in self.lanes:
                    lane.feed.join(timeout=5.0)
                self.events.close()
                for observer in self.observers:
                    try:
                        observer.close()
                    except Exception as exc:
                        log.error("closing %s failed: %s", type(observer).__name__, exc)
                with self._stats_lock:
                    self._sum_counters()
                self.summary = combined_summary(
                    self.stats,
                    {lane.name: lane.summary for lane in self.lanes if lane.summary},
                    {lane.name: str(lane.error) for lane in self.lanes if lane.error},
                )
                self.summary.losses = self.losses()
            finally:
                self._closed.set()
                _LIVE_RUNNERS.discard(self)

    def losses(self) -> list[str]:
        """What the outputs could not write (disk full, permission, refused events), one
        line each; empty when every output is complete."""
        lines = []
        for lane in self.lanes:
            for sink in lane.sinks:
                health = getattr(sink, "health", None)
                if isinstance(health, OutputHealth) and (line := health.describe()):
                    lines.append(f"{lane.name}: {line}" if len(self.lanes) > 1 else line)
        return lines + self.events.losses()

    @property
    def errors(self) -> dict[str, BaseException]:
        """Why sources stopped early (lost input, failing sink), by name."""
        return {lane.name: lane.error for lane in self.lanes if lane.error is not None}

    def _shut_down_at_exit(self) -> None:
        """From the atexit hook: stop reading, let frames in flight finish, close outputs."""
        if not self._started or self._closed.is_set():
            return
        self.stop()
        consumer = self._consumer
        consumer_alive = (
            consumer is not None
            and consumer is not threading.current_thread()
            and consumer.is_alive()
        )
        if self._iterating and consumer_alive:
            if self._closed.wait(_EXIT_GRACE_S):
                return  # the consumer's thread reached the end and closed the outputs
        elif self._iterating:
            # Nobody takes the results any more (a loop left without closing the iterator):
            # drop what is in flight and close every output from here.
            self._thread.join(_JOIN_S)
            self._discard_shared(sum(lane.summary is None for lane in self.lanes))
        if not self._finished.is_set() and not self._finished.wait(_EXIT_GRACE_S):
            log.error(
                "at exit: sources still running after %.0f s; outputs may be incomplete",
                _EXIT_GRACE_S,
            )
            return
        try:
            self._close()
        except Exception as exc:  # at exit there is nobody left to raise to
            log.error("closing the outputs at exit failed: %s", exc)

    def _close_unstarted(self) -> None:
        for lane in self.lanes:
            for sink in lane.sinks:
                with contextlib.suppress(Exception):  # the error being raised says more
                    sink.close()
            lane.source.close()
        self.events.close()


def run(
    model: AnomalyModel | str | os.PathLike[str],
    source: SourceSpec | Iterable[SourceSpec] | Mapping[str, Any],
    **options: Any,
) -> Iterator[FrameResult]:
    """Iterate over the results of ``model`` on ``source`` (or several), in frame order.

    ``options`` are those of :class:`StreamRunner` (sinks, events, max_frames, heatmap,
    reconnect, timeout, drift, ...). Leaving the loop early stops the stream and closes the
    sinks::

        for result in anomaly_edge.stream.run(model, "rtsp://camera/stream"):
            if result.prediction.label:
                alarm(result.index, result.prediction.score)
    """
    return iter(StreamRunner(model, source, **options))


def run_many(
    model: AnomalyModel | str | os.PathLike[str],
    cameras: Iterable[SourceSpec] | Mapping[str, Any],
    **options: Any,
) -> StreamSummary:
    """Run ``model`` over several cameras at once, each delivering on its own thread, and
    return how it went (:meth:`StreamRunner.run`)::

        from anomaly_edge.stream import Camera, run_many

        summary = run_many(
            "model.xml",
            [Camera("line1", "rtsp://10.0.0.21/s1"), Camera("line2", "line2.mp4")],
            events="events.jsonl",
        )
        for name, source in summary.sources.items():
            print(name, source.frames, source.anomalies)
    """
    return StreamRunner(model, cameras, **options).run()


FROZEN_FRAMES = 50  # identical frames in a row that make a camera look frozen


def _watch_camera(lane: SourceLane, frame: Frame) -> None:
    """Say when a camera changes resolution (its boxes stay in the frame's own coordinates)
    or keeps sending identical frames (frozen)."""
    image = frame.image
    size = (int(image.shape[1]), int(image.shape[0]))
    if lane.size is not None and size != lane.size:
        lane.resolution_changes += 1
        log.warning(
            "%s: resolution changed from %dx%d to %dx%d at frame %d; boxes and masks are in "
            "the new frame's coordinates",
            lane.name,
            *lane.size,
            *size,
            frame.index,
        )
        lane._previous = None
    lane.size = size
    sample = image[::8, ::8]
    if lane._previous is not None and np.array_equal(sample, lane._previous):
        lane.same_frames += 1
        if lane.same_frames >= FROZEN_FRAMES and not lane.frozen_warned:
            lane.frozen_warned = True
            log.warning(
                "%s: the last %d frames are identical: is the camera frozen? (check its "
                "connection and settings)",
                lane.name,
                lane.same_frames + 1,
            )
    else:
        lane.same_frames = 0
    lane._previous = sample.copy()


def _as_cameras(
    sources: SourceSpec | Iterable[SourceSpec] | Mapping[str, Any],
) -> tuple[list[Camera], Source | None]:
    """The cameras to run, and the already opened source when one :class:`Source` was given."""
    if isinstance(sources, Source):
        return [Camera("cam1", sources.description)], sources
    if isinstance(sources, (Camera, str, int, os.PathLike)):
        items: list[Camera] = [_as_camera(sources, 1)]
    elif isinstance(sources, Mapping):
        items = [Camera(str(name), spec) for name, spec in sources.items()]
    else:
        given = list(sources)
        if any(isinstance(item, Source) for item in given):
            raise InvalidInputError(
                "opened Source objects run one at a time; give several sources as specs "
                "(paths, URLs, camera indices) or Camera s"
            )
        items = [_as_camera(item, i) for i, item in enumerate(given, 1)]
    if not items:
        raise InvalidInputError("no source given; give at least one")
    check_unique(items, "sources")
    return items, None


def _as_camera(item: Any, position: int) -> Camera:
    if isinstance(item, Camera):
        return item
    if isinstance(item, os.PathLike):
        item = os.fspath(item)
    return Camera(f"cam{position}", item)


def _fixed_sinks(sinks: list[Sink]) -> Callable[[Camera], list[Sink]]:
    return lambda camera: sinks


def _event_log(events: EventLog | str | os.PathLike[str] | None) -> EventLog:
    if isinstance(events, EventLog):
        return events
    log_ = EventLog()
    if events is not None:
        from anomaly_edge.stream.events import JsonLinesWriter

        log_.add(JsonLinesWriter(events))
    return log_


def _add_file_sinks(sinks: list[Sink], camera: Camera, source: Source, alpha: float) -> None:
    # Appended one by one, so that a failing second sink still gets the first one closed.
    if camera.output is not None:
        # A live source's stated rate is often FFmpeg's default guess (25 for MJPEG over
        # HTTP): the video measures it from the frames' timestamps instead.
        fps = None if source.live else source.fps
        sinks.append(VideoSink(camera.output, fps, alpha=alpha))
    if camera.snapshots is not None:
        sinks.append(
            SnapshotSink(
                camera.snapshots,
                interval=camera.snapshot_interval,
                overlay=camera.snapshot_overlay,
                alpha=alpha,
            )
        )
