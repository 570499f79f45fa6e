"""Where frames come from: video files, image folders and globs, cameras, network streams.

:func:`open_source` turns what a user types (``video.mp4``, ``0``, ``rtsp://...``,
``images/``, ``"shots/*.png"``) into a :class:`Source`, whose :meth:`Source.read` returns the
next :class:`Frame` or ``None`` at the end. Reading happens on the decode thread
(:mod:`anomaly_edge.stream.feed`); nothing here starts threads.

Faults are handled where they happen:

* a source that cannot be opened raises :class:`SourceError` at once (bounded network
  timeouts, never a hang);
* an undecodable frame or image is skipped and counted in :attr:`Source.corrupt`; frames after
  a damaged stretch of a video keep their true numbers and timestamps;
* a video file that ends before the frame count its header states (truncated, or damaged
  beyond resynchronisation) counts the frames never read in :attr:`Source.missing`;
* a live source (camera, network) that stops is reopened with exponential backoff, at most
  ``reconnect_attempts`` times in a row, and each attempt is logged on the
  ``anomaly_edge.stream`` logger; when it gives up, :meth:`Source.read` raises
  :class:`SourceError`.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from anomaly_edge import media
from anomaly_edge.errors import InvalidInputError
from anomaly_edge.media import IMAGE_SUFFIXES
from anomaly_edge.stream.avi_index import mjpeg_frame_chunks

log = logging.getLogger("anomaly_edge.stream")

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# A file whose frame count says there is more, but which fails this many reads in a row, is over.
MAX_CONSECUTIVE_BAD_FRAMES = 25
# Some containers (MKV, WebM) only estimate their frame count from the duration: a file that
# ends within this share of the count (at least one frame) is not called truncated.
FRAME_COUNT_TOLERANCE = 0.01
HELP = "give a video file, an image folder or glob, a camera index (0) or an rtsp:// or http:// URL"


class SourceError(InvalidInputError):
    """A source could not be opened, or a live source was lost for good."""


@dataclass
class Frame:
    """One decoded frame and where it came from.

    Attributes:
        index: position in the source (0-based). For live sources frames dropped because
            inference fell behind leave gaps; files and folders have none.
        timestamp: seconds; the position in the video for files, since the first frame
            for live sources and folders.
        image: uint8 BGR image (HxWx3).
        captured: ``time.monotonic()`` when decoding finished (latency is measured from it).
        wall_time: ``time.time()`` at the same moment.
        name: the file name for image folders and globs.
    """

    index: int
    timestamp: float
    image: np.ndarray
    captured: float = field(default_factory=time.monotonic)
    wall_time: float = field(default_factory=time.time)
    name: str | None = None


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a live source retries after it stops: ``delay * 2**n`` seconds, capped at
    ``max_delay``, at most ``attempts`` times in a row (0 = give up at once)."""

    attempts: int = 10
    delay: float = 0.5
    max_delay: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 0 or self.delay < 0 or self.max_delay < 0:
            raise ValueError("reconnect attempts and delays must not be negative")

    def wait_before(self, attempt: int) -> float:
        return min(self.delay * (2.0 ** (attempt - 1)), self.max_delay)


class Source:
    """A stream of frames. Subclasses implement :meth:`_read` and :meth:`close`."""

    #: Human-readable name for messages ("video file x.mp4", "camera 0", ...).
    description: str = ""
    #: Live sources produce frames whether or not we keep up, so stale ones are dropped.
    live: bool = False
    #: Frames per second, when the source says (None for folders and unknown rates).
    fps: float | None = None
    #: Number of frames, when known up front (files and folders).
    frame_count: int | None = None
    #: (height, width) of the frames, when known before reading (files, most live sources).
    frame_size: tuple[int, int] | None = None

    def __init__(self) -> None:
        self.corrupt = 0  # frames that could not be decoded and were skipped
        self.missing = 0  # frames a file announced but ended before (truncated file)
        self.reconnects = 0  # successful reopenings of a live source
        self._interrupted = threading.Event()

    def read(self) -> Frame | None:
        """The next frame, or None at the end of the stream (or after :meth:`interrupt`)."""
        if self._interrupted.is_set():
            return None
        return self._read()

    def interrupt(self) -> None:
        """Ask a blocked or retrying :meth:`read` to give up soon; safe from any thread."""
        self._interrupted.set()

    def close(self) -> None:
        """Release the device, file or connection (call from the thread that reads)."""

    def _read(self) -> Frame | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


def open_source(
    spec: Source | str | int | os.PathLike[str],
    *,
    reconnect: ReconnectPolicy | None = None,
    timeout: float = 10.0,
) -> Source:
    """Open what ``spec`` names and check that it yields frames.

    Args:
        spec: a video file, an image folder, a glob of images (``"dir/*.png"``), a camera
            index (``0`` or ``"0"``) or a URL (rtsp, http(s), rtmp, udp, ...).
        reconnect: retry policy for live sources (cameras and URLs).
        timeout: seconds to wait when opening or reading a network stream.

    Raises:
        SourceError: the source does not exist or cannot be opened or decoded.
    """
    if isinstance(spec, Source):
        return spec
    reconnect = reconnect or ReconnectPolicy()
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        return CameraSource(int(spec), reconnect)
    text = os.fspath(spec)
    match = _URL.match(text)
    if match:
        if match.group(1).lower() not in NETWORK_SCHEMES:
            raise SourceError(
                f"source {text!r}: unsupported URL scheme {match.group(1)!r}; "
                f"use one of {', '.join(NETWORK_SCHEMES)}"
            )
        return NetworkSource(text, reconnect, timeout)
    path = Path(text).expanduser()
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except OSError as exc:  # e.g. a path over PATH_MAX
        raise SourceError(f"source {text[:80]!r}...: {exc.strerror or exc}") from None
    if is_dir:
        return ImageFolderSource.from_folder(path)
    if is_file:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageFolderSource([path], description=f"image {path}")
        return VideoFileSource(path)
    if glob.has_magic(text):
        return ImageFolderSource.from_glob(text)
    raise SourceError(f"source {text!r} not found: no such file or folder ({HELP})")


# ---- files ---------------------------------------------------------------------------------


class VideoFileSource(Source):
    """A video file, decoded frame by frame (every frame, in order).

    Motion-JPEG AVI files with an index are read by following the index (see
    :mod:`anomaly_edge.stream.avi_index`), so that a damaged stretch costs exactly its own
    frames and every later frame keeps its number; other files are read through OpenCV.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.description = f"video file {path}"
        self._capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(
                f"cannot decode {path}: not a video FFmpeg can read (corrupt, "
                f"or an unsupported format); {HELP}"
            )
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else None
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None
        self._file: BinaryIO | None = None
        self._chunks = mjpeg_frame_chunks(path) if path.suffix.lower() == ".avi" else None
        if self._chunks is not None and len(self._chunks) == self.frame_count:
            self._capture.release()
            self._file = open(path, "rb")  # noqa: SIM115 (closed in close())
        else:
            self._chunks = None
        self._index = 0  # the number of the next frame in the file
        self._clock_origin: float | None = None  # the container's time of frame 0, in ms
        self._ended = False
        self._pending: Frame | None = None
        first = self._read()
        if first is None:
            self.close()
            raise SourceError(f"{path} contains no decodable video frame")
        self._pending = first  # read up front to prove the file decodes
        self.frame_size = first.image.shape[:2]

    def _read(self) -> Frame | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        if self._chunks is not None:
            return self._read_indexed()
        failures = 0
        while True:
            ok, image = self._capture.read()
            if ok and image is not None and image.size:
                break
            failures += 1
            if self.frame_count is None or self._index + failures >= self.frame_count:
                self._end()  # past the announced length a failed read is the end
                return None
            if failures >= MAX_CONSECUTIVE_BAD_FRAMES:
                log.warning(
                    "%s: %d undecodable frames in a row, stopping here", self.description, failures
                )
                self._end()
                return None
        clock = self._capture.get(cv2.CAP_PROP_POS_MSEC)  # the container's time of this frame
        if self._clock_origin is None:
            self._clock_origin = clock
        index = self._index + failures
        if failures and self.fps:
            # One failed read is not always one lost frame (the demuxer may drop several
            # packets at once): after damage, take the frame number from the container's
            # clock when it is further on. Not without failures: in variable-frame-rate
            # files the clock jumps by more than one frame time with nothing lost.
            by_clock = round((clock - self._clock_origin) * self.fps / 1000.0)
            index = max(index, by_clock)
        self.corrupt += index - self._index
        self._index = index + 1
        since_start_s = (clock - self._clock_origin) / 1000.0
        return Frame(index, index / self.fps if self.fps else since_start_s, _as_bgr(image))

    def _read_indexed(self) -> Frame | None:
        assert self._chunks is not None and self._file is not None
        while self._index < len(self._chunks):
            index = self._index
            self._index += 1
            offset, size = self._chunks[index]
            self._file.seek(offset)
            data = self._file.read(size)
            image = None
            if len(data) == size:
                image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if image is None or not image.size:
                self.corrupt += 1  # this frame, and no other, is ruined
                continue
            return Frame(index, index / self.fps if self.fps else 0.0, image)
        self._end()
        return None

    def _end(self) -> None:
        """The file is over: count the frames its header announced but it never held."""
        if not self._ended and self.frame_count is not None:
            self._ended = True
            missing = self.frame_count - self._index
            if missing > max(1, round(FRAME_COUNT_TOLERANCE * self.frame_count)):
                self.missing = missing
                log.warning(
                    "%s ends after %d of the %d frames its header announces: the "
                    "file is truncated or damaged, %d frames are missing",
                    self.description,
                    self._index,
                    self.frame_count,
                    missing,
                )

    def close(self) -> None:
        self._capture.release()
        if self._file is not None:
            self._file.close()


class ImageFolderSource(Source):
    """Still images in name order (an image folder, a glob, or a single image)."""

    def __init__(self, paths: list[Path], description: str) -> None:
        super().__init__()
        self.description = description
        self._paths = paths
        self.frame_count = len(paths)
        self._index = 0
        self._started: float | None = None  # the clock starts at the first image

    @classmethod
    def from_folder(cls, folder: Path) -> ImageFolderSource:
        paths = media.list_images(folder, natural_order=True)
        if not paths:
            raise SourceError(
                f"folder {folder} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        return cls(paths, f"image folder {folder}")

    @classmethod
    def from_glob(cls, pattern: str) -> ImageFolderSource:
        matches = (Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True))
        paths = sorted((p for p in matches if media.is_image_file(p)), key=media.natural_key)
        if not paths:
            raise SourceError(f"no image matches {pattern!r} ({HELP})")
        return cls(paths, f"images {pattern}")

    def _read(self) -> Frame | None:
        while self._index < len(self._paths):
            index = self._index
            path = self._paths[index]
            self._index += 1
            image = _read_image(path)
            if image is None:
                self.corrupt += 1
                log.warning("skipping %s: not a readable image", path)
                continue
            now = time.monotonic()
            if self._started is None:
                self._started = now
            return Frame(index, now - self._started, image, captured=now, name=path.name)
        return None


def _read_image(path: Path) -> np.ndarray | None:
    try:
        return media.read_image(path)  # 8-bit BGR, decoded as training decodes it
    except InvalidInputError as exc:
        log.debug("%s", exc)
        return None


def _as_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


# ---- live ----------------------------------------------------------------------------------


class LiveSource(Source):
    """A camera or network stream: frames arrive in real time; when it stops, reopen it."""

    live = True

    def __init__(self, reconnect: ReconnectPolicy) -> None:
        super().__init__()
        self._reconnect = reconnect
        self._capture = self._open()
        if self._capture is None:
            raise SourceError(self._unavailable_message())
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else None
        height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.frame_size = (height, width) if height > 0 and width > 0 else None
        self._index = 0
        self._started: float | None = None  # the stream's clock starts at the first frame

    def _open(self) -> cv2.VideoCapture | None:
        raise NotImplementedError

    def _decode(self, image: np.ndarray) -> np.ndarray | None:
        """The frame from what the capture returned (already decoded, here)."""
        return image

    def _unavailable_message(self) -> str:
        raise NotImplementedError

    def _read(self) -> Frame | None:
        while not self._interrupted.is_set():
            ok, image = self._capture.read() if self._capture is not None else (False, None)
            if ok and image is not None and image.size:
                image = self._decode(image)
                if image is None:  # a damaged picture: skip it, as a file's are skipped
                    self.corrupt += 1
                    continue
                now = time.monotonic()
                if self._started is None:
                    self._started = now
                index = self._index
                self._index += 1
                return Frame(index, now - self._started, _as_bgr(image), captured=now)
            if not self._reopen():
                raise SourceError(
                    f"{self.description} stopped and did not come back after "
                    f"{self._reconnect.attempts} reconnect attempts"
                )
        return None

    def _reopen(self) -> bool:
        """Reconnect with backoff; False when every attempt failed."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None
        for attempt in range(1, self._reconnect.attempts + 1):
            delay = self._reconnect.wait_before(attempt)
            log.warning(
                "%s stopped; reconnecting in %.1f s (attempt %d of %d)",
                self.description,
                delay,
                attempt,
                self._reconnect.attempts,
            )
            if self._interrupted.wait(delay):
                return True  # stopping anyway; read() returns None
            self._capture = self._open()
            if self._capture is not None:
                self.reconnects += 1
                log.warning("%s reconnected", self.description)
                return True
        return False

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class CameraSource(LiveSource):
    """A local camera by index (``/dev/video<N>`` on Linux)."""

    def __init__(self, index: int, reconnect: ReconnectPolicy) -> None:
        self.camera_index = index
        self.description = f"camera {index}"
        super().__init__(reconnect)

    def _open(self) -> cv2.VideoCapture | None:
        capture = cv2.VideoCapture(self.camera_index)
        if capture.isOpened():
            return capture
        capture.release()
        return None

    def _unavailable_message(self) -> str:
        return (
            f"cannot open camera {self.camera_index}: no such device, it is busy, or this "
            "user may not access it (on Linux: is /dev/video"
            f"{self.camera_index} there and are you in the 'video' group?)"
        )


class NetworkSource(LiveSource):
    """An RTSP / HTTP (MJPEG, HLS, ...) / RTMP / UDP stream read through FFmpeg."""

    def __init__(self, url: str, reconnect: ReconnectPolicy, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("network timeout must be positive")
        self.url = url
        self.description = f"stream {_redact(url)}"
        self._timeout_ms = round(timeout * 1000)
        super().__init__(reconnect)

    def _open(self) -> cv2.VideoCapture | None:
        # Bounded waits for connecting and for each frame: an unreachable or stalled server
        # must turn into an error or a reconnect, never a hang.
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            self._timeout_ms,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            self._timeout_ms,
        ]
        capture = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)
        if not capture.isOpened():
            capture.release()
            return None
        # MJPEG: FFmpeg (as OpenCV drives it) scales every picture to the first one's size,
        # so a camera that changes resolution would go unnoticed. Take the JPEG pictures
        # as they come and decode each at its own size instead.
        fourcc = int(capture.get(cv2.CAP_PROP_FOURCC))
        self._raw_jpeg = fourcc == cv2.VideoWriter.fourcc(*"MJPG") and bool(
            capture.set(cv2.CAP_PROP_FORMAT, -1)
        )
        return capture

    def _decode(self, image: np.ndarray) -> np.ndarray | None:
        if not getattr(self, "_raw_jpeg", False):
            return image
        decoded = cv2.imdecode(image.reshape(-1), cv2.IMREAD_COLOR)
        return decoded if decoded is not None and decoded.size else None

    def _unavailable_message(self) -> str:
        return (
            f"cannot open {self.description}: unreachable, refused, or not a video stream "
            f"(waited at most {self._timeout_ms / 1000:g} s); check the URL, the network "
            "and the camera's credentials"
        )


def _redact(url: str) -> str:
    """The URL without a password, for messages and logs."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)
