"""Everything before the first frame: read an IR, check it, attach pre-processing, compile.

Kept apart from :mod:`anomaly_edge.model` (which handles frames) so that each step can fail
with its own clear message: a missing or truncated file, an IR without our metadata, a device
that is not there.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
from openvino.preprocess import PrePostProcessor

from anomaly_edge.errors import InvalidInputError, ModelLoadError
from anomaly_edge.images import ColorFormat
from anomaly_edge.metadata import OUR_SECTION, ModelMetadata

# rt_info keys of the .bin's fingerprint, stamped into the .xml at export: a pair from two
# exports (e.g. a kill between the two renames) is refused instead of loading silently.
WEIGHTS_SHA256_KEY = "weights_sha256"
WEIGHTS_BYTES_KEY = "weights_bytes"
# Devices that are not hardware but schedule onto other devices ("AUTO:GPU,CPU").
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")

_core: ov.Core | None = None


def shared_core() -> ov.Core:
    """One OpenVINO Core per process (creating one loads the plugins, which is not free)."""
    global _core
    if _core is None:
        _core = ov.Core()
    return _core


def default_cache_dir() -> Path:
    """Where compiled blobs are cached: ``$XDG_CACHE_HOME/anomaly-edge/openvino``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "anomaly-edge" / "openvino"


def read_ir(path: str | Path) -> ov.Model:
    """Read ``model.xml`` (+ ``model.bin`` beside it), or a ``model.onnx`` (see
    :func:`read_onnx`), with a clear error for every broken case."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.xml"
    if path.suffix.lower() == ".onnx":
        return read_onnx(path)
    if path.suffix.lower() != ".xml":
        raise ModelLoadError(
            f"{path} is not an OpenVINO IR nor an ONNX model: give the path of its .xml "
            "(or .onnx) file"
        )
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise ModelLoadError(
            f"{path} has no weights file beside it ({weights.name} is missing); copy the .xml "
            "and the .bin together"
        )
    check_weights_stamp(path, weights)
    try:
        model = shared_core().read_model(str(path), str(weights))
    except RuntimeError as exc:
        raise ModelLoadError(
            f"{path} could not be read as an OpenVINO IR (corrupted or truncated file?): "
            f"{_first_line(exc)}"
        ) from exc
    _check_io(model, path)
    # Verified: forget the stamp, so a model saved again from this one (other weights bytes)
    # does not carry a fingerprint that no longer fits.
    for key in (WEIGHTS_SHA256_KEY, WEIGHTS_BYTES_KEY):
        if model.has_rt_info([OUR_SECTION, key]):
            model.set_rt_info("", [OUR_SECTION, key])
    return model


def read_onnx(path: Path) -> ov.Model:
    """Read an ONNX model exported by anomaly-edge through OpenVINO's ONNX frontend.

    Its metadata_props become the rt_info an IR would carry, so everything after this step
    treats it as an IR (the ``onnx`` package is not needed).
    """
    from anomaly_edge.onnx_metadata import OnnxFormatError, apply_props, read_props

    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    try:
        props = read_props(path)
        model = shared_core().read_model(str(path))
    except (OnnxFormatError, RuntimeError) as exc:
        message = str(exc) if isinstance(exc, OnnxFormatError) else _first_line(exc)
        raise ModelLoadError(
            f"{path} could not be read as an ONNX model (corrupted or truncated file?): {message}"
        ) from exc
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not apply_props(model, props):
        raise ModelLoadError(
            f"{path} has no anomaly-edge metadata in its metadata_props: it was not exported by "
            "anomaly-edge. Export it with `anomaly-edge export RUN --format onnx`, which stores "
            "thresholds and normalisation with the model."
        )
    _check_io(model, path)
    return model


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _rt_value(xml_text: str, key: str) -> str:
    found = re.search(rf'<{key} value="([^"]*)"', xml_text)
    return found.group(1) if found else ""


def check_weights_stamp(xml: Path, weights: Path) -> None:
    """Refuse a .bin that is not the one exported with this .xml (IRs without a stamp pass)."""
    try:
        text = xml.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ModelLoadError(f"cannot read {xml}: {exc.strerror or exc}") from exc
    expected_sha, expected_size = (
        _rt_value(text, key) for key in (WEIGHTS_SHA256_KEY, WEIGHTS_BYTES_KEY)
    )
    if not expected_sha:
        return
    mismatch = (
        expected_size and expected_size.isdigit() and int(expected_size) != weights.stat().st_size
    ) or file_sha256(weights) != expected_sha
    if mismatch:
        raise ModelLoadError(
            f"{weights.name} does not belong to {xml.name} in {xml.parent}: the weights are "
            "from another export (an interrupted export, or files copied from two exports). "
            "Export the model again, or copy the .xml and .bin of one export together."
        )


def _check_io(model: ov.Model, source: Path) -> None:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelLoadError(
            f"{source}: expected one input and one output, found {len(model.inputs)} inputs and "
            f"{len(model.outputs)} outputs; this is not an anomaly-edge IR"
        )
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4 or shape.is_dynamic:
        raise ModelLoadError(
            f"{source}: expected a static [1, 3, H, W] input, found {shape}; re-export the model"
        )


def attach_preprocessing(model: ov.Model, metadata: ModelMetadata, color: ColorFormat) -> ov.Model:
    """A copy of ``model`` that takes uint8 ``N x h x w x C`` images (N = 1, or the tiles of
    one frame for a tiled model) in ``color`` at the
    network input size (already resized by :func:`anomaly_edge.images.resize_for_network`).

    Channel order, float conversion, mean/std and the layout change run inside the compiled
    graph. Grey images are expanded to the three channels the backbone was trained on
    (training reads grey images as RGB with equal channels).

    Why the resize is not in the graph too: training shrinks images with area averaging
    (what keeps fine textures from aliasing), and OpenVINO's CPU plugin has no fast
    antialiased resize (its linear resize ignores ``antialias``; the Pillow-style one runs
    10-25x slower than OpenCV). Resizing on the host with the very function training uses
    makes the deployed model see exactly what the trained one saw.
    """
    height, width = metadata.input_size
    batch = model.inputs[0].get_partial_shape()[0].get_length()
    if batch != metadata.batch_size:  # a tiled model takes one frame's tiles as its batch
        raise ModelLoadError(
            f"the IR takes batches of {batch} but its metadata describes "
            f"{metadata.batch_size} tile(s) per frame; re-export the model"
        )
    ppp = PrePostProcessor(model.clone())
    graph_input = ppp.input()
    tensor = graph_input.tensor()
    tensor.set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    tensor.set_shape([metadata.batch_size, height, width, color.channels])  # tiles: a batch
    steps = graph_input.preprocess()
    if color is ColorFormat.GRAY:
        steps.convert_element_type(ov.Type.f32)
        # OpenVINO has no GRAY -> RGB conversion step: replicate the channel.
        steps.custom(_repeat_channel_three_times)
    else:
        # Planes first, then swap whole planes (BGR -> RGB) while still uint8: the same
        # values as converting the colour of interleaved pixels, at about 0.23 ms of CPU a
        # 336x256 frame instead of 0.58 (OpenVINO's convert_color gathers pixel by pixel).
        steps.convert_layout(ov.Layout("NCHW"))
        if color is ColorFormat.BGR:
            steps.reverse_channels()
        steps.convert_element_type(ov.Type.f32)
    steps.mean(list(metadata.mean)).scale(list(metadata.std))
    graph_input.model().set_layout(ov.Layout("NCHW"))
    ppp.output().tensor().set_element_type(ov.Type.f32)
    return ppp.build()


class HostNormalisation:
    """The pre-processing of :func:`attach_preprocessing` alone, compiled for this machine's
    CPU: uint8 network images (``B x h x w x C`` in ``color``) -> the FP32 ``B x 3 x h x w``
    tensor the raw IR takes.

    For a network that runs elsewhere (a model server) or on the raw IR: channel order,
    float conversion and mean/std stay written once, in :func:`attach_preprocessing`, and
    this side computes them with the very steps a local model's graph runs.
    Thread-safe (calls take turns on one request; each is a few microseconds per pixel).
    """

    def __init__(self, metadata: ModelMetadata, color: ColorFormat) -> None:
        import threading

        import openvino.opset13 as ops

        height, width = metadata.input_size
        source = ops.parameter([metadata.batch_size, 3, height, width], ov.Type.f32)
        identity = ov.Model([ops.result(source)], [source], "normalisation")
        graph = attach_preprocessing(identity, metadata, color)
        self._request = compile_for(graph, "CPU", None).create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """A new FP32 array, NCHW, normalised as the IR expects."""
        with self._lock:
            self._request.infer({0: images}, share_inputs=True)
            output: np.ndarray = self._request.get_output_tensor(0).data.copy()
        return output


def _repeat_channel_three_times(node: ov.Output) -> ov.Output:
    import openvino.opset13 as ops

    return ops.concat([node, node, node], axis=3).output(0)


def resolve_device(device: str) -> str:
    """Check that ``device`` exists here; the error lists those that do."""
    if not isinstance(device, str) or not device.strip():
        raise InvalidInputError(f"device must be a name such as 'CPU' or 'AUTO', got {device!r}")
    device = device.strip().upper()
    available = shared_core().available_devices  # e.g. ["CPU", "GPU.0", "GPU.1", "NPU"]
    families = {name.split(".")[0] for name in available}
    base, _, targets = device.partition(":")
    wanted = [t for t in targets.split(",") if t] if base in VIRTUAL_DEVICES else [device]
    missing = [name for name in wanted if name not in available and name not in families]
    if missing:
        raise InvalidInputError(
            f"device {', '.join(missing)} is not available on this machine; available: "
            f"{', '.join(available) or 'none'} (and AUTO, which picks among them). "
            "GPU needs the Intel GPU driver, NPU the Intel NPU driver."
        )
    return device


def compile_for(
    model: ov.Model,
    device: str,
    cache_dir: str | Path | None,
    properties: dict[str, Any] | None = None,
    hint: str = "LATENCY",
) -> ov.CompiledModel:
    """Compile ``model`` for ``device``, caching the compiled blob under ``cache_dir``.

    ``hint`` is OpenVINO's performance hint (``LATENCY`` or ``THROUGHPUT``); ``properties``
    override it and everything else.
    """
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
    cache = _usable_cache_dir(cache_dir)
    if cache is not None:
        config["CACHE_DIR"] = str(cache)
    config.update(properties or {})
    try:
        return shared_core().compile_model(model, device, config)
    except RuntimeError as exc:
        if "CACHE_DIR" in config:
            # The cache is an optimisation, and it is shared: another process compiling the
            # same model at the same moment can remove a blob under our feet. Compile afresh.
            del config["CACHE_DIR"]
            try:
                compiled = shared_core().compile_model(model, device, config)
            except RuntimeError:
                pass  # not the cache's fault: report the first error
            else:
                warnings.warn(
                    f"model cache skipped for this load: {_first_line(exc)}", stacklevel=3
                )
                return compiled
        raise ModelLoadError(
            f"the model could not be compiled for {device}: {_first_line(exc)}"
        ) from exc


def _usable_cache_dir(cache_dir: str | Path | None) -> Path | None:
    # A cache is an optimisation: a read-only home must not stop the model from loading.
    if cache_dir is None:
        return None
    path = Path(cache_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        warnings.warn(f"model cache disabled: cannot create {path} ({exc})", stacklevel=3)
        return None
    return path


def _first_line(exc: BaseException) -> str:
    # OpenVINO messages carry C++ file/line banners; the last non-empty line says what happened.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(exc).__name__])[-1]


def save_ir(model: ov.Model, xml: str | Path, compress_to_fp16: bool) -> Path:
    """Save ``model`` as the IR pair ``xml`` + ``.bin``, atomically, and return ``xml``.

    Both files are written in a temporary folder beside the target and renamed into place,
    weights first (the .xml is what readers open, so it lands last): a reader never sees a
    half-written file, and an interrupted save leaves the previous pair. The .bin's SHA-256
    and size are stamped into the .xml's rt_info, and :func:`read_ir` refuses a pair whose
    stamp does not fit, so a kill between the two renames (new .bin, old .xml) gives a clear
    "re-export" error at load, never old thresholds on new weights. Training's export and
    ``calibrate``'s save both write through here.
    """
    from anomaly_edge.atomic import current_umask, make_staging_folder
    from anomaly_edge.metadata import OUR_SECTION

    target = Path(xml)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_folder(target.parent / f".{target.stem}-save")
    try:
        staged, weights = staging / "model.xml", staging / "model.bin"
        model.set_rt_info(_SHA_PLACEHOLDER, [OUR_SECTION, WEIGHTS_SHA256_KEY])
        model.set_rt_info(_SIZE_PLACEHOLDER, [OUR_SECTION, WEIGHTS_BYTES_KEY])
        ov.save_model(model, str(staged), compress_to_fp16=compress_to_fp16)
        _stamp(staged, file_sha256(weights), weights.stat().st_size)
        for path in (staged, weights):
            path.chmod(0o666 & ~current_umask())
        os.replace(weights, target.with_suffix(".bin"))
        os.replace(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# Written by save_ir, then overwritten in place with the real values (same length).
_SHA_PLACEHOLDER = "~" * 64
_SIZE_PLACEHOLDER = "^" * 20


def _stamp(xml: Path, sha256: str, size: int) -> None:
    text = xml.read_text(encoding="utf-8")
    if text.count(_SHA_PLACEHOLDER) != 1 or text.count(_SIZE_PLACEHOLDER) != 1:
        raise RuntimeError(f"{xml}: cannot find the place for the weights' fingerprint")
    text = text.replace(_SHA_PLACEHOLDER, sha256).replace(_SIZE_PLACEHOLDER, f"{size:020d}")
    xml.write_text(text, encoding="utf-8")
