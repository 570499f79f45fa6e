"""Where results go: annotated video, JSON Lines events, snapshots, a window.

A sink is any object with ``write(result: FrameResult)`` and ``close()``; the engine calls
``write`` in frame order from one thread and ``close`` exactly once at the end, also after
Ctrl-C. Each sink leaves complete files behind:

* :class:`VideoSink` writes to a hidden temporary file beside the target and renames it at
  ``close``, so the target is either absent or a finished, playable video;
* :class:`EventsSink` writes one JSON object per line and flushes each line, so the log can be
  followed live (``tail -f``) and always ends on a complete line;
* :class:`SnapshotSink` writes each image through :mod:`anomaly_edge.atomic`.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import queue
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from anomaly_edge.atomic import atomic_write
from anomaly_edge.errors import InvalidInputError
from anomaly_edge.stream.events import JsonLinesWriter, result_events
from anomaly_edge.stream.outputs import OutputHealth

if TYPE_CHECKING:
    from anomaly_edge.stream.result import FrameResult

log = logging.getLogger("anomaly_edge.stream")

# Container -> codec that OpenCV's FFmpeg backend can always write.
VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}
DEFAULT_FPS = 25.0  # for sources that do not say (image folders, some cameras)


class Sink(Protocol):
    def write(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...


def _check_writable_dir(directory: Path, what: str) -> None:
    if not directory.is_dir():
        raise InvalidInputError(
            f"cannot write {what}: folder {directory} does not exist; create it first"
        )
    if not os.access(directory, os.W_OK):
        raise InvalidInputError(f"cannot write {what}: folder {directory} is not writable")


class VideoSink:
    """The annotated frames as a video with the size and frame rate of the source.

    Drawing and encoding (the costliest work per frame after inference) run on a thread of
    their own, fed through a short queue, so they overlap with decoding and inference.

    The video is complete or absent: it is written to a hidden file and renamed at
    :meth:`close`. When the disk runs short (less room than the video's index needs), the
    video stops there and is finalised up to its last good frame; one that cannot be read
    back is removed. Either way the cameras go on and :attr:`health` says what was lost.
    A source that does not state its frame rate gets one measured from the timestamps of
    its first frames.

    Args:
        path: ``.mp4``/``.m4v``/``.mov``/``.mkv`` (MPEG-4 part 2) or ``.avi`` (Motion JPEG).
        fps: frame rate to write; the source's, when known (None: measured; live sources
            get it measured, since a network camera's stated rate is often FFmpeg's guess).
        alpha: opacity of the segmentation overlay.
        reserve: bytes left free on the disk for the container's index (the video stops
            before the disk fills).
    """

    QUEUE = 4  # frames waiting for the encoder; bounds memory, and a slow disk slows the run
    MEASURE_FRAMES = 25  # frames whose timestamps give the frame rate when the source has none
    MEASURE_BYTES = 64 << 20  # ... or fewer, for large frames: memory held meanwhile
    RESERVE = 1 << 20

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float | None = None,
        *,
        alpha: float = 0.4,
        reserve: int = RESERVE,
    ) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_CODECS:
            raise InvalidInputError(
                f"cannot write video {self.path}: unknown container "
                f"{suffix or '(none)'}; use one of "
                f"{', '.join(sorted(VIDEO_CODECS))}"
            )
        _check_writable_dir(self.path.parent.resolve(), f"video {self.path}")
        known = fps is not None and math.isfinite(fps) and fps > 0
        self.fps = float(fps) if known and fps is not None else DEFAULT_FPS
        self.measured = not known  # measured from the first frames' timestamps
        self.alpha = alpha
        self.reserve = reserve
        self.frames = 0  # frames in the finished file
        self.health = OutputHealth(f"video {self.path}", unit="frame")
        # Same folder (so the rename is atomic), same extension (FFmpeg picks the container
        # from it, which is why atomic.py's ".tmp" names do not serve here), hidden so that
        # nobody mistakes it for the result.
        self._temp = self.path.with_name(f".{self.path.stem[:100]}.{os.getpid()}.partial{suffix}")
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self._first: list[tuple[float, np.ndarray]] = []  # held while the rate is measured
        self._cut = False  # the disk ran short: no more frames
        self._resized = 0
        self._queue: queue.Queue[FrameResult | None] = queue.Queue(maxsize=self.QUEUE)
        self._thread = threading.Thread(target=self._encode, name="anomaly-edge-video", daemon=True)
        self._thread.start()

    def write(self, result: FrameResult) -> None:
        self._queue.put(result)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._first:
            self._flush_first()
        if self._writer is not None:
            self._writer.release()  # finishes the container (the mp4 index lives at the end)
            self._writer = None
            self._finalise()
        if not self.frames and self.health.fatal is None:
            log.warning("no frame was processed, so no video was written to %s", self.path)
        self._temp.unlink(missing_ok=True)

    def _finalise(self) -> None:
        """Rename the video into place if it reads back; remove it otherwise."""
        readable = _readable_frames(self._temp)
        if readable <= 0:
            self.health.give_up(
                f"the video could not be finalised ({self.health.error or 'unreadable'}); removed"
            )
            self.health.lost += self.frames
            self.frames = 0
            return
        if readable < self.frames:
            self.health.lose(self.frames - readable, "cut short by a failed write")
            self.frames = readable
        try:
            os.replace(self._temp, self.path)
        except OSError as exc:
            self.health.give_up(f"could not be put in place: {exc}")
            self.frames = 0

    def _encode(self) -> None:
        while (result := self._queue.get()) is not None:
            if self._cut:
                self.health.lost += 1
                continue  # keep emptying the queue so that write() never blocks for ever
            try:
                if self.measured and self._writer is None:
                    self._first.append((result.timestamp, result.annotated(self.alpha)))
                    held = sum(image.nbytes for _, image in self._first)
                    if len(self._first) >= self.MEASURE_FRAMES or held >= self.MEASURE_BYTES:
                        self._flush_first()
                else:
                    self._write(result.annotated(self.alpha))
            except Exception as exc:
                self._stop_writing(exc)

    def _flush_first(self) -> None:
        """Open the writer at the rate the first frames' timestamps give, and write them."""
        first, self._first = self._first, []
        # The median gap between frames: a burst of buffered frames at the start (same
        # timestamp) does not count.
        gaps = sorted(b[0] - a[0] for a, b in itertools.pairwise(first) if b[0] > a[0])
        if gaps:
            self.fps = round(1.0 / gaps[len(gaps) // 2], 2)
            log.info("%s: frame rate measured from the timestamps: %g fps", self.path, self.fps)
        try:
            for _, image in first:
                if self._cut:
                    self.health.lost += 1
                    continue
                self._write(image)
        except Exception as exc:
            self._stop_writing(exc)

    def _stop_writing(self, exc: BaseException) -> None:
        self._cut = True
        self.health.failed(f"{exc}; the video ends at frame {self.frames}", lost=1)

    def _write(self, image: np.ndarray) -> None:
        height, width = image.shape[:2]
        if self._writer is None:
            self._open(width, height)
        elif (width, height) != self._size:
            # A camera that changed resolution, or an image folder of mixed sizes: a video
            # has one size, so the frame (boxes drawn at its real size) is scaled to it.
            if not self._resized:
                assert self._size is not None
                log.warning(
                    "%s: frame %d is %dx%d, the video %dx%d: scaled to fit",
                    self.path,
                    self.frames,
                    width,
                    height,
                    *self._size,
                )
            self._resized += 1
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        if not self._room_left():
            raise OSError(28, f"No space left on device (under {self.reserve} bytes free)")
        assert self._writer is not None
        self._writer.write(image)
        self.frames += 1

    def _room_left(self) -> bool:
        # OpenCV does not report failed writes: ask the disk before each frame, leaving
        # room for the index written at the end.
        try:
            stat = os.statvfs(self._temp.parent)
        except OSError:
            return True
        return stat.f_bavail * stat.f_frsize >= self.reserve + 64 * self.frames

    def _open(self, width: int, height: int) -> None:
        fourcc = cv2.VideoWriter.fourcc(*VIDEO_CODECS[self.path.suffix.lower()])
        writer = cv2.VideoWriter(str(self._temp), fourcc, self.fps, (width, height))
        if not writer.isOpened():
            writer.release()
            self._temp.unlink(missing_ok=True)
            raise InvalidInputError(
                f"cannot write video {self.path} ({width}x{height}): "
                "OpenCV could not open a video writer for it"
            )
        self._writer = writer
        self._size = (width, height)


def _readable_frames(path: Path) -> int:
    """Frames a finished video holds (0: it cannot be opened)."""
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return 0
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if count <= 0:  # some containers do not say: read one frame at least
            return 1 if capture.read()[0] else 0
        return count
    finally:
        capture.release()


class EventsSink:
    """JSON Lines, one event per anomalous frame (or per frame with ``all_frames=True``).

    The lines are the run's event record (:mod:`anomaly_edge.stream.events`): ``source``,
    ``frame``, ``timestamp``, ``time``, the prediction's fields and ``image`` for folders; a
    score drift warning is a line of its own with ``"event": "drift"``. The file is written
    in place, one flushed line at a time, so it can be followed live.
    """

    def __init__(self, path: str | os.PathLike[str], *, all_frames: bool = False) -> None:
        self.path = Path(path)
        _check_writable_dir(self.path.parent.resolve(), f"events {self.path}")
        self.all_frames = all_frames
        self.events = 0  # lines written
        self._writer = JsonLinesWriter(self.path)

    def write(self, result: FrameResult) -> None:
        for record in result_events(result, self.all_frames):
            self._writer.event(record, result)
        self.events = self._writer.lines

    @property
    def health(self) -> OutputHealth:
        return self._writer.health

    def close(self) -> None:
        self._writer.close()


class SnapshotSink:
    """JPEG snapshots of anomalous frames, at most one per ``interval`` seconds of stream.

    Files are named ``frame_<index>.jpg`` (``frame_<index>_<image name>.jpg`` for folders,
    the name shortened to fit the file system's limit). Each appears complete or not at all;
    one that cannot be written (disk full, permission) is reported, counted in
    :attr:`health`, and the next anomaly tries again: the cameras go on.

    Args:
        directory: created if missing, with its parents.
        interval: minimum seconds between two snapshots (stream time; 0 = every anomaly).
        overlay: draw the prediction on the snapshot instead of saving the raw frame.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        interval: float = 1.0,
        overlay: bool = False,
        alpha: float = 0.4,
        quality: int = 95,
    ) -> None:
        if interval < 0:
            raise InvalidInputError(f"snapshot interval must not be negative, got {interval}")
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInputError(
                f"cannot write snapshots to {self.directory}: {exc.strerror or exc}"
            ) from None
        _check_writable_dir(self.directory.resolve(), f"snapshots to {self.directory}")
        self.interval = interval
        self.overlay = overlay
        self.alpha = alpha
        self.quality = quality
        self.saved = 0
        self.health = OutputHealth(f"snapshots {self.directory}", unit="snapshot")
        self._last: float | None = None

    def write(self, result: FrameResult) -> None:
        if not result.prediction.label:
            return
        if self._last is not None and result.timestamp - self._last < self.interval:
            return
        image = result.annotated(self.alpha) if self.overlay else result.frame
        stem = f"frame_{result.index:08d}"
        if result.name:
            stem += "_" + Path(result.name).stem
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            self.health.failed(f"could not encode frame {result.index} as JPEG", lost=1)
            return
        try:
            # Python's write, flush and fsync report a full disk; numpy's tofile does not.
            with atomic_write(self.directory / fit_file_name(stem, ".jpg"), "wb") as handle:
                handle.write(encoded.tobytes())
        except OSError as exc:  # disk full, permission: the next anomaly tries again
            self.health.failed(exc, lost=1)
            return
        self._last = result.timestamp
        self.saved += 1
        self.health.recovered()

    def close(self) -> None:
        pass


def fit_file_name(stem: str, suffix: str, limit: int = 200) -> str:
    """``stem + suffix``, the stem cut (on a character boundary) so the name stays within
    ``limit`` bytes: file systems allow 255, and temporary names add a few."""
    room = limit - len(suffix.encode())
    encoded = stem.encode()
    if len(encoded) > room:
        stem = encoded[:room].decode(errors="ignore")
    return stem + suffix


def gui_unavailable_reason() -> str | None:
    """Why a window cannot be shown here (None when it can)."""
    if re.search(r"^\s*GUI:\s*NONE", cv2.getBuildInformation(), re.MULTILINE):
        return (
            "this OpenCV build has no GUI support (the opencv-python-headless package, "
            "which anomaly-edge installs for edge boxes without a screen); to get windows, "
            "replace it: pip uninstall opencv-python-headless && pip install opencv-python"
        )
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return "there is no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    return None


class WindowSink:
    """Shows the annotated frames in a window; ``q`` or Esc calls ``on_quit``.

    Must be written from the main thread (a GUI toolkit requirement): iterate over the
    runner there (``run --show`` does).
    """

    def __init__(
        self,
        title: str = "anomaly-edge",
        *,
        alpha: float = 0.4,
        on_quit: Callable[[], object] | None = None,
    ) -> None:
        reason = gui_unavailable_reason()
        if reason is not None:
            raise InvalidInputError(f"cannot show a window: {reason}")
        self.title = title
        self.alpha = alpha
        self.on_quit = on_quit
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)

    def write(self, result: FrameResult) -> None:
        cv2.imshow(self.title, result.annotated(self.alpha))
        if (cv2.waitKey(1) & 0xFF) in (ord("q"), 27) and self.on_quit is not None:
            self.on_quit()

    def close(self) -> None:
        cv2.destroyWindow(self.title)
