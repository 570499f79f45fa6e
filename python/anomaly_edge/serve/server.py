"""Run KServe's model server on one anomaly-edge model: v2 REST and gRPC on chosen ports.

Everything protocol-shaped is KServe's (``kserve.ModelServer``, its FastAPI app, its gRPC
servicer). Two things are added:

* the host to listen on (KServe's servers listen on every interface; tests and single-box
  setups want ``127.0.0.1``);
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

from anomaly_edge.serve.model import AnomalyServeModel
from anomaly_edge.v2_protocol import RT_INFO_KEY

# gRPC messages carry whole frames and maps: lift gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class AnomalyModelServer(kserve.ModelServer):  # type: ignore[misc]  # kserve: no type hints
    """``kserve.ModelServer`` that listens on ``host`` and shows rt_info in model metadata."""

    def __init__(
        self,
        host: str = "0.0.0.0",
        http_port: int = 8080,
        grpc_port: int = 8081,
        *,
        enable_grpc: bool = True,
        grpc_threads: int = 4,
    ) -> None:
        # Per-request latency log lines cost more than a small model's inference.
        super().__init__(
            http_port=http_port,
            grpc_port=grpc_port,
            enable_grpc=enable_grpc,
            enable_latency_logging=False,
            grace_period=5,
        )
        self.host = host
        self.grpc_threads = grpc_threads
        self._grpc: Any = None

    def start(self, models: list[kserve.Model]) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
        _quiet_request_logs()
        self._add_metadata_route()
        self._add_infer_route()
        self._rest_server = RESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            grace_period=self.grace_period,
        )
        self._rest_server.config.host = self.host
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

        server = aio.server(
            futures.ThreadPoolExecutor(max_workers=self.grpc_threads),
            interceptors=(ExceptionToStatusInterceptor(),),
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
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
        bytes; requests for other models, and JSON tensors, are decoded as KServe does."""
        import orjson
        from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
        from kserve.errors import InvalidInput
        from kserve.model_server import app
        from kserve.protocol.infer_type import InferInput, InferRequest

        dataplane = self.dataplane

        def decode(body: bytes, json_length: int, model_name: str) -> InferRequest:
            try:
                header = orjson.loads(body[:json_length])
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"Unrecognized request format: {exc}") from None
            inputs = header.get("inputs")
            binary = (
                isinstance(inputs, list)
                and inputs
                and all(
                    isinstance(i, dict)
                    and "data" not in i
                    and "binary_data_size" in (i.get("parameters") or {})
                    for i in inputs
                )
            )
            if not binary:  # JSON numbers: KServe's own decoder
                return InferRequest.from_bytes(body, json_length, model_name)
            raw, start = [], json_length
            tensors = []
            for item in inputs:
                size = int(item["parameters"]["binary_data_size"])
                raw.append(body[start : start + size])
                start += size
                tensors.append(
                    InferInput(
                        name=item["name"],
                        shape=item["shape"],
                        datatype=item["datatype"],
                        parameters=item.get("parameters"),
                    )
                )
            if start != len(body):
                raise InvalidInput(
                    f"binary data sizes add up to {start - json_length} bytes, "
                    f"the request carries {len(body) - json_length}"
                )
            return InferRequest(
                model_name=model_name,
                infer_inputs=tensors,
                raw_inputs=raw,
                request_id=header.get("id"),
                parameters=header.get("parameters"),
            )

        async def infer(model_name: str, request: Request) -> Response:
            if not await dataplane.model_ready(model_name, True):
                raise kserve.errors.ModelNotReady(model_name)
            body = await request.body()
            headers = dict(request.headers)
            json_length = int(headers.get(INFERENCE_CONTENT_LENGTH_HEADER, len(body)))
            infer_request = decode(body, json_length, model_name)
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


def _quiet_request_logs() -> None:
    # KServe logs every request's timing at INFO; at hundreds of frames a second that is
    # most of the server's work and of its output.
    for name in ("kserve.trace", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
