"""Events to an HTTP endpoint: each event POSTed as JSON, in order, through a spool.

A 2xx answer delivers the event; 408, 429, 5xx and network errors are retried (the events
wait on disk meanwhile); any other answer (400, 401, 404, ...) means the endpoint will never
take this event, so it is dropped and logged rather than blocking every later one.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from anomaly_edge.stream.spool import RejectedError, Spool

if TYPE_CHECKING:
    from anomaly_edge.stream.result import FrameResult

_RETRY_STATUS = {408, 425, 429}


class WebhookPublisher:
    """An event consumer that POSTs each event as ``application/json`` to ``url``."""

    def __init__(
        self,
        url: str,
        *,
        spool_dir: str | os.PathLike[str] | None = None,
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--webhook {url!r}: give an http:// or https:// URL")
        # user:password@ in the URL becomes HTTP basic authentication (urllib ignores it),
        # and stays out of messages.
        self.url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        self.shown = self.url
        self.timeout = timeout
        self.headers = {
            "Content-Type": "application/json",
            "User-Agent": "anomaly-edge",
            **(headers or {}),
        }
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.headers["Authorization"] = (
                "Basic " + base64.b64encode(credentials.encode()).decode()
            )
        self._spool = Spool("webhook", self._post, spool_dir=spool_dir)

    def event(self, record: dict[str, Any], result: FrameResult | None) -> None:
        self._spool.put(record)

    def close(self, timeout: float = 5.0) -> None:
        self._spool.close(timeout)

    @property
    def pending(self) -> int:
        return self._spool.pending

    def report(self) -> str:
        left = self._spool.pending
        return (
            f"webhook: {self._spool.delivered} event(s) delivered to {self.shown}"
            + (f", {left} undelivered" if left else "")
            + (f", {self._spool.rejected} refused" if self._spool.rejected else "")
        )

    def _post(self, record: dict[str, Any]) -> None:
        request = urllib.request.Request(
            self.url, data=json.dumps(record).encode(), headers=self.headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code in _RETRY_STATUS:
                raise  # the endpoint may recover: retried
            raise RejectedError(f"{self.shown} answered {exc.code} {exc.reason}") from None
