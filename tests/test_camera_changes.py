"""Cameras that change under a run (issue 24): a new resolution, no stated frame rate, a
frozen picture, a camera still booting when the run starts."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import numpy as np
import pytest

from anomaly_edge.cli.common import ExitCode
from anomaly_edge.cli.main import main
from anomaly_edge.model import AnomalyModel
from anomaly_edge.stream import StreamRunner
from tests.stream_media import MjpegServer, count_frames, make_frame
from tests.system_tools import free_port


@contextlib.contextmanager
def _stream_log():
    """The stream's log messages, whatever handlers an earlier CLI run left behind."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("anomaly_edge.stream")
    handler = Collect(logging.INFO)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture
def model(synthetic_ir):
    return AnomalyModel(synthetic_ir, device="CPU", task="detection")


def test_a_resolution_change_is_said_and_boxes_stay_in_the_frame(model):
    """Before: frames after the change were scaled to the first size without a word."""

    def frame_for(n: int) -> np.ndarray:
        image = make_frame(n, True)
        return image if n < 8 else np.ascontiguousarray(np.tile(image, (2, 2, 1)))

    server = MjpegServer(frame_for, fps=30).start()
    seen: list[tuple[tuple[int, ...], list]] = []
    try:
        with _stream_log() as messages:
            runner = StreamRunner(
                model,
                server.url,
                max_frames=16,
                on_result=lambda r: seen.append((r.frame.shape, r.prediction.boxes)),
            )
            runner.run()
    finally:
        server.stop()
    assert any("resolution changed" in m for m in messages), messages
    big = [(shape, boxes) for shape, boxes in seen if shape[1] > 200]
    assert big, "no frame after the change"
    assert any(box.x2 > 160 for _, boxes in big for box in boxes)  # beyond the first size
    for shape, boxes in big:
        for box in boxes:
            assert 0 <= box.x1 < box.x2 <= shape[1] and 0 <= box.y1 < box.y2 <= shape[0]
    assert runner.lanes[0].resolution_changes == 1


def test_a_camera_without_a_true_rate_gets_one_measured(synthetic_ir, tmp_path):
    """Before: an MJPEG camera at 10 fps gave a 25 fps video (2.5 times too fast)."""
    server = MjpegServer(lambda n: make_frame(n, False), fps=10).start()
    out = tmp_path / "out.avi"
    try:
        code = main(
            ["run", str(synthetic_ir), "--device", "CPU", "--quiet", "--source", server.url,
             "--output", str(out), "--max-frames", "30"]
        )  # fmt: skip
    finally:
        server.stop()
    assert code == ExitCode.OK
    frames, _, fps = count_frames(out)
    assert frames == 30
    assert 7.5 <= fps <= 12.5, fps


def test_a_frozen_camera_is_warned_about(model):
    still = make_frame(3, False)
    server = MjpegServer(lambda n: still, fps=60).start()
    try:
        with _stream_log() as messages:
            StreamRunner(model, server.url, max_frames=60).run()
    finally:
        server.stop()
    assert sum("frozen" in m for m in messages) == 1, messages


def test_a_camera_down_at_the_start_is_retried_until_it_comes(synthetic_ir, capsys):
    """Before: one live camera down at the start failed the run at once."""
    port = free_port()
    server = MjpegServer(lambda n: make_frame(n, False), fps=20, port=port)
    threading.Timer(1.5, server.start).start()
    url = f"http://127.0.0.1:{port}/stream.mjpg"
    try:
        started = time.monotonic()
        code = main(
            ["run", str(synthetic_ir), "--device", "CPU", "--quiet", "--source", url,
             "--max-frames", "5", "--start-attempts", "20", "--reconnect-delay", "0.2",
             "--reconnect-max-delay", "0.4", "--timeout", "2"]
        )  # fmt: skip
    finally:
        time.sleep(0.1)
        server.stop()
    assert code == ExitCode.OK, capsys.readouterr().err
    assert time.monotonic() - started < 30


def test_a_camera_that_never_comes_gives_up_after_the_limit(synthetic_ir, capsys):
    url = f"http://127.0.0.1:{free_port()}/stream.mjpg"
    code = main(
        ["run", str(synthetic_ir), "--device", "CPU", "--quiet", "--source", url,
         "--start-attempts", "2", "--reconnect-delay", "0.1", "--timeout", "2"]
    )  # fmt: skip
    assert code == ExitCode.INPUT
    assert "after 2 attempt(s)" in capsys.readouterr().out  # the summary's "stopped early"
