"""`anomaly-edge serve` facing hostile or careless clients (issue 24): every malformed
request gets 400 with a clear message, a body over the limit 413 before it is read, and a
server listening with a token refuses requests without it. Real server processes."""

from __future__ import annotations

import argparse
import json
import re
import socket
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from anomaly_edge.cli.common import ExitCode
from anomaly_edge.cli.main import main
from tests.test_serve import HOST, ServeProcess, frame_with_defects

LIMIT_MB = 2.0  # the module's server: small enough to test, 200 MB still far above it
EXCEPTION_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception)\b|Traceback")
FRAME = {"name": "frame", "datatype": "UINT8", "shape": [8, 8, 3], "data": [0] * 192}
RAW = {"name": "image", "datatype": "FP32", "shape": [1, 3, 64, 64], "data": [0.0] * 12288}


def _binary(size_field: object, payload: bytes, header_length: str | None = None) -> dict:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": [1, 3, 64, 64],
                    "parameters": {"binary_data_size": size_field},
                }
            ]
        }
    ).encode()
    length = str(len(header)) if header_length is None else header_length
    return {"content": header + payload, "headers": {"inference-header-content-length": length}}


def _json(body: object) -> dict:
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


def _with(**changes: object) -> dict:
    return _json({"inputs": [{**RAW, **changes}]})


def _frame(**changes: object) -> dict:
    return _json({"inputs": [{**FRAME, **changes}]})


# (what is wrong, the request, words the answer must hold)
MALFORMED = [
    ("empty body", {"content": b""}, "no body"),
    ("not JSON", {"content": b"{nope"}, "not valid JSON"),
    ("non-image bytes", {"content": b"\x89PNG\x00\xff" * 10}, "not valid JSON"),
    ("a JSON list", _json([1, 2]), "JSON object"),
    ("a JSON string", _json("x"), "JSON object"),
    ("no inputs", _json({}), '"inputs"'),
    ("inputs not a list", _json({"inputs": 3}), '"inputs"'),
    ("inputs empty", _json({"inputs": []}), '"inputs"'),
    ("an input not an object", _json({"inputs": [3]}), "must be an object"),
    ("missing name", _json({"inputs": [{"datatype": "FP32", "shape": [1]}]}), "lacks name"),
    ("missing datatype", _json({"inputs": [{"name": "a", "shape": [1]}]}), "lacks datatype"),
    ("missing shape", _json({"inputs": [{"name": "a", "datatype": "FP32"}]}), "lacks shape"),
    (
        "missing data",
        _json({"inputs": [{k: RAW[k] for k in ("name", "datatype", "shape")}]}),
        "has no data",
    ),
    ("name not a string", _with(name=5), "name must be a string"),
    ("unknown datatype", _with(datatype="FOO"), "not a v2 datatype"),
    ("wrong datatype", _with(datatype="INT32", data=[1] * 12288), "datatype INT32"),
    ("shape not a list", _with(shape="x"), "shape must be a list"),
    ("negative dimension", _with(shape=[-1, 3, 64, 64]), "shape must be a list"),
    ("wrong network shape", _with(shape=[1, 3, 32, 32], data=[0.0] * 3072), "[N, 3, 64, 64]"),
    ("data not a list", _with(data="zeros"), "data must be a list"),
    ("too few values", _with(data=[0.0] * 10), "holds 12288 values"),
    ("strings for numbers", _with(data=["a"] * 12288), "not FP32 values"),
    ("ragged nested data", _with(data=[[0.0, 1.0], [2.0]]), "not FP32 values"),
    ("huge dims", _frame(shape=[100000, 100000, 3], data=[0]), "holds 30000000000 values"),
    ("zero-size frame", _frame(shape=[0, 0, 3], data=[]), "empty"),
    ("five-axis frame", _frame(shape=[4, 4, 4, 4, 4], data=[0] * 1024), "H x W"),
    ("values beyond UINT8", _frame(shape=[2, 2, 3], data=[300] * 12), "not UINT8 values"),
    ("alpha channel", _frame(shape=[8, 8, 4], data=[0] * 256), "4 channels"),
    ("two inputs", _json({"inputs": [FRAME, FRAME]}), "expected one input"),
    (
        "image bytes empty",
        _json(
            {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [""]}]}
        ),
        "not an image",
    ),
    (
        "image bytes not an image",
        _json(
            {
                "inputs": [
                    {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["hello"]}
                ]
            }
        ),
        "not an image",
    ),
    (
        "image bytes a number",
        _json(
            {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [5]}]}
        ),
        "encoded image's bytes",
    ),
    (
        "two encoded images",
        _json(
            {
                "inputs": [
                    {"name": "image_bytes", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}
                ]
            }
        ),
        "one encoded image",
    ),
    (
        "parameters not an object",
        _json({"inputs": [FRAME], "parameters": [1]}),
        "parameters must be an object",
    ),
    (
        "threshold not a number",
        _json({"inputs": [FRAME], "parameters": {"image_threshold": "x"}}),
        "'image_threshold' must be a number",
    ),
    (
        "min_area not whole",
        _json({"inputs": [FRAME], "parameters": {"min_area": 1.5}}),
        "'min_area' must be a whole number",
    ),
    (
        "mask not a flag",
        _json({"inputs": [FRAME], "parameters": {"mask": "maybe"}}),
        "'mask' must be true or false",
    ),
    ("unknown task", _json({"inputs": [FRAME], "parameters": {"task": "x"}}), "unknown task"),
    ("unknown color", _json({"inputs": [FRAME], "parameters": {"color": "XYZ"}}), "unknown color"),
    ("binary data cut short", _binary(49152, b"\0" * 100), "only 100 bytes follow"),
    ("binary size not a count", _binary("x", b"\0" * 49152), "binary_data_size must be"),
    ("binary size not the shape's", _binary(100, b"\0" * 100), "takes 49152 bytes"),
    ("binary bytes left over", _binary(49152, b"\0" * 49200), "48 bytes"),
    (
        "header length not a number",
        _binary(49152, b"\0" * 49152, "abc"),
        "inference-header-content-length",
    ),
    (
        "header length past the body",
        _binary(49152, b"\0" * 49152, "99999999"),
        "inference-header-content-length",
    ),
]


@pytest.fixture(scope="module")
def server(synthetic_ir, tmp_path_factory):
    process = ServeProcess(
        synthetic_ir,
        "plate",
        tmp_path_factory.mktemp("serve_hardening"),
        extra_args=("--max-body-mb", str(LIMIT_MB)),
        env={"PYTHONWARNINGS": "default::UserWarning,default::DeprecationWarning"},
    ).start()
    yield process
    process.kill()


@pytest.mark.parametrize(("case", "request_", "words"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_request_gets_400_saying_what_is_wrong(server, case, request_, words):
    response = httpx.post(f"{server.rest_url}/v2/models/plate/infer", timeout=30, **request_)
    assert response.status_code == 400, (case, response.text)
    message = response.json()["error"]
    assert words in message, (case, message)
    assert not EXCEPTION_NAME.search(message), (case, message)


GRPC_MALFORMED = [
    ("raw bytes of the wrong size", "image", "FP32", [1, 3, 64, 64], [b"\0" * 100], "takes 49152"),
    ("no data", "image", "FP32", [1, 3, 64, 64], [], "holds 12288 values"),
    ("broken BYTES framing", "image_bytes", "BYTES", [1], [b"\xff\xff\xff\x7fhi"], "BYTES"),
    ("bytes not an image", "image_bytes", "BYTES", [1], [b"\x05\x00\x00\x00hello"], "not an"),
]


@pytest.mark.parametrize(
    ("case", "name", "datatype", "shape", "raw", "words"),
    GRPC_MALFORMED,
    ids=[m[0] for m in GRPC_MALFORMED],
)
def test_a_malformed_grpc_request_is_an_invalid_argument(
    server, case, name, datatype, shape, raw, words
):
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    request = pb.ModelInferRequest(model_name="plate", inputs=[tensor], raw_input_contents=raw)
    with (
        grpc.insecure_channel(f"{HOST}:{server.grpc_port}") as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
    assert words in refused.value.details() and not EXCEPTION_NAME.search(refused.value.details())


def test_the_log_holds_no_traceback_nor_warning(server):
    base = server.rest_url
    for request_ in (MALFORMED[0][1], MALFORMED[5][1], MALFORMED[20][1]):
        assert httpx.post(f"{base}/v2/models/plate/infer", **request_).status_code == 400
    # every kind of answer once, so a warning raised while answering would be in the log
    assert httpx.get(f"{base}/v2/health/ready").status_code == 200
    assert httpx.get(f"{base}/v2/models/plate").status_code == 200
    assert httpx.get(f"{base}/v2/models/nothing").status_code == 404
    assert httpx.post(f"{base}/v2/models/plate/infer", **_frame()).status_code == 200
    log = server.log.read_text()
    assert "Traceback" not in log and "Error :" not in log, log[-3000:]
    assert "Warning" not in log, log[-3000:]


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


def _send_large(port: int, size: int, chunked: bool) -> tuple[bytes, int]:
    """Send (up to) ``size`` bytes of body; the server's answer and the bytes sent before it
    closed the connection."""
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
    sent = 0
    with socket.create_connection((HOST, port), timeout=30) as connection:
        connection.sendall(
            b"POST /v2/models/plate/infer HTTP/1.1\r\nHost: %s:%d\r\n"
            b"Content-Type: application/json\r\n%s\r\n\r\n" % (HOST.encode(), port, framing)
        )
        chunk = b"0" * 1_000_000
        try:
            while sent < size:
                connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
        except OSError:  # the server answered and closed: what we want
            pass
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                data = connection.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
    return answer, sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_200_mb_body_gets_413_and_memory_stays_flat(server, chunked):
    idle = _rss_mb(server.pid)
    answer, sent = _send_large(server.http_port, 200_000_000, chunked)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"--max-body-mb" in answer
    assert sent < 100_000_000  # refused long before the end: the body was not read
    assert _rss_mb(server.pid) - idle < 300
    # still serving
    assert httpx.post(f"{server.rest_url}/v2/models/plate/infer", **_frame()).status_code == 200


def test_the_limit_is_the_one_given(server):
    """Under --max-body-mb 2, a 3 MB frame is refused and a 1 MB one is served."""
    url = f"{server.rest_url}/v2/models/plate/infer"
    for side, status in ((1000, 413), (500, 200)):
        frame = np.zeros((side, side, 3), np.uint8)
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "frame",
                        "datatype": "UINT8",
                        "shape": list(frame.shape),
                        "parameters": {"binary_data_size": frame.nbytes},
                    }
                ]
            }
        ).encode()
        response = httpx.post(
            url,
            content=header + frame.tobytes(),
            headers={"inference-header-content-length": str(len(header))},
            timeout=30,
        )
        assert response.status_code == status, response.text[:300]


def test_the_default_limit_is_64_mb():
    from anomaly_edge.cli.main import build_parser

    args = build_parser().parse_args(["serve", "model.xml"])
    assert args.max_body_mb == 64.0 and args.host == "127.0.0.1"


# ---- the token --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(synthetic_ir, tmp_path_factory):
    process = ServeProcess(
        synthetic_ir,
        "plate",
        tmp_path_factory.mktemp("serve_token"),
        env={"ANOMALY_EDGE_TOKEN": "s3cret"},
    ).start()
    yield process
    process.kill()


def test_with_a_token_requests_without_it_get_401(guarded):
    url = f"{guarded.rest_url}/v2/models/plate"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    refused = httpx.post(f"{url}/infer", **_frame())
    assert refused.status_code == 401 and "Authorization: Bearer" in refused.json()["error"]
    assert httpx.get(url, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    # the health probes stay open: they tell nothing but "up"
    assert httpx.get(f"{guarded.rest_url}/v2/health/ready").status_code == 200


def test_with_a_token_grpc_calls_without_it_are_unauthenticated(guarded):
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    with grpc.insecure_channel(f"{HOST}:{guarded.grpc_port}") as channel:
        stub = GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelMetadata(pb.ModelMetadataRequest(name="plate"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = stub.ModelMetadata(
            pb.ModelMetadataRequest(name="plate"), metadata=(("authorization", "Bearer s3cret"),)
        )
        assert metadata.name == "plate"


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_the_remote_client_sends_the_token(guarded, protocol, monkeypatch):
    from anomaly_edge import AnomalyModel
    from anomaly_edge.errors import ModelLoadError

    url = guarded.rest_url if protocol == "rest" else guarded.grpc_url
    monkeypatch.delenv("ANOMALY_EDGE_TOKEN", raising=False)
    with pytest.raises(ModelLoadError, match="needs a token: set ANOMALY_EDGE_TOKEN"):
        AnomalyModel.remote(url, "plate", timeout=5)
    with pytest.raises(ModelLoadError, match="not its token"):
        AnomalyModel.remote(url, "plate", timeout=5, token="wrong")
    with AnomalyModel.remote(url, "plate", token="s3cret") as remote:
        assert remote.predict(frame_with_defects()).label
    monkeypatch.setenv("ANOMALY_EDGE_TOKEN", "s3cret")
    with AnomalyModel.remote(url, "plate") as remote:
        assert remote.predict(frame_with_defects()).label


def test_an_empty_token_is_refused_at_start(synthetic_ir, monkeypatch, capsys):
    start = ["serve", str(synthetic_ir), "--http-port", "0", "--grpc-port", "0"]
    assert main([*start, "--token", " "]) == ExitCode.USAGE
    assert "--token is empty" in capsys.readouterr().err
    monkeypatch.setenv("ANOMALY_EDGE_TOKEN", "")
    assert main(start) == ExitCode.USAGE
    assert "ANOMALY_EDGE_TOKEN is empty" in capsys.readouterr().err


def test_beyond_this_box_a_token_is_generated(monkeypatch):
    from anomaly_edge.cli.serve import _token

    monkeypatch.delenv("ANOMALY_EDGE_TOKEN", raising=False)
    assert _token(argparse.Namespace(host="127.0.0.1", token=None)) is None
    generated = _token(argparse.Namespace(host="0.0.0.0", token=None))
    assert generated and len(generated) >= 16
    assert _token(argparse.Namespace(host="0.0.0.0", token="given")) == "given"


def test_the_served_frame_is_still_scored_like_before(server):
    """The checks changed nothing for a good request: an encoded PNG is scored."""
    ok, png = cv2.imencode(".png", frame_with_defects())
    assert ok
    started = time.monotonic()
    response = httpx.post(
        f"{server.rest_url}/v2/models/plate/infer",
        json={
            "inputs": [
                {
                    "name": "image_bytes",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": [png.tobytes().decode("latin-1")],
                }
            ]
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    label = next(o for o in response.json()["outputs"] if o["name"] == "label")
    assert label["data"] == [True] and time.monotonic() - started < 30
