"""Ordered, at-least-once delivery of events that never blocks the cameras.

:meth:`Spool.put` only appends: to a bounded queue in memory, or, once that is full (the
broker or endpoint is down, or slower than the events), to a spool file on disk. One worker
thread delivers the oldest event first and removes it only after the receiver confirmed it
(an MQTT PUBACK, an HTTP 2xx); a failure is retried with growing pauses, so events arrive
in order once the receiver is back and none is lost meanwhile.

Order is kept simply: the file only ever holds events newer than everything in memory (once
something is on disk, new events go to disk too, until it is all delivered).

With a ``spool_dir`` of your own, events still undelivered at :meth:`close` stay in
``<spool_dir>/<name>.jsonl`` and go out first at the next start. A receiver that confirmed an
event whose confirmation got lost gets it twice (at least once, as MQTT QoS 1 promises).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anomaly_edge.atomic import atomic_write

log = logging.getLogger("anomaly_edge.stream")


class RejectedError(Exception):
    """The receiver refused an event for good (e.g. HTTP 400): retrying cannot help."""


class Spool:
    """A delivery queue: memory first, then disk; delivered in order by a worker thread.

    Args:
        name: names the spool file and the log messages (``mqtt``, ``webhook``).
        deliver: sends one event; returns when the receiver confirmed it, raises
            :class:`RejectedError` to drop it, any other exception to retry it later.
        spool_dir: folder of the spool file (default: a temporary folder, removed at close
            when empty).
        memory: events kept in memory before spilling to disk.
        max_spooled: events the spool file may hold; beyond that (the receiver has been away
            for very long) new events are dropped and counted, so a full disk never stops
            the cameras.
        retry_delay, max_retry_delay: first pause after a failure, doubled up to the max.
    """

    def __init__(
        self,
        name: str,
        deliver: Callable[[dict[str, Any]], None],
        *,
        spool_dir: str | os.PathLike[str] | None = None,
        memory: int = 1000,
        max_spooled: int = 1_000_000,
        retry_delay: float = 0.2,
        max_retry_delay: float = 5.0,
    ) -> None:
        if memory < 1:
            raise ValueError("the spool needs room for at least one event in memory")
        self.name = name
        self.deliver = deliver
        self.memory = memory
        self.max_spooled = max_spooled
        self.dropped = 0  # events that found the spool file full
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.delivered = 0
        self.rejected = 0
        self.failures = 0  # failed attempts (each is retried)
        self._temporary = spool_dir is None
        folder = Path(
            tempfile.mkdtemp(prefix="anomaly-edge-spool-") if spool_dir is None else spool_dir
        )
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name}.jsonl"
        self._memory: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Condition()
        # The file: lines [read_offset, end) are waiting; a line is appended whole and flushed.
        self._writer = open(self.path, "a+b")  # noqa: SIM115 (closed in close())
        self._reader = open(self.path, "rb")  # noqa: SIM115
        self._read_offset = 0
        self._on_disk = sum(1 for _ in self._reader)  # left over from an earlier run
        if self._on_disk:
            log.info(
                "%s: %d undelivered event(s) from an earlier run go out first", name, self._on_disk
            )
        self._closing = False
        self._give_up_at: float | None = None
        self._thread = threading.Thread(target=self._work, name=f"anomaly-edge-{name}", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Events not yet delivered (memory and disk)."""
        with self._lock:
            return len(self._memory) + self._on_disk

    def put(self, record: dict[str, Any]) -> None:
        """Queue one event; never waits for the receiver."""
        with self._lock:
            if self._closing:
                raise RuntimeError(f"{self.name}: spool is closed")
            if self._on_disk or len(self._memory) >= self.memory:
                if self._on_disk >= self.max_spooled:
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 1000 == 0:
                        log.error(
                            "%s: spool full (%d events waiting); %d new event(s) dropped",
                            self.name,
                            self._on_disk,
                            self.dropped,
                        )
                    return
                if not self._on_disk:
                    log.warning(
                        "%s: receiver not keeping up; spooling events to %s", self.name, self.path
                    )
                self._writer.write(json.dumps(record).encode() + b"\n")
                self._writer.flush()
                self._on_disk += 1
            else:
                self._memory.append(record)
            self._lock.notify_all()

    def close(self, timeout: float = 5.0) -> int:
        """Deliver what is left for up to ``timeout`` seconds, then stop; returns how many
        events are still undelivered (kept in the spool file when ``spool_dir`` was given)."""
        with self._lock:
            self._closing = True
            self._give_up_at = time.monotonic() + timeout
            self._lock.notify_all()
        self._thread.join()
        with self._lock:
            left = len(self._memory) + self._on_disk
            self._save_leftovers()
        if left:
            where = "lost (temporary spool)" if self._temporary else f"kept in {self.path}"
            log.warning("%s: %d event(s) not delivered, %s", self.name, left, where)
        return left

    # ---- the worker ------------------------------------------------------------------------

    def _work(self) -> None:
        pause = self.retry_delay
        while True:
            with self._lock:
                while not (self._memory or self._on_disk or self._closing):
                    self._lock.wait()
                if self._give_up(time.monotonic()) or not (self._memory or self._on_disk):
                    return
                record = self._memory[0] if self._memory else self._peek_disk()
            try:
                self.deliver(record)
            except RejectedError as exc:
                self.rejected += 1
                log.error("%s: event dropped, the receiver refused it: %s", self.name, exc)
            except Exception as exc:
                self.failures += 1
                if self.failures == 1 or self.failures % 50 == 0:
                    log.warning(
                        "%s: delivery failed (%s); retrying, events wait meanwhile", self.name, exc
                    )
                with self._lock:
                    if self._give_up(time.monotonic()):
                        return
                    self._lock.wait(pause)
                pause = min(pause * 2, self.max_retry_delay)
                continue
            else:
                self.delivered += 1
            pause = self.retry_delay
            with self._lock:
                self._pop(from_memory=bool(self._memory))

    def _give_up(self, now: float) -> bool:
        return self._closing and self._give_up_at is not None and now >= self._give_up_at

    def _peek_disk(self) -> dict[str, Any]:
        self._reader.seek(self._read_offset)
        record: dict[str, Any] = json.loads(self._reader.readline())
        return record

    def _pop(self, from_memory: bool) -> None:
        if from_memory:
            self._memory.popleft()
            return
        self._reader.seek(self._read_offset)
        self._read_offset += len(self._reader.readline())
        self._on_disk -= 1
        if not self._on_disk:  # all delivered: start the file afresh
            self._writer.truncate(0)
            self._read_offset = 0
            log.info("%s: receiver caught up; the spool is empty again", self.name)

    def _save_leftovers(self) -> None:
        """Keep what is undelivered, oldest first, in the spool file (or remove it)."""
        self._reader.seek(self._read_offset)
        rest = self._reader.read()
        self._reader.close()
        self._writer.close()
        leftovers = b"".join(json.dumps(r).encode() + b"\n" for r in self._memory) + rest
        self._memory.clear()
        if self._temporary or not leftovers:
            self.path.unlink(missing_ok=True)
            if self._temporary:
                os.rmdir(self.path.parent)
            return
        with atomic_write(self.path, "wb") as handle:
            handle.write(leftovers)
