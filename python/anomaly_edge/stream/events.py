"""The event record: one format for every run (one source or many), fanned out to consumers.

An *event* is a JSON-ready dict that always names its ``source`` (the camera's name,
``cam1`` unless named). A processed frame's event (:func:`frame_event`) has ``source``,
``frame`` (index in the source), ``timestamp`` (seconds into the stream), ``time`` (UTC,
ISO 8601), the prediction's fields (``score``, ``label``, ``anomalous``, ``raw_score``,
``boxes``, ``mask`` for segmentation) and ``image`` (file name, folder sources). Other events
have an ``event`` field saying what happened: ``"drift"`` (a source's score drift warning,
:func:`drift_event`) or an operator's action such as ``"thresholds_changed"``.

:class:`EventLog` hands each event to its consumers: the JSON Lines file
(:class:`JsonLinesWriter`), MQTT and webhook publishers, the web view. Consumers are called
on the thread that delivers the source's results, so they must return quickly (the
publishers only queue).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from anomaly_edge.errors import InvalidInputError
from anomaly_edge.stream.outputs import OutputHealth

if TYPE_CHECKING:
    from anomaly_edge.stream.result import FrameResult

log = logging.getLogger("anomaly_edge.stream")


def utc_iso(wall_time: float) -> str:
    """``2026-11-29T20:51:00.123Z``: the ``time`` field of every event."""
    return (
        datetime.fromtimestamp(wall_time, timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _where(result: FrameResult) -> dict[str, Any]:
    return {
        "source": result.source,
        "frame": result.index,
        "timestamp": round(result.timestamp, 4),
        "time": utc_iso(result.wall_time),
    }


def frame_event(result: FrameResult) -> dict[str, Any]:
    """The event of one processed frame (see the module docstring)."""
    event: dict[str, Any] = {**_where(result), **result.prediction.to_dict()}
    if result.name is not None:
        event["image"] = result.name
    return event


def drift_event(result: FrameResult) -> dict[str, Any]:
    """The drift warning raised on ``result``'s frame: ``{"event": "drift", ...}``."""
    assert result.drift is not None
    return {**_where(result), **result.drift.to_dict()}


def result_events(result: FrameResult, all_frames: bool = False) -> list[dict[str, Any]]:
    """The events of one processed frame: its drift warning if it raised one, then the frame
    itself if it is anomalous (or always, with ``all_frames``)."""
    events = []
    if result.drift is not None:
        events.append(drift_event(result))
    if all_frames or result.prediction.label:
        events.append(frame_event(result))
    return events


def action_event(source: str, action: str, **details: Any) -> dict[str, Any]:
    """An operator's action on ``source`` (e.g. thresholds changed on the web page)."""
    return {"source": source, "event": action, "time": utc_iso(time.time()), **details}


class EventConsumer(Protocol):
    def event(self, record: dict[str, Any], result: FrameResult | None) -> None: ...

    def close(self) -> None: ...


class EventLog:
    """Fans events out to consumers. A consumer that fails keeps getting the next events (a
    full disk may be freed); what it lost is counted (:meth:`losses`), never allowed to stop
    the cameras."""

    def __init__(self, consumers: list[EventConsumer] | None = None) -> None:
        self.consumers: list[EventConsumer] = list(consumers or [])
        self.count = 0
        self._lock = threading.Lock()
        self._failing: dict[int, OutputHealth] = {}  # id(consumer) -> its failures

    def add(self, consumer: EventConsumer) -> None:
        self.consumers.append(consumer)

    def emit(self, record: dict[str, Any], result: FrameResult | None = None) -> None:
        # One event at a time across sources: the JSON Lines file and the MQTT stream then
        # hold the same events in the same order.
        with self._lock:
            self.count += 1
            for consumer in self.consumers:
                try:
                    consumer.event(record, result)
                except Exception as exc:
                    health = self._failing.get(id(consumer))
                    if health is None:
                        health = OutputHealth(f"event consumer {type(consumer).__name__}")
                        self._failing[id(consumer)] = health
                    health.failed(exc, lost=1)
                else:
                    health = self._failing.get(id(consumer))
                    if health is not None:
                        health.recovered()

    def losses(self) -> list[str]:
        """What the consumers lost, one line each (empty when nothing was lost)."""
        lines = []
        for consumer in self.consumers:
            for health in (getattr(consumer, "health", None), self._failing.get(id(consumer))):
                if isinstance(health, OutputHealth) and (line := health.describe()):
                    lines.append(line)
        return lines

    def close(self) -> None:
        for consumer in self.consumers:
            try:
                consumer.close()
            except Exception as exc:
                log.error("closing %s failed: %s", type(consumer).__name__, exc)


class JsonLinesWriter:
    """Every source's events in one JSON Lines file, written as they come.

    The file always ends on a whole line: each line goes out in one write at the end of the
    last good line, and a write that fails part way (disk full) is cut back. Lines that
    could not be written wait (in order, up to ``backlog`` of them) and are written with the
    next event or at :meth:`close` once there is room again; those that never could are
    counted in :attr:`health` (the run's summary and exit code say so).
    """

    BACKLOG = 100_000

    def __init__(self, path: str | os.PathLike[str], *, backlog: int = BACKLOG) -> None:
        self.path = Path(path)
        folder = self.path.resolve().parent
        if not folder.is_dir():
            raise InvalidInputError(
                f"cannot write events {self.path}: folder {folder} does not exist; create it first"
            )
        self.lines = 0
        self.backlog = backlog
        self.health = OutputHealth(f"events {self.path}")
        self._waiting: collections.deque[bytes] = collections.deque()
        self._end = 0  # the end of the last whole line
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)

    def event(self, record: dict[str, Any], result: FrameResult | None) -> None:
        if len(self._waiting) >= self.backlog:
            self._waiting.popleft()
            self.health.lose(1, "the backlog of unwritten events is full")
        self._waiting.append((json.dumps(record) + "\n").encode())
        self._write_waiting()

    def _write_waiting(self) -> None:
        fd = self._fd
        if fd is None:
            return
        while self._waiting:
            line = self._waiting[0]
            try:
                done = 0
                while done < len(line):
                    done += os.pwrite(fd, line[done:], self._end + done)
            except OSError as exc:
                with contextlib.suppress(OSError):  # cut back to the last whole line
                    os.ftruncate(fd, self._end)
                self.health.failed(exc)
                return
            self._end += len(line)
            self._waiting.popleft()
            self.lines += 1
            self.health.recovered()

    def close(self) -> None:
        if self._fd is None:
            return
        self._write_waiting()
        if self._waiting:
            self.health.lose(len(self._waiting), self.health.error or "could not be written")
            self._waiting.clear()
        os.close(self._fd)
        self._fd = None
