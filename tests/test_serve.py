"""`anomaly-edge serve`: real server processes on 127.0.0.1, spoken to as any v2 client would.

``ServeProcess`` is also used by tests/test_remote*.py.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import openvino as ov
import pytest

from anomaly_edge import AnomalyModel
from anomaly_edge.cli.common import ExitCode
from anomaly_edge.cli.main import main
from tests.conftest import child_env

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
# The test extra installs the serve extra, so a missing kserve is a broken install, not a skip.
# (Not imported here: kserve parses sys.argv when imported, and pytest's arguments are not its.)
assert importlib.util.find_spec("kserve") is not None, "pip install '.[test]' brings kserve"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class ServeProcess:
    """``anomaly-edge serve`` in a subprocess, on free local ports; ``start`` waits until
    it is ready, ``kill`` ends it at once (SIGKILL), ``stop`` politely (SIGTERM)."""

    def __init__(
        self,
        model: Path,
        name: str = "anomaly-edge",
        log_dir: Path | None = None,
        http_port: int | None = None,
        grpc_port: int | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.model = model
        self.extra_args = extra_args
        self.env = env or {}
        self.name = name
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.log = (log_dir or Path("/tmp")) / f"serve-{self.http_port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{HOST}:{self.grpc_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, limit_s: float = 60.0) -> ServeProcess:
        env = {**child_env(), **self.env}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "anomaly_edge",
                    "serve",
                    "--model",
                    str(self.model),
                    "--name",
                    self.name,
                    "--host",
                    HOST,
                    "--http-port",
                    str(self.http_port),
                    "--grpc-port",
                    str(self.grpc_port),
                    "--num-requests",
                    "2",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"serve exited with {self.process.returncode}:\n" + self.log.read_text()[-3000:]
                )
            try:
                if httpx.get(f"{self.rest_url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError("serve did not become ready:\n" + self.log.read_text()[-3000:])

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> int | None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        return None if self.process is None else self.process.returncode


@pytest.fixture(scope="module")
def server(synthetic_ir, tmp_path_factory):
    process = ServeProcess(synthetic_ir, "plate", tmp_path_factory.mktemp("serve")).start()
    yield process
    process.kill()


def frame_with_defects(height: int = 240, width: int = 320) -> np.ndarray:
    frame = np.full((height, width, 3), 128, np.uint8)
    cv2.circle(frame, (80, 60), 18, (255, 255, 255), -1)
    frame[170:200, 200:290] = 0
    return frame


def raw_network_output(ir: Path, tensor: np.ndarray) -> np.ndarray:
    """The IR run by OpenVINO itself, as OVMS would run it."""
    compiled = ov.Core().compile_model(str(ir), "CPU")
    return compiled(tensor)[0]


def test_health_readiness_and_metadata_with_rt_info(server, synthetic_ir):
    base = server.rest_url
    assert httpx.get(f"{base}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{base}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{base}/v2/models/plate/ready").status_code == 200
    metadata = httpx.get(f"{base}/v2/models/plate").json()
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [1, 3, 64, 64]}]
    assert metadata["outputs"] == [
        {"name": "anomaly_map", "datatype": "FP32", "shape": [1, 1, 64, 64]}
    ]
    model = ov.Core().read_model(str(synthetic_ir))
    for section in ("model_info", "anomaly_edge"):
        expected = {k: v.astype(str) for k, v in model.get_rt_info([section]).astype(dict).items()}
        assert metadata["rt_info"][section] == expected
    assert httpx.get(f"{base}/v2/models/nothing").status_code == 404


def test_generic_v2_json_client_gets_the_raw_anomaly_map(server, synthetic_ir):
    rng = np.random.default_rng(0)
    tensor = rng.normal(0, 1, (1, 3, 64, 64)).astype(np.float32)
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": [1, 3, 64, 64],
                "data": tensor.ravel().tolist(),
            }
        ]
    }
    response = httpx.post(f"{server.rest_url}/v2/models/plate/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["name"] == "anomaly_map" and output["shape"] == [1, 1, 64, 64]
    got = np.asarray(output["data"], dtype=np.float32).reshape(1, 1, 64, 64)
    np.testing.assert_allclose(got, raw_network_output(synthetic_ir, tensor), atol=1e-6)


def test_raw_call_takes_a_batch(server, synthetic_ir):
    tensor = np.random.default_rng(1).normal(0, 1, (3, 3, 64, 64)).astype(np.float32)
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": [3, 3, 64, 64],
                "data": tensor.ravel().tolist(),
            }
        ]
    }
    output = httpx.post(f"{server.rest_url}/v2/models/plate/infer", json=body, timeout=30).json()[
        "outputs"
    ][0]
    got = np.asarray(output["data"], dtype=np.float32).reshape(3, 1, 64, 64)
    for i in range(3):
        expected = raw_network_output(synthetic_ir, tensor[i : i + 1])
        np.testing.assert_allclose(got[i : i + 1], expected, atol=1e-6)


def _convenience(server, inputs, parameters=None) -> dict[str, np.ndarray]:
    body = {"inputs": inputs, "parameters": parameters or {}}
    response = httpx.post(f"{server.rest_url}/v2/models/plate/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in outputs}


def test_convenience_call_answers_like_a_local_model(server, synthetic_ir):
    frame = frame_with_defects()
    local = AnomalyModel(synthetic_ir, "CPU", task="segmentation").predict(frame)
    frame_input = {
        "name": "frame",
        "datatype": "UINT8",
        "shape": list(frame.shape),
        "data": frame.ravel().tolist(),
    }
    out = _convenience(server, [frame_input], {"mask": True})
    assert abs(float(out["score"][0]) - local.score) < 1e-4
    assert bool(out["label"][0]) == local.label
    assert abs(float(out["raw_score"][0]) - local.raw_score) < 1e-4
    expected_boxes = [[b.x1, b.y1, b.x2, b.y2] for b in local.boxes]
    assert len(expected_boxes) == 2
    assert out["boxes"][:, :4].astype(int).tolist() == expected_boxes
    assert np.array_equal(out["mask"].astype(np.uint8), local.mask)
    # without "mask": no mask; an encoded PNG gives the same answer as the pixels
    ok, png = cv2.imencode(".png", frame)
    assert ok
    encoded = {
        "name": "image_bytes",
        "datatype": "BYTES",
        "shape": [1],
        "data": [png.tobytes().decode("latin-1")],
    }
    out_png = _convenience(server, [encoded])
    assert "mask" not in out_png
    assert np.array_equal(out_png["boxes"], out["boxes"])


def test_bad_requests_get_400_with_the_reason(server):
    url = f"{server.rest_url}/v2/models/plate/infer"
    wrong_shape = {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": [1, 3, 32, 32],
                "data": [0.0] * (3 * 32 * 32),
            }
        ]
    }
    response = httpx.post(url, json=wrong_shape, timeout=30)
    assert response.status_code == 400 and "[N, 3, 64, 64]" in response.text
    wrong_type = {"inputs": [{"name": "image", "datatype": "INT32", "shape": [1], "data": [1]}]}
    response = httpx.post(url, json=wrong_type, timeout=30)
    assert response.status_code == 400 and "datatype INT32" in response.text
    not_an_image = {
        "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]
    }
    response = httpx.post(url, json=not_an_image, timeout=30)
    assert response.status_code == 400 and "not an image" in response.text
    assert httpx.get(f"{server.rest_url}/v2/health/live").status_code == 200  # still serving


def test_grpc_raw_call_and_rt_info_parameter(server, synthetic_ir):
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    tensor = np.random.default_rng(2).normal(0, 1, (1, 3, 64, 64)).astype(np.float32)
    with grpc.insecure_channel(f"{HOST}:{server.grpc_port}") as channel:
        stub = GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="plate"))
        assert list(metadata.inputs[0].shape) == [1, 3, 64, 64]
        request = pb.ModelInferRequest(
            model_name="plate",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="image", datatype="FP32", shape=[1, 3, 64, 64]
                )
            ],
            raw_input_contents=[tensor.tobytes()],
        )
        request.parameters["anomaly_edge_rt_info"].bool_param = True
        response = stub.ModelInfer(request)
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(1, 1, 64, 64)
    np.testing.assert_allclose(got, raw_network_output(synthetic_ir, tensor), atol=1e-6)
    rt_info = json.loads(response.parameters["rt_info"].string_param)
    assert rt_info["anomaly_edge"]["model"] == "synthetic"


@pytest.mark.slow
def test_sigterm_stops_the_server(synthetic_ir, tmp_path):
    process = ServeProcess(synthetic_ir, log_dir=tmp_path).start()
    assert process.stop() is not None
    assert process.process.returncode in (0, -signal.SIGTERM)


def test_cli_errors_have_their_exit_codes(synthetic_ir, tmp_path, monkeypatch, capsys):
    assert main(["serve", "--model", str(tmp_path / "none.xml")]) == ExitCode.MODEL
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert (
            main(["serve", "--model", str(synthetic_ir), "--host", HOST, "--http-port", str(port)])
            == ExitCode.USAGE
        )
    assert "port in use" in capsys.readouterr().err
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "kserve" else real_find_spec(name, *a),
    )
    assert main(["serve", "--model", str(synthetic_ir)]) == ExitCode.MISSING_EXTRA
    assert "pip install 'anomaly-edge[serve]'" in capsys.readouterr().err
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), frame_with_defects())
    assert main(["predict", "--model", "http://127.0.0.1:1", str(image)]) == ExitCode.MISSING_EXTRA
