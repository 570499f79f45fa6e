"""Test media for the stream tests: generated videos, image folders and an MJPEG server.

Frames are flat grey (128), which the synthetic IR (tests/ir_factory.py) scores ~0; a
"defect" is a bright white disc, which it scores far above the threshold. So a test knows
exactly which frames must come out anomalous.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

GREY = 128
SIZE = (160, 120)  # width, height
FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "mp4v"}


def make_frame(
    index: int, defect: bool, size: tuple[int, int] = SIZE, grey: bool = False
) -> np.ndarray:
    """A grey frame; with a white disc (moving with the index) when ``defect``."""
    width, height = size
    frame = np.full((height, width, 3), GREY, np.uint8)
    if defect:
        radius = max(6, min(width, height) // 8)
        x = radius + (index * 7) % max(1, width - 2 * radius)
        cv2.circle(frame, (x, height // 2), radius, (255, 255, 255), -1)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if grey else frame


def make_video(
    path: Path,
    frames: int,
    defects: Iterable[int] = (),
    *,
    fps: float = 20.0,
    size: tuple[int, int] = SIZE,
    grey: bool = False,
    noise: int = 0,
) -> Path:
    """A video of :func:`make_frame` s; ``noise``: +- grey levels of sensor noise, so that
    frames differ as a real camera's do (identical frames are a frozen camera)."""
    defects = set(defects)
    fourcc = cv2.VideoWriter_fourcc(*FOURCC[path.suffix.lower()])
    writer = cv2.VideoWriter(str(path), fourcc, fps, size, isColor=not grey)
    assert writer.isOpened(), f"cannot write test video {path}"
    for index in range(frames):
        frame = make_frame(index, index in defects, size, grey)
        if noise:
            rng = np.random.default_rng(index)
            jitter = rng.integers(-noise, noise + 1, frame.shape, dtype=np.int16)
            frame = (frame.astype(np.int16) + jitter).clip(0, 255).astype(np.uint8)
        writer.write(frame)
    writer.release()
    return path


def damage_frames(video: Path, frames: Iterable[int]) -> Path:
    """Wreck the JPEG data of some frames of an MJPG .avi in place (decoding them fails)."""
    data = bytearray(video.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    for index in frames:
        data[starts[index] : starts[index] + 200] = bytes(200)
    video.write_bytes(bytes(data))
    return video


def make_image_folder(
    folder: Path, count: int, defects: Iterable[int] = (), suffix: str = ".png"
) -> Path:
    defects = set(defects)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        cv2.imwrite(str(folder / f"img_{index}{suffix}"), make_frame(index, index in defects))
    return folder


def count_frames(path: Path) -> tuple[int, tuple[int, int] | None, float]:
    """(frames cv2 can decode, (width, height), fps) of a video."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"{path} does not open"
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames, size = 0, None
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames += 1
        size = (image.shape[1], image.shape[0])
    capture.release()
    return frames, size, fps


class MjpegServer:
    """An HTTP MJPEG camera on 127.0.0.1 (multipart/x-mixed-replace), like many IP cameras.

    ``frame_for(n)`` gives the n-th frame served since the server (re)started; ``stop()`` cuts
    every connection, ``start()`` serves again on the same port.
    """

    def __init__(
        self, frame_for: Callable[[int], np.ndarray], fps: float = 25.0, port: int = 0
    ) -> None:
        self.frame_for = frame_for
        self.fps = fps
        self.port = port
        self.served = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._running = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> MjpegServer:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                n = 0
                while owner._running.is_set():
                    _, jpeg = cv2.imencode(".jpg", owner.frame_for(n))
                    part = (
                        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                        + str(len(jpeg)).encode()
                        + b"\r\n\r\n"
                        + jpeg.tobytes()
                        + b"\r\n"
                    )
                    try:
                        self.wfile.write(part)
                        self.wfile.flush()
                    except OSError:
                        return
                    n += 1
                    owner.served += 1
                    time.sleep(1.0 / owner.fps)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._running.set()
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._running.clear()  # handlers return, closing their connections
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        time.sleep(0.2)
