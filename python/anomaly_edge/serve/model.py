"""An anomaly-edge IR as a KServe model: the raw network call and the convenience call.

See :mod:`anomaly_edge.v2_protocol` for what each call takes and returns. Both run on the
local backend of the one core (:class:`~anomaly_edge.AnomalyModel`, with the IR compiled as
exported so that raw FP32 calls run as OpenVINO Model Server runs them): its request pool,
its tiling and its C++ decision. The event loop hands each call to a worker thread of a small
pool, which waits for the model; OpenVINO's own threads never run Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kserve
import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse

from anomaly_edge.errors import InvalidInputError
from anomaly_edge.images import ColorFormat, check_frame
from anomaly_edge.model import AnomalyModel
from anomaly_edge.postprocess import PostprocessParams
from anomaly_edge.prediction import Task
from anomaly_edge.serve.request import tensor_array
from anomaly_edge.v2_protocol import (
    ENCODED_INPUT,
    FRAME_INPUT,
    RAW_INPUT,
    RAW_OUTPUT,
    RT_INFO_KEY,
    RT_INFO_PARAMETER,
    boxes_array,
    parameters_dict,
    rt_info_dict,
)


class AnomalyServeModel(kserve.Model):  # type: ignore[misc]  # kserve has no type hints
    """Serves one anomaly-edge IR under ``name``.

    Args:
        path: the IR's ``model.xml`` (or its folder).
        name: the model's name in URLs (``/v2/models/<name>/infer``).
        device: OpenVINO device on the server.
        num_requests: requests run at once (default: what the device prefers, plus one).
    """

    def __init__(
        self, path: str | Path, name: str, device: str = "AUTO", num_requests: int | None = None
    ) -> None:
        super().__init__(name)
        self.path = Path(path)
        self._device = device
        self._num_requests = num_requests
        self.model: AnomalyModel | None = None
        self._workers: ThreadPoolExecutor | None = None
        self.rt_info: dict[str, dict[str, str]] = {}
        self.input_shape: list[int] = []
        self.output_shape: list[int] = []

    def load(self) -> bool:
        model = AnomalyModel(
            self.path,
            self._device,
            num_requests=self._num_requests,
            host_normalisation=True,
        )
        self.rt_info = rt_info_dict(model.ir)
        self.input_shape = [int(d) for d in model.ir.inputs[0].get_shape()]
        self.output_shape = [int(d) for d in model.ir.outputs[0].get_shape()]
        # One waiting thread per request in flight: calls overlap on the model's pool.
        self._workers = ThreadPoolExecutor(model.num_requests, "anomaly-edge-serve")
        self.model = model
        self.ready = True
        return self.ready

    def stop(self) -> None:
        if self._workers is not None:
            self._workers.shutdown(wait=True, cancel_futures=True)
        if self.model is not None:
            self.model.close()
        self.ready = False

    # ---- metadata --------------------------------------------------------------------------

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": RAW_INPUT, "datatype": "FP32", "shape": self.input_shape}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": RAW_OUTPUT, "datatype": "FP32", "shape": self.output_shape}]

    @property
    def _model(self) -> AnomalyModel:
        if self.model is None:
            raise RuntimeError(f"model {self.name} is not loaded")
        return self.model

    async def _on_worker(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._workers, function, *args)

    # ---- inference -------------------------------------------------------------------------

    async def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        if not isinstance(payload, InferRequest):
            raise InvalidInput(
                f"this model speaks the v2 protocol only: POST /v2/models/{self.name}/infer"
            )
        if len(payload.inputs) != 1:
            raise InvalidInput(
                f"expected one input ({RAW_INPUT!r} FP32, {FRAME_INPUT!r} UINT8 or "
                f"{ENCODED_INPUT!r} BYTES), got {len(payload.inputs)}"
            )
        parameters = parameters_dict(payload.parameters)
        tensor = payload.inputs[0]
        try:
            if tensor.datatype == "FP32":
                outputs, extra = await self._raw(tensor, parameters)
            elif tensor.datatype in ("UINT8", "BYTES"):
                outputs, extra = await self._convenience(tensor, parameters)
            else:
                raise InvalidInput(
                    f"input {tensor.name!r} has datatype {tensor.datatype}: send FP32 "
                    f"{self.input_shape} (the network input), UINT8 [H, W, 3] / [H, W] "
                    "(a frame) or BYTES [1] (an encoded image)"
                )
        except InvalidInputError as exc:
            raise InvalidInput(str(exc)) from None
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=outputs,
            parameters=extra or None,
            use_binary_outputs=payload.use_binary_outputs,
        )

    async def _raw(
        self, tensor: InferInput, parameters: dict[str, Any]
    ) -> tuple[list[InferOutput], dict[str, Any]]:
        """N network inputs -> N anomaly maps, in calls of the IR's batch run side by side
        (the batch is 1, or the tiles of one frame for a tiled IR)."""
        expected = self.input_shape
        batch = expected[0]
        shape = list(tensor.shape)
        if len(shape) != 4 or shape[1:] != expected[1:] or shape[0] < 1 or shape[0] % batch:
            items = "N" if batch == 1 else f"N x {batch}"
            raise InvalidInput(
                f"input {tensor.name!r} must have shape [{items}, "
                f"{', '.join(map(str, expected[1:]))}], got {shape}"
            )
        network_input = np.ascontiguousarray(tensor_array(tensor), dtype=np.float32)
        run = self._model.run_network
        outputs = await asyncio.gather(
            *(self._on_worker(run, network_input[i : i + batch]) for i in range(0, shape[0], batch))
        )
        extra = {}
        if parameters.get(RT_INFO_PARAMETER):
            extra[RT_INFO_KEY] = json.dumps(self.rt_info, sort_keys=True)
        return [_output(RAW_OUTPUT, np.concatenate(outputs, axis=0))], extra

    async def _convenience(
        self, tensor: InferInput, parameters: dict[str, Any]
    ) -> tuple[list[InferOutput], dict[str, Any]]:
        """A frame or an encoded image -> score, label, boxes (and the mask on request)."""
        try:
            color = ColorFormat.parse(str(parameters.get("color", "BGR")))
            task = Task.parse(str(parameters.get("task", self._model.metadata.task)))
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        frame = _as_bgr(_decode(tensor, color), color)
        model = self._model
        try:
            params = PostprocessParams.from_metadata(
                model.metadata, min_area=_number(parameters, "min_area", 1, whole=True)
            )
            for name in ("image_threshold", "pixel_threshold"):
                if parameters.get(name) is not None:
                    params = params.replace(**{name: _number(parameters, name, 0.0)})
        except ValueError as exc:  # a setting out of its range
            raise InvalidInput(str(exc)) from None
        want_mask = _flag(parameters, "mask")
        if want_mask:
            task = Task.SEGMENTATION
        prediction = await self._on_worker(model.predict_with, frame, params, task)
        outputs = [
            _output("score", np.asarray([prediction.score], dtype=np.float32)),
            _output("label", np.asarray([prediction.label], dtype=bool)),
            _output("raw_score", np.asarray([prediction.raw_score], dtype=np.float32)),
            _output("boxes", boxes_array(prediction.boxes)),
        ]
        if want_mask and prediction.mask is not None:
            outputs.append(_output("mask", np.ascontiguousarray(prediction.mask)))
        return outputs, {"task": task.value}


def _decode(tensor: InferInput, color: ColorFormat) -> np.ndarray:
    if tensor.datatype == "BYTES":
        import cv2

        items = tensor_array(tensor).reshape(-1)
        if items.size != 1:
            raise InvalidInput(f"input {tensor.name!r}: send one encoded image, got {items.size}")
        data = _encoded_bytes(items[0], tensor.name)
        flag = cv2.IMREAD_GRAYSCALE if color is ColorFormat.GRAY else cv2.IMREAD_COLOR
        frame = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag) if data else None
        if frame is None:
            raise InvalidInput(
                f"input {tensor.name!r} is not an image OpenCV can decode "
                "(send the bytes of a PNG, JPEG, BMP or TIFF file)"
            )
        if color is ColorFormat.RGB:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    else:
        frame = tensor_array(tensor)
        if frame.ndim == 4 and frame.shape[0] == 1:
            frame = frame[0]  # [1, H, W, C]: one frame with a batch axis
    return check_frame(frame, color)


def _encoded_bytes(item: Any, name: str) -> bytes:
    """One BYTES element: bytes over gRPC and binary REST, a string (one character per
    byte, as JSON carries bytes) in a JSON request."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        try:
            return item.encode("latin-1")
        except UnicodeEncodeError:
            pass
    raise InvalidInput(
        f"input {name!r} must carry the encoded image's bytes (in JSON: a string with one "
        "character per byte, code points 0-255; or send it as binary data)"
    )


def _number(parameters: dict[str, Any], name: str, default: float, *, whole: bool = False) -> Any:
    value = parameters.get(name, default)
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value)
    if number is None or not np.isfinite(number) or (whole and not number.is_integer()):
        raise InvalidInput(
            f"parameter {name!r} must be a {'whole number' if whole else 'number'}, got {value!r}"
        )
    return int(number) if whole else number


def _flag(parameters: dict[str, Any], name: str) -> bool:
    value = parameters.get(name, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidInput(f"parameter {name!r} must be true or false, got {value!r}")


def _as_bgr(frame: np.ndarray, color: ColorFormat) -> np.ndarray:
    """The served model takes BGR frames; a grey frame's three equal channels give the same
    network input as the grey path of a local model."""
    if color is ColorFormat.BGR:
        return frame
    if color is ColorFormat.RGB:
        return np.ascontiguousarray(frame[:, :, ::-1])
    grey = frame if frame.ndim == 2 else frame[:, :, 0]
    return np.repeat(grey[:, :, None], 3, axis=2)


def _output(name: str, array: np.ndarray) -> InferOutput:
    datatype = {np.dtype(np.float32): "FP32", np.dtype(np.uint8): "UINT8", np.dtype(bool): "BOOL"}[
        array.dtype
    ]
    output = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
    # Raw bytes now: KServe's gRPC encoder cannot take an array here, and its REST encoder
    # turns these bytes into JSON numbers when the client did not ask for binary data. An
    # empty array (no boxes) goes as an empty list: as bytes, REST would send "data": null.
    output.set_data_from_numpy(np.ascontiguousarray(array), binary_data=array.size > 0)
    return output
