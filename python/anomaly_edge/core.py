"""The one inference core: frames in, :class:`~anomaly_edge.Prediction` out, whatever runs
the network.

:class:`Model` is the protocol every model object follows (local, remote). :class:`Core`
implements it once: settings and their validation, the host side of a frame (the resize
training used, or the tiles of a tiled model), the bounded asynchronous interface
(``submit``/``ready``/``drain``) and its locking, and the call to the C++ post-processor that
makes the decision. A backend only runs network tensors: it supplies a synchronous call and a
:class:`Pool` of calls in flight (see :mod:`anomaly_edge.inflight` for the local one).

The core names no backend; :func:`anomaly_edge.open_model` picks one for a path or a URL.
"""

from __future__ import annotations

import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from anomaly_edge.errors import AnomalyEdgeError, InvalidInputError
from anomaly_edge.images import ColorFormat, check_frame, network_image
from anomaly_edge.media import read_image
from anomaly_edge.metadata import ModelMetadata
from anomaly_edge.postprocess import PostprocessParams, postprocess
from anomaly_edge.prediction import Prediction, Task
from anomaly_edge.tiles import TileLayout

# A frame whose width/height differs from the training images' by more than this (relative)
# is stretched by the resize: the model sees parts shaped unlike anything it learned.
ASPECT_TOLERANCE = 0.05
DEFAULT_MAX_PENDING = 32  # finished results a caller may leave uncollected (see submit())
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_UINT8 = np.dtype(np.uint8)

Image = np.ndarray | str | Path
# What a finished network call hands over: its output (a new array) or the error.
Finish = Callable[[np.ndarray | None, BaseException | None], None]


class PendingResultsError(AnomalyEdgeError, RuntimeError):
    """``submit()`` was called while ``max_pending`` finished results wait to be collected
    and no other thread collects them."""


@runtime_checkable
class Model(Protocol):
    """What every anomaly-edge model object offers, local or remote.

    Made by :func:`anomaly_edge.open_model` (or :class:`~anomaly_edge.AnomalyModel` for a
    local IR). Predictions of the same frame are equal whichever backend runs the network:
    the decision is made by the same C++ post-processor, on this side.
    """

    metadata: ModelMetadata
    color: ColorFormat

    @property
    def task(self) -> Task: ...

    @property
    def image_threshold(self) -> float: ...

    @property
    def pixel_threshold(self) -> float: ...

    @property
    def min_area(self) -> int: ...

    @property
    def max_pending(self) -> int: ...

    @property
    def num_requests(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    def predict(self, image: Image, *, heatmap: bool = False) -> Prediction:
        """Score one frame and wait for its prediction."""
        ...

    def predict_batch(self, images: Iterable[Image], *, heatmap: bool = False) -> list[Prediction]:
        """Score several frames, several in flight at once; results in input order."""
        ...

    def predict_iter(
        self, images: Iterable[Image], *, heatmap: bool = False
    ) -> Iterator[Prediction]:
        """Score a stream of frames lazily, with bounded memory; results in input order."""
        ...

    def submit(self, image: Image, userdata: Any = None, *, heatmap: bool = False) -> None:
        """Start scoring a frame; at most ``max_pending`` finished results may wait."""
        ...

    def ready(self) -> list[tuple[Any, Prediction]]:
        """Results finished so far, in submission order."""
        ...

    def drain(self) -> list[tuple[Any, Prediction]]:
        """Wait for every submitted frame; all results in submission order."""
        ...

    def info(self) -> dict[str, Any]:
        """What the model is and how it runs."""
        ...

    def close(self) -> None:
        """Wait for frames in flight and drop uncollected results."""
        ...


class Pool(Protocol):
    """Network calls in flight, finished strictly in the order they were started.

    Not thread-safe on its own: the core serialises calls with its lock. ``finish`` runs on
    the thread that calls ``start``, ``finish_ready`` or ``finish_next`` (never on a thread
    of the backend's own), so post-processing stays on the caller's thread.
    """

    def __len__(self) -> int: ...

    def start(self, tensor: np.ndarray, finish: Finish) -> None:
        """Start a call; when every slot is busy, wait for one (finishing calls on the way
        as the backend needs)."""
        ...

    def finish_ready(self) -> None:
        """Finish the oldest calls that are over, without waiting."""
        ...

    def finish_next(self) -> None:
        """Wait for the oldest call and finish it."""
        ...

    def cancel(self, reason: BaseException) -> None:
        """Wait until nothing runs; unfinished calls fail with ``reason``."""
        ...


class RuntimeSettings:
    """The settings a model takes at run time, validated alike for every backend: task,
    thresholds, smallest region and the bound on unread asynchronous results."""

    _task: Task
    _params: PostprocessParams
    _max_pending: int

    @property
    def task(self) -> Task:
        """What predictions contain: classification, detection (boxes) or segmentation (mask)."""
        return self._task

    @task.setter
    def task(self, value: Task | str) -> None:
        try:
            self._task = Task.parse(value)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None

    @property
    def image_threshold(self) -> float:
        """Raw image score at or above which an image is anomalous."""
        return self._params.image_threshold

    @image_threshold.setter
    def image_threshold(self, value: float) -> None:
        self._params = _changed(self._params, image_threshold=_threshold(value, "image_threshold"))

    @property
    def pixel_threshold(self) -> float:
        """Raw anomaly-map value at or above which a pixel is anomalous."""
        return self._params.pixel_threshold

    @pixel_threshold.setter
    def pixel_threshold(self, value: float) -> None:
        self._params = _changed(self._params, pixel_threshold=_threshold(value, "pixel_threshold"))

    @property
    def min_area(self) -> int:
        """Smallest region, in anomaly-map pixels, that is reported as a box."""
        return self._params.min_area

    @min_area.setter
    def min_area(self, value: int) -> None:
        self._params = _changed(self._params, min_area=_whole(value, "min_area", minimum=0))

    @property
    def max_pending(self) -> int:
        """Finished :meth:`submit` results that may wait to be collected (see :meth:`submit`)."""
        return self._max_pending

    @max_pending.setter
    def max_pending(self, value: int) -> None:
        self._max_pending = _whole(value, "max_pending", minimum=1)


class Core(RuntimeSettings):
    """:class:`Model` implemented once over a backend's network calls.

    A subclass sets ``metadata``, ``color`` and ``path`` and calls :meth:`_setup`, and
    supplies :meth:`_infer` (one synchronous call), :meth:`_new_pool` (calls in flight) and
    ``num_requests``. A network tensor is what :meth:`network_input` makes: uint8
    ``B x h x w x C`` images in the model's colour format, B = 1 or the tiles of one frame;
    a network output is the float32 ``B x 1 x h x w`` maps.

    Thread safety: every method may be called from several threads at once. :meth:`predict`
    calls take turns; :meth:`predict_batch`, :meth:`predict_iter`, :meth:`submit`,
    :meth:`ready`, :meth:`drain` and :meth:`run_network` share one pool, each call's results
    stay its own and in order; a producer thread may :meth:`submit` while a consumer thread
    calls :meth:`ready`. Settings changed while frames are in flight apply to later frames.
    """

    metadata: ModelMetadata
    color: ColorFormat
    path: Path

    def _setup(
        self,
        *,
        task: Task | str | None,
        image_threshold: float | None,
        pixel_threshold: float | None,
        min_area: int,
        max_pending: int,
    ) -> None:
        self._params = PostprocessParams.from_metadata(self.metadata)
        # A tiled model takes all tiles of a frame as one batch; their maps are stitched in C++.
        self._tiles: TileLayout | None = self.metadata.tile_layout
        self.task = task if task is not None else self.metadata.task
        # Through the setters: one validation path for the constructor and later changes.
        self.min_area = min_area
        if image_threshold is not None:
            self.image_threshold = image_threshold
        if pixel_threshold is not None:
            self.pixel_threshold = pixel_threshold
        self.max_pending = max_pending
        self._sync_lock = threading.Lock()  # predict() from several threads takes turns
        # The asynchronous interface: one lock for the pool and the submit() results. Hot paths
        # take the lock itself (the Condition's __enter__ is a Python call); submit() waits on
        # the Condition, and ready() notifies only when a submit() waits.
        self._mutex = threading.RLock()
        self._async_lock = threading.Condition(self._mutex)
        self._room_waiters = 0  # submit() calls waiting for room (see _wait_for_room)
        self._pool: Pool | None = None  # created on first asynchronous use
        self._submitted: deque[_Pending] = deque()  # submit() results, in submission order
        self._collector: threading.Thread | None = None  # who last called ready()/drain()
        self._released = False
        self._aspect_warned = False
        self._forget_frame_shape()

    def _forget_frame_shape(self) -> None:
        # The last frame shape that passed check_frame and the aspect check, with the colour
        # format it passed them for (one tuple, set at once for concurrent callers): frames of
        # that shape skip both (they depend on the shape, dtype and colour format only), so
        # the checks run once per shape, not per frame.
        self._checked: tuple[tuple[int, ...], ColorFormat] | None = None

    def _apply_metadata(self, metadata: ModelMetadata) -> None:
        """Take new thresholds and normalisation (calibration on the line); the min_area in
        use stays."""
        self.metadata = metadata
        self._params = PostprocessParams.from_metadata(metadata, min_area=self.min_area)
        self._forget_frame_shape()  # the training aspect may have changed

    # ---- what a backend supplies -----------------------------------------------------------

    @property
    def num_requests(self) -> int:
        """Network calls the asynchronous interface keeps in flight."""
        raise NotImplementedError

    def _infer(self, tensor: np.ndarray) -> np.ndarray:
        """One synchronous network call (the caller holds the sync lock); a new array."""
        raise NotImplementedError

    def _new_pool(self) -> Pool:
        raise NotImplementedError

    def _backend_tensor(self, images: np.ndarray) -> np.ndarray:
        """What the backend's network takes, from uint8 network images (by default those)."""
        return images

    # True where the pool copies what it is given when it starts a call (InFlight does): the
    # frames it gets need no copy of their own then (the copy frees the caller's buffer).
    _pool_copies_input = False

    def _input(self, image: Image, copy: bool = True) -> tuple[tuple[int, int], np.ndarray]:
        frame_size, images = self.network_input(image, copy=copy)
        return frame_size, self._backend_tensor(images)

    # ---- synchronous -----------------------------------------------------------------------

    def predict(self, image: Image, *, heatmap: bool = False) -> Prediction:
        """Score one frame (a uint8 array in the model's colour format, or an image path).

        ``heatmap=True`` adds a uint8 heatmap at frame resolution (for overlays). Thread-safe:
        calls from several threads take turns (use the asynchronous interface or
        :meth:`predict_batch` for throughput).
        """
        frame_size, tensor = self._input(image)
        with self._sync_lock:
            if self._released:
                raise RuntimeError("the model was released at interpreter exit")
            output = self._infer(tensor)
        return postprocess(
            self.frame_map(output), frame_size, self._params, self._task, heatmap=heatmap
        )

    def predict_batch(self, images: Iterable[Image], *, heatmap: bool = False) -> list[Prediction]:
        """Score several frames, in parallel where the backend allows; results in input order.

        Thread-safe: concurrent calls share the pool and each gets its own results.
        """
        return list(self.predict_iter(images, heatmap=heatmap))

    def predict_iter(
        self, images: Iterable[Image], *, heatmap: bool = False
    ) -> Iterator[Prediction]:
        """Score a stream of frames lazily, keeping up to ``num_requests`` in flight.

        Thread-safe like :meth:`predict_batch`; memory stays bounded however long the stream.
        """
        window: deque[_Pending] = deque()
        for image in images:
            window.append(self._start(image, None, heatmap))
            with self._mutex:
                self._finish_ready()
            while window and (window[0].done or len(window) > self.num_requests):
                yield self._finished(window.popleft()).result()
        while window:
            yield self._finished(window.popleft()).result()

    def run_network(self, tensor: np.ndarray) -> np.ndarray:
        """The network output for a network tensor (see the class docstring), on the pool.

        What a server built on this core answers to a raw call; thread-safe, and concurrent
        calls run side by side."""
        tensor = self._backend_tensor(tensor)
        pending = _Pending(None, (0, 0), self._params, self._task, False, None)
        with self._mutex:
            self._start_locked(pending, tensor)
        return self._finished(pending).output()

    def predict_with(
        self,
        image: Image,
        params: PostprocessParams,
        task: Task,
        *,
        heatmap: bool = False,
    ) -> Prediction:
        """:meth:`predict` with other post-processing settings, on the pool (for a server,
        whose clients each send their own thresholds)."""
        frame_size, tensor = self._input(image)
        output = self.run_network(tensor)
        return postprocess(self.frame_map(output), frame_size, params, task, heatmap=heatmap)

    # ---- asynchronous ----------------------------------------------------------------------

    def submit(self, image: Image, userdata: Any = None, *, heatmap: bool = False) -> None:
        """Start scoring a frame and return at once (blocks while ``num_requests`` are busy).

        The frame is copied, so the caller may reuse its buffer. Collect results with
        :meth:`ready` or :meth:`drain`; they come in submission order with their ``userdata``.
        Settings (thresholds, task) in force at submission apply to the frame.

        Memory stays bounded: at most :attr:`max_pending` finished results wait to be
        collected (plus at most twice ``num_requests`` frames in flight or not yet
        post-processed). When that many wait, and
        another thread collects results (it called :meth:`ready` or :meth:`drain`), ``submit``
        waits until it does; otherwise nobody could collect them while ``submit`` waits, so it
        raises :class:`PendingResultsError` instead of blocking for ever. Calling
        :meth:`ready` after each ``submit`` (as in the README) never gets there; to score
        many frames in one go use :meth:`predict_iter` or :meth:`predict_batch`.
        """
        # The caller's buffer is free once this returns: the pool copies the tensor, or it is
        # a new array.
        frame_size, tensor = self._input(image, copy=not self._pool_copies_input)
        pending = _Pending(userdata, frame_size, self._params, self._task, heatmap, self.frame_map)
        with self._mutex:
            if len(self._submitted) >= self._max_pending:  # else fewer than that are finished
                self._wait_for_room()
            self._start_locked(pending, tensor)
            self._submitted.append(pending)

    def ready(self) -> list[tuple[Any, Prediction]]:
        """Results finished so far, in submission order (waits for no inference).

        A result is held back until every frame submitted before it is finished. Finished
        frames are post-processed here, on the caller's thread.
        """
        return self._collect(wait=False)

    def drain(self) -> list[tuple[Any, Prediction]]:
        """Wait for every submitted frame and return all results, in submission order."""
        return self._collect(wait=True)

    def close(self) -> None:
        """Wait for frames still in flight and let go of the asynchronous calls.

        Results not yet collected are dropped. The model stays usable: a later
        :meth:`submit` starts anew. Also runs by itself at interpreter exit.
        """
        with self._async_lock:
            if self._pool is not None:
                self._pool.cancel(RuntimeError("the model was closed before this frame finished"))
                self._pool = None
            self._submitted.clear()
            self._async_lock.notify_all()

    @property
    def in_flight(self) -> int:
        """Frames submitted whose results have not been collected yet."""
        return len(self._submitted)

    def __enter__(self) -> Core:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- frames ----------------------------------------------------------------------------

    def network_input(
        self, image: Image, *, copy: bool = True
    ) -> tuple[tuple[int, int], np.ndarray]:
        """(frame height and width, the network tensor): the frame resized as in training,
        or cut into the tiles of a tiled model. A new array, or with ``copy=False`` possibly
        a view of ``image`` (a frame already at the network's size)."""
        checked = self._checked
        if (
            checked is not None
            and type(image) is np.ndarray
            and image.shape == checked[0]
            and image.dtype is _UINT8
            and self.color is checked[1]
        ):
            frame = image  # this shape passed the checks before (see _forget_frame_shape)
        else:
            if isinstance(image, (str, Path)):
                frame = read_image(image, self.color)
            else:
                frame = check_frame(image, self.color)
            frame = frame if frame.ndim == 3 else frame[:, :, None]
            if not self._aspect_warned:
                self._check_aspect(frame.shape[0], frame.shape[1])
            if frame is image and frame.dtype is _UINT8:  # an H x W x C array, taken as it is
                self._checked = (frame.shape, self.color)
        if self._tiles is not None:
            return (frame.shape[0], frame.shape[1]), self._tiles.cut(frame, self.color.channels)
        tensor = network_image(frame, self.metadata.input_size, self.color, copy=copy)
        return (frame.shape[0], frame.shape[1]), tensor[None]

    _network_input = network_input  # the name it had in AnomalyModel (tests, tools)

    def frame_map(self, output: np.ndarray) -> np.ndarray:
        """The raw map of a frame from a network output: the map, or the tile maps stitched
        (in C++, GIL released)."""
        if self._tiles is None:
            frame_map: np.ndarray = output[0, 0]
            return frame_map
        return self._tiles.stitch(output)

    def _check_aspect(self, height: int, width: int) -> None:
        """Warn once per model when frames are shaped unlike the training images."""
        trained = self.metadata.train_aspect
        if trained is None:  # trained on varied shapes, or an IR older than the aspect
            return
        if abs((width / height) / trained - 1.0) > ASPECT_TOLERANCE:
            self._aspect_warned = True
            h, w = self.metadata.input_size
            warnings.warn(
                f"{self.path.name}: frames of {width}x{height} (width/height {width / height:.2f}) "
                f"are shaped unlike the training images (median {trained:.2f}); each is resized "
                f"to the network's {w}x{h}, which stretches the parts. Crop frames to the "
                "training images' field of view, or retrain on frames like these.",
                stacklevel=5,
            )

    # ---- the pool --------------------------------------------------------------------------

    def _start(self, image: Image, userdata: Any, heatmap: bool) -> _Pending:
        # The caller's buffer is free once this returns: the pool copies the tensor, or it is
        # a new array.
        frame_size, tensor = self._input(image, copy=not self._pool_copies_input)
        pending = _Pending(userdata, frame_size, self._params, self._task, heatmap, self.frame_map)
        with self._mutex:
            self._start_locked(pending, tensor)
        return pending

    def _start_locked(self, pending: _Pending, tensor: np.ndarray) -> None:
        if self._released:
            raise RuntimeError("the model was released at interpreter exit")
        if self._pool is None:
            self._pool = self._new_pool()
        self._pool.start(tensor, pending.finish)

    def _finish_ready(self) -> None:
        if self._pool is not None:
            self._pool.finish_ready()

    def _finished(self, pending: _Pending) -> _Pending:
        """``pending`` once finished, finishing older frames (any caller's) on the way."""
        while not pending.done:
            with self._mutex:
                if pending.done:
                    break
                if self._pool is None or not len(self._pool):
                    raise RuntimeError("the model was closed before this frame finished")
                self._pool.finish_next()
        return pending

    def _collect(self, wait: bool) -> list[tuple[Any, Prediction]]:
        out: list[tuple[Any, Prediction]] = []
        submitted = self._submitted
        with self._mutex:
            self._collector = threading.current_thread()
            pool = self._pool
            if pool is not None:
                if wait:
                    while submitted and not submitted[-1].done:
                        pool.finish_next()
                else:
                    pool.finish_ready()
            popped = False
            try:
                while submitted and submitted[0].done:
                    head = submitted[0]
                    if head.error is not None and out:
                        break  # hand over the good results first; the next call raises
                    submitted.popleft()
                    popped = True
                    out.append((head.userdata, head.result()))
            finally:
                if popped and self._room_waiters:  # room for a submit() waiting (once per call)
                    self._async_lock.notify_all()
        return out

    def _wait_for_room(self) -> None:
        # Called with the lock held; see submit() for the rule.
        while sum(p.done for p in self._submitted) >= self._max_pending:
            collector = self._collector
            if (
                collector is None
                or collector is threading.current_thread()
                or not collector.is_alive()
            ):
                raise PendingResultsError(
                    f"{self._max_pending} finished results wait to be collected: call "
                    "ready() (or drain()) between submit() calls, use predict_iter() to "
                    "score many frames, or raise max_pending"
                )
            self._room_waiters += 1
            try:
                self._async_lock.wait(0.5)  # ready()/drain()/close() in the other thread notify
            finally:
                self._room_waiters -= 1


class _Pending:
    """One frame in flight: what its post-processing needs, and then its result.

    ``done`` is a plain flag, not an Event: every frame is finished by a thread that holds
    the core's lock, and whoever waits for one finishes frames itself (see
    :meth:`Core._finished`), so nothing ever blocks on the flag.
    """

    __slots__ = (
        "done",
        "error",
        "frame_map",
        "frame_size",
        "heatmap",
        "params",
        "prediction",
        "task",
        "userdata",
    )

    def __init__(
        self,
        userdata: Any,
        frame_size: tuple[int, int],
        params: PostprocessParams,
        task: Task,
        heatmap: bool,
        frame_map: Callable[[np.ndarray], np.ndarray] | None,
    ) -> None:
        self.userdata = userdata
        self.frame_size = frame_size
        self.params = params
        self.task = task
        self.heatmap = heatmap
        # None: hand over the network output itself (run_network)
        self.frame_map = frame_map
        self.prediction: Prediction | np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False

    def finish(self, output: np.ndarray | None, error: BaseException | None) -> None:
        """Post-process the network output (the C++ work releases the GIL); never raises."""
        try:
            if error is None:
                assert output is not None
                if self.frame_map is None:
                    self.prediction = output
                else:
                    self.prediction = postprocess(
                        self.frame_map(output),
                        self.frame_size,
                        self.params,
                        self.task,
                        heatmap=self.heatmap,
                    )
        except BaseException as exc:  # handed to whoever collects this frame
            error = exc
        self.error = error
        self.done = True

    def result(self) -> Prediction:
        value = self._value()
        assert isinstance(value, Prediction)
        return value

    def output(self) -> np.ndarray:
        """The network output itself (a ``raw`` frame, see :meth:`Core.run_network`)."""
        value = self._value()
        assert isinstance(value, np.ndarray)
        return value

    def _value(self) -> Prediction | np.ndarray:
        assert self.done  # the caller finished it (Core._finished, or _collect)
        if self.error is not None:
            raise self.error
        assert self.prediction is not None
        return self.prediction


def _threshold(value: float, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(number):
        raise InvalidInputError(f"{name} must be finite, got {value!r}")
    if abs(number) > _FLOAT32_MAX:
        # The map is float32: a threshold beyond its range would make every frame fail later.
        raise InvalidInputError(
            f"{name} must lie within +-{_FLOAT32_MAX:.3g} (the float32 "
            f"range of the anomaly map), got {value!r}"
        )
    return number


def whole_number(value: Any, name: str, *, minimum: int) -> int:
    """``value`` as an int, refusing fractions (1.5), booleans and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"{name} must be a whole number, got {value!r}")
    if not float(value).is_integer():
        raise InvalidInputError(f"{name} must be a whole number, got {value!r}")
    number = int(value)
    if number < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}, got {number}")
    return number


_whole = whole_number


def _changed(params: PostprocessParams, **changes: Any) -> PostprocessParams:
    try:
        return params.replace(**changes)
    except (TypeError, ValueError) as exc:  # one error type for every bad setting
        raise InvalidInputError(str(exc)) from None
