"""`AnomalyModel.remote`: predictions through a real `serve` process equal the local model's."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from anomaly_edge import AnomalyModel
from anomaly_edge.cli.common import ExitCode
from anomaly_edge.cli.main import main
from anomaly_edge.core import PendingResultsError
from anomaly_edge.errors import InvalidInputError, ModelLoadError
from anomaly_edge.remote import RetryPolicy, ServerUnavailableError
from tests.conftest import child_env
from tests.stream_media import make_video
from tests.test_serve import ServeProcess, frame_with_defects, free_port


@pytest.fixture(scope="module")
def server(synthetic_ir, tmp_path_factory):
    process = ServeProcess(synthetic_ir, "plate", tmp_path_factory.mktemp("remote")).start()
    yield process
    process.kill()


def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    out = [frame_with_defects(), np.full((200, 300, 3), 128, np.uint8)]
    for size in ((480, 640), (97, 131), (64, 64)):
        frame = np.full((*size, 3), 128, np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, size[0] - 8), rng.integers(0, size[1] - 8)
            frame[y : y + 8, x : x + 8] = rng.integers(0, 255, 3)
        out.append(frame)
    return out


def assert_same(local, remote) -> None:
    assert abs(local.score - remote.score) < 1e-4
    assert abs(local.raw_score - remote.raw_score) < 1e-4
    assert local.label == remote.label
    assert [(b.x1, b.y1, b.x2, b.y2, b.area) for b in local.boxes] == [
        (b.x1, b.y1, b.x2, b.y2, b.area) for b in remote.boxes
    ]
    if local.mask is not None:
        assert remote.mask is not None and np.array_equal(local.mask, remote.mask)


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_remote_predictions_equal_local_ones(protocol, task, server, synthetic_ir):
    url = server.rest_url if protocol == "rest" else server.grpc_url
    local = AnomalyModel(synthetic_ir, "CPU", task=task)
    with AnomalyModel.remote(url, "plate", task=task) as remote:
        assert remote.metadata == local.metadata
        for frame in frames():
            assert_same(local.predict(frame), remote.predict(frame))
        # grey frames, thresholds changed on the client side
        grey = cv2.cvtColor(frame_with_defects(), cv2.COLOR_BGR2GRAY)
        assert_same(local.predict(grey), remote.predict(grey))
        local.image_threshold = remote.image_threshold = 5.0
        local.pixel_threshold = remote.pixel_threshold = 0.3
        for frame in frames()[:2]:
            assert_same(local.predict(frame), remote.predict(frame))


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_async_interface_keeps_order_with_requests_in_flight(protocol, server, synthetic_ir):
    url = server.rest_url if protocol == "rest" else server.grpc_url
    local = AnomalyModel(synthetic_ir, "CPU", task="detection")
    inputs = frames() * 4
    with AnomalyModel.remote(url, "plate", task="detection", num_requests=3) as remote:
        results = []
        for index, frame in enumerate(inputs):
            remote.submit(frame, index)
            assert remote.in_flight <= len(inputs)
            results += remote.ready()
        results += remote.drain()
        assert [index for index, _ in results] == list(range(len(inputs)))
        for index, prediction in results:
            assert_same(local.predict(inputs[index]), prediction)
        assert len(remote.predict_batch(inputs[:5])) == 5


def test_unread_results_are_bounded_as_on_a_local_model(server):
    frame = frames()[1]
    with AnomalyModel.remote(server.rest_url, "plate", max_pending=3) as remote:
        with pytest.raises(PendingResultsError, match="ready"):
            for index in range(50):  # never collected: memory would grow without the bound
                remote.submit(frame, userdata=index)
                time.sleep(0.01)
        assert len(remote.drain()) <= 3 + remote.num_requests
        for index in range(10):  # the README's loop, collecting as it goes, never hits it
            remote.submit(frame, userdata=index)
            remote.ready()
        remote.drain()


def test_model_name_in_the_url_and_errors(server, synthetic_ir):
    with AnomalyModel.remote(f"{server.rest_url}/v2/models/plate") as remote:
        assert remote.name == "plate"
    with AnomalyModel.remote(f"{server.grpc_url}/plate") as remote:
        assert remote.name == "plate"
    with pytest.raises(ModelLoadError, match="no model 'other'"):
        AnomalyModel.remote(server.rest_url, "other")
    with pytest.raises(ModelLoadError, match="no model 'other'"):
        AnomalyModel.remote(server.grpc_url, "other")
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnavailableError, match="cannot reach the model server"):
        AnomalyModel.remote(dead, "plate", timeout=2)
    with pytest.raises(ServerUnavailableError):
        AnomalyModel.remote(f"grpc://127.0.0.1:{free_port()}", "plate", timeout=2)


def test_cli_remote_predict_and_exit_codes(server, synthetic_ir, tmp_path, capsys):
    image = tmp_path / "defect.png"
    cv2.imwrite(str(image), frame_with_defects())
    for url in (server.rest_url, server.grpc_url):
        assert (
            main(
                ["predict", "--model", url, "--remote", "plate", "--task", "detection", str(image)]
            )
            == ExitCode.OK
        )
        remote_line = json.loads(capsys.readouterr().out)
        assert (
            main(["predict", "--model", str(synthetic_ir), "--task", "detection", str(image)])
            == ExitCode.OK
        )
        local_line = json.loads(capsys.readouterr().out)
        assert remote_line["boxes"] == local_line["boxes"]
        assert abs(remote_line["score"] - local_line["score"]) < 1e-4
    dead = f"http://127.0.0.1:{free_port()}"
    assert main(["predict", "--model", dead, str(image)]) == ExitCode.INPUT
    assert "cannot reach the model server" in capsys.readouterr().err
    assert (
        main(["predict", "--model", server.rest_url, "--remote", "nope", str(image)])
        == ExitCode.MODEL
    )
    assert (
        main(["predict", "--model", str(synthetic_ir), "--remote", "plate", str(image)])
        == ExitCode.USAGE
    )
    assert (
        main(
            [
                "benchmark",
                "--model",
                server.grpc_url,
                "--remote",
                "plate",
                "--seconds",
                "0.3",
                "--frame",
                "320x240",
                "--json",
            ]
        )
        == ExitCode.OK
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["device"] == "remote" and result["async"]["frames"] > 0


@pytest.mark.slow
def test_two_replicas_one_killed_mid_run_loses_no_frame(synthetic_ir, tmp_path):
    first = ServeProcess(synthetic_ir, "plate", tmp_path).start()
    second = ServeProcess(synthetic_ir, "plate", tmp_path).start()
    try:
        local = AnomalyModel(synthetic_ir, "CPU", task="detection")
        inputs = frames()
        with AnomalyModel.remote(
            [first.grpc_url, second.rest_url],
            "plate",
            task="detection",
            num_requests=4,
            timeout=5,
            reconnect=RetryPolicy(3, 0.2, 1.0),
        ) as remote:
            results = []
            for index in range(300):
                if index == 100:
                    first.kill()
                remote.submit(inputs[index % len(inputs)], index)
                results += remote.ready()
            results += remote.drain()
        assert [index for index, _ in results] == list(range(300))
        for index, prediction in results[::7]:
            assert_same(local.predict(inputs[index % len(inputs)]), prediction)
    finally:
        first.kill()
        second.kill()


@pytest.mark.slow
def test_run_reconnects_when_the_server_returns_and_loses_no_frame(synthetic_ir, tmp_path):
    video = make_video(tmp_path / "line.avi", 600, defects=range(0, 600, 10))
    server = ServeProcess(synthetic_ir, "plate", tmp_path).start()
    restarted = ServeProcess(
        synthetic_ir, "plate", tmp_path, http_port=server.http_port, grpc_port=server.grpc_port
    )
    events = tmp_path / "events.jsonl"
    env = child_env()
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "anomaly_edge",
            "run",
            "--model",
            server.grpc_url,
            "--remote",
            "plate",
            "--source",
            str(video),
            "--events",
            str(events),
            "--all-frames",
            "--quiet",
            "--num-requests",
            "1",
            "--reconnect-attempts",
            "60",
            "--reconnect-delay",
            "0.2",
            "--reconnect-max-delay",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while (
            (not events.exists() or len(events.read_text().splitlines()) < 50)
            and run.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        server.kill()
        assert run.poll() is None, "the run finished before the server was killed"
        time.sleep(1.0)
        assert run.poll() is None, "the run gave up while the server was away"
        restarted.start()
        _, err = run.communicate(timeout=120)
    finally:
        run.kill()
        server.kill()
        restarted.kill()
    assert run.returncode == 0, err
    indices = [json.loads(line)["frame"] for line in events.read_text().splitlines()]
    assert indices == list(range(600))


@pytest.mark.slow
def test_run_gives_up_with_the_input_code_when_the_server_stays_away(synthetic_ir, tmp_path):
    video = make_video(tmp_path / "line.avi", 2000)
    server = ServeProcess(synthetic_ir, "plate", tmp_path).start()
    events = tmp_path / "events.jsonl"
    env = child_env()
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "anomaly_edge",
            "run",
            "--model",
            server.rest_url,
            "--remote",
            "plate",
            "--source",
            str(video),
            "--quiet",
            "--num-requests",
            "1",
            "--events",
            str(events),
            "--all-frames",
            "--reconnect-attempts",
            "2",
            "--reconnect-delay",
            "0.1",
            "--timeout",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while (
            (not events.exists() or len(events.read_text().splitlines()) < 5)
            and run.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        server.kill()
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == ExitCode.INPUT, err
    assert "not reachable after 2 retries" in err
    assert 5 <= len(events.read_text().splitlines()) < 2000  # what was done is kept


def test_remote_settings_are_validated_as_on_a_local_model(server):
    with AnomalyModel.remote(server.rest_url, "plate") as remote:
        for name, value in [("min_area", 1.5), ("image_threshold", 1e308), ("task", "all")]:
            with pytest.raises(InvalidInputError, match=name.split("_")[0]):
                setattr(remote, name, value)
        remote.min_area = 3.0  # a whole number given as a float is fine, as locally
        assert remote.min_area == 3


# ---- servers that answer badly (issue 24) -----------------------------------------------------


class _FakeServer:
    """A local HTTP server that answers as ``behaviour`` says: ``"mjpeg"`` (a camera's endless
    multipart stream on every path), ``"endless"`` (200, JSON content type, a byte every
    0.2 s for ever), ``"error"`` (HTTP 500 with a message on every path) or
    ``"infer_error"`` (real model metadata, HTTP 500 for inference)."""

    def __init__(self, behaviour: str, rt_info: dict | None = None) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _stream(self, content_type: str, piece: bytes, pause: float) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(piece)
                        self.wfile.flush()
                        time.sleep(pause)
                except OSError:  # the client went away
                    return

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if behaviour == "mjpeg":
                    frame = b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + b"\xff" * 2000
                    self._stream("multipart/x-mixed-replace; boundary=frame", frame, 0.05)
                elif behaviour == "endless":
                    self._stream("application/json", b" ", 0.2)
                elif behaviour == "infer_error":
                    self._json(200, {"name": "plate", "rt_info": rt_info})
                else:
                    self._json(500, {"error": "the accelerator fell over"})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._json(500, {"error": "the accelerator fell over"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> _FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.mark.parametrize(
    ("behaviour", "code", "words"),
    [
        ("mjpeg", ExitCode.MODEL, "multipart/x-mixed-replace stream"),
        ("endless", ExitCode.INPUT, "no complete answer within"),
    ],
)
def test_a_model_url_that_streams_for_ever_fails_within_30_s(
    behaviour, code, words, tmp_path, capsys
):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), frame_with_defects())
    with _FakeServer(behaviour) as camera:
        started = time.monotonic()
        assert main(["predict", "--model", camera.url, str(image)]) == code
        elapsed = time.monotonic() - started
    assert elapsed < 30
    err = capsys.readouterr().err
    assert words in err and camera.url in err and "Traceback" not in err


def test_a_server_error_is_reported_at_once_with_its_message(synthetic_ir, tmp_path, capsys):
    import openvino as ov

    from anomaly_edge.v2_protocol import rt_info_dict

    image = tmp_path / "a.png"
    cv2.imwrite(str(image), frame_with_defects())
    with _FakeServer("error") as broken:
        started = time.monotonic()
        assert main(["predict", "--model", broken.url, str(image)]) == ExitCode.MODEL
        assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert "HTTP 500" in err and "the accelerator fell over" in err
    assert "not reachable" not in err and "cannot reach" not in err
    # metadata fine, inference failing: the frame's error says so at once, no retries
    rt_info = rt_info_dict(ov.Core().read_model(str(synthetic_ir)))
    with (
        _FakeServer("infer_error", rt_info) as failing,
        AnomalyModel.remote(failing.url, "plate") as remote,
    ):
        started = time.monotonic()
        with pytest.raises(ModelLoadError, match="HTTP 500: the accelerator fell over"):
            remote.predict(frame_with_defects())
        assert time.monotonic() - started < 5
