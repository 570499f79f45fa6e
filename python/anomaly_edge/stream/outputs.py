"""What an output lost: the one rule every output of a run follows.

Every output (video, events file, snapshots, MQTT, webhook) is complete or absent, never
half-written. When writing fails (disk full, permission, name too long), the output says so
at once in the log, keeps the cameras running, retries where it can recover (events, spool,
snapshots), and counts what it could not write. :class:`OutputHealth` is that bookkeeping;
the run's summary lists every output's :meth:`OutputHealth.describe` and ``run`` exits with
``ExitCode.OUTPUT`` (6) when anything was lost.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("anomaly_edge.stream")


class OutputHealth:
    """Failures and losses of one output, reported once when they start and once when the
    output recovers (not once per frame).

    Args:
        what: the output, as the messages name it (``events /data/e.jsonl``).
        unit: what is counted (``event``, ``snapshot``, ``frame``).
    """

    def __init__(self, what: str, unit: str = "event") -> None:
        self.what = what
        self.unit = unit
        self.lost = 0  # items that will never be written
        self.failures = 0  # failed attempts (some later recovered)
        self.error: str | None = None  # the first error
        self.failing = False
        self.fatal: str | None = None  # the whole output is gone (e.g. a removed video)
        self._lock = threading.Lock()

    def failed(self, exc: BaseException | str, lost: int = 0) -> None:
        """A write failed; ``lost`` items are gone for good (0: they will be retried)."""
        with self._lock:
            self.failures += 1
            self.lost += lost
            if self.error is None:
                self.error = str(exc)
            first = not self.failing
            self.failing = True
        if first:
            log.error("%s: writing failed: %s; %s", self.what, exc, self._what_now(lost))

    def lose(self, count: int, why: str) -> None:
        """``count`` items given up for good (their earlier failure was already reported)."""
        if count <= 0:
            return
        with self._lock:
            self.lost += count
            if self.error is None:
                self.error = why
        log.error("%s: %d %s(s) lost: %s", self.what, count, self.unit, why)

    def recovered(self) -> None:
        """A write succeeded after failures: say so once."""
        if not self.failing:
            return
        with self._lock:
            self.failing = False
        log.warning("%s: writing works again", self.what)

    def give_up(self, why: str) -> None:
        """The whole output is lost (e.g. a video that could not be finalised was removed)."""
        with self._lock:
            self.fatal = why
            if self.error is None:
                self.error = why
        log.error("%s: %s", self.what, why)

    @property
    def ok(self) -> bool:
        """Nothing lost (failures that recovered do not count)."""
        return self.lost == 0 and self.fatal is None

    def describe(self) -> str | None:
        """One line for the summary, or None when nothing was lost."""
        if self.fatal is not None:
            return f"{self.what}: LOST: {self.fatal}"
        if self.lost:
            return f"{self.what}: {self.lost} {self.unit}(s) LOST ({self.error})"
        return None

    def _what_now(self, lost: int) -> str:
        if lost:
            return f"{lost} {self.unit}(s) lost; the cameras go on"
        return "retrying; the cameras go on"
