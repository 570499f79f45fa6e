"""An anomaly-edge IR as a KServe model: the raw network call and the convenience call.

See :mod:`anomaly_edge.serve.wire` for what each call takes and returns. Inference runs on
:class:`~anomaly_edge.serve.network.RawNetwork`; the convenience call resizes and normalises
the frame exactly as the remote backend does and post-processes with the same C++ step as a
local :class:`~anomaly_edge.AnomalyModel`, so all three give the same prediction.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import kserve
import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse

from anomaly_edge.errors import InvalidInputError
from anomaly_edge.images import ColorFormat, check_frame
from anomaly_edge.postprocess import PostprocessParams, postprocess
from anomaly_edge.prediction import Task
from anomaly_edge.serve.network import RawNetwork
from anomaly_edge.serve.wire import (
    ENCODED_INPUT,
    FRAME_INPUT,
    RAW_INPUT,
    RAW_OUTPUT,
    RT_INFO_KEY,
    RT_INFO_PARAMETER,
    boxes_array,
    network_tensor,
    parameters_dict,
)


class AnomalyServeModel(kserve.Model):  # type: ignore[misc]  # kserve has no type hints
    """Serves one anomaly-edge IR under ``name``.

    Args:
        path: the IR's ``model.xml``.
        name: the model's name in URLs (``/v2/models/<name>/infer``).
        device: OpenVINO device on the server.
        num_requests: requests run at once (default: what the device prefers).
    """

    def __init__(
        self, path: str | Path, name: str, device: str = "AUTO", num_requests: int | None = None
    ) -> None:
        super().__init__(name)
        self.path = Path(path)
        self._device = device
        self._num_requests = num_requests
        self.network: RawNetwork | None = None

    def load(self) -> bool:
        self.network = RawNetwork(self.path, self._device, self._num_requests)
        self.ready = True
        return self.ready

    def stop(self) -> None:
        if self.network is not None:
            self.network.release()
        self.ready = False

    # ---- metadata --------------------------------------------------------------------------

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": RAW_INPUT, "datatype": "FP32", "shape": self._network.input_shape}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": RAW_OUTPUT, "datatype": "FP32", "shape": self._network.output_shape}]

    @property
    def rt_info(self) -> dict[str, dict[str, str]]:
        """The IR's metadata sections, as OpenVINO Model Server shows them."""
        return self._network.rt_info

    @property
    def _network(self) -> RawNetwork:
        if self.network is None:
            raise RuntimeError(f"model {self.name} is not loaded")
        return self.network

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
                    f"{self._network.input_shape} (the network input), UINT8 [H, W, 3] / [H, W] "
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
        """N network inputs -> N anomaly maps; the N run side by side (the IR has batch 1)."""
        expected = self._network.input_shape
        shape = list(tensor.shape)
        if len(shape) != 4 or shape[1:] != expected[1:] or shape[0] < 1:
            raise InvalidInput(
                f"input {tensor.name!r} must have shape [N, "
                f"{', '.join(map(str, expected[1:]))}], got {shape}"
            )
        batch = tensor.as_numpy().astype(np.float32, copy=False)
        maps = await asyncio.gather(
            *(self._network.infer(batch[i : i + 1]) for i in range(batch.shape[0]))
        )
        anomaly_maps = np.concatenate(maps, axis=0)
        outputs = [_output(RAW_OUTPUT, anomaly_maps)]
        extra = {}
        if parameters.get(RT_INFO_PARAMETER):
            extra[RT_INFO_KEY] = json.dumps(self.rt_info, sort_keys=True)
        return outputs, extra

    async def _convenience(
        self, tensor: InferInput, parameters: dict[str, Any]
    ) -> tuple[list[InferOutput], dict[str, Any]]:
        """A frame or an encoded image -> score, label, boxes (and the mask on request)."""
        color = ColorFormat.parse(str(parameters.get("color", "BGR")))
        frame = _decode(tensor, color)
        network = self._network
        metadata = network.metadata
        min_area = int(parameters.get("min_area", 1))
        params = PostprocessParams.from_metadata(metadata, min_area=min_area)
        for name in ("image_threshold", "pixel_threshold"):
            if parameters.get(name) is not None:
                params = params.replace(**{name: float(parameters[name])})
        want_mask = bool(parameters.get("mask", False))
        try:
            task = Task.parse(str(parameters.get("task", metadata.task)))
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        if want_mask:
            task = Task.SEGMENTATION
        anomaly_map = await network.infer(network_tensor(frame, metadata, color))
        prediction = postprocess(anomaly_map[0, 0], frame.shape[:2], params, task)
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

        items = tensor.as_numpy().reshape(-1)
        if items.size != 1:
            raise InvalidInput(f"input {tensor.name!r}: send one encoded image, got {items.size}")
        data = items[0]
        data = data.encode("latin-1") if isinstance(data, str) else bytes(data)
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
        frame = tensor.as_numpy()
        if frame.ndim == 4 and frame.shape[0] == 1:
            frame = frame[0]  # [1, H, W, C]: one frame with a batch axis
    return check_frame(frame, color)


def _output(name: str, array: np.ndarray) -> InferOutput:
    datatype = {np.dtype(np.float32): "FP32", np.dtype(np.uint8): "UINT8", np.dtype(bool): "BOOL"}[
        array.dtype
    ]
    output = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
    # Raw bytes now: KServe's gRPC encoder cannot take an array here, and its REST encoder
    # turns these bytes into JSON numbers when the client did not ask for binary data.
    output.set_data_from_numpy(np.ascontiguousarray(array), binary_data=True)
    return output
