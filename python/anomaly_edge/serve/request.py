"""A REST inference request, read and checked: every malformed body is one clear 400.

KServe's own reader assumes a well-formed request (a missing ``"shape"`` is a KeyError, a
JSON list a 500 with a traceback in the log), and turns binary tensors into Python lists.
This one checks each field and says what is wrong and what to send; binary tensors (the v2
binary-data extension) stay bytes. The tensors' values are read later, by
:func:`tensor_array`, which also serves gRPC requests.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput
from kserve.utils.numpy_codec import to_np_dtype

EXAMPLE = '{"inputs": [{"name": "frame", "datatype": "UINT8", "shape": [H, W, 3], "data": [...]}]}'


def parse_infer_request(body: bytes, json_length: str | None, model_name: str) -> InferRequest:
    """The body of ``POST /v2/models/NAME/infer`` as an InferRequest, or InvalidInput."""
    if not body:
        raise InvalidInput(f"the request has no body: send a v2 inference request, e.g. {EXAMPLE}")
    header_size = _header_size(json_length, len(body))
    try:
        header = orjson.loads(body[:header_size])
    except orjson.JSONDecodeError as exc:
        hint = (
            " (binary tensors follow the JSON header: give its size in the "
            "inference-header-content-length header)"
            if json_length is None
            else ""
        )
        raise InvalidInput(f"the request is not valid JSON: {exc}{hint}") from None
    if not isinstance(header, dict):
        raise InvalidInput(
            f'the request must be a JSON object with "inputs", got a {_kind(header)}: '
            f"e.g. {EXAMPLE}"
        )
    items = header.get("inputs")
    if not isinstance(items, list) or not items:
        raise InvalidInput(
            f'the request needs "inputs", a list of tensors, got {_shown(items)}: e.g. {EXAMPLE}'
        )
    inputs: list[InferInput] = []
    raw: list[bytes] = []
    offset = header_size
    for index, item in enumerate(items):
        tensor, size = _input(item, index)
        if size is not None:
            if offset + size > len(body):
                raise InvalidInput(
                    f"input {tensor.name!r} says binary_data_size {size}, but only "
                    f"{len(body) - offset} bytes follow: send the tensor's bytes after the header"
                )
            raw.append(body[offset : offset + size])
            offset += size
        inputs.append(tensor)
    if offset != len(body):
        raise InvalidInput(
            f"the request carries {len(body) - offset} bytes that no input's "
            "binary_data_size accounts for"
        )
    for tensor, data in zip((t for t in inputs if t.data is None), raw, strict=True):
        tensor._raw_data = data  # what InferRequest(raw_inputs=...) does, input by input
    return InferRequest(
        model_name=model_name,
        infer_inputs=inputs,
        request_id=_optional_string(header.get("id"), "id"),
        parameters=_parameters(header.get("parameters"), "the request"),
        request_outputs=_outputs(header.get("outputs")),
    )


def tensor_array(tensor: InferInput) -> np.ndarray:
    """A request tensor's values as an array of its shape; InvalidInput when they do not
    fit its datatype or shape (REST and gRPC requests alike)."""
    dtype = to_np_dtype(tensor.datatype)
    if dtype is None:
        raise InvalidInput(f"input {tensor.name!r}: unknown datatype {tensor.datatype!r}")
    shape = [int(d) for d in tensor.shape]
    count = math.prod(shape)
    raw = tensor._raw_data
    if raw is not None and tensor.datatype != "BYTES":
        if len(raw) != count * np.dtype(dtype).itemsize:
            raise InvalidInput(
                f"input {tensor.name!r}: shape {shape} of {tensor.datatype} takes "
                f"{count * np.dtype(dtype).itemsize} bytes, the request carries {len(raw)}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    try:
        array = tensor.as_numpy() if raw is not None else np.asarray(tensor.data, dtype=dtype)
    except (ValueError, TypeError, OverflowError, struct.error) as exc:
        reason = str(exc).split("\n")[0][:120]
        raise InvalidInput(
            f"input {tensor.name!r}: its data is not {tensor.datatype} values ({reason})"
        ) from None
    if array.size != count:
        raise InvalidInput(
            f"input {tensor.name!r}: shape {shape} holds {count} values, the data has {array.size}"
        )
    return array.reshape(shape)


def _header_size(json_length: str | None, body_size: int) -> int:
    if json_length is None:
        return body_size
    text = json_length.strip()
    if not text.isdigit() or not 0 < int(text) <= body_size:
        raise InvalidInput(
            f"inference-header-content-length {json_length!r} must be the size in bytes of "
            f"the JSON header at the start of the body (1 to {body_size})"
        )
    return int(text)


def _input(item: Any, index: int) -> tuple[InferInput, int | None]:
    """One entry of ``inputs``, and the size of its binary data (None: JSON ``data``)."""
    if not isinstance(item, dict):
        raise InvalidInput(
            f"inputs[{index}] must be an object with name, datatype, shape and data, "
            f"got a {_kind(item)}"
        )
    missing = [key for key in ("name", "datatype", "shape") if key not in item]
    if missing:
        raise InvalidInput(f"inputs[{index}] lacks {', '.join(missing)}: e.g. {EXAMPLE}")
    name, datatype, shape = item["name"], item["datatype"], item["shape"]
    if not isinstance(name, str):
        raise InvalidInput(f"inputs[{index}].name must be a string, got {_shown(name)}")
    if not isinstance(datatype, str) or to_np_dtype(datatype) is None:
        raise InvalidInput(
            f"input {name!r}: datatype {_shown(datatype)} is not a v2 datatype "
            "(FP32, UINT8, BYTES, ...)"
        )
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(
            f"input {name!r}: shape must be a list of sizes (whole numbers >= 0), "
            f"got {_shown(shape)}"
        )
    parameters = _parameters(item.get("parameters"), f"input {name!r}")
    tensor = InferInput(name=name, shape=shape, datatype=datatype, parameters=parameters)
    if "data" in item:
        data = item["data"]
        if not isinstance(data, list):
            raise InvalidInput(f"input {name!r}: data must be a list, got {_shown(data)}")
        if datatype == "FP16":
            raise InvalidInput(f"input {name!r}: send FP16 as binary data, not as JSON numbers")
        tensor.data = data
        return tensor, None
    size = (parameters or {}).get("binary_data_size")
    if size is None:
        raise InvalidInput(
            f'input {name!r} has no data: give "data" (a list of values) or '
            "parameters.binary_data_size (bytes after the JSON header)"
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(
            f"input {name!r}: binary_data_size must be a byte count, got {_shown(size)}"
        )
    return tensor, size


def _parameters(value: Any, owner: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput(f"{owner}: parameters must be an object, got a {_kind(value)}")
    return value


def _outputs(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in value
    ):
        raise InvalidInput('"outputs" must be a list of objects with a "name"')
    return [
        RequestedOutput(name=o["name"], parameters=_parameters(o.get("parameters"), o["name"]))
        for o in value
    ]


def _optional_string(value: Any, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidInput(f'"{field}" must be a string, got {_shown(value)}')


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
        type(value), "number" if isinstance(value, (int, float)) else "null"
    )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
