"""Events of a multi-camera run: one record format, fanned out to every consumer.

An *event* is a JSON-ready dict. Anomalies carry the fields of the single-source JSON Lines
(:class:`~anomaly_edge.stream.sinks.EventsSink`: ``frame``, ``timestamp``, ``time``,
``score``, ``label``, ``anomalous``, ``raw_score``, ``boxes``, ``image`` for folders) plus
``source``, the camera's name. Operator actions are events too, with an ``event`` field
saying what happened (``"thresholds_changed"``), so the plant sees who changed what.

:class:`EventLog` hands each event to its consumers: the shared JSON Lines file
(:class:`JsonLinesWriter`), MQTT and webhook publishers, the web view. Consumers are called
on the camera's delivery thread, so they must return quickly (the publishers only queue).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from anomaly_edge.errors import InvalidInputError

if TYPE_CHECKING:
    from anomaly_edge.stream.pipeline import FrameResult

log = logging.getLogger("anomaly_edge.stream")


def utc_iso(wall_time: float) -> str:
    """``2026-11-29T20:51:00.123Z``: the ``time`` field of every event."""
    return (
        datetime.fromtimestamp(wall_time, timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def frame_event(source: str, result: FrameResult) -> dict[str, Any]:
    """The event of one processed frame: the JSON Lines fields plus ``source``."""
    event: dict[str, Any] = {
        "source": source,
        "frame": result.index,
        "timestamp": round(result.timestamp, 4),
        "time": utc_iso(result.wall_time),
        **result.prediction.to_dict(),
    }
    if result.name is not None:
        event["image"] = result.name
    return event


def action_event(source: str, action: str, **details: Any) -> dict[str, Any]:
    """An operator's action on ``source`` (e.g. thresholds changed on the web page)."""
    return {"source": source, "event": action, "time": utc_iso(time.time()), **details}


class EventConsumer(Protocol):
    def event(self, record: dict[str, Any], result: FrameResult | None) -> None: ...

    def close(self) -> None: ...


class EventLog:
    """Fans events out to consumers; a consumer that fails is logged and left out, never
    allowed to stop the cameras."""

    def __init__(self, consumers: list[EventConsumer] | None = None) -> None:
        self.consumers: list[EventConsumer] = list(consumers or [])
        self.count = 0
        self._lock = threading.Lock()

    def add(self, consumer: EventConsumer) -> None:
        self.consumers.append(consumer)

    def emit(self, record: dict[str, Any], result: FrameResult | None = None) -> None:
        # One event at a time across cameras: the JSON Lines file and the MQTT stream then
        # hold the same events in the same order.
        with self._lock:
            self.count += 1
            for consumer in list(self.consumers):
                try:
                    consumer.event(record, result)
                except Exception as exc:
                    log.error(
                        "event consumer %s failed and is left out: %s", type(consumer).__name__, exc
                    )
                    self.consumers.remove(consumer)

    def close(self) -> None:
        for consumer in self.consumers:
            try:
                consumer.close()
            except Exception as exc:
                log.error("closing %s failed: %s", type(consumer).__name__, exc)


class JsonLinesWriter:
    """Every camera's events in one JSON Lines file, one flushed line per event."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        folder = self.path.resolve().parent
        if not folder.is_dir():
            raise InvalidInputError(
                f"cannot write events {self.path}: folder {folder} does not exist; create it first"
            )
        self.lines = 0
        # Written in place, line by line (as EventsSink does), so it can be followed live.
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def event(self, record: dict[str, Any], result: FrameResult | None) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.lines += 1

    def close(self) -> None:
        self._file.close()
