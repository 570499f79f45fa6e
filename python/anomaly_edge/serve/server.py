"""Run KServe's model server on one anomaly-edge model: v2 REST and gRPC on chosen ports.

Everything protocol-shaped is KServe's (``kserve.ModelServer``, its FastAPI app, its gRPC
servicer). Added:

* the host to listen on (KServe's servers listen on every interface; the default here is
  ``127.0.0.1``, this box only);
* a token and a request size limit, on both protocols (:mod:`.admission`);
* one 400 with a clear message for every malformed request (:mod:`.request`), and client
  errors logged without tracebacks;
* ``"rt_info"`` in the REST model metadata, as OpenVINO Model Server returns it, so a remote
  client rebuilds pre- and post-processing from the server alone;
* a REST ``infer`` route that keeps binary tensors (the v2 binary-data extension) as bytes.
  KServe 0.21's own route turns every binary input into a Python list of numbers first,
  which for one 3 x 256 x 256 network input took about half a second on two cores (measured
  with tools/bench_serve.py: 1.8 frames per second over REST against 60-84 over gRPC).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kserve
from fastapi import Request, Response  # at module level: FastAPI resolves handler annotations here
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import RESTServer

from anomaly_edge.serve.admission import RequestGate, grpc_token_interceptor
from anomaly_edge.serve.model import AnomalyServeModel
from anomaly_edge.serve.request import parse_infer_request
from anomaly_edge.v2_protocol import RT_INFO_KEY

log = logging.getLogger("anomaly_edge.serve")

DEFAULT_MAX_BODY = 64 * 1000 * 1000  # a 4K BGR frame as raw UINT8 is 25 MB


class AnomalyModelServer(kserve.ModelServer):  # type: ignore[misc]  # kserve: no type hints
    """``kserve.ModelServer`` that listens on ``host``, shows rt_info in model metadata,
    refuses bodies over ``max_body`` bytes (413) and, with a ``token``, requests without it
    (401 over REST, UNAUTHENTICATED over gRPC)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        http_port: int = 8080,
        grpc_port: int = 8081,
        *,
        enable_grpc: bool = True,
        grpc_threads: int = 4,
        max_body: int = DEFAULT_MAX_BODY,
        token: str | None = None,
    ) -> None:
        # Per-request latency log lines cost more than a small model's inference.
        super().__init__(
            http_port=http_port,
            grpc_port=grpc_port,
            enable_grpc=enable_grpc,
            enable_latency_logging=False,
            grace_period=5,
        )
        if token is not None and not token.strip():
            raise ValueError("the token is empty: give one, or none (on this box only)")
        self.host = host
        self.grpc_threads = grpc_threads
        self.max_body = max_body
        self.token = token
        self._grpc: Any = None

    def start(self, models: list[kserve.Model]) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
        app = _kserve_app()  # before any route is added
        _quiet_request_logs()
        self._add_metadata_route()
        self._add_infer_route()
        self._rest_server = _RestServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            grace_period=self.grace_period,
        )
        self._rest_server.config.host = self.host
        # uvicorn takes an application object as well as an import string: the gate goes
        # around KServe's app, outside everything it adds.
        self._rest_server.config.app = RequestGate(app, max_body=self.max_body, token=self.token)
        self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            self.servers.append(self._serve_grpc())
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())

    def stop(self, sig: int) -> None:
        super().stop(sig)
        if self._grpc is not None:
            asyncio.get_event_loop().create_task(self._grpc.stop(grace=1))
        if self._rest_server is not None:
            self._rest_server._server.should_exit = True

    async def _serve_grpc(self) -> None:
        from concurrent import futures

        from grpc import aio

        interceptors: list[Any] = [_QuietStatusInterceptor()]
        if self.token is not None:
            interceptors.insert(0, grpc_token_interceptor(self.token))
        server = aio.server(
            futures.ThreadPoolExecutor(max_workers=self.grpc_threads),
            interceptors=interceptors,
            options=[
                # gRPC's 4 MiB default is too small for whole frames; the REST limit applies
                ("grpc.max_send_message_length", max(self.max_body, 4 * 1024 * 1024)),
                ("grpc.max_receive_message_length", self.max_body),
                ("grpc.so_reuseport", 0),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.dataplane, self.model_repository_extension), server
        )
        address = f"{self.host}:{self.grpc_port}"
        if server.add_insecure_port(address) == 0:
            raise OSError(f"cannot listen for gRPC on {address} (port in use?)")
        self._grpc = server
        await server.start()
        await server.wait_for_termination()

    def _add_metadata_route(self) -> None:
        """Serve ``GET /v2/models/{name}`` with ``rt_info`` added (registered before KServe's
        own route, which therefore answers only what this one does not)."""
        from fastapi import HTTPException
        from kserve.model_server import app

        dataplane = self.dataplane

        async def model_metadata(model_name: str) -> dict[str, Any]:
            try:
                metadata: dict[str, Any] = await dataplane.model_metadata(model_name)
            except kserve.errors.ModelNotFound as exc:
                raise HTTPException(status_code=404, detail=exc.reason) from None
            model = dataplane.get_model_from_registry(model_name)
            if isinstance(model, AnomalyServeModel):
                metadata[RT_INFO_KEY] = model.rt_info
            return metadata

        if not any(getattr(r, "path", None) == "/v2/models/{model_name}" for r in app.routes):
            app.add_api_route("/v2/models/{model_name}", model_metadata, methods=["GET"])

    def _add_infer_route(self) -> None:
        """``POST /v2/models/{name}/infer`` for anomaly-edge models, binary tensors kept as
        bytes, and every request checked by :func:`.request.parse_infer_request`."""
        import orjson
        from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
        from kserve.model_server import app

        dataplane = self.dataplane

        async def infer(model_name: str, request: Request) -> Response:
            if not await dataplane.model_ready(model_name, True):
                raise kserve.errors.ModelNotReady(model_name)
            body = await request.body()
            headers = dict(request.headers)
            infer_request = parse_infer_request(
                body, headers.get(INFERENCE_CONTENT_LENGTH_HEADER), model_name
            )
            response, response_headers = await dataplane.infer(
                model_name=model_name, request=infer_request, headers=headers
            )
            content, encode_headers = dataplane.encode(
                model_name=model_name, response=response, headers=headers, req_attributes={}
            )
            response_headers = {**response_headers, **encode_headers}
            response_headers.pop("content-length", None)
            if isinstance(content, bytes):
                return Response(
                    content, headers=response_headers, media_type="application/octet-stream"
                )
            return Response(
                orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
                headers=response_headers,
                media_type="application/json",
            )

        if not any(getattr(r, "path", None) == "/v2/models/{model_name}/infer" for r in app.routes):
            app.add_api_route("/v2/models/{model_name}/infer", infer, methods=["POST"])


def _kserve_app() -> Any:
    """KServe's FastAPI application, answering JSON with FastAPI's own JSONResponse.

    KServe 0.21 makes its app with ``default_response_class=ORJSONResponse``, which FastAPI
    0.128+ deprecates: every route that used the default printed a FastAPIDeprecationWarning
    when it answered. Routes take the router's default when they are added, so it is reset
    before any route is (KServe adds its own when the REST server starts)."""
    from fastapi.datastructures import Default
    from fastapi.responses import JSONResponse
    from kserve.model_server import app

    app.router.default_response_class = Default(JSONResponse)
    return app


class _RestServer(RESTServer):  # type: ignore[misc]  # kserve: no type hints
    """KServe's REST server, with client errors answered without a traceback in the log
    (KServe logs one for every 400 and 404) and server errors without exception names in
    the response."""

    def _add_exception_handlers(self, app: Any) -> None:
        super()._add_exception_handlers(app)
        from http import HTTPStatus

        from fastapi.responses import JSONResponse
        from kserve import errors

        def answer(status: HTTPStatus) -> Any:
            async def handler(request: Request, exc: Exception) -> Response:
                log.debug("%d for %s %s: %s", status, request.method, request.url.path, exc)
                return JSONResponse(status_code=status, content={"error": str(exc)})

            return handler

        for error, status in (
            (errors.InvalidInput, HTTPStatus.BAD_REQUEST),
            (errors.ModelNotFound, HTTPStatus.NOT_FOUND),
            (errors.ModelNotReady, HTTPStatus.SERVICE_UNAVAILABLE),
            (errors.ServerNotReady, HTTPStatus.SERVICE_UNAVAILABLE),
            (errors.ServerNotLive, HTTPStatus.SERVICE_UNAVAILABLE),
            (errors.UnsupportedProtocol, HTTPStatus.NOT_IMPLEMENTED),
            (NotImplementedError, HTTPStatus.NOT_IMPLEMENTED),
        ):
            app.add_exception_handler(error, answer(status))

        async def server_fault(request: Request, exc: Exception) -> Response:
            # A bug or a device failure, not the client's: the log gets the details.
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
            return JSONResponse(
                status_code=HTTPStatus.INTERNAL_SERVER_ERROR,
                content={"error": "the model server failed on this request; see its log"},
            )

        app.add_exception_handler(errors.InferenceError, server_fault)
        app.add_exception_handler(Exception, server_fault)


class _QuietStatusInterceptor(ExceptionToStatusInterceptor):  # type: ignore[misc]
    """KServe's gRPC error mapping, without a logged traceback for the client's errors."""

    async def handle_exception(
        self, ex: Exception, request_or_iterator: Any, context: Any, method_name: str
    ) -> None:
        import grpc
        from kserve import errors

        if isinstance(ex, errors.InvalidInput):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, ex.reason)
        if isinstance(ex, errors.ModelNotFound):
            await context.abort(grpc.StatusCode.NOT_FOUND, ex.reason)
        await super().handle_exception(ex, request_or_iterator, context, method_name)


def _quiet_request_logs() -> None:
    # KServe logs every request's timing at INFO; at hundreds of frames a second that is
    # most of the server's work and of its output.
    for name in ("kserve.trace", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
