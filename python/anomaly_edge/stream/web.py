"""The live web view of a run, one camera or many (FastAPI + uvicorn, the ``web`` extra).

One page (:mod:`anomaly_edge.stream.web_page`) shows each camera's annotated stream, its
fps, latency and counters, the latest events with snapshots, and each camera's thresholds,
which an operator can change there (the change is an event, like an anomaly).

It never slows inference: a camera's delivery thread only keeps a reference to its newest
result; JPEG encoding happens on the server's worker threads, only while someone watches,
at most ``max_fps`` times a second per camera, and always of the newest frame (a slow viewer
skips frames, nothing queues up).

Routes: ``/`` (the page), ``/stream/<camera>.mjpg`` (MJPEG), ``/api/state`` (JSON),
``POST /api/cameras/<camera>/thresholds`` (JSON ``{"image_threshold": 12.5}``),
``/api/snapshots/<id>.jpg``. With a token, every route needs it: ``?token=`` once (a cookie
keeps it), or ``Authorization: Bearer <token>``; an empty token is refused.

Every request's ``Host`` must name an address the page serves (its own address and port;
``localhost`` and the loopback addresses on loopback; an IP address or this machine's name
when listening on every interface), even on loopback: otherwise a web page open in a
browser on the box could rename its own site to 127.0.0.1 (DNS rebinding) and change the
thresholds. A request with another ``Host`` gets 403.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import itertools
import logging
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from anomaly_edge.errors import InvalidInputError
from anomaly_edge.stream.engine import FrameObserver
from anomaly_edge.stream.web_page import PAGE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    import numpy as np

    from anomaly_edge.stream.engine import SourceLane, StreamRunner
    from anomaly_edge.stream.result import FrameResult

log = logging.getLogger("anomaly_edge.stream")

COOKIE = "anomaly_edge_token"
STREAM_WIDTH = 960  # wider frames are scaled down for the page
SNAPSHOT_WIDTH = 480
SNAPSHOTS_KEPT = 8  # events that keep their frame for a snapshot (memory stays bounded)
SNAPSHOT_EVERY_S = 1.0  # per camera: at most one snapshot a second
BOUNDARY = "frame"


class _Latest:
    """A camera's newest result and its JPEG, encoded once per result however many watch."""

    def __init__(self) -> None:
        self.result: FrameResult | None = None
        self.version = 0
        self._jpeg: tuple[int, bytes] | None = None
        self._lock = threading.Lock()

    def jpeg(self, alpha: float) -> tuple[int, bytes] | None:
        with self._lock:  # viewers of one camera share one encoding
            version, result = self.version, self.result
            if result is None:
                return None
            if self._jpeg is None or self._jpeg[0] != version:
                self._jpeg = (version, encode_jpeg(result.annotated(alpha), STREAM_WIDTH))
            return self._jpeg


def encode_jpeg(image: np.ndarray, width: int, quality: int = 80) -> bytes:
    if image.shape[1] > width:
        height = round(image.shape[0] * width / image.shape[1])
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


class WebView(FrameObserver):
    """Serves the page for the runner it is attached to (an observer and an event consumer).

    Args:
        host, port: where to listen (port 0: any free port; see :attr:`url`).
        token: required from every client when set (see the module docstring).
        max_fps: highest frame rate of each camera's stream on the page.
        alpha: overlay opacity.
        events_kept: how many recent events the page lists.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        token: str | None = None,
        max_fps: float = 5.0,
        alpha: float = 0.4,
        events_kept: int = 20,
    ) -> None:
        if max_fps <= 0:
            raise ValueError("max_fps must be positive")
        if token is not None and not token.strip():
            raise ValueError("--web-token: the token is empty; give one, or leave it out")
        self.token = token
        self.linger = False  # keep serving after the run ends (see close)
        self.ended = False
        self.max_fps = max_fps
        self.alpha = alpha
        self._runner: StreamRunner | None = None
        self._latest: dict[str, _Latest] = collections.defaultdict(_Latest)
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=events_kept)
        self._snapshots: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self._last_snapshot: dict[str, float] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ValueError(
                f"--web {host}:{port}: cannot listen there ({exc.strerror}); "
                "choose another port or address"
            ) from None
        sock.listen(64)
        sock.setblocking(False)
        self.host = host
        self.port = sock.getsockname()[1]
        self._names = _served_names(host)
        config = uvicorn.Config(
            self._app(),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name="anomaly-edge-web",
            daemon=True,
        )
        self._thread.start()
        self._socket = sock
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            raise RuntimeError("the web server did not start")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?token={self.token}" if self.token else ""
        return f"http://{host}:{self.port}/{query}"

    # ---- runner side (delivery threads) ----------------------------------------------------

    def attach(self, runner: StreamRunner) -> None:
        self._runner = runner

    def frame(self, camera: SourceLane, result: FrameResult, inference_s: float) -> None:
        latest = self._latest[camera.name]
        latest.result = result  # a reference: encoding waits for a viewer
        latest.version += 1

    def event(self, record: dict[str, Any], result: FrameResult | None) -> None:
        entry = {"id": next(self._ids), **record, "snapshot": None}
        with self._lock:
            source = record.get("source", "")
            now = time.monotonic()
            if (
                result is not None
                and record.get("anomalous")
                and now - self._last_snapshot.get(source, -1e9) >= SNAPSHOT_EVERY_S
            ):
                self._last_snapshot[source] = now
                self._snapshots[entry["id"]] = result
                entry["snapshot"] = f"/api/snapshots/{entry['id']}.jpg"
                while len(self._snapshots) > SNAPSHOTS_KEPT:
                    self._snapshots.popitem(last=False)
            self._events.appendleft(entry)

    def close(self) -> None:
        """Called by the runner at its end: stops the page, unless :attr:`linger` keeps it
        up (showing the final state) until :meth:`shutdown`."""
        if self.linger:
            self.ended = True
            return
        self.shutdown()

    def shutdown(self) -> None:
        """Stop serving (at once, whatever :attr:`linger` says)."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    # ---- the application -------------------------------------------------------------------

    def _app(self) -> FastAPI:
        app = FastAPI(title="anomaly-edge", docs_url=None, redoc_url=None, openapi_url=None)
        view = self

        @app.middleware("http")
        async def check_host(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            # Registered first, so it runs after require_token: both apply to every route.
            if not view.serves(request.headers.get("host", "")):
                return Response(
                    "this page answers only at the address it serves "
                    f"({view.url.split('?')[0]}); the Host header named another\n",
                    status_code=403,
                    media_type="text/plain",
                )
            return await call_next(request)

        @app.middleware("http")
        async def require_token(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            if view.token is None:
                return await call_next(request)
            given = (
                request.query_params.get("token")
                or request.cookies.get(COOKIE)
                or request.headers.get("authorization", "").removeprefix("Bearer ")
            )
            # compared as bytes: compare_digest refuses str outside ASCII with a TypeError
            if not given or not secrets.compare_digest(given.encode(), view.token.encode()):
                return Response(
                    "this page needs its token: open the address that "
                    "`anomaly-edge run --web` printed (it ends in ?token=...)\n",
                    status_code=401,
                    media_type="text/plain",
                )
            response = await call_next(request)
            if request.query_params.get("token"):
                response.set_cookie(COOKIE, view.token, httponly=True, samesite="strict")
            return response

        @app.get("/", response_class=HTMLResponse)
        async def page() -> str:
            return PAGE

        @app.get("/api/state")
        async def state() -> dict[str, Any]:
            runner = view._require_runner()
            with view._lock:
                events = list(view._events)
            return {
                "cameras": runner.status(),
                "events": events,
                "model": Path(getattr(runner.model, "path", "")).name,
                "stream_fps": view.max_fps,
                "time": time.time(),
            }

        @app.post("/api/cameras/{name}/thresholds")
        async def thresholds(name: str, request: Request) -> JSONResponse:
            if request.headers.get("content-type", "").split(";")[0] != "application/json":
                raise HTTPException(415, "send JSON (Content-Type: application/json)")
            origin = request.headers.get("origin")
            if origin and origin.split("://", 1)[-1] != request.headers.get("host"):
                raise HTTPException(403, "cross-site request refused")
            try:
                body = await request.json()
            except ValueError:
                raise HTTPException(400, "the body is not JSON") from None
            if not isinstance(body, dict) or set(body) - {"image_threshold", "pixel_threshold"}:
                raise HTTPException(400, 'send {"image_threshold": x, "pixel_threshold": y}')
            runner = view._require_runner()
            if name not in {lane.name for lane in runner.lanes}:
                raise HTTPException(404, f"no camera named {name!r}")
            client = request.client.host if request.client else "?"
            try:
                record = runner.set_thresholds(name, by=f"web ({client})", **body)
            except InvalidInputError as exc:
                raise HTTPException(400, str(exc)) from None
            return JSONResponse(record)

        @app.get("/api/snapshots/{ident}.jpg")
        async def snapshot(ident: int) -> Response:
            with view._lock:
                result = view._snapshots.get(ident)
            if result is None:
                raise HTTPException(404, "snapshot no longer kept")
            data = await asyncio.to_thread(
                encode_jpeg, result.annotated(view.alpha), SNAPSHOT_WIDTH
            )
            return Response(
                data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"}
            )

        @app.get("/stream/{name}.mjpg")
        async def stream(name: str) -> StreamingResponse:
            runner = view._require_runner()
            if name not in {lane.name for lane in runner.lanes}:
                raise HTTPException(404, f"no camera named {name!r}")
            return StreamingResponse(
                view._mjpeg(view._latest[name]),
                media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                headers={"Cache-Control": "no-store"},
            )

        return app

    def serves(self, host_header: str) -> bool:
        """Whether a request's ``Host`` names this page (see the module docstring)."""
        text = host_header.strip().lower()
        if text.startswith("["):
            name, _, rest = text[1:].partition("]")
            port_text = rest.removeprefix(":")
        elif text.count(":") == 1:
            name, _, port_text = text.partition(":")
        else:
            name, port_text = text, ""
        if port_text:
            if not port_text.isdigit() or int(port_text) != self.port:
                return False
        elif self.port != 80:
            return False
        name = name.rstrip(".")
        if name in self._names:
            return True
        if "*" in self._names:  # every interface: any address literal is safe from rebinding
            return _is_address(name)
        return False

    def _require_runner(self) -> StreamRunner:
        if self._runner is None:
            raise HTTPException(503, "starting")
        return self._runner

    async def _mjpeg(self, latest: _Latest) -> AsyncIterator[bytes]:
        sent = -1
        period = 1.0 / self.max_fps
        while not self._closing.is_set():
            started = time.monotonic()
            if latest.version != sent:
                encoded = await asyncio.to_thread(latest.jpeg, self.alpha)
                if encoded is not None:
                    sent, data = encoded
                    yield (
                        (
                            f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                            f"Content-Length: {len(data)}\r\n\r\n"
                        ).encode()
                        + data
                        + b"\r\n"
                    )
            # The rate cap: the newest frame at most every `period` seconds.
            await asyncio.sleep(max(0.02, period - (time.monotonic() - started)))


_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _served_names(host: str) -> set[str]:
    """The host names a request may give: ``*`` stands for any address literal."""
    host = host.lower()
    names = {host}
    if host in ("", "0.0.0.0", "::"):
        names |= {"*", "localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
    elif host == "localhost" or (_is_address(host) and ipaddress.ip_address(host).is_loopback):
        names |= _LOOPBACK_NAMES
    return names
