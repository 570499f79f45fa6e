"""Run an exported model on this machine: :class:`AnomalyModel`, the local backend.

A frame is resized on the host with the resize training used (one OpenCV call that releases
the GIL), channel order, float conversion and normalisation run inside the compiled graph,
the raw anomaly map comes back, and the C++ post-processor turns it into a
:class:`~anomaly_edge.Prediction` at the frame's own resolution. No torch anywhere. What is
not OpenVINO-specific (settings, frames, the asynchronous interface, the decision) is the
shared :class:`~anomaly_edge.core.Core`.
"""

from __future__ import annotations

import atexit
import os
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import openvino as ov

from anomaly_edge.core import (
    ASPECT_TOLERANCE,
    DEFAULT_MAX_PENDING,
    Core,
    PendingResultsError,
    Pool,
    RuntimeSettings,
    whole_number,
)
from anomaly_edge.images import ColorFormat
from anomaly_edge.inflight import InFlight
from anomaly_edge.metadata import ModelMetadata
from anomaly_edge.model_loading import (
    HostNormalisation,
    attach_preprocessing,
    compile_for,
    default_cache_dir,
    read_ir,
    resolve_device,
)
from anomaly_edge.prediction import Task

if TYPE_CHECKING:
    from anomaly_edge.calibration import CalibrationReport
    from anomaly_edge.core import Model

# Kept importable from here (their home is anomaly_edge.core).
__all__ = [
    "ASPECT_TOLERANCE",
    "DEFAULT_MAX_PENDING",
    "AnomalyModel",
    "PendingResultsError",
    "RuntimeSettings",
]

_DEFAULT = object()  # marks "use the default cache directory" (None disables the cache)

# Every model, released at interpreter exit while Python is still whole: frames in flight
# finish and every OpenVINO object goes before the interpreter starts to tear itself down.
# (OpenVINO threads themselves never run Python code: see anomaly_edge.inflight.)
_LIVE_MODELS: weakref.WeakSet[AnomalyModel] = weakref.WeakSet()


@atexit.register
def _release_live_models() -> None:
    for model in list(_LIVE_MODELS):
        model._release()


class AnomalyModel(Core):
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
        host_normalisation: compile the IR as exported (FP32 ``B x 3 x h x w`` input) and
            normalise frames before it, with the same steps a graph would run; then
            :meth:`run_network` also takes such FP32 tensors, as a model server must.

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
        host_normalisation: bool = False,
    ) -> None:
        self.path = Path(path)
        self.color = ColorFormat.parse(color)
        self.device = resolve_device(device)
        graph = read_ir(self.path)
        self._ir = graph  # as read, without pre-processing: what save() writes back
        self.metadata = ModelMetadata.read_from(graph, source=str(self.path))
        self._setup(
            task=task,
            image_threshold=image_threshold,
            pixel_threshold=pixel_threshold,
            min_area=min_area,
            max_pending=max_pending,
        )
        if num_requests is not None:
            num_requests = whole_number(num_requests, "num_requests", minimum=1)

        self._normalise: HostNormalisation | None = None
        if host_normalisation:  # the IR as exported: raw FP32 calls run as they come
            self._normalise = HostNormalisation(self.metadata, self.color)
            self._graph = graph
        else:
            self._graph = attach_preprocessing(graph, self.metadata, self.color)
        self._cache_dir = default_cache_dir() if cache_dir is _DEFAULT else cache_dir
        self._properties = properties
        self._compiled: ov.CompiledModel | None = compile_for(
            self._graph, self.device, self._cache_dir, properties
        )
        self._request: ov.InferRequest | None = self._compiled.create_infer_request()
        # The asynchronous interface gets its own model, compiled for throughput on first use:
        # on two cores, two single-threaded requests at once score about 1.45x the frames per
        # second of one request on both cores (measured with PaDiM), while predict() keeps
        # the lowest latency.
        self._async_compiled: ov.CompiledModel | None = None
        self._num_requests = num_requests
        _LIVE_MODELS.add(self)

    @classmethod
    def remote(cls, url: str | list[str], name: str | None = None, **options: Any) -> Model:
        """A model served by a v2 model server (``anomaly-edge serve``, OpenVINO Model Server,
        KServe), with this class's interface: pre- and post-processing run here.

        ``url``: ``http://host:8080``, ``grpc://host:8081``, or a list of replicas. ``options``
        are those of :class:`~anomaly_edge.remote.RemoteAnomalyModel`. Needs the ``serve`` extra.
        A shortcut for :func:`anomaly_edge.open_model` with a URL.
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

    @property
    def ir(self) -> ov.Model:
        """The IR as read, without the pre-processing this model attached (what a server
        describes to its clients, and what :meth:`save` writes back)."""
        return self._ir

    # ---- the backend: OpenVINO requests -----------------------------------------------------

    def _infer(self, tensor: np.ndarray) -> np.ndarray:
        if self._request is None:
            raise RuntimeError("the model was released at interpreter exit")
        self._request.infer({0: tensor}, share_inputs=True)
        output: np.ndarray = self._request.get_output_tensor(0).data.copy()
        return output

    def _backend_tensor(self, images: np.ndarray) -> np.ndarray:
        if self._normalise is not None and images.dtype == np.uint8:
            return self._normalise(images)
        return images

    _pool_copies_input = True  # InFlight copies each frame into its request's buffer

    def _new_pool(self) -> Pool:
        return InFlight(self._async_model(), self.num_requests)

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

    def _release(self) -> None:
        # At interpreter exit: every OpenVINO object goes while Python is still whole.
        with self._async_lock:
            self._released = True
        self.close()
        with self._sync_lock:
            self._request = None
        self._async_compiled = None
        self._compiled = None

    def __enter__(self) -> AnomalyModel:
        return self

    def info(self) -> dict[str, Any]:
        """What this model is and how it runs: metadata, device, settings, I/O."""
        md = self.metadata
        try:
            assert self._compiled is not None
            devices = list(self._compiled.get_property("EXECUTION_DEVICES"))
        except (RuntimeError, AssertionError):
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
