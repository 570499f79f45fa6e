"""An ONNX model's ``metadata_props``, read and written without the ``onnx`` package.

The runtime reads ``.onnx`` files through OpenVINO's ONNX frontend, which does not pass
``metadata_props`` on; and the deployment world should not need ``onnx`` (nor protobuf)
for a dozen strings. An ONNX file is one serialised ``ModelProto``; its ``metadata_props``
is field 14, a repeated ``StringStringEntryProto {string key = 1; string value = 2;}``.
Protobuf messages may list their fields in any order, and repeated fields accumulate, so
entries appended after the graph are read like any others, by every ONNX reader.

Keys are ``<section>.<key>`` of the IR's rt_info (``anomaly_edge.image_threshold``,
``model_info.labels``, ...): :func:`props_of` and :func:`apply_props` map between the two, so
an ONNX model carries exactly what :meth:`ModelMetadata.write_to` stores in an IR.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from anomaly_edge.metadata import MODEL_API_SECTION, OUR_SECTION, ModelMetadata

if TYPE_CHECKING:
    import openvino as ov

SECTIONS = (OUR_SECTION, MODEL_API_SECTION)
_METADATA_PROPS = 14  # ModelProto field number
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class OnnxFormatError(ValueError):
    """The bytes are not a protobuf message (not an ONNX file, or a truncated one)."""


def props_of(metadata: ModelMetadata) -> dict[str, str]:
    """``metadata`` as metadata_props: the rt_info entries it writes, keyed ``section.key``."""
    import openvino as ov
    import openvino.opset13 as ops

    # Written by the one serialisation there is (ModelMetadata.write_to), then read back.
    source = ops.parameter([1], ov.Type.f32)
    holder = ov.Model([ops.result(source)], [source], "metadata")
    metadata.write_to(holder)
    props = {}
    for section in SECTIONS:
        if not holder.has_rt_info([section]):
            continue
        for key, value in holder.get_rt_info([section]).value.items():
            props[f"{section}.{key}"] = str(value)
    return props


def apply_props(model: ov.Model, props: dict[str, str]) -> int:
    """Store our ``section.key`` props in ``model``'s rt_info; returns how many there were."""
    count = 0
    for name, value in props.items():
        section, _, key = name.partition(".")
        if section in SECTIONS and key:
            model.set_rt_info(value, [section, key])
            count += 1
    return count


def encode_props(props: dict[str, str]) -> bytes:
    """``props`` as metadata_props entries: appended to an ONNX file, they become its own."""
    extra = bytearray()
    for key, value in props.items():
        entry = _field(1, key.encode("utf-8")) + _field(2, value.encode("utf-8"))
        extra += _field(_METADATA_PROPS, entry)
    return bytes(extra)


def read_props(path: str | Path) -> dict[str, str]:
    """metadata_props of the ONNX file at ``path`` (the graph is skipped, not read).

    Raises :class:`OnnxFormatError` for bytes that are not a protobuf message and
    :class:`OSError` for a file that cannot be read.
    """
    props: dict[str, str] = {}
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(0)
        while handle.tell() < size:
            number, wire = divmod(_varint(handle), 8)
            if wire == _VARINT:
                _varint(handle)
            elif wire == _FIXED64:
                handle.seek(8, 1)
            elif wire == _FIXED32:
                handle.seek(4, 1)
            elif wire == _BYTES:
                length = _varint(handle)
                if handle.tell() + length > size:
                    raise OnnxFormatError("a field runs past the end of the file (truncated?)")
                if number == _METADATA_PROPS:
                    key, value = _entry(handle.read(length))
                    props[key] = value
                else:
                    handle.seek(length, 1)
            else:
                raise OnnxFormatError(f"unknown protobuf wire type {wire}")
    return props


def _entry(data: bytes) -> tuple[str, str]:
    fields = {1: b"", 2: b""}
    position = 0
    while position < len(data):
        tag, position = _varint_at(data, position)
        if tag & 7 != _BYTES:
            raise OnnxFormatError("a metadata_props entry holds a field that is not a string")
        length, position = _varint_at(data, position)
        fields[tag >> 3] = data[position : position + length]
        position += length
    try:
        return fields[1].decode("utf-8"), fields[2].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OnnxFormatError(f"a metadata_props entry is not UTF-8 ({exc})") from None


def _field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _BYTES) + _encode_varint(len(payload)) + payload


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _varint(handle: BinaryIO) -> int:
    value = shift = 0
    while True:
        byte = handle.read(1)
        if not byte:
            raise OnnxFormatError("the file ends inside a number (truncated?)")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise OnnxFormatError("a varint longer than 10 bytes: not a protobuf file")


def _varint_at(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data):
            raise OnnxFormatError("a metadata_props entry ends inside a number")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise OnnxFormatError("a varint longer than 10 bytes: not a protobuf file")
