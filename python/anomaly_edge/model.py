"""Run an exported model on frames: :class:`AnomalyModel`, the deployment API.

A frame is resized on the host with the resize training used (one OpenCV call that releases
the GIL), channel order, float conversion and normalisation run inside the compiled graph,
the raw anomaly map comes back, and the C++ post-processor turns it into a
:class:`~anomaly_edge.Prediction` at the frame's own resolution. No torch anywhere.
"""

from __future__ import annotations

import atexit
import os
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import openvino as ov

from anomaly_edge.errors import AnomalyEdgeError, InvalidInputError
from anomaly_edge.images import ColorFormat, check_frame, network_image, read_image
from anomaly_edge.inflight import InFlight
from anomaly_edge.metadata import ModelMetadata
from anomaly_edge.model_loading import (
    attach_preprocessing,
    compile_for,
    default_cache_dir,
    read_ir,
    resolve_device,
)
from anomaly_edge.postprocess import PostprocessParams, postprocess
from anomaly_edge.prediction import Prediction, Task
from anomaly_edge.tiles import TileLayout

if TYPE_CHECKING:
    from anomaly_edge.calibration import CalibrationReport
    from anomaly_edge.remote import RemoteAnomalyModel

# A frame whose width/height differs from the training images' by more than this (relative)
# is stretched by the resize: the model sees parts shaped unlike anything it learned.
ASPECT_TOLERANCE = 0.05
_DEFAULT = object()  # marks "use the default cache directory" (None disables the cache)
DEFAULT_MAX_PENDING = 32  # finished results a caller may leave uncollected (see submit())

# Every model, released at interpreter exit while Python is still whole: frames in flight
# finish and every OpenVINO object goes before the interpreter starts to tear itself down.
# (OpenVINO threads themselves never run Python code: see anomaly_edge.inflight.)
_LIVE_MODELS: weakref.WeakSet[AnomalyModel] = weakref.WeakSet()


class PendingResultsError(AnomalyEdgeError, RuntimeError):
    """``submit()`` was called while ``max_pending`` finished results wait to be collected
    and no other thread collects them."""


@atexit.register
def _release_live_models() -> None:
    for model in list(_LIVE_MODELS):
        model._release()


class RuntimeSettings:
    """The settings a model takes at run time, validated alike for a local model
    (:class:`AnomalyModel`) and a remote one (:class:`~anomaly_edge.remote.RemoteAnomalyModel`):
    task, thresholds, smallest region and the bound on unread asynchronous results."""

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


class AnomalyModel(RuntimeSettings):
    """An exported anomaly-edge model, compiled for one device.

    Args:
        path: the IR's ``.xml`` file (its ``.bin`` must sit beside it), or a folder holding
            ``model.xml``.
        device: ``"AUTO"`` (default), ``"CPU"``, ``"GPU"``, ``"NPU"``, or any OpenVINO device
            string such as ``"AUTO:GPU,CPU"``.
        task: ``"classification"``, ``"detection"`` or ``"segmentation"``; defaults to the task
            stored at export. Settable later (``model.task = "detection"``).
        image_threshold, pixel_threshold: raw-score thresholds overriding the exported ones;
            settable later. Normalised scores keep 0.5 at the threshold in use.
        min_area: smallest anomalous region reported as a box, in anomaly-map pixels (a
            whole number >= 0).
        color: channel order of the frames you pass: ``"BGR"`` (OpenCV, default), ``"RGB"`` or
            ``"GRAY"``. Colour models also accept grey frames (expanded with one OpenCV call);
            for a grey camera open the model with ``"GRAY"`` and frames go in untouched.
        num_requests: inference requests the asynchronous interface keeps in flight; defaults
            to the device's optimal number plus one (so post-processing overlaps inference).
        max_pending: finished :meth:`submit` results that may wait to be collected with
            :meth:`ready` or :meth:`drain` (default 32); this bounds the memory of the
            asynchronous interface (see :meth:`submit`).
        cache_dir: where OpenVINO caches the compiled model so the next start is fast;
            default ``~/.cache/anomaly-edge/openvino``; ``None`` disables caching.
        properties: extra OpenVINO compile properties, e.g. ``{"INFERENCE_NUM_THREADS": 2}``.
            By default :meth:`predict` runs on a model compiled for latency (one request using
            every core) and the asynchronous interface on a second one compiled for
            throughput (several requests at once, e.g. one per core), compiled on first use; a
            ``PERFORMANCE_HINT`` given here applies to both.

    Raises:
        ModelLoadError: the file is missing, truncated or corrupted, or was not exported by
            anomaly-edge (no metadata), or cannot be compiled for the device.
        InvalidInputError: an unknown device, task or colour format, or a setting out of range
            (the same checks as the setters).

    Thread safety: every method may be called from several threads at once. :meth:`predict`
    calls take turns on one request (use the asynchronous interface or :meth:`predict_batch`
    for throughput); :meth:`predict_batch`, :meth:`predict_iter`, :meth:`submit`,
    :meth:`ready` and :meth:`drain` share one pool of requests, each call's results stay its
    own and in order; a producer thread may :meth:`submit` while a consumer thread calls
    :meth:`ready`. Settings changed while frames are in flight apply to later frames.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "AUTO",
        *,
        task: Task | str | None = None,
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
        min_area: int = 1,
        color: ColorFormat | str = ColorFormat.BGR,
        num_requests: int | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        cache_dir: str | Path | None = _DEFAULT,  # type: ignore[assignment]
        properties: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.color = ColorFormat.parse(color)
        self.device = resolve_device(device)
        graph = read_ir(self.path)
        self._ir = graph  # as read, without pre-processing: what save() writes back
        self.metadata = ModelMetadata.read_from(graph, source=str(self.path))
        self._params = PostprocessParams.from_metadata(self.metadata)
        # A tiled model takes all tiles of a frame as one batch; their maps are stitched in C++.
        self._tiles: TileLayout | None = self.metadata.tile_layout
        self.task = task if task is not None else self.metadata.task
        # The constructor goes through the setters: one validation path for both.
        self.min_area = min_area
        if image_threshold is not None:
            self.image_threshold = image_threshold
        if pixel_threshold is not None:
            self.pixel_threshold = pixel_threshold
        if num_requests is not None:
            num_requests = _whole(num_requests, "num_requests", minimum=1)
        self.max_pending = max_pending

        self._graph = attach_preprocessing(graph, self.metadata, self.color)
        self._cache_dir = default_cache_dir() if cache_dir is _DEFAULT else cache_dir
        self._properties = properties
        self._compiled = compile_for(self._graph, self.device, self._cache_dir, properties)
        self._request = self._compiled.create_infer_request()
        self._request_lock = threading.Lock()  # predict() from several threads takes turns
        # The asynchronous interface gets its own model, compiled for throughput on first use:
        # on two cores, two single-threaded requests at once score about 1.45x the frames per
        # second of one request on both cores (measured with PaDiM), while predict() keeps
        # the lowest latency.
        self._async_compiled: ov.CompiledModel | None = None
        self._num_requests = num_requests
        # The asynchronous interface: one lock for the request pool and the submit() results.
        self._async_lock = threading.Condition()
        self._inflight: InFlight | None = None  # created on first asynchronous use
        self._submitted: deque[_Pending] = deque()  # submit() results, in submission order
        self._collector: threading.Thread | None = None  # who last called ready()/drain()
        self._released = False
        _LIVE_MODELS.add(self)
        self._aspect_warned = False

    @classmethod
    def remote(
        cls, url: str | list[str], name: str | None = None, **options: Any
    ) -> RemoteAnomalyModel:
        """A model served by a v2 model server (``anomaly-edge serve``, OpenVINO Model Server,
        KServe), with this class's interface: pre- and post-processing run here.

        ``url``: ``http://host:8080``, ``grpc://host:8081``, or a list of replicas. ``options``
        are those of :class:`~anomaly_edge.remote.RemoteAnomalyModel`. Needs the ``serve`` extra.
        """
        from anomaly_edge.remote import RemoteAnomalyModel

        return RemoteAnomalyModel(url, name, **options)

    # ---- calibration on the line (anomaly_edge.calibration) -------------------------------

    def calibrate(
        self,
        frames: Iterable[np.ndarray],
        *,
        source: str | None = None,
        policy: str | None = None,
    ) -> CalibrationReport:
        """Re-estimate thresholds and normalisation on frames of normal production from the
        deployment camera (no retraining), at the model's operating-point policy or
        ``policy`` (``"far:0.02"``); the model changes in place. See
        :func:`anomaly_edge.calibration.calibrate`; :meth:`save` writes the result."""
        from anomaly_edge.calibration import calibrate

        return calibrate(self, frames, source=source, policy=policy)

    def save(self, path: str | Path) -> Path:
        """Write this model as a new IR pair (same weights), with the thresholds in use and
        any calibration in its rt_info; atomically. Returns the ``.xml`` path."""
        import dataclasses

        from anomaly_edge.calibration import save_model

        metadata = dataclasses.replace(
            self.metadata,
            image_threshold=self.image_threshold,
            pixel_threshold=self.pixel_threshold,
        )
        return save_model(self._ir, metadata, path)

    def _apply_metadata(self, metadata: ModelMetadata) -> None:
        self.metadata = metadata
        self._params = PostprocessParams.from_metadata(metadata, min_area=self.min_area)

    # ---- synchronous -----------------------------------------------------------------------

    def predict(self, image: np.ndarray | str | Path, *, heatmap: bool = False) -> Prediction:
        """Score one frame (a uint8 array in the model's colour format, or an image path).

        ``heatmap=True`` adds a uint8 heatmap at frame resolution (for overlays). Thread-safe:
        calls from several threads take turns on one inference request.
        """
        frame_size, tensor = self._network_input(image)
        with self._request_lock:
            if self._request is None:
                raise RuntimeError("the model was released at interpreter exit")
            self._request.infer({0: tensor}, share_inputs=True)
            raw_map = _frame_map(self._request, self._tiles)
        return postprocess(raw_map, frame_size, self._params, self._task, heatmap=heatmap)

    def predict_batch(
        self, images: Iterable[np.ndarray | str | Path], *, heatmap: bool = False
    ) -> list[Prediction]:
        """Score several frames, in parallel where the device allows; results in input order.

        Thread-safe: concurrent calls share the request pool and each gets its own results.
        """
        return list(self.predict_iter(images, heatmap=heatmap))

    def predict_iter(
        self, images: Iterable[np.ndarray | str | Path], *, heatmap: bool = False
    ) -> Iterator[Prediction]:
        """Score a stream of frames lazily, keeping up to ``num_requests`` in flight.

        Thread-safe like :meth:`predict_batch`; memory stays bounded however long the stream.
        """
        window: deque[_Pending] = deque()
        for image in images:
            window.append(self._start(image, None, heatmap))
            with self._async_lock:
                self._finish_ready()
            while window and (window[0].done.is_set() or len(window) > self.num_requests):
                yield self._finished(window.popleft()).result()
        while window:
            yield self._finished(window.popleft()).result()

    # ---- asynchronous ----------------------------------------------------------------------

    @property
    def num_requests(self) -> int:
        """Frames the asynchronous interface keeps in flight (the device's optimum plus one
        unless given); asking compiles the throughput model if that has not happened yet."""
        if self._num_requests is None:
            optimal = self._async_model().get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
            self._num_requests = int(optimal) + 1
        return self._num_requests

    def _async_model(self) -> ov.CompiledModel:
        if self._async_compiled is None:
            self._async_compiled = compile_for(
                self._graph, self.device, self._cache_dir, self._properties, hint="THROUGHPUT"
            )
        return self._async_compiled

    def submit(
        self, image: np.ndarray | str | Path, userdata: Any = None, *, heatmap: bool = False
    ) -> None:
        """Start scoring a frame and return at once (blocks while ``num_requests`` are busy).

        The frame is copied, so the caller may reuse its buffer. Collect results with
        :meth:`ready` or :meth:`drain`; they come in submission order with their ``userdata``.
        Settings (thresholds, task) in force at submission apply to the frame.

        Memory stays bounded: at most :attr:`max_pending` finished results wait to be
        collected (plus up to ``num_requests`` frames in flight). When that many wait, and
        another thread collects results (it called :meth:`ready` or :meth:`drain`), ``submit``
        waits until it does; otherwise nobody could collect them while ``submit`` waits, so it
        raises :class:`PendingResultsError` instead of blocking for ever. Calling
        :meth:`ready` after each ``submit`` (as in the README) never gets there; to score
        many frames in one go use :meth:`predict_iter` or :meth:`predict_batch`.
        """
        frame_size, tensor = self._network_input(image)  # a new array: the caller's is free
        pending = _Pending(userdata, frame_size, self._params, self._task, heatmap)
        with self._async_lock:
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

    def _collect(self, wait: bool) -> list[tuple[Any, Prediction]]:
        out: list[tuple[Any, Prediction]] = []
        with self._async_lock:
            self._collector = threading.current_thread()
            if wait and self._inflight is not None:
                while self._submitted and not self._submitted[-1].done.is_set():
                    self._inflight.finish_next()
            else:
                self._finish_ready()
            while self._submitted and self._submitted[0].done.is_set():
                head = self._submitted[0]
                if head.error is not None and out:
                    break  # hand over the good results first; the next call raises
                self._submitted.popleft()
                self._async_lock.notify_all()  # room for a submit() waiting in another thread
                out.append((head.userdata, head.result()))
        return out

    def close(self) -> None:
        """Wait for frames still in flight and let go of the asynchronous requests.

        Results not yet collected are dropped. The model stays usable: a later
        :meth:`submit` starts anew. Also runs by itself at interpreter exit.
        """
        with self._async_lock:
            if self._inflight is not None:
                self._inflight.cancel(
                    RuntimeError("the model was closed before this frame finished")
                )
                self._inflight = None
            self._submitted.clear()
            self._async_lock.notify_all()

    def _release(self) -> None:
        # At interpreter exit: every OpenVINO object goes while Python is still whole.
        with self._async_lock:
            self._released = True
        self.close()
        with self._request_lock:
            self._request = None
        self._async_compiled = None
        self._compiled = None

    def __enter__(self) -> AnomalyModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def in_flight(self) -> int:
        """Frames submitted whose results have not been collected yet."""
        return len(self._submitted)

    def _start(self, image: np.ndarray | str | Path, userdata: Any, heatmap: bool) -> _Pending:
        frame_size, tensor = self._network_input(image)  # a new array: the caller's is free
        pending = _Pending(userdata, frame_size, self._params, self._task, heatmap)
        with self._async_lock:
            self._start_locked(pending, tensor)
        return pending

    def _start_locked(self, pending: _Pending, tensor: np.ndarray) -> None:
        if self._released:
            raise RuntimeError("the model was released at interpreter exit")
        if self._inflight is None:
            self._inflight = InFlight(
                self._async_model(),
                self.num_requests,
                lambda request: _frame_map(request, self._tiles),
            )
        self._inflight.start(tensor, pending.finish)

    def _finish_ready(self) -> None:
        if self._inflight is not None:
            self._inflight.finish_ready()

    def _finished(self, pending: _Pending) -> _Pending:
        """``pending`` once finished, finishing older frames (any caller's) on the way."""
        while not pending.done.is_set():
            with self._async_lock:
                if pending.done.is_set():
                    break
                if self._inflight is None or not len(self._inflight):
                    raise RuntimeError("the model was closed before this frame finished")
                self._inflight.finish_next()
        return pending

    def _wait_for_room(self) -> None:
        # Called with the lock held; see submit() for the rule.
        while sum(p.done.is_set() for p in self._submitted) >= self._max_pending:
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
            self._async_lock.wait(0.5)  # ready()/drain()/close() in the other thread notify

    def _network_input(self, image: np.ndarray | str | Path) -> tuple[tuple[int, int], np.ndarray]:
        """(frame height and width, the 1 x h x w x C uint8 tensor the graph takes)."""
        if isinstance(image, (str, Path)):
            frame = read_image(image, self.color)
        else:
            frame = check_frame(image, self.color)
        frame = frame if frame.ndim == 3 else frame[:, :, None]
        if not self._aspect_warned:
            self._check_aspect(frame.shape[0], frame.shape[1])
        if self._tiles is not None:
            return (frame.shape[0], frame.shape[1]), self._tiles.cut(frame, self.color.channels)
        tensor = network_image(frame, self.metadata.input_size, self.color)
        return (frame.shape[0], frame.shape[1]), tensor[None]

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
                stacklevel=4,
            )

    def info(self) -> dict[str, Any]:
        """What this model is and how it runs: metadata, device, settings, I/O."""
        md = self.metadata
        try:
            devices = list(self._compiled.get_property("EXECUTION_DEVICES"))
        except RuntimeError:
            devices = [self.device]
        return {
            "path": str(self.path),
            "model": md.model,
            "backbone": md.backbone,
            "input_size": list(md.input_size),
            "tiles": self._tiles.describe() if self._tiles is not None else None,
            "precision": md.precision,
            "task": self._task.value,
            "exported_task": md.task,
            "image_threshold": self.image_threshold,
            "pixel_threshold": self.pixel_threshold,
            "exported_image_threshold": md.image_threshold,
            "exported_pixel_threshold": md.pixel_threshold,
            "image_scale": self._params.image_scale,
            "pixel_scale": self._params.pixel_scale,
            "min_area": self.min_area,
            "mean": list(md.mean),
            "std": list(md.std),
            "color": self.color.value,
            "device": self.device,
            "execution_devices": devices,
            "num_requests": self.num_requests,
            "metrics": md.metrics,
            "format_version": md.format_version,
        }

    def __repr__(self) -> str:
        md = self.metadata
        return (
            f"AnomalyModel({str(self.path)!r}, device={self.device!r}, model={md.model!r}, "
            f"backbone={md.backbone!r}, task={self._task.value!r})"
        )


class _Pending:
    """One frame in flight: what its post-processing needs, and then its result."""

    __slots__ = (
        "done",
        "error",
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
    ) -> None:
        self.userdata = userdata
        self.frame_size = frame_size
        self.params = params
        self.task = task
        self.heatmap = heatmap
        self.prediction: Prediction | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def finish(self, raw_map: np.ndarray | None, error: BaseException | None) -> None:
        """Post-process the raw map (the C++ work releases the GIL); never raises."""
        try:
            if error is None:
                assert raw_map is not None
                self.prediction = postprocess(
                    raw_map, self.frame_size, self.params, self.task, heatmap=self.heatmap
                )
        except BaseException as exc:  # handed to whoever collects this frame
            error = exc
        self.error = error
        self.done.set()

    def result(self) -> Prediction:
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.prediction is not None
        return self.prediction


def _frame_map(request: ov.InferRequest, tiles: TileLayout | None) -> np.ndarray:
    """The raw map of the frame: the output, or its tile maps stitched (C++, GIL released).

    Either way a new array, since the request is reused."""
    output = request.get_output_tensor(0).data
    return output[0, 0].copy() if tiles is None else tiles.stitch(output)


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


def _whole(value: Any, name: str, *, minimum: int) -> int:
    """``value`` as an int, refusing fractions (1.5), booleans and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"{name} must be a whole number, got {value!r}")
    if not float(value).is_integer():
        raise InvalidInputError(f"{name} must be a whole number, got {value!r}")
    number = int(value)
    if number < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}, got {number}")
    return number


def _changed(params: PostprocessParams, **changes: Any) -> PostprocessParams:
    try:
        return params.replace(**changes)
    except (TypeError, ValueError) as exc:  # one error type for every bad setting
        raise InvalidInputError(str(exc)) from None


_FLOAT32_MAX = float(np.finfo(np.float32).max)
