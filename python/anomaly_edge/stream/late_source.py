"""A live source that was down when the run started: opened on the decode thread, with the
same backoff as a reconnection, so one camera that boots late does not hold up the others."""

from __future__ import annotations

import logging

from anomaly_edge.stream.sources import (
    NETWORK_SCHEMES,
    Frame,
    ReconnectPolicy,
    Source,
    SourceError,
    open_source,
)

log = logging.getLogger("anomaly_edge.stream")


class LateSource(Source):
    """Opens ``spec`` at the first :meth:`read`, retrying per ``policy``; then delegates."""

    live = True

    def __init__(
        self,
        spec: str | int,
        policy: ReconnectPolicy,
        timeout: float,
        first_error: SourceError,
        start: ReconnectPolicy | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.description = f"{spec} (not reachable yet)"
        self._policy = policy  # once open: its reconnections
        self._start = start or policy  # until then
        self._timeout = timeout
        self._first_error = first_error
        self._inner: Source | None = None

    def _read(self) -> Frame | None:
        if self._inner is None:
            self._inner = self._open()
            self.description = self._inner.description
            self.fps = self._inner.fps
        frame = self._inner.read()
        self.corrupt = self._inner.corrupt
        self.reconnects = self._inner.reconnects
        return frame

    def _open(self) -> Source:
        error = self._first_error
        start = self._start
        for attempt in range(1, start.attempts + 1):
            wait = start.wait_before(attempt)
            log.warning(
                "%s: %s; trying again in %.1f s (attempt %d of %d)",
                self.spec,
                error,
                wait,
                attempt,
                start.attempts,
            )
            if self._interrupted.wait(wait):
                raise SourceError(f"{self.spec}: stopped before it could be opened")
            try:
                source = open_source(self.spec, reconnect=self._policy, timeout=self._timeout)
            except SourceError as exc:
                error = exc
                continue
            log.info("%s: opened after %d attempt(s)", source.description, attempt)
            return source
        raise SourceError(
            f"{self.spec}: could not be opened after {start.attempts} attempt(s): {error}"
        )

    def interrupt(self) -> None:
        super().interrupt()
        if self._inner is not None:
            self._inner.interrupt()

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


def is_live_spec(spec: object) -> bool:
    """Camera indices and URLs: sources that may come up later. Files and folders may not."""
    if isinstance(spec, int):
        return True
    text = str(spec).strip()
    scheme, sep, _ = text.partition("://")
    return text.isdigit() or (bool(sep) and scheme.lower() in NETWORK_SCHEMES)


def open_or_defer(
    spec: object, policy: ReconnectPolicy, timeout: float, start: ReconnectPolicy | None = None
) -> Source:
    """:func:`open_source`, but a live source that is down now is retried in the background
    (per ``start``: attempts and capped backoff; default ``policy``)."""
    start = start or policy
    try:
        return open_source(spec, reconnect=policy, timeout=timeout)  # type: ignore[arg-type]
    except SourceError as exc:
        if not is_live_spec(spec) or start.attempts == 0:
            raise
        return LateSource(spec, policy, timeout, exc, start)  # type: ignore[arg-type]
