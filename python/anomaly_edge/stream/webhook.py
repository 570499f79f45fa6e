"""Events to an HTTP endpoint: each event POSTed as JSON, in order, through a spool.

Only a 2xx answer delivers the event; 408, 429, 5xx and network errors are retried (the
events wait on disk meanwhile); any other answer (400, 401, 404, ...) means the endpoint will
never take this event, so it is dropped, logged and counted as lost rather than blocking
every later one.

Redirects are not followed: a 3xx is a failure of that event (dropped and counted, its
``Location`` named in the log), because following one would turn the POST into a GET
without its body (what urllib and browsers do for 301/302/303) and "deliver" nothing. Give
the final URL.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from anomaly_edge.stream.outputs import OutputHealth
from anomaly_edge.stream.spool import RejectedError, Spool

if TYPE_CHECKING:
    from anomaly_edge.stream.result import FrameResult

_RETRY_STATUS = {408, 425, 429}


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as the error it is here (see the module docstring)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


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

    @property
    def health(self) -> OutputHealth:
        """What was lost (refused, dropped, undelivered at the end): the run's summary."""
        return self._spool.health

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
            with _OPENER.open(request, timeout=self.timeout) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code in _RETRY_STATUS:
                raise  # the endpoint may recover: retried
            if 300 <= exc.code < 400:
                where = exc.headers.get("Location", "?") if exc.headers else "?"
                raise RejectedError(
                    f"{self.shown} answered {exc.code} {exc.reason}, a redirect to {where}: "
                    "redirects are not followed (the POST would arrive as an empty GET); "
                    "give --webhook the final URL"
                ) from None
            raise RejectedError(f"{self.shown} answered {exc.code} {exc.reason}") from None
        if not 200 <= status < 300:  # urllib lets 1xx/3xx-without-handler through
            raise RejectedError(f"{self.shown} answered {status}, not a 2xx")
