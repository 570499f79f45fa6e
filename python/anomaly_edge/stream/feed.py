"""The decode thread: reads a :class:`~anomaly_edge.stream.sources.Source` ahead of inference.

Two policies, chosen by the source:

* files and folders: a small bounded buffer; when it is full the decode thread waits
  (backpressure), so every frame is processed and memory stays flat;
* live sources: only the newest ``live_buffer`` frames are kept; an older frame that nobody
  took yet is dropped and counted, so latency stays low when inference falls behind.
"""

from __future__ import annotations

import collections
import threading

from anomaly_edge.stream.sources import Frame, Source, SourceError

_POLL_S = 0.1  # how often a waiting decode thread checks whether it should stop


class FrameFeed:
    """Decodes ``source`` on a daemon thread; :meth:`get` hands frames to the consumer."""

    def __init__(self, source: Source, *, buffer: int = 4, live_buffer: int = 1) -> None:
        if buffer < 1 or live_buffer < 1:
            raise ValueError("feed buffers must hold at least one frame")
        self.source = source
        self.dropped = 0  # live frames replaced by newer ones before inference took them
        self.error: SourceError | None = None  # why a live source was given up, if it was
        self._capacity = live_buffer if source.live else buffer
        self._frames: collections.deque[Frame] = collections.deque()
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=self._decode, name="anomaly-edge-decode", daemon=True
        )

    def start(self) -> FrameFeed:
        self._thread.start()
        return self

    def get(self, timeout: float) -> Frame | None:
        """The oldest buffered frame, or None when none arrived within ``timeout`` seconds.

        Check :attr:`finished` to tell "not yet" from "never again".
        """
        with self._ready:
            if not self._frames and not self._done:
                self._ready.wait(timeout)
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._ready.notify_all()  # room for the decode thread again
            return frame

    @property
    def finished(self) -> bool:
        """True once the source ended (or failed) and every decoded frame was taken."""
        with self._ready:
            return self._done and not self._frames

    def stop(self) -> None:
        """Stop decoding soon. Only sets flags, so it is safe in a signal handler."""
        self._stop.set()
        self.source.interrupt()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _decode(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self.source.read()
                if frame is None:
                    break
                self._put(frame)
        except SourceError as exc:
            self.error = exc
        finally:
            self.source.close()  # same thread as the reads: capture objects are not thread-safe
            with self._ready:
                self._done = True
                self._ready.notify_all()

    def _put(self, frame: Frame) -> None:
        with self._ready:
            if self.source.live:
                if len(self._frames) >= self._capacity:
                    self._frames.popleft()
                    self.dropped += 1
            else:
                while len(self._frames) >= self._capacity and not self._stop.is_set():
                    self._ready.wait(_POLL_S)
            self._frames.append(frame)
            self._ready.notify_all()
