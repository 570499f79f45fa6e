"""Ordered, at-least-once delivery of events that never blocks the cameras.

:meth:`Spool.put` only appends: to a bounded queue in memory, or, once that is full (the
broker or endpoint is down, or slower than the events), to a spool file on disk. One worker
thread delivers the oldest event first and removes it only after the receiver confirmed it
(an MQTT PUBACK, an HTTP 2xx); a failure is retried with growing pauses, so events arrive
in order once the receiver is back and none is lost meanwhile.

Order is kept simply: the file only ever holds events newer than everything in memory (once
something is on disk, new events go to disk too, until it is all delivered).

The spool file survives a power cut: each event is one line appended in one write, and a
line cut short by the cut (or any line that is not a JSON object) is detected at the next
start, counted (:attr:`Spool.torn`), logged and removed, so it neither stops delivery nor
gets glued to the next event. A write that fails (disk full) is cut back to the last whole
line and the events wait in memory (:attr:`Spool.overflow` of them at most) until the disk
has room again; only what exceeds that is lost, counted in :attr:`Spool.health`. The worker
thread never dies on bad input.

With a ``spool_dir`` of your own, events still undelivered at :meth:`close` stay in
``<spool_dir>/<name>.jsonl`` and go out first at the next start. While the file is being
delivered, ``.<name>.delivered`` says up to where, so a process that dies without closing
sends none of those events again at the next start. A receiver that confirmed an
event whose confirmation got lost gets it twice (at least once, as MQTT QoS 1 promises).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from anomaly_edge.atomic import atomic_write
from anomaly_edge.stream.outputs import OutputHealth

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
        overflow: events kept in memory while the spool file cannot be written (disk full).
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
        overflow: int = 100_000,
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
        self.torn = 0  # broken lines found in the spool file at the start (power cut)
        self.overflow = overflow
        self._temporary = spool_dir is None
        folder = Path(
            tempfile.mkdtemp(prefix="anomaly-edge-spool-") if spool_dir is None else spool_dir
        )
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name}.jsonl"
        self._progress = folder / f".{name}.delivered"
        self.health = OutputHealth(f"{name} spool {self.path}")
        self._memory: collections.deque[dict[str, Any]] = collections.deque()
        # Newer than everything on disk: events the disk had no room for (written later).
        self._unwritten: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Condition()
        self._on_disk = self._check_leftovers()
        # The file: lines [read_offset, end) are waiting; a line is appended in one write.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self._end = os.fstat(self._fd).st_size
        self._reader = open(self.path, "rb")  # noqa: SIM115 (closed in close())
        self._read_offset = 0
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
            return len(self._memory) + self._on_disk + len(self._unwritten)

    def put(self, record: dict[str, Any]) -> None:
        """Queue one event; never waits for the receiver, never raises for a full disk."""
        with self._lock:
            if self._closing:
                raise RuntimeError(f"{self.name}: spool is closed")
            if self._on_disk or self._unwritten or len(self._memory) >= self.memory:
                if self._on_disk + len(self._unwritten) >= self.max_spooled:
                    self._drop(1, f"spool full ({self.max_spooled} events waiting)")
                    return
                if not self._on_disk and not self._unwritten:
                    log.warning(
                        "%s: receiver not keeping up; spooling events to %s", self.name, self.path
                    )
                self._unwritten.append(record)
                self._write_unwritten()
                if len(self._unwritten) > self.overflow:
                    self._unwritten.popleft()  # the oldest of the unwritten: order stays
                    self._drop(1, "the disk is full and the events waiting in memory too")
            else:
                self._memory.append(record)
            self._lock.notify_all()

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        if self.dropped == count or self.dropped % 1000 == 0:
            self.health.lose(count, why)
        else:
            self.health.lost += count

    def _write_unwritten(self) -> None:
        """Append the events the disk had no room for (under the lock); stops at a failure."""
        while self._unwritten:
            line = json.dumps(self._unwritten[0]).encode() + b"\n"
            try:
                written = os.write(self._fd, line)
                if written != len(line):
                    raise OSError(28, "No space left on device (short write)")
            except OSError as exc:
                with contextlib.suppress(OSError):  # no torn line left behind
                    os.ftruncate(self._fd, self._end)
                self.health.failed(exc)
                return
            self._end += len(line)
            self._unwritten.popleft()
            self._on_disk += 1
            self.health.recovered()

    def _check_leftovers(self) -> int:
        """Count the waiting events of an earlier run: skip those it had delivered already
        (its progress file says up to where) and drop the broken lines (a power cut tears
        the last one), so they neither stop delivery nor get glued to new events. Read line
        by line: a long outage's spool need not fit in memory."""
        if not self.path.exists():
            self._progress.unlink(missing_ok=True)
            return 0
        with open(self.path, "rb") as handle:
            done = self._delivered_before(handle)
            handle.seek(done)
            good = torn = 0
            for line in handle:
                if _is_whole_event(line):
                    good += 1
                else:
                    torn += 1
            self.torn = torn
            if torn:
                log.warning(
                    "%s: %d broken line(s) in %s (cut short by a power cut or damaged) "
                    "skipped; the %d whole event(s) go out",
                    self.name,
                    torn,
                    self.path,
                    good,
                )
            if torn or done:
                handle.seek(done)
                with atomic_write(self.path, "wb") as out:
                    for line in handle:
                        if _is_whole_event(line):
                            out.write(line)
        self._progress.unlink(missing_ok=True)
        return good

    def _delivered_before(self, handle: BinaryIO) -> int:
        """Bytes at the start of the spool file already delivered by a run that stopped
        without tidying up (a crash): 0 when unknown."""
        try:
            done = int(self._progress.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0
        if not 0 < done <= os.fstat(handle.fileno()).st_size:
            return 0
        handle.seek(done - 1)
        if handle.read(1) != b"\n":
            return 0
        log.info("%s: %d byte(s) of %s were delivered before; skipped", self.name, done, self.path)
        return done

    def _save_progress(self) -> None:
        """Remember up to where the spool file is delivered (no fsync: after a crash of the
        process, not of the machine, the next start then sends no event twice)."""
        try:
            fd = os.open(self._progress, os.O_WRONLY | os.O_CREAT, 0o666)
            try:
                os.pwrite(fd, f"{self._read_offset:>20}\n".encode(), 0)
            finally:
                os.close(fd)
        except OSError:
            pass  # a full disk: at worst, some events are sent twice after a crash

    def close(self, timeout: float = 5.0) -> int:
        """Deliver what is left for up to ``timeout`` seconds, then stop; returns how many
        events are still undelivered (kept in the spool file when ``spool_dir`` was given,
        else lost and counted in :attr:`health`)."""
        with self._lock:
            self._closing = True
            self._give_up_at = time.monotonic() + timeout
            self._lock.notify_all()
        self._thread.join()
        with self._lock:
            left = len(self._memory) + self._on_disk + len(self._unwritten)
            kept = self._save_leftovers()
        if left and not kept:
            why = (
                "not delivered before the end of the run (give --spool-dir to keep them)"
                if self._temporary
                else f"not delivered, and {self.path} could not be written"
            )
            self.health.lose(left, why)
        elif left:
            log.warning("%s: %d event(s) not delivered, kept in %s", self.name, left, self.path)
        return left

    # ---- the worker ------------------------------------------------------------------------

    def _work(self) -> None:
        pause = self.retry_delay
        while True:
            with self._lock:
                while not (self._waiting() or self._closing):
                    self._lock.wait()
                if self._give_up(time.monotonic()) or not self._waiting():
                    return
                try:
                    record = self._next()
                except Exception as exc:  # a spool file that cannot be read: never die
                    self.health.failed(exc)
                    self._lock.wait(self.max_retry_delay)
                    continue
                if record is None:
                    continue  # a broken line, skipped
            try:
                self.deliver(record)
            except RejectedError as exc:
                self.rejected += 1
                self.health.lose(1, f"the receiver refused it: {exc}")
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
                self._pop()

    def _waiting(self) -> bool:
        return bool(self._memory or self._on_disk or self._unwritten)

    def _give_up(self, now: float) -> bool:
        return self._closing and self._give_up_at is not None and now >= self._give_up_at

    def _next(self) -> dict[str, Any] | None:
        """The oldest waiting event (under the lock); None after skipping a broken line."""
        if self._memory:
            return self._memory[0]
        if not self._on_disk:
            return self._unwritten[0]
        self._reader.seek(self._read_offset)
        line = self._reader.readline()
        if _is_whole_event(line):
            record: dict[str, Any] = json.loads(line)
            return record
        self.torn += 1
        log.error("%s: a broken line in %s skipped", self.name, self.path)
        self._pop()
        return None

    def _pop(self) -> None:
        """Remove the event just delivered (or skipped) (under the lock)."""
        if self._memory:
            self._memory.popleft()
            return
        if not self._on_disk:
            self._unwritten.popleft()
            return
        self._reader.seek(self._read_offset)
        self._read_offset += len(self._reader.readline())
        self._on_disk -= 1
        if self._on_disk:
            self._save_progress()
        if not self._on_disk:  # all delivered: start the file afresh
            os.ftruncate(self._fd, 0)
            self._read_offset = self._end = 0
            self._progress.unlink(missing_ok=True)
            log.info("%s: receiver caught up; the spool is empty again", self.name)
            self._write_unwritten()

    def _save_leftovers(self) -> bool:
        """Keep what is undelivered, oldest first, in the spool file (or remove it); False
        when it could not be kept."""
        self._reader.seek(self._read_offset)
        rest = self._reader.read()
        self._reader.close()
        os.close(self._fd)
        leftovers = (
            b"".join(json.dumps(r).encode() + b"\n" for r in self._memory)
            + rest
            + b"".join(json.dumps(r).encode() + b"\n" for r in self._unwritten)
        )
        self._memory.clear()
        self._unwritten.clear()
        if self._temporary or not leftovers:
            self._progress.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)
            if self._temporary:
                os.rmdir(self.path.parent)
            return not self._temporary
        try:
            with atomic_write(self.path, "wb") as handle:
                handle.write(leftovers)
            self._progress.unlink(missing_ok=True)
        except OSError as exc:
            log.error(
                "%s: could not keep the undelivered events in %s: %s", self.name, self.path, exc
            )
            return False
        return True


def _is_whole_event(line: bytes) -> bool:
    """A line as read from the file: whole (it ends with a newline) and one JSON object."""
    return line.endswith(b"\n") and _is_event(line[:-1])


def _is_event(line: bytes) -> bool:
    """A whole spool line: one JSON object."""
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # also UnicodeDecodeError
        return False
