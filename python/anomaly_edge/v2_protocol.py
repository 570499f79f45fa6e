"""The KServe v2 encoding anomaly-edge speaks: tensor names, parameters and the metadata.

The one place both sides of the wire read: ``anomaly-edge serve``
(:mod:`anomaly_edge.serve`) and the remote backend (:mod:`anomaly_edge.remote`), neither of
which imports the other. Needs no ``kserve``, so the pieces can be tested alone.

Two kinds of call reach the server over the Open Inference Protocol (v2):

* the raw network call, as OpenVINO Model Server answers it: input ``image``, FP32
  ``[N, 3, h, w]`` normalised as the IR expects, output ``anomaly_map``, FP32 ``[N, 1, h, w]``
  (N a multiple of the IR's batch: a tiled IR takes the tiles of one frame as its batch);
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
from urllib.parse import urlsplit

import numpy as np

from anomaly_edge.errors import ModelLoadError
from anomaly_edge.metadata import INPUT_NAME, MODEL_API_SECTION, OUR_SECTION, ModelMetadata

if TYPE_CHECKING:
    import openvino as ov

    from anomaly_edge.prediction import Box

REMOTE_SCHEMES = ("http", "https", "grpc")  # a model named by one of these is on a server
RAW_INPUT = INPUT_NAME
RAW_OUTPUT = "anomaly_map"
FRAME_INPUT = "frame"
ENCODED_INPUT = "image_bytes"
RT_INFO_PARAMETER = "anomaly_edge_rt_info"  # ask for the rt_info in a raw call's response
RT_INFO_KEY = "rt_info"  # where it sits in REST model metadata and in response parameters
DEFAULT_MODEL_NAME = "anomaly-edge"
# The token a server asks for (``Authorization: Bearer <token>``): `serve` and the remote
# client both read it from this environment variable when not given.
TOKEN_ENV = "ANOMALY_EDGE_TOKEN"


def is_url(model: object) -> bool:
    """True for a model server URL (``http://``, ``https://``, ``grpc://``) or a list of them."""
    if isinstance(model, (list, tuple)):
        return bool(model) and all(is_url(m) for m in model)
    return isinstance(model, str) and urlsplit(model).scheme.lower() in REMOTE_SCHEMES


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
