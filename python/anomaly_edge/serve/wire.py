"""What a model server and its clients agree on: tensor names, parameters, and the metadata.

Shared by ``anomaly-edge serve`` (:mod:`anomaly_edge.serve.model`) and the remote backend
(:mod:`anomaly_edge.remote`); needs no ``kserve``, so the pieces can be tested alone.

Two kinds of call reach the server over the Open Inference Protocol (v2):

* the raw network call, as OpenVINO Model Server answers it: input ``image``, FP32
  ``[N, 3, h, w]`` normalised as the IR expects, output ``anomaly_map``, FP32 ``[N, 1, h, w]``;
* the convenience call: input ``frame`` (UINT8 ``[H, W, 3]`` or ``[H, W]``) or ``image_bytes``
  (BYTES ``[1]``, an encoded PNG/JPEG); outputs ``score``, ``label``, ``raw_score``, ``boxes``
  (FP32 ``[n, 7]``: x1, y1, x2, y2, score, mean_score, area) and, when the request's
  parameters say ``"mask": true``, ``mask`` (UINT8 ``[H, W]``, 255 = anomalous).

The IR's ``rt_info`` (thresholds, normalisation, input size: everything post-processing needs)
travels as a nested dict of strings, as OpenVINO Model Server puts it under ``"rt_info"`` in
its REST model metadata (which Model API's OVMS adapter reads). gRPC model metadata has no
free-form field, so over gRPC a raw call with the parameter ``RT_INFO_PARAMETER`` gets it
back as a JSON string in the response's parameters.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from anomaly_edge.errors import InvalidInputError, ModelLoadError
from anomaly_edge.images import ColorFormat, network_image
from anomaly_edge.metadata import INPUT_NAME, MODEL_API_SECTION, OUR_SECTION, ModelMetadata

if TYPE_CHECKING:
    import openvino as ov

    from anomaly_edge.prediction import Box

RAW_INPUT = INPUT_NAME
RAW_OUTPUT = "anomaly_map"
FRAME_INPUT = "frame"
ENCODED_INPUT = "image_bytes"
RT_INFO_PARAMETER = "anomaly_edge_rt_info"  # ask for the rt_info in a raw call's response
RT_INFO_KEY = "rt_info"  # where it sits in REST model metadata and in response parameters
DEFAULT_MODEL_NAME = "anomaly-edge"


def rt_info_dict(model: ov.Model) -> dict[str, dict[str, str]]:
    """The two metadata sections of an IR's rt_info as plain strings (what goes on the wire)."""
    sections: dict[str, dict[str, str]] = {}
    for section in (MODEL_API_SECTION, OUR_SECTION):
        if not model.has_rt_info([section]):
            continue
        entries = model.get_rt_info([section]).astype(dict)
        sections[section] = {key: value.astype(str) for key, value in entries.items()}
    return sections


def metadata_from_rt_info(rt_info: Any, source: str) -> ModelMetadata:
    """Rebuild :class:`ModelMetadata` from the rt_info a server sent.

    The dict is written into the rt_info of a one-node OpenVINO model and read back with
    :meth:`ModelMetadata.read_from`, so a remote model is parsed and checked by the very code
    that reads a local IR (same errors, same defaults).
    """
    import openvino as ov
    import openvino.opset13 as ops

    if isinstance(rt_info, str):
        try:
            rt_info = json.loads(rt_info)
        except ValueError as exc:
            raise ModelLoadError(f"{source}: its rt_info is not valid JSON ({exc})") from None
    if not isinstance(rt_info, dict) or not isinstance(rt_info.get(OUR_SECTION), dict):
        raise ModelLoadError(
            f"{source} does not describe an anomaly-edge model (no '{OUR_SECTION}' section in "
            "its rt_info): serve an IR exported by anomaly-edge"
        )
    node = ops.parameter([1], ov.Type.f32)
    holder = ov.Model([ops.relu(node)], [node], "rt_info_holder")
    for section, entries in rt_info.items():
        if isinstance(entries, dict):
            for key, value in entries.items():
                holder.set_rt_info(str(value), [str(section), str(key)])
    return ModelMetadata.read_from(holder, source=source)


def network_tensor(frame: np.ndarray, metadata: ModelMetadata, color: ColorFormat) -> np.ndarray:
    """A checked ``H x W x C`` uint8 frame -> the FP32 ``[1, 3, h, w]`` tensor the raw IR takes.

    The resize is the one training and the local runtime use
    (:func:`~anomaly_edge.images.network_image`); colour order, float conversion and mean/std
    then do on the host what :func:`~anomaly_edge.model_loading.attach_preprocessing` puts
    into a local model's graph.
    """
    if metadata.tile_layout is not None:  # its batch is a frame's tiles: not wired here yet
        raise InvalidInputError(
            f"the model is tiled ({metadata.tile_layout.describe()}); the remote backend "
            "sends one view per frame: run tiled models locally (AnomalyModel(path))"
        )
    image = network_image(frame, metadata.input_size, color)  # h x w x C uint8
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)  # grey: the backbone takes three equal channels
    elif color is ColorFormat.BGR:
        image = image[:, :, ::-1]
    planar = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    planar -= np.asarray(metadata.mean, dtype=np.float32)[:, None, None]
    planar /= np.asarray(metadata.std, dtype=np.float32)[:, None, None]
    return planar[None]


def boxes_array(boxes: list[Box]) -> np.ndarray:
    """Prediction boxes -> FP32 ``[n, 7]`` (x1, y1, x2, y2, score, mean_score, area)."""
    rows = [(b.x1, b.y1, b.x2, b.y2, b.score, b.mean_score, b.area) for b in boxes]
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), 7)


def parameter_value(value: Any) -> Any:
    """A v2 parameter as a Python value (REST gives plain JSON; gRPC an InferParameter)."""
    for field in ("bool_param", "int64_param", "string_param", "double_param", "uint64_param"):
        if hasattr(value, "HasField") and value.HasField(field):
            return getattr(value, field)
    return value


def parameters_dict(parameters: Any) -> dict[str, Any]:
    """Request/response parameters as a plain dict, whichever protocol carried them."""
    if not parameters:
        return {}
    return {str(key): parameter_value(parameters[key]) for key in parameters}
