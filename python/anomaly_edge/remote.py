"""A model served elsewhere, used like a local one: ``open_model(url)``, the remote backend.

The server (``anomaly-edge serve``, OpenVINO Model Server, KServe) runs the network; this
side reads the model's metadata from the server, and the one core
(:mod:`anomaly_edge.core`) does the rest as for a local model: the resize (or the tiles of a
tiled model), the bounded asynchronous interface and the C++ decision. The network input
(normalised as the IR's own pre-processing steps do, see
:class:`~anomaly_edge.model_loading.HostNormalisation`) goes over KServe's Open Inference
Protocol (v2, encoded as :mod:`anomaly_edge.v2_protocol` says). So a remote model and a local
one give the same predictions, and thresholds stay adjustable here.

Talks v2 with the ``kserve`` package: its ``InferenceGRPCClient`` for ``grpc://`` URLs, and
for ``http(s)://`` the binary-data extension on ``httpx``, the HTTP library under its REST
client (see :class:`_RestEndpoint` for why not that client itself). One asyncio loop in a
background thread keeps several requests in flight while the caller decodes the next frame;
it only moves bytes: post-processing runs on the caller's thread, as for a local model.

Several URLs make a client-side replica list: requests go round-robin to the replicas that
answer; one that fails is set aside (and probed again after a back-off) and its request is
sent to another. When none answers, a request waits and retries (``reconnect``: doubling
delays, a bounded number of times) before it fails with :class:`ServerUnavailableError`, so
a stream survives a server restart without losing a frame.

A server that wants a token (``anomaly-edge serve --token``) gets it as
``Authorization: Bearer <token>`` (gRPC metadata ``authorization``): the ``token=``
argument, else the environment variable ``ANOMALY_EDGE_TOKEN``, as `serve` reads it.

Each call has one deadline, ``timeout``, for the whole answer (not for each chunk of it): a
URL that streams without end (a camera's MJPEG URL given as the model) fails in that time,
or at once when its content type shows it is a video or image stream.

Errors: no replica reachable, or none answering in time -> :class:`ServerUnavailableError`
(CLI exit code 3, like an unreachable stream); the model missing on the server or not an
anomaly-edge model, a refused token, or a server error (HTTP 500, gRPC INTERNAL: any answer
but a success, 400, 404 or a busy/restarting server's 502-504) ->
:class:`~anomaly_edge.errors.ModelLoadError` (exit code 4) at once, with the status and the
server's own message; a frame the server refuses -> :class:`~anomaly_edge.errors.InvalidInputError`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from anomaly_edge.core import DEFAULT_MAX_PENDING, Core, Finish, Pool, whole_number
from anomaly_edge.errors import AnomalyEdgeError, InvalidInputError, ModelLoadError
from anomaly_edge.images import ColorFormat
from anomaly_edge.model_loading import HostNormalisation
from anomaly_edge.prediction import Task
from anomaly_edge.v2_protocol import (
    DEFAULT_MODEL_NAME,
    RAW_INPUT,
    RAW_OUTPUT,
    RT_INFO_KEY,
    RT_INFO_PARAMETER,
    TOKEN_ENV,
    is_url,
    metadata_from_rt_info,
    parameters_dict,
)

if TYPE_CHECKING:
    from anomaly_edge.metadata import ModelMetadata

log = logging.getLogger("anomaly_edge.remote")
_T = TypeVar("_T")


# Connections are closed at interpreter exit, while the background loop can still run: a
# gRPC channel left to the garbage collector of a finalising interpreter may hang the exit.
_LIVE_REMOTES: weakref.WeakSet[RemoteAnomalyModel] = weakref.WeakSet()


@atexit.register
def _close_live_remotes() -> None:
    for model in list(_LIVE_REMOTES):
        model.close_connections()


class ServerUnavailableError(AnomalyEdgeError, ConnectionError):
    """No model server of the list answered (down, unreachable, or timing out)."""


class _ModelMissing(Exception):
    """The server answers but does not have the model (HTTP 404 / gRPC NOT_FOUND)."""


class _Unavailable(Exception):
    """This replica did not answer: try another one, or again later."""


@dataclass(frozen=True)
class RetryPolicy:
    """When no replica answers: wait ``delay * 2**n`` seconds (at most ``max_delay``), at most
    ``attempts`` times, then give up (the semantics of the stream's ReconnectPolicy)."""

    attempts: int = 10
    delay: float = 0.5
    max_delay: float = 8.0

    def wait_before(self, attempt: int) -> float:
        return float(min(self.delay * 2.0 ** (attempt - 1), self.max_delay))


def is_remote(model: object) -> bool:
    """True for a model URL (``http://``, ``https://``, ``grpc://``) or a list of them."""
    return is_url(model)


def split_urls(text: str) -> list[str]:
    """``"http://a:8080,http://b:8080"`` -> the two URLs (a replica list on the command line)."""
    return [part.strip() for part in text.split(",") if part.strip()]


class RemoteAnomalyModel(Core):
    """A model on a v2 model server: the remote backend of the one core
    (:class:`~anomaly_edge.core.Core`), so it has :class:`~anomaly_edge.AnomalyModel`'s
    interface, locking, tiling and decision.

    Use :func:`anomaly_edge.open_model` with a URL (or ``AnomalyModel.remote``) to make one.

    Args:
        urls: one server URL or a list (replicas): ``http://host:8080``,
            ``http://host:8080/v2/models/NAME`` (the model name in the URL), or
            ``grpc://host:8081``.
        name: the model's name on the server (default: from the URL, else "anomaly-edge").
        task, image_threshold, pixel_threshold, min_area, color, max_pending: as for a local
            model.
        num_requests: requests kept in flight by the asynchronous interface (default 4 per
            replica).
        timeout: seconds one request may take, its whole answer included, before its
            replica counts as failed.
        reconnect: waits and retries while no replica answers (see :class:`RetryPolicy`).
        token: sent as ``Authorization: Bearer <token>`` (default: ``$ANOMALY_EDGE_TOKEN``).

    Raises:
        ServerUnavailableError: no replica answered.
        ModelLoadError: the model is not on the server, or is not an anomaly-edge model.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        name: str | None = None,
        *,
        task: Task | str | None = None,
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
        min_area: int = 1,
        color: ColorFormat | str = ColorFormat.BGR,
        num_requests: int | None = None,
        timeout: float = 10.0,
        reconnect: Any = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        token: str | None = None,
    ) -> None:
        url_list = [urls] if isinstance(urls, str) else list(urls)
        if not url_list or not is_remote(url_list):
            raise InvalidInputError(
                f"expected model server URLs (http://host:port, grpc://host:port), got {urls!r}"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise InvalidInputError(f"timeout must be a positive number, got {timeout!r}")
        if num_requests is not None:
            num_requests = whole_number(num_requests, "num_requests", minimum=1)
        self.color = ColorFormat.parse(color)
        self.device = "remote"
        self.timeout = float(timeout)
        self.reconnect = reconnect if reconnect is not None else RetryPolicy()
        if token is None:
            token = os.environ.get(TOKEN_ENV) or None
        elif not isinstance(token, str) or not token.strip():
            raise InvalidInputError(f"token must be a non-empty string, got {token!r}")
        _quiet_kserve_client_logs()
        self._endpoints = [_endpoint(url, name, self.timeout, token) for url in url_list]
        self.name = self._endpoints[0].name
        self.path = Path(self._endpoints[0].url)  # what messages and `info` show
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="anomaly-edge-remote", daemon=True
        )
        self._thread.start()
        self._next = itertools.count()
        try:
            self.metadata = self._call(self._connect(), timeout=None)
            self._setup(
                task=task,
                image_threshold=image_threshold,
                pixel_threshold=pixel_threshold,
                min_area=min_area,
                max_pending=max_pending,
            )
            # The server runs the IR as exported: this side normalises, with the steps a
            # local model's graph runs (anomaly_edge.model_loading.attach_preprocessing).
            self._normalise = HostNormalisation(self.metadata, self.color)
        except BaseException:
            self.close_connections()
            raise
        self._num_requests = num_requests or 4 * len(self._endpoints)
        _LIVE_REMOTES.add(self)

    # ---- the backend: v2 calls -------------------------------------------------------------

    @property
    def num_requests(self) -> int:
        """Network calls the asynchronous interface keeps in flight."""
        return self._num_requests

    def _backend_tensor(self, images: np.ndarray) -> np.ndarray:
        return self._normalise(images) if images.dtype == np.uint8 else images

    def _infer(self, tensor: np.ndarray) -> np.ndarray:
        return self._call(self._infer_remote(tensor))

    def _new_pool(self) -> Pool:
        return _RemotePool(self, self.num_requests)

    def close_connections(self) -> None:
        """Close the connections and stop the background loop (the model is unusable after)."""
        if hasattr(self, "_async_lock"):  # set up: frames may be in flight
            self.close()
        _LIVE_REMOTES.discard(self)
        if self._loop.is_running():
            with contextlib.suppress(Exception):  # closing is best effort
                self._call(self._close_endpoints(), timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def __enter__(self) -> RemoteAnomalyModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_connections()

    def info(self) -> dict[str, Any]:
        """What this model is and where it runs: metadata, settings, the replicas."""
        md = self.metadata
        return {
            "path": ",".join(e.url for e in self._endpoints),
            "name": self.name,
            "model": md.model,
            "backbone": md.backbone,
            "input_size": list(md.input_size),
            "tiles": self._tiles.describe() if self._tiles is not None else None,
            "precision": md.precision,
            "task": self._task.value,
            "image_threshold": self.image_threshold,
            "pixel_threshold": self.pixel_threshold,
            "min_area": self.min_area,
            "color": self.color.value,
            "device": self.device,
            "num_requests": self.num_requests,
            "replicas": [e.url for e in self._endpoints],
        }

    def __repr__(self) -> str:
        urls = [e.url for e in self._endpoints]
        return (
            f"AnomalyModel.remote({urls if len(urls) > 1 else urls[0]!r}, {self.name!r}, "
            f"model={self.metadata.model!r}, task={self._task.value!r})"
        )

    # ---- the work --------------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _infer_remote(self, tensor: np.ndarray) -> np.ndarray:
        """One network call, on the next replica that answers; waits while none does."""
        waits = 0
        while True:
            for endpoint in self._rotation():
                try:
                    return await endpoint.infer(tensor)
                except _Unavailable as exc:
                    endpoint.set_aside(str(exc))
                except _ModelMissing as exc:
                    raise ModelLoadError(str(exc)) from None
            waits += 1
            if waits > self.reconnect.attempts:
                raise ServerUnavailableError(self._unavailable_message())
            await asyncio.sleep(self.reconnect.wait_before(waits))

    def _rotation(self) -> list[_Endpoint]:
        """Replicas to try for one request: those not set aside, from the next in turn; when
        all are set aside, every one (a probe: one may be back)."""
        now = time.monotonic()
        start = next(self._next) % len(self._endpoints)
        order = self._endpoints[start:] + self._endpoints[:start]
        usable = [e for e in order if e.usable_at <= now]
        return usable or order

    def _unavailable_message(self) -> str:
        reasons = "; ".join(f"{e.url}: {e.last_error or 'no answer'}" for e in self._endpoints)
        return (
            f"model server not reachable after {self.reconnect.attempts} retries "
            f"({reasons}); check that `anomaly-edge serve` (or OVMS/KServe) is running and "
            "the URL is right"
        )

    async def _connect(self) -> ModelMetadata:
        """Ask every replica for the model's metadata; all that answer must agree."""
        results = await asyncio.gather(
            *(e.rt_info() for e in self._endpoints), return_exceptions=True
        )
        answered = [
            (e, r)
            for e, r in zip(self._endpoints, results, strict=True)
            if not isinstance(r, BaseException)
        ]
        for endpoint, result in zip(self._endpoints, results, strict=True):
            if isinstance(result, _ModelMissing):
                raise ModelLoadError(str(result))
            if isinstance(result, ModelLoadError):
                raise result
            if isinstance(result, _Unavailable):
                endpoint.set_aside(str(result))
                if answered:
                    log.warning(
                        "replica %s is not answering (%s); using the others", endpoint.url, result
                    )
            elif isinstance(result, BaseException):
                raise result
        if not answered:
            reasons = "; ".join(f"{e.url}: {e.last_error}" for e in self._endpoints)
            raise ServerUnavailableError(
                f"cannot reach the model server ({reasons}); start it (`anomaly-edge serve "
                "--model model.xml`) or check the URL and port"
            )
        first_endpoint, first = answered[0]
        for endpoint, other in answered[1:]:
            if other != first:
                raise ModelLoadError(
                    f"replicas {first_endpoint.url} and {endpoint.url} serve "
                    f"different models under the name {self.name!r}"
                )
        return metadata_from_rt_info(first, f"model {self.name!r} at {first_endpoint.url}")

    async def _close_endpoints(self) -> None:
        for endpoint in self._endpoints:
            await endpoint.close()


class _RemotePool:
    """Calls in flight on the model's event loop, finished in order on the caller's thread:
    the remote backend's :class:`~anomaly_edge.core.Pool` (the loop only moves bytes)."""

    def __init__(self, model: RemoteAnomalyModel, size: int) -> None:
        self._model = model
        self._size = size
        self._busy: deque[tuple[Future[np.ndarray], Finish]] = deque()

    def __len__(self) -> int:
        return len(self._busy)

    def start(self, tensor: np.ndarray, finish: Finish) -> None:
        if len(self._busy) >= self._size:
            self.finish_next()
        future = asyncio.run_coroutine_threadsafe(
            self._model._infer_remote(tensor), self._model._loop
        )
        self._busy.append((future, finish))

    def finish_ready(self) -> None:
        while self._busy and self._busy[0][0].done():
            self.finish_next()

    def finish_next(self) -> None:
        future, finish = self._busy.popleft()
        output: np.ndarray | None = None
        error: BaseException | None = None
        try:
            output = future.result()
        except BaseException as exc:  # a failed call belongs to this frame alone
            error = exc
        finish(output, error)
        if error is not None and not isinstance(error, Exception):
            raise error  # Ctrl-C and the like still stop the caller

    def cancel(self, reason: BaseException) -> None:
        while self._busy:
            future, finish = self._busy.popleft()
            with contextlib.suppress(BaseException):  # the frame fails with `reason` anyway
                future.exception()
            finish(None, reason)


# ---- one replica, per protocol ---------------------------------------------------------------


class _Endpoint:
    url: str
    name: str

    def __init__(self, url: str, name: str, timeout: float, token: str | None = None) -> None:
        self.url = url
        self.name = name
        self.timeout = timeout
        self.token = token
        self.usable_at = 0.0  # time.monotonic() from which it is tried again
        self.last_error: str | None = None
        self._backoff = 0.0

    def set_aside(self, reason: str) -> None:
        self.last_error = reason
        self._backoff = min(max(self._backoff * 2, 0.2), 5.0)
        self.usable_at = time.monotonic() + self._backoff

    def _recovered(self) -> None:
        self._backoff = 0.0
        self.usable_at = 0.0

    async def rt_info(self) -> dict[str, Any]:
        raise NotImplementedError

    async def infer(self, tensor: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _RestEndpoint(_Endpoint):
    """v2 over HTTP with the binary-data extension, on ``httpx`` (the transport under
    kserve's ``InferenceRESTClient``). That client is not used for inference: kserve 0.21
    decodes every binary output into a Python list of numbers, which cost 150 ms per
    256 x 256 anomaly map on two busy cores, more than the network itself."""

    def __init__(
        self, url: str, base: str, name: str, timeout: float, token: str | None = None
    ) -> None:
        super().__init__(url, name, timeout, token)
        self.base = base
        self._http: Any = None

    def _client(self) -> Any:
        if self._http is None:  # made on the loop's thread, where it is used
            import httpx

            headers = {"authorization": f"Bearer {self.token}"} if self.token else None
            self._http = httpx.AsyncClient(timeout=self.timeout, headers=headers)
        return self._http

    async def _fetch(
        self, method: str, path: str, limit: int, **options: Any
    ) -> tuple[int, Any, bytes]:
        """One call: status, headers and the whole body, within ``timeout`` in all (httpx's
        own timeouts are per chunk: a stream that never ends would never time out)."""
        import httpx

        async def whole_answer() -> tuple[int, Any, bytes]:
            async with self._client().stream(method, self.base + path, **options) as response:
                kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if kind.split("/")[0] in ("multipart", "video", "image"):
                    raise ModelLoadError(
                        f"{self.url} answers with a {kind} stream, not as a v2 model server "
                        "(a camera?): give the address of `anomaly-edge serve` or OpenVINO "
                        "Model Server"
                    )
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise ModelLoadError(
                            f"{self.url} answered {path} with more than {limit} bytes: it "
                            "does not look like a v2 model server; check the URL"
                        )
                return response.status_code, response.headers, bytes(body)

        try:
            return await asyncio.wait_for(whole_answer(), self.timeout)
        except asyncio.TimeoutError:
            raise _Unavailable(f"no complete answer within {self.timeout:g} s") from None
        except (httpx.TransportError, OSError) as exc:
            raise _Unavailable(_describe(exc)) from None

    def _check(self, status: int, body: bytes, what: str) -> None:
        """A failed answer as the error it means (a success returns)."""
        if 200 <= status < 300:
            return
        message = _server_message(body)
        if status == 404:
            raise _ModelMissing(
                f"the server at {self.url} has no model {self.name!r} "
                "(give the name it serves, e.g. with --remote NAME)"
            )
        if status in (502, 503, 504):  # a proxy without its server, or one starting
            raise _Unavailable(f"HTTP {status}: {message}")
        if status in (401, 403):
            raise ModelLoadError(
                f"the server at {self.url} refused {what} (HTTP {status}: {message}); "
                + (
                    "the token sent is not its token"
                    if self.token
                    else f"it needs a token: set {TOKEN_ENV}, or pass token="
                )
            )
        if status == 400:
            raise InvalidInputError(f"{self.url} refused {what}: {message}")
        raise ModelLoadError(
            f"the server at {self.url} answered {what} with HTTP {status}: {message}"
        )

    async def rt_info(self) -> dict[str, Any]:
        status, _, body = await self._fetch("GET", f"/v2/models/{self.name}", _METADATA_LIMIT)
        self._check(status, body, "the model metadata request")
        try:
            metadata = json.loads(body)
        except ValueError:
            metadata = None
        if not isinstance(metadata, dict):
            raise ModelLoadError(f"{self.url} did not answer with v2 model metadata")
        if RT_INFO_KEY not in metadata:
            raise ModelLoadError(
                f"{self.url} serves {self.name!r} without its rt_info in the model metadata; "
                "serve it with `anomaly-edge serve` or OpenVINO Model Server"
            )
        rt_info: dict[str, Any] = metadata[RT_INFO_KEY]
        return rt_info

    async def infer(self, tensor: np.ndarray) -> np.ndarray:
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": RAW_INPUT,
                        "shape": list(tensor.shape),
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": tensor.nbytes},
                    }
                ],
                "outputs": [{"name": RAW_OUTPUT, "parameters": {"binary_data": True}}],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        status, headers, body = await self._fetch(
            "POST",
            f"/v2/models/{self.name}/infer",
            # the map has one channel where the input has three, plus a JSON header
            limit=tensor.nbytes + _METADATA_LIMIT,
            content=header + tensor.tobytes(),
            headers={
                _HEADER_LENGTH: str(len(header)),
                "content-type": "application/octet-stream",
            },
        )
        self._check(status, body, "the frame")
        self._recovered()
        return _rest_anomaly_map(body, headers, self.url)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()


_METADATA_LIMIT = 16 * 1024 * 1024  # model metadata is a few kB; a stream is endless


_HEADER_LENGTH = "inference-header-content-length"  # the v2 binary-data extension


def _server_message(body: bytes) -> str:
    """What a server said when it failed: v2's ``{"error": ...}``, FastAPI's ``detail``, or
    the start of its text."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        for key in ("error", "detail", "message"):
            if answer.get(key):
                return str(answer[key])[:500]
    text = body[:500].decode("utf-8", "replace").strip()
    return text or "(no message)"


def _rest_anomaly_map(content: bytes, headers: Any, url: str) -> np.ndarray:
    try:
        json_length = int(headers.get(_HEADER_LENGTH, len(content)))
        outputs = json.loads(content[:json_length])["outputs"]
    except (ValueError, KeyError, TypeError):
        raise ModelLoadError(f"{url} did not answer with a v2 inference response") from None
    offset = json_length
    for output in outputs:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if output.get("name") == RAW_OUTPUT or len(outputs) == 1:
            if output.get("datatype") != "FP32":
                raise ModelLoadError(f"{url} returned a {output.get('datatype')} anomaly map")
            if size is not None:
                data = np.frombuffer(content, np.float32, int(size) // 4, offset)
            else:
                data = np.asarray(output["data"], dtype=np.float32)
            return _network_output(data.reshape(output["shape"]), url)
        offset += int(size or 0)
    raise ModelLoadError(f"{url} returned no {RAW_OUTPUT!r} output")


class _GrpcEndpoint(_Endpoint):
    def __init__(
        self, url: str, target: str, name: str, timeout: float, token: str | None = None
    ) -> None:
        super().__init__(url, name, timeout, token)
        self.target = target
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._client: Any = None
        self._closing: set[asyncio.Future[None]] = set()

    def _grpc(self) -> Any:
        if self._client is None:  # grpc.aio channels belong to the loop that made them
            from kserve import InferenceGRPCClient

            self._client = InferenceGRPCClient(
                self.target,
                timeout=self.timeout,
                retries=0,
                channel_args=[
                    ("grpc.max_send_message_length", -1),
                    ("grpc.max_receive_message_length", -1),
                    ("grpc.enable_retries", 0),
                    # gRPC's own reconnect back-off grows to minutes; ours decides
                    ("grpc.initial_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                ],
            )
        return self._client

    def set_aside(self, reason: str) -> None:
        super().set_aside(reason)
        # A fresh channel connects at its first call; one that failed waits out gRPC's
        # back-off first, which can outlast a server's restart by many seconds.
        client, self._client = self._client, None
        if client is not None:
            closing = asyncio.ensure_future(client.close())
            self._closing.add(closing)  # held until done, as asyncio asks
            closing.add_done_callback(self._closing.discard)

    async def _call(self, request: Any) -> Any:
        import grpc

        client = self._grpc()
        try:
            return await client.infer(request, headers=self._metadata)
        except asyncio.CancelledError:
            # set_aside() closed this channel while the call waited on it (another request saw
            # the replica fail): grpc.aio cancels the calls in flight. That is the replica's
            # failure, to be retried elsewhere, unless this task itself is being cancelled.
            task = asyncio.current_task()
            cancelling = getattr(task, "cancelling", lambda: 0)()  # Python 3.11+
            if cancelling or client is self._client:
                raise
            raise _Unavailable("the connection was reset while the call waited") from None
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:
                raise _ModelMissing(
                    f"the server at {self.url} has no model {self.name!r} "
                    "(give the name it serves, e.g. with --remote NAME)"
                ) from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidInputError(f"{self.url} refused the frame: {exc.details()}") from None
            self._check_answer(exc)
            raise _Unavailable(f"{code.name}: {exc.details()}") from None

    def _check_answer(self, exc: Any) -> None:
        """A gRPC status that is the server's answer, not its absence: reported at once."""
        import grpc

        code = exc.code()
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            hint = (
                "the token sent is not its token"
                if self.token
                else f"it needs a token: set {TOKEN_ENV}, or pass token="
            )
            raise ModelLoadError(
                f"the server at {self.url} refused the call ({code.name}: {exc.details()}); " + hint
            ) from None
        if code in _grpc_server_errors():
            raise ModelLoadError(
                f"the server at {self.url} answered {code.name}: {exc.details()}"
            ) from None

    def _request(self, tensor: np.ndarray, parameters: dict[str, Any] | None = None) -> Any:
        from kserve import InferInput, InferRequest

        infer_input = InferInput(RAW_INPUT, list(tensor.shape), "FP32")
        infer_input.set_data_from_numpy(tensor, binary_data=True)
        return InferRequest(model_name=self.name, infer_inputs=[infer_input], parameters=parameters)

    async def rt_info(self) -> dict[str, Any]:
        # gRPC model metadata has no free-form field: a raw call asks for the rt_info in its
        # response parameters (anomaly-edge serve answers; it is also the first warm-up).
        import grpc
        from kserve.protocol.grpc.grpc_predict_v2_pb2 import ModelMetadataRequest

        try:
            metadata = await self._grpc()._client_stub.ModelMetadata(
                ModelMetadataRequest(name=self.name), timeout=self.timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise _ModelMissing(
                    f"the server at {self.url} has no model {self.name!r} "
                    "(give the name it serves, e.g. with --remote NAME)"
                ) from None
            self._check_answer(exc)
            raise _Unavailable(f"{exc.code().name}: {exc.details()}") from None
        shape = [int(d) for d in metadata.inputs[0].shape] if metadata.inputs else []
        if len(shape) != 4 or any(d < 1 for d in shape):
            raise ModelLoadError(
                f"{self.url}: model {self.name!r} has input shape {shape}, "
                "not the static [1, 3, h, w] of an anomaly-edge IR"
            )
        zeros = np.zeros(shape, dtype=np.float32)  # one call: a tiled IR takes its batch
        response = await self._call(self._request(zeros, {RT_INFO_PARAMETER: True}))
        rt_info = parameters_dict(response.parameters).get(RT_INFO_KEY)
        if rt_info is None:
            raise ModelLoadError(
                f"{self.url} does not send the model's rt_info over gRPC (only "
                "`anomaly-edge serve` does); use the server's REST URL (http://...) instead"
            )
        return rt_info if isinstance(rt_info, dict) else json.loads(rt_info)

    async def infer(self, tensor: np.ndarray) -> np.ndarray:
        response = await self._call(self._request(tensor))
        self._recovered()
        return _anomaly_map(response, self.url)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


def _endpoint(url: str, name: str | None, timeout: float, token: str | None) -> _Endpoint:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if not parts.hostname:
        raise InvalidInputError(f"{url!r} has no host; e.g. http://127.0.0.1:8080")
    try:
        port = parts.port
    except ValueError:
        raise InvalidInputError(f"{url!r} has a bad port") from None
    segments = [s for s in parts.path.split("/") if s]
    url_name = None
    if len(segments) >= 3 and segments[:2] == ["v2", "models"]:
        url_name = segments[2]  # http://host:port/v2/models/NAME[/versions/V] (OVMS style)
    elif len(segments) == 1 and scheme == "grpc":
        url_name = segments[0]  # grpc://host:port/NAME
    elif segments:
        raise InvalidInputError(
            f"cannot read a model name from {url!r}: use "
            "http://host:port/v2/models/NAME or grpc://host:port/NAME"
        )
    model_name = name or url_name or DEFAULT_MODEL_NAME
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if scheme == "grpc":
        return _GrpcEndpoint(url, f"{host}:{port or 8081}", model_name, timeout, token)
    default = 443 if scheme == "https" else 80
    return _RestEndpoint(url, f"{scheme}://{host}:{port or default}", model_name, timeout, token)


def _grpc_server_errors() -> frozenset[Any]:
    import grpc

    codes = grpc.StatusCode
    return frozenset(
        {codes.INTERNAL, codes.UNIMPLEMENTED, codes.FAILED_PRECONDITION, codes.RESOURCE_EXHAUSTED}
    )


def _anomaly_map(response: Any, url: str) -> np.ndarray:
    for output in response.outputs:
        if output.name == RAW_OUTPUT or len(response.outputs) == 1:
            return _network_output(output.as_numpy().astype(np.float32, copy=False), url)
    raise ModelLoadError(f"{url} returned no {RAW_OUTPUT!r} output")


def _network_output(output: np.ndarray, url: str) -> np.ndarray:
    """A returned tensor as the network output ``B x 1 x h x w`` (a batch of maps)."""
    if output.ndim == 4 and output.shape[1] == 1:
        return np.ascontiguousarray(output)
    if output.ndim in (2, 3):  # servers that drop unit axes
        return np.ascontiguousarray(output.reshape(-1, 1, *output.shape[-2:]))
    raise ModelLoadError(
        f"{url} returned an output of shape {list(output.shape)}, not a batch of anomaly maps"
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _quiet_kserve_client_logs() -> None:
    # kserve's clients log every failed call with a traceback at ERROR; here a failed call is
    # handled (another replica, a retry) and reported once, if it matters, by our exception.
    logger = logging.getLogger("kserve")
    if logger.level < logging.CRITICAL:
        logger.setLevel(logging.CRITICAL)
