"""Several cameras through one compiled model: :func:`run_many` and :class:`MultiStreamRunner`.

::

    cameras ─► decode threads ─► one inference thread ─► one request pool ─► a delivery thread
    (one each)  (FrameFeed)       (round robin)           (AnomalyModel)      per camera: sinks,
                                                                              events, observers

* **Fair share.** The inference thread takes the next frame round robin from the cameras that
  have one ready, so each camera gets an equal share of the model when all are busy, and an
  idle camera costs nothing.
* **Per-camera settings.** Thresholds, task and minimum area are applied to the model just
  before each camera's frame is submitted (the model applies the settings in force at
  submission), so cameras share one compiled model but not one sensitivity.
* **Isolation.** Each camera has its own decode thread (stale frames of live sources are
  dropped and counted per camera), its own reconnections and its own delivery thread with its
  sinks. A camera whose source is lost or whose sink fails stops alone; the others go on.
  A camera never has more than ``num_requests + 2`` frames between submission and its
  sinks, so a slow sink only slows its own camera.
* **Events.** Every camera's events go through one :class:`~anomaly_edge.stream.events.EventLog`
  (the shared JSON Lines file, MQTT, webhook, web view), each naming its camera.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from anomaly_edge.errors import InvalidInputError
from anomaly_edge.prediction import Prediction, Task
from anomaly_edge.stream.config import Camera, check_unique
from anomaly_edge.stream.events import EventLog, action_event, frame_event
from anomaly_edge.stream.feed import FrameFeed
from anomaly_edge.stream.late_source import open_or_defer
from anomaly_edge.stream.pipeline import _EXIT_GRACE_S, _LIVE_RUNNERS, FrameResult
from anomaly_edge.stream.sinks import SnapshotSink, VideoSink
from anomaly_edge.stream.sources import Frame, ReconnectPolicy, Source
from anomaly_edge.stream.stats import StreamStats, StreamSummary

if TYPE_CHECKING:
    from anomaly_edge.model import AnomalyModel
    from anomaly_edge.stream.sinks import Sink

log = logging.getLogger("anomaly_edge.stream")


class _End(enum.Enum):
    """The end-of-results marker a camera's queue ends with (an enum, so mypy narrows it)."""

    END = enum.auto()


_END: Final = _End.END
# What a camera's delivery thread gets: the frame, its prediction, the inference seconds.
_Delivery = tuple[Frame, Prediction, float]
_BUSY_POLL_S = 0.002  # nothing to submit, frames in flight: results may finish any moment
_IDLE_POLL_S = 0.005  # nothing to submit, nothing in flight: waiting for the cameras


@dataclass(frozen=True)
class CameraSettings:
    """What the model applies to one camera's frames (raw score units)."""

    task: Task
    image_threshold: float
    pixel_threshold: float
    min_area: int


@dataclass
class MultiSummary:
    """How a multi-camera run went: one :class:`StreamSummary` per camera."""

    cameras: dict[str, StreamSummary]
    errors: dict[str, str]  # camera -> why it stopped early (lost source, failing sink)
    seconds: float

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.cameras.values())

    @property
    def fps(self) -> float:
        return round(self.frames / self.seconds, 2) if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "cameras": {n: s.to_dict() for n, s in self.cameras.items()},
            "errors": dict(self.errors),
            "seconds": self.seconds,
            "frames": self.frames,
            "fps": self.fps,
        }


class FrameObserver:
    """Sees every processed frame of every camera (metrics, web view); override what you need.

    Called on the camera's delivery thread: return quickly.
    """

    def attach(self, runner: MultiStreamRunner) -> None:
        """Called once by the runner it observes, before the run starts."""

    def frame(self, camera: CameraLane, result: FrameResult, inference_s: float) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(eq=False)
class CameraLane:
    """One camera's share of the run: its source, feed, sinks, counters and settings."""

    camera: Camera
    source: Source
    sinks: list[Sink]
    settings: CameraSettings
    heatmap: bool
    capacity: int
    stats: StreamStats = field(default_factory=StreamStats)
    feed: FrameFeed = field(init=False)
    # Written by the inference thread only:
    submitted: int = 0
    forwarded: int = 0
    input_done: bool = False
    ended: bool = False
    # Written by the delivery thread only:
    delivered: int = 0
    error: BaseException | None = None
    summary: StreamSummary | None = None

    def __post_init__(self) -> None:
        self.feed = FrameFeed(self.source)
        # Bounded by `capacity` (see can_take).
        self.results: queue.Queue[_Delivery | _End] = queue.Queue()
        self.thread: threading.Thread | None = None

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


class MultiStreamRunner:
    """Runs one model over several cameras at once (see the module docstring).

    Example::

        from anomaly_edge import AnomalyModel
        from anomaly_edge.stream import Camera, MultiStreamRunner

        model = AnomalyModel("model.xml", device="CPU")
        runner = MultiStreamRunner(
            model,
            [
                Camera("line1", "rtsp://10.0.0.21/s1"),
                Camera("line2", "line2.mp4", image_threshold=14.0),
            ],
            events="events.jsonl",
        )
        summary = runner.run()

    Args:
        model: an :class:`~anomaly_edge.AnomalyModel` (its request pool is shared).
        cameras: :class:`Camera` s, or sources (named ``cam1``, ``cam2``, ...), or a mapping
            name -> source.
        events: a JSON Lines path for every camera's events, or an :class:`EventLog` with
            consumers already attached (MQTT, webhook, ...), or None.
        observers: :class:`FrameObserver` s (metrics, web view).
        sinks: extra sinks per camera: ``sinks(camera) -> list``.
        heatmap: compute heatmaps for segmentation cameras (nicer overlays, more work).
        alpha: overlay opacity of videos and overlay snapshots.
        reconnect, timeout: live sources' retry policy and network timeout. A live source
            that is down at the start is retried in the background like a reconnection.
        on_result: ``on_result(camera_name, result)`` for every frame, on the camera's
            delivery thread.
    """

    def __init__(
        self,
        model: AnomalyModel | str | os.PathLike[str],
        cameras: Iterable[Camera | str | int | os.PathLike[str]] | Mapping[str, Any],
        *,
        events: EventLog | str | os.PathLike[str] | None = None,
        observers: Iterable[FrameObserver] = (),
        sinks: Callable[[Camera], list[Sink]] | None = None,
        heatmap: bool = False,
        alpha: float = 0.4,
        reconnect: ReconnectPolicy | None = None,
        timeout: float = 10.0,
        on_result: Callable[[str, FrameResult], Any] | None = None,
    ) -> None:
        if isinstance(model, (str, os.PathLike)):
            from anomaly_edge.model import AnomalyModel

            model = AnomalyModel(Path(model))
        self.model = model
        self.cameras = _as_cameras(cameras)
        if isinstance(events, EventLog):
            self.events = events
        else:
            self.events = EventLog()
            if events is not None:
                from anomaly_edge.stream.events import JsonLinesWriter

                self.events.add(JsonLinesWriter(events))
        self.observers = list(observers)
        self.on_result = on_result
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._error: BaseException | None = None
        # The model's own settings, put back at the end: whoever shares it finds it as it was.
        self._original = CameraSettings(
            Task(model.task), model.image_threshold, model.pixel_threshold, model.min_area
        )
        self._applied: CameraSettings | None = self._original
        self._next = 0
        self.summary: MultiSummary | None = None
        policy = reconnect or ReconnectPolicy()
        capacity = max(1, int(getattr(model, "num_requests", 1) or 1)) + 2
        self.lanes: list[CameraLane] = []
        try:
            for camera in self.cameras:
                source = open_or_defer(camera.source, policy, timeout)
                lane = CameraLane(
                    camera, source, [], self._settings_for(camera), heatmap=False, capacity=capacity
                )
                self.lanes.append(lane)
                lane.heatmap = heatmap and lane.settings.task == Task.SEGMENTATION
                _add_file_sinks(lane.sinks, camera, source, alpha)
                if sinks is not None:
                    lane.sinks.extend(sinks(camera))
        except BaseException:
            self._close_unstarted()
            raise
        self._lanes_by_name = {lane.name: lane for lane in self.lanes}
        for observer in self.observers:
            observer.attach(self)
        self._thread = threading.Thread(
            target=self._infer, name="anomaly-edge-infer-many", daemon=True
        )

    # ---- control ---------------------------------------------------------------------------

    def start(self) -> MultiStreamRunner:
        """Start every camera and the inference thread; returns at once."""
        self.started = time.monotonic()
        _LIVE_RUNNERS.add(self)  # stopped and its outputs closed if the program exits first
        for lane in self.lanes:
            lane.stats.started = self.started
            lane.thread = threading.Thread(
                target=self._deliver,
                args=(lane,),
                daemon=True,
                name=f"anomaly-edge-deliver-{lane.name}",
            )
            lane.thread.start()
            lane.feed.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reading every camera; frames in flight still finish. Safe in signal handlers."""
        self._stop.set()
        for lane in self.lanes:
            lane.feed.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """True once every camera has finished (waits at most ``timeout`` seconds)."""
        return self._finished.wait(timeout)

    def join(self) -> MultiSummary:
        """Wait for the end; close the event consumers and observers; return the summary.

        Raises the model's error if inference itself failed (a camera's own failure is
        reported in :attr:`MultiSummary.errors` instead)."""
        while not self._finished.wait(0.5):  # short waits keep signal handlers responsive
            pass
        self._thread.join()
        for lane in self.lanes:
            assert lane.thread is not None
            lane.thread.join()
            lane.feed.join(timeout=5.0)
        self.events.close()
        for observer in self.observers:
            try:
                observer.close()
            except Exception as exc:
                log.error("closing %s failed: %s", type(observer).__name__, exc)
        self.summary = MultiSummary(
            cameras={lane.name: lane.summary for lane in self.lanes if lane.summary},
            errors={lane.name: str(lane.error) for lane in self.lanes if lane.error},
            seconds=round(time.monotonic() - self.started, 3),
        )
        if self._error is not None:
            raise self._error
        return self.summary

    def _shut_down_at_exit(self) -> None:
        """From the atexit hook: stop reading, let frames in flight finish, close outputs."""
        if self.summary is not None or self._thread.ident is None:  # joined, or never started
            return
        self.stop()
        if not self._finished.wait(_EXIT_GRACE_S):
            log.error(
                "at exit: cameras still running after %.0f s; outputs may be incomplete",
                _EXIT_GRACE_S,
            )
            return
        try:
            self.join()
        except Exception as exc:  # at exit there is nobody left to raise to
            log.error("closing the outputs at exit failed: %s", exc)

    def run(self) -> MultiSummary:
        """:meth:`start`, then :meth:`join`."""
        return self.start().join()

    # ---- live settings and state (web view, status line) -----------------------------------

    def lane(self, name: str) -> CameraLane:
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
        """Change a camera's thresholds (raw units) from the next frame on; the change is an
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
        """Each camera's live state: counters, fps, latency, settings."""
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
                    "task": lane.settings.task.value,
                    "image_threshold": lane.settings.image_threshold,
                    "pixel_threshold": lane.settings.pixel_threshold,
                    "error": None if lane.error is None else str(lane.error),
                }
            )
        return out

    def render_status(self) -> str:
        """One line for the terminal: each camera's fps and anomalies, and the total."""
        parts = []
        total = 0.0
        for lane in self.lanes:
            fps = lane.stats.recent_fps() if lane.stats.frames and lane.summary is None else 0.0
            total += fps
            text = f"{lane.name} {lane.stats.frames} fr {fps:.1f} fps {lane.stats.anomalies} anom"
            if lane.dropped:
                text += f" {lane.dropped} drop"
            if lane.summary is not None:
                text += " (failed)" if lane.error is not None else " (done)"
            parts.append(text)
        parts.append(f"total {total:.1f} fps")
        return " | ".join(parts)

    # ---- the inference thread --------------------------------------------------------------

    def _settings_for(self, camera: Camera) -> CameraSettings:
        model = self.model
        return CameraSettings(
            task=Task(camera.task) if camera.task else Task(model.task),
            image_threshold=(
                camera.image_threshold
                if camera.image_threshold is not None
                else model.image_threshold
            ),
            pixel_threshold=(
                camera.pixel_threshold
                if camera.pixel_threshold is not None
                else model.pixel_threshold
            ),
            min_area=camera.min_area if camera.min_area is not None else model.min_area,
        )

    def _apply(self, settings: CameraSettings) -> None:
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
                    frame = lane.feed.get(0)
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
                if not submitted:
                    time.sleep(_BUSY_POLL_S if in_flight else _IDLE_POLL_S)
        except BaseException as exc:  # the model failed: every camera stops
            self._error = exc
            log.error("inference failed, stopping every camera: %s", exc)
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
                    lane.results.put(_END)

    def _check_input(self, lane: CameraLane) -> None:
        if lane.input_done:
            return
        limit = lane.camera.max_frames
        if lane.error is not None:
            self._input_done(lane, "error")
        elif limit is not None and lane.submitted >= limit:
            self._input_done(lane, "max_frames")
        elif lane.feed.finished:
            self._input_done(lane, "end")

    def _input_done(self, lane: CameraLane, reason: str) -> None:
        if not lane.input_done:
            lane.input_done = True
            if lane.stats.stop_reason == "end":
                lane.stats.stop_reason = reason
            lane.feed.stop()

    def _end_finished(self, lanes: list[CameraLane]) -> None:
        for lane in lanes:
            if lane.input_done and not lane.ended and lane.forwarded == lane.submitted:
                lane.ended = True
                lane.results.put(_END)

    def _forward(self, done: list[tuple[Any, Prediction]]) -> int:
        now = time.monotonic()
        for (lane, frame, submitted_at), prediction in done:
            lane.forwarded += 1
            lane.results.put((frame, prediction, now - submitted_at))
        return len(done)

    # ---- each camera's delivery thread -----------------------------------------------------

    def _deliver(self, lane: CameraLane) -> None:
        try:
            while (item := lane.results.get()) is not _END:
                try:
                    if lane.error is None:
                        self._deliver_one(lane, *item)
                except BaseException as exc:
                    self._fail(lane, exc)
                finally:
                    lane.delivered += 1
        finally:
            self._finish(lane)
            if all(other.summary is not None for other in self.lanes):
                self._finished.set()

    def _deliver_one(
        self, lane: CameraLane, frame: Frame, prediction: Prediction, inference_s: float
    ) -> None:
        result = FrameResult(
            index=frame.index,
            timestamp=frame.timestamp,
            frame=frame.image,
            prediction=prediction,
            latency=time.monotonic() - frame.captured,
            wall_time=frame.wall_time,
            name=frame.name,
        )
        lane.stats.record(result.latency, bool(prediction.label))
        for sink in lane.sinks:
            sink.write(result)
        if prediction.label or lane.camera.all_frames:
            self.events.emit(frame_event(lane.name, result), result)
        for observer in self.observers:
            observer.frame(lane, result, inference_s)
        if self.on_result is not None:
            self.on_result(lane.name, result)

    def _fail(self, lane: CameraLane, exc: BaseException) -> None:
        lane.error = exc
        lane.stats.stop_reason = "error"
        lane.feed.stop()
        log.error("camera %s stopped: %s; the other cameras go on", lane.name, exc)

    def _finish(self, lane: CameraLane) -> None:
        for sink in lane.sinks:
            try:
                sink.close()
            except Exception as exc:
                if lane.error is None:
                    lane.error = exc
                    lane.stats.stop_reason = "error"
                log.error("camera %s: closing %s failed: %s", lane.name, type(sink).__name__, exc)
        if lane.error is None and lane.feed.error is not None:
            lane.error = lane.feed.error
            lane.stats.stop_reason = "source_lost"
            log.error("camera %s: %s; the other cameras go on", lane.name, lane.feed.error)
        stats = lane.stats
        stats.dropped, stats.corrupt, stats.reconnects = lane.dropped, lane.corrupt, lane.reconnects
        lane.summary = stats.summary()

    def _close_unstarted(self) -> None:
        for lane in self.lanes:
            for sink in lane.sinks:
                with contextlib.suppress(Exception):  # the error being raised says more
                    sink.close()
            lane.source.close()


def run_many(
    model: AnomalyModel | str | os.PathLike[str],
    cameras: Iterable[Camera | str | int | os.PathLike[str]] | Mapping[str, Any],
    **options: Any,
) -> MultiSummary:
    """Run ``model`` over several cameras at once and return how it went.

    ``options`` are those of :class:`MultiStreamRunner` (events, observers, sinks, heatmap,
    alpha, reconnect, timeout, on_result)::

        from anomaly_edge.stream import Camera, run_many

        summary = run_many(
            "model.xml",
            [
                Camera("line1", "rtsp://10.0.0.21/s1"),
                Camera("line2", "rtsp://10.0.0.22/s1", image_threshold=14.0),
            ],
            events="events.jsonl",
        )
        for name, camera in summary.cameras.items():
            print(name, camera.frames, camera.anomalies)
    """
    return MultiStreamRunner(model, cameras, **options).run()


def _as_cameras(cameras: Iterable[Any] | Mapping[str, Any]) -> list[Camera]:
    if isinstance(cameras, Mapping):
        items = [Camera(str(name), spec) for name, spec in cameras.items()]
    else:
        items = [
            c if isinstance(c, Camera) else Camera(f"cam{i}", c) for i, c in enumerate(cameras, 1)
        ]
    if not items:
        raise InvalidInputError("no camera given; give at least one source")
    check_unique(items, "cameras")
    return items


def _add_file_sinks(sinks: list[Sink], camera: Camera, source: Source, alpha: float) -> None:
    # Appended one by one, so that a failing second sink still gets the first one closed.
    if camera.output is not None:
        sinks.append(VideoSink(camera.output, source.fps, alpha=alpha))
    if camera.snapshots is not None:
        sinks.append(
            SnapshotSink(
                camera.snapshots,
                interval=camera.snapshot_interval,
                overlay=camera.snapshot_overlay,
                alpha=alpha,
            )
        )
