"""What a request must be to reach the model server: its token, and a body within the limit.

An ASGI wrapper around KServe's REST application (the outermost layer, so nothing of a
refused request is parsed or kept):

* with a token, every route but the health probes (``/v2/health/live``,
  ``/v2/health/ready``, which tell nothing but "up") needs ``Authorization: Bearer <token>``,
  else 401;
* a body larger than ``max_body`` bytes gets 413 before it is read: a ``Content-Length``
  over the limit at once, a chunked body as soon as its bytes pass it. The connection is
  then closed, so the rest of the body is never read.

The gRPC side has the same two rules (:func:`grpc_token_interceptor`, and gRPC's own
message size limit set to ``max_body``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from anomaly_edge.v2_protocol import TOKEN_ENV

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
OPEN_GRPC_METHODS = frozenset({"ServerLive", "ServerReady"})


def bearer_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (compared in constant time)."""
    scheme, _, given = (header or "").strip().partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(
        given.strip().encode(), token.encode()
    )


class RequestGate:
    """ASGI middleware: the token and the body size limit (see the module docstring)."""

    def __init__(self, app: App, *, max_body: int, token: str | None = None) -> None:
        self.app = app
        self.max_body = max_body
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if (
            self.token is not None
            and scope.get("path") not in OPEN_PATHS
            and not bearer_matches(headers.get("authorization"), self.token)
        ):
            await _refuse(
                send,
                401,
                "this server needs its token: send the header 'Authorization: Bearer <token>' "
                f"(anomaly-edge clients read it from ${TOKEN_ENV})",
                {"www-authenticate": "Bearer"},
            )
            return
        length_text = headers.get("content-length")
        if length_text is not None:
            if not length_text.strip().isdigit():
                await _refuse(send, 400, f"Content-Length {length_text!r} is not a number")
                return
            if int(length_text) > self.max_body:
                await _refuse(send, 413, self._too_large(int(length_text)))
                return
            await self.app(scope, receive, send)
            return
        if headers.get("transfer-encoding", "").lower() != "chunked":
            await self.app(scope, receive, send)  # no body
            return
        body = await self._read_limited(receive)
        if body is None:
            await _refuse(send, 413, self._too_large(None))
            return
        await self.app(scope, _replay(body), send)

    async def _read_limited(self, receive: Receive) -> bytes | None:
        """A chunked body, or None as soon as it passes the limit (the rest stays unread)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _too_large(self, size: int | None) -> str:
        mb = self.max_body / 1e6
        given = f" ({size / 1e6:.1f} MB)" if size is not None else ""
        return (
            f"the request body{given} is larger than this server's limit of {mb:g} MB: "
            "send a smaller frame (e.g. an encoded JPEG/PNG as 'image_bytes'), or start "
            "`anomaly-edge serve` with a larger --max-body-mb"
        )


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _refuse(
    send: Send, status: int, message: str, extra: dict[str, str] | None = None
) -> None:
    body = json.dumps({"error": message}).encode()
    headers = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        # the body of a refused request is not read: the connection cannot carry another one
        "connection": "close",
        **(extra or {}),
    }
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": body})


def grpc_token_interceptor(token: str) -> Any:
    """A ``grpc.aio`` server interceptor: calls without ``authorization: Bearer <token>`` in
    their metadata end with UNAUTHENTICATED (the health calls excepted, as over REST)."""
    import grpc

    async def deny(request: Any, context: Any) -> None:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "this server needs its token: send the metadata 'authorization: Bearer <token>' "
            f"(anomaly-edge clients read it from ${TOKEN_ENV})",
        )

    denied = grpc.unary_unary_rpc_method_handler(deny)

    class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            method = details.method.rsplit("/", 1)[-1]
            given = dict(details.invocation_metadata or ()).get("authorization")
            if method in OPEN_GRPC_METHODS or bearer_matches(given, token):
                return await continuation(details)
            return denied

    return TokenInterceptor()
