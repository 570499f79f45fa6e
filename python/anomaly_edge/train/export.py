"""Export an anomaly module (torch) to an OpenVINO IR pair, or an ONNX file, that the runtime
can load on its own.

The IR takes the normalised float32 image ``[1, 3, H, W]`` (input ``"image"``, static size)
and returns the raw anomaly map ``[1, 1, H, W]`` (output ``"anomaly_map"``); a tiled model
takes the ``T`` tiles of one frame as a static batch ``[T, 3, H, W]``. Thresholds,
normalisation statistics and everything else the runtime needs go into the IR's rt_info
(:class:`~anomaly_edge.metadata.ModelMetadata`). Both files are written atomically.

:func:`export_onnx` writes the same graph contract as ONNX (float32), the same metadata as
its ``metadata_props`` (:mod:`anomaly_edge.onnx_metadata`), for fleets that also run ONNX
Runtime; ``AnomalyModel("model.onnx")`` loads it through OpenVINO's ONNX frontend.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch
from torch import nn

from anomaly_edge.atomic import current_umask, make_staging_folder
from anomaly_edge.metadata import INPUT_NAME, OUTPUT_NAME, PRECISIONS, ModelMetadata
from anomaly_edge.model_loading import save_ir
from anomaly_edge.train.quantize import (
    AccuracyDropError,
    AccuracyFn,
    ValidationSet,
    check_drop,
    compare_accuracy,
    feature_modules,
    quantize_int8,
    store_float_weights_as_fp16,
)

__all__ = [
    "AccuracyDropError",
    "ValidationSet",
    "compare_maps",
    "export_ir",
    "export_onnx",
    "ir_size_mb",
]

# ONNX opset of exported models: OpenVINO's ONNX frontend and ONNX Runtime 1.12+ read it.
ONNX_OPSET = 17

log = logging.getLogger(__name__)


def export_ir(
    model: nn.Module,
    metadata: ModelMetadata,
    out_dir: str | Path,
    precision: str = "FP16",
    calibration_images: Iterable[Any] | None = None,
    max_accuracy_drop: float | None = None,
    validation: ValidationSet | AccuracyFn | None = None,
    *,
    quantized_modules: Sequence[str] | None = None,
    name: str = "model",
    verbose: bool = False,
) -> Path:
    """Write ``out_dir/<name>.xml`` + ``.bin`` and return the ``.xml`` path.

    Args:
        model: an anomaly module: ``forward(x [1, 3, H, W] normalised) -> [1, 1, H, W]`` raw map.
        metadata: thresholds and statistics to store; its ``input_size`` is the static input
            size of the IR, its ``precision`` is set to ``precision``.
        precision: ``"FP32"``, ``"FP16"`` (weights stored in half precision; default) or
            ``"INT8"`` (NNCF post-training quantisation).
        calibration_images: INT8 only: normalised training images (tensors [3, H, W] or
            batches [N, 3, H, W], or loader items whose first element / "image" key is one).
        max_accuracy_drop: FP16/INT8: the largest absolute drop of the validation metric
            (image AUROC) against FP32 you accept; beyond it :class:`AccuracyDropError` is
            raised and nothing is written. Needs ``validation``.
        validation: FP16/INT8: a :class:`ValidationSet` (images + labels) or a function
            ``accuracy(infer) -> float`` (higher is better) that scores a model through
            ``infer(x [1, 3, H, W]) -> map``. FP32 and the exported precision are both
            measured; the result goes into the IR's metrics as ``int8`` / ``fp16``. (FP16 is
            exact for well-conditioned models, but PaDiM's whitening of near-degenerate
            features can amplify half-precision rounding: check it when in doubt.)
        quantized_modules: INT8 only: names of the submodules to quantise (the feature
            extractor). Default: ``model.quantized_modules`` if defined, else every top-level
            child holding a convolution. The anomaly head always stays in float.
        name: file stem of the IR pair.
        verbose: INT8 only: show NNCF's log lines and progress bars.
    """
    precision = precision.upper()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "INT8" and calibration_images is not None:
        raise ValueError("calibration_images apply to precision='INT8' only")
    if precision == "FP32" and (max_accuracy_drop is not None or validation is not None):
        raise ValueError(
            "max_accuracy_drop and validation compare FP16/INT8 with FP32; "
            "they do not apply to precision='FP32'"
        )
    if max_accuracy_drop is not None and validation is None:
        raise ValueError(
            "max_accuracy_drop needs validation images (validation=...) to measure the drop against"
        )

    if metadata.tiled and precision == "INT8":
        raise ValueError("INT8 export of tiled models is not supported yet: export FP16 or FP32")
    ov_model = to_openvino(model, metadata.input_size, batch=metadata.batch_size)
    metadata = dataclasses.replace(metadata, precision=precision, metrics=dict(metadata.metrics))
    if precision == "INT8":
        if calibration_images is None:
            raise ValueError("precision='INT8' needs calibration_images (the training images)")
        reference = ov_model.clone()
        modules = quantized_modules if quantized_modules is not None else feature_modules(model)
        ov_model = quantize_int8(
            ov_model,
            calibration_images,
            modules,
            mean=metadata.mean,
            std=metadata.std,
            verbose=verbose,
        )
        # measured as it will be stored: the head's float weights in FP16
        pack_sparse_constants(ov_model)
        store_float_weights_as_fp16(ov_model)
        if validation is not None:
            report = compare_accuracy(reference, ov_model, validation, "INT8")
            check_drop(report, max_accuracy_drop)
            metadata.metrics["int8"] = report.to_dict()
    elif precision == "FP16" and validation is not None:
        report = compare_accuracy(ov_model, as_saved_fp16(ov_model), validation, "FP16")
        check_drop(report, max_accuracy_drop)
        metadata.metrics["fp16"] = report.to_dict()
    if precision != "INT8":
        pack_sparse_constants(ov_model)  # after NNCF, which would fold the packing back
    metadata.write_to(ov_model)
    xml = save_ir(ov_model, Path(out_dir) / f"{name}.xml", compress_to_fp16=precision != "FP32")
    log.info("exported %s (%s, %.1f MB)", xml, precision, ir_size_mb(xml))
    return xml


def as_saved_fp16(model: ov.Model) -> ov.Model:
    """The model as it will be after FP16 storage (saved and read back), to measure it."""
    core = ov.Core()
    core.set_property({"ENABLE_MMAP": False})  # read the weights in: the folder goes away
    with tempfile.TemporaryDirectory() as folder:
        ov.save_model(model.clone(), f"{folder}/m.xml", compress_to_fp16=True)
        return core.read_model(f"{folder}/m.xml")


def to_openvino(model: nn.Module, input_size: tuple[int, int], batch: int = 1) -> ov.Model:
    """Trace ``model`` at the static ``input_size`` and name its input and output.

    ``batch`` is the static batch: 1, or the tiles of one frame for a tiled model."""
    h, w = input_size
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # OpenVINO's PyTorch frontend traces with torch.jit.trace, deprecated in torch 2.x;
            # the warning is for OpenVINO, not for our users.
            warnings.filterwarnings("ignore", category=FutureWarning)
            # torch.jit re-exports TracerWarning at run time without listing it in __all__.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined]
            ov_model = ov.convert_model(
                model, example_input=torch.zeros(batch, 3, h, w), input=[[batch, 3, h, w]]
            )
    finally:
        model.train(was_training)
    check_graph(ov_model, batch)
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    ov_model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    return ov_model


def check_graph(ov_model: ov.Model, batch: int) -> None:
    """Refuse a converted module that is not one image in, one ``[batch, 1, H, W]`` map out."""
    if len(ov_model.inputs) != 1 or len(ov_model.outputs) != 1:
        raise ValueError(
            f"an anomaly module must take one image and return one map; the traced model has "
            f"{len(ov_model.inputs)} inputs and {len(ov_model.outputs)} outputs"
        )
    out_shape = ov_model.outputs[0].get_partial_shape()
    if (
        out_shape.is_dynamic
        or len(out_shape) != 4
        or out_shape[0].get_length() != batch
        or out_shape[1].get_length() != 1
    ):
        raise ValueError(f"an anomaly module must return a [{batch}, 1, H, W] map, got {out_shape}")


def export_onnx(
    model: nn.Module, metadata: ModelMetadata, path: str | Path, opset: int = ONNX_OPSET
) -> Path:
    """Write ``model`` as an ONNX file at ``path`` (atomically) and return the path.

    The graph is the IR's (input ``"image"`` ``[B, 3, H, W]`` normalised float32, output
    ``"anomaly_map"`` ``[B, 1, H, W]``, static sizes), in float32; ``metadata`` (precision set
    to FP32) goes into ``metadata_props``, written by the serialisation the IR uses. Needs
    the ``onnx`` package (torch's exporter uses it); loading the file does not.
    """
    import importlib.util

    from anomaly_edge.onnx_metadata import encode_props, props_of

    if importlib.util.find_spec("onnx") is None:
        raise ModuleNotFoundError(
            "ONNX export needs the onnx package (torch's ONNX exporter uses it): pip install onnx"
        )
    path = Path(path)
    metadata = dataclasses.replace(metadata, precision="FP32", metrics=dict(metadata.metrics))
    h, w = metadata.input_size
    batch = metadata.batch_size
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_folder(path.parent / f".{path.stem}-export")
    was_training = model.training
    model.eval()
    try:
        written = staging / path.name
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript-based exporter is deprecated in favour of the torch.export one,
            # which needs onnxscript on top; the graph it writes is the same contract.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined]
            # torch's note that it leaves some slices unfolded: OpenVINO folds them at load.
            warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
            torch.onnx.export(
                model,
                (torch.zeros(batch, 3, h, w),),
                str(written),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=False,
            )
        with open(written, "ab") as handle:
            handle.write(encode_props(props_of(metadata)))
        # The same checks as the IR's, on the file as OpenVINO reads it.
        check_graph(ov.Core().read_model(str(written)), batch)
        written.chmod(0o666 & ~current_umask())
        os.replace(written, path)
    finally:
        model.train(was_training)
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s (ONNX opset %d, %.1f MB)", path, opset, path.stat().st_size / 1e6)
    return path


def pack_sparse_constants(
    model: ov.Model, min_elements: int = 1 << 16, min_zero_share: float = 0.05
) -> int:
    """Store large weight tensors without their structural zeros (PaDiM's triangular factors).

    A constant ``[..., r, c]`` in which the same entries of every ``r x c`` matrix are zero
    (at least ``min_zero_share`` of them, e.g. a stack of triangular matrices or column
    blocks of one) is replaced by its other entries ``[..., k + 1]`` (the last column holds
    the zero) and a Gather + Reshape that rebuilds it. OpenVINO folds that back into the
    full tensor when it compiles the model, so inference runs exactly as before while the
    IR on disk holds only the numbers that can be non-zero. Returns how many constants were
    packed.
    """
    import openvino.opset13 as ops

    packed_count = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Constant":
            continue
        shape = list(node.get_output_shape(0))
        if (
            len(shape) < 2
            or int(np.prod(shape)) < min_elements
            or node.get_output_element_type(0) not in (ov.Type.f32, ov.Type.f16)
        ):
            continue
        values = node.get_data()
        rows, cols = shape[-2:]
        flat = values.reshape(*shape[:-2], rows * cols)
        used = np.flatnonzero(np.any(flat != 0, axis=tuple(range(flat.ndim - 1))))
        if used.size > (1.0 - min_zero_share) * rows * cols:
            continue
        zero = np.zeros((*flat.shape[:-1], 1), dtype=flat.dtype)
        packed = ops.constant(np.concatenate([flat[..., used], zero], axis=-1))
        index = np.full(rows * cols, used.size, dtype=np.int32)  # default: the zero slot
        index[used] = np.arange(used.size, dtype=np.int32)
        full = ops.gather(packed, ops.constant(index), ops.constant(np.int32(len(shape) - 2)))
        rebuilt = ops.reshape(full, ops.constant(np.array(shape, dtype=np.int64)), False)
        for target in list(node.output(0).get_target_inputs()):
            target.replace_source_output(rebuilt.output(0))
        packed_count += 1
    return packed_count


def ir_size_mb(xml: str | Path) -> float:
    """Size of an IR pair on disk (.xml + .bin) in MB (10^6 bytes)."""
    xml = Path(xml)
    return (xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 1e6


# What parity with torch is measured at: float32 arithmetic. OpenVINO's CPU plugin otherwise
# runs float models in bf16 on CPUs with AVX512_BF16 or AMX, which moved PaDiM's metal_plate
# maps by up to 25 raw units (correlation 0.9985) although the IR was the same.
PARITY_PROPERTIES = {"INFERENCE_PRECISION_HINT": "f32"}


def compare_maps(
    model: nn.Module,
    xml: str | Path,
    images: Iterable[Any],
    properties: dict[str, Any] | None = None,
) -> dict[str, float]:
    """How closely the IR reproduces the torch model's maps on ``images`` (normalised inputs).

    Returns the Pearson correlation of all map values, the largest absolute difference and
    the largest difference of image scores (map maxima), relative to the largest torch score.
    The IR runs on the CPU with ``properties`` (default :data:`PARITY_PROPERTIES`: float32
    arithmetic, so what is compared is the IR itself, not the CPU's choice of bf16).
    """
    from anomaly_edge.train.quantize import split_batches

    config = PARITY_PROPERTIES if properties is None else properties
    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    request = compiled.create_infer_request()
    torch_maps, ir_maps = [], []
    model.eval()
    with torch.no_grad():
        for x in split_batches(images):
            torch_maps.append(model(torch.from_numpy(x)).numpy().astype(np.float64))
            request.infer({0: x})
            ir_maps.append(request.get_output_tensor(0).data.astype(np.float64))
    reference, exported = np.stack(torch_maps), np.stack(ir_maps)
    ref_scores = reference.reshape(len(reference), -1).max(axis=1)
    ir_scores = exported.reshape(len(exported), -1).max(axis=1)
    return {
        "correlation": float(np.corrcoef(reference.ravel(), exported.ravel())[0, 1]),
        "max_abs_diff": float(np.abs(reference - exported).max()),
        "max_score_rel_diff": float(
            np.abs(ref_scores - ir_scores).max() / max(np.abs(ref_scores).max(), 1e-12)
        ),
    }
