"""INT8 post-training quantisation with NNCF, and the accuracy check that may refuse it.

Calibration uses training images (normal ones: the distribution the model sees on the line).
The accuracy change is measured on the validation split, FP32 IR against INT8 IR, and when it
exceeds the bound the user set the export is refused rather than shipped.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import openvino as ov

from anomaly_edge.errors import AnomalyEdgeError

log = logging.getLogger(__name__)

# Runs the model under test: normalised float32 [1, 3, H, W] -> anomaly map [1, 1, H, W].
InferFn = Callable[[np.ndarray], np.ndarray]
# Measures a model through its InferFn: higher is better (e.g. image AUROC).
AccuracyFn = Callable[[InferFn], float]


class AccuracyDropError(AnomalyEdgeError):
    """INT8 quantisation lost more accuracy than the caller allowed; nothing was written."""


@dataclass(frozen=True)
class ValidationSet:
    """Images with known labels, to measure what quantisation costs.

    ``images``: normalised network inputs ([3, H, W] or [1, 3, H, W] tensors or arrays, as the
    training data loader yields them); ``labels``: 1 for anomalous, 0 for normal.
    The metric is image AUROC (needs both classes); with one class only, the correlation of
    INT8 scores with FP32 scores is used instead.
    """

    images: Sequence[Any]
    labels: Sequence[int]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"validation set has {len(self.images)} images but {len(self.labels)} labels"
            )
        if len(self.images) == 0:
            raise ValueError("validation set is empty")


@dataclass(frozen=True)
class QuantizationReport:
    """What a lower precision cost on the validation split, against FP32 (stored in the IR's
    metrics as ``int8`` or ``fp16``)."""

    metric: str
    fp32: float
    int8: float  # the metric at the lower precision (named for the usual case)
    images: int
    precision: str = "INT8"

    @property
    def drop(self) -> float:
        return self.fp32 - self.int8

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "fp32": round(self.fp32, 6),
            self.precision.lower(): round(self.int8, 6),
            "drop": round(self.drop, 6),
            "images": self.images,
        }


def as_network_input(item: Any) -> np.ndarray:
    """One calibration/validation item -> float32 [1, 3, H, W] (accepts loader-style items)."""
    if isinstance(item, dict):
        item = item["image"]
    elif isinstance(item, (tuple, list)):
        item = item[0]
    if hasattr(item, "detach"):  # a torch tensor
        item = item.detach().cpu().numpy()
    array = np.asarray(item, dtype=np.float32)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1] != 3:
        raise ValueError(
            f"expected a normalised image tensor [3, H, W] or [N, 3, H, W], got shape {array.shape}"
        )
    return array


def split_batches(items: Iterable[Any]) -> Iterable[np.ndarray]:
    """Items or batches -> single images [1, 3, H, W] (the IR's static batch is 1)."""
    for item in items:
        batch = as_network_input(item)
        for i in range(batch.shape[0]):
            yield batch[i : i + 1]


def quantize_int8(
    model: ov.Model,
    calibration_images: Iterable[Any],
    quantized_modules: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    subset_size: int = 300,
    seed: int = 0,
    verbose: bool = False,
) -> ov.Model:
    """Post-training INT8 quantisation of an FP32 OpenVINO model with NNCF.

    Anomaly detection turns the usual recipe on its head: calibration sees normal images
    only, yet the images that matter are the ones that look different. Ranges fitted to
    normal images clip exactly the activations of defects, and the scores of anomalies
    flatten to normal ones. So:

    * only ``quantized_modules`` (torch submodule names: the feature extractor) are
      quantised; the anomaly head (distances, blur) stays in float;
    * every calibration image also appears with synthetic defects (rectangles of random
      colour and of noise over the whole 0-255 range, ``mean``/``std`` in 0-255 units), and
      ranges are the min/max over all of them, so activations of unusual content keep
      headroom.

    NNCF's INFO lines and progress bars are shown only with ``verbose``.
    """
    _quiet_torch_cuda_probe()
    with quiet_nncf(verbose):
        return _quantize(model, calibration_images, quantized_modules, mean, std, subset_size, seed)


def _quiet_torch_cuda_probe() -> None:
    """Import ``torch.utils.cpp_extension`` with its logger at ERROR, once.

    NNCF picks its backend by asking whether the model is a torch module, which imports its
    torch extensions and so ``torch.utils.cpp_extension``; on a CUDA build of torch without a
    GPU, and an ``nvcc`` on the PATH, that module logs "No CUDA runtime is found" as it is
    imported. INT8 quantisation runs on the CPU and builds no extension, so the message is
    about nothing here. Only that logger, only during that import.
    """
    if "torch.utils.cpp_extension" in sys.modules:
        return
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension  # noqa: F401
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def quiet_nncf(verbose: bool = False) -> Iterator[None]:
    """Keep NNCF's INFO logging and its progress bars (printed to stdout) off the console."""
    if verbose:
        yield
        return
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf_log.setLevel(level)


def _quantize(
    model: ov.Model,
    calibration_images: Iterable[Any],
    quantized_modules: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    subset_size: int,
    seed: int,
) -> ov.Model:
    import re

    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    samples = list(split_batches(calibration_images))
    if not samples:
        raise ValueError("INT8 export needs calibration images (the training images); got none")
    if not quantized_modules:
        raise ValueError(
            "no feature-extractor modules to quantise were found; name them with "
            "quantized_modules=[...] (torch submodule names)"
        )
    samples = samples[:subset_size]
    rng = np.random.default_rng(seed)
    mean_f32, std_f32 = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    low = (0.0 - mean_f32) / std_f32
    high = (255.0 - mean_f32) / std_f32
    samples += [with_synthetic_defects(x, low, high, rng) for x in samples]
    # OpenVINO names traced operations "__module.<submodule path>/aten::...".
    prefixes = "|".join(re.escape(name) for name in quantized_modules)
    outside = nncf.IgnoredScope(patterns=[rf"^(?!__module\.({prefixes})[./]).*"], validate=False)
    return nncf.quantize(
        model,
        nncf.Dataset(samples),
        subset_size=len(samples),
        preset=nncf.QuantizationPreset.MIXED,  # asymmetric activations
        ignored_scope=outside,
        advanced_parameters=AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX
        ),
    )


def with_synthetic_defects(
    x: np.ndarray, low: np.ndarray, high: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A copy of the normalised image ``x`` [1, 3, H, W] with a few random rectangles of
    flat colour or noise anywhere in the valid pixel range [low, high] (per channel)."""
    out: np.ndarray = x.copy()
    _, channels, height, width = out.shape
    low, high = low.reshape(channels, 1, 1), high.reshape(channels, 1, 1)
    for _ in range(int(rng.integers(1, 4))):
        h = int(rng.integers(max(1, height // 16), max(2, height // 4)))
        w = int(rng.integers(max(1, width // 16), max(2, width // 4)))
        y, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        shape = (channels, 1, 1) if rng.random() < 0.5 else (channels, h, w)
        out[0, :, y : y + h, x0 : x0 + w] = low + (high - low) * rng.random(shape, np.float32)
    return out


def feature_modules(model: Any) -> list[str]:
    """The submodules of an anomaly module worth quantising: ``model.quantized_modules`` if
    it says, else every top-level child that holds a convolution layer."""
    from torch import nn

    declared = getattr(model, "quantized_modules", None)
    if declared is not None:
        return list(declared)
    return [
        name
        for name, child in model.named_children()
        if any(isinstance(m, nn.Conv2d) for m in child.modules())
    ]


def store_float_weights_as_fp16(model: ov.Model, min_elements: int = 64) -> int:
    """Store the float constants quantisation left alone (the anomaly head) in half precision.

    ``ov.save_model(compress_to_fp16=True)`` leaves every constant of a quantised model in
    FP32, which made the INT8 IR larger than the FP16 one. This does what it does for float
    models: an FP16 constant and a Convert back to FP32, folded when the model is compiled,
    so inference runs on exactly the weights an FP16 export holds. Small constants
    (quantisation ranges, shapes) stay as they are. Returns how many were converted.
    """
    import openvino.opset13 as ops

    converted = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Constant" or node.get_output_element_type(0) != ov.Type.f32:
            continue
        if int(np.prod(list(node.get_output_shape(0)))) < min_elements:
            continue
        values = node.get_data()
        half = values.astype(np.float16)
        if not np.all(np.isfinite(half[np.isfinite(values)])):
            continue  # outside FP16's range: keep it exact
        restored = ops.convert(ops.constant(half), ov.Type.f32)
        for target in list(node.output(0).get_target_inputs()):
            target.replace_source_output(restored.output(0))
        converted += 1
    return converted


def compare_accuracy(
    reference: ov.Model,
    quantized: ov.Model,
    validation: ValidationSet | AccuracyFn,
    precision: str = "INT8",
) -> QuantizationReport:
    """Measure ``validation``'s metric on both models (FP32 reference vs ``precision``)."""
    core = ov.Core()
    infer_ref = _infer_fn(core.compile_model(reference, "CPU"))
    infer_q = _infer_fn(core.compile_model(quantized, "CPU"))
    if callable(validation):
        return QuantizationReport(
            "custom", float(validation(infer_ref)), float(validation(infer_q)), 0, precision
        )
    images = list(split_batches(validation.images))
    if len(images) != len(validation.labels):
        raise ValueError("validation images must be single images when labels are given")
    ref_scores = [float(infer_ref(x).max()) for x in images]
    q_scores = [float(infer_q(x).max()) for x in images]
    if len(set(int(v) for v in validation.labels)) == 2:
        return QuantizationReport(
            "image_auroc",
            _auroc(ref_scores, validation.labels),
            _auroc(q_scores, validation.labels),
            len(images),
            precision,
        )
    # One class only: how faithfully INT8 reproduces the FP32 scores is the best we can say.
    correlation = float(np.corrcoef(ref_scores, q_scores)[0, 1]) if len(images) > 1 else 1.0
    return QuantizationReport("score_correlation", 1.0, correlation, len(images), precision)


def _auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    from anomaly_edge.train.metrics import auroc

    value = auroc(np.asarray(scores), np.asarray(labels))
    if value is None:
        raise ValueError("AUROC needs both normal and anomalous images")
    return value


def check_drop(report: QuantizationReport, max_accuracy_drop: float | None) -> None:
    """Refuse the model when it lost more than ``max_accuracy_drop`` (absolute)."""
    p = report.precision
    log.info(
        "%s %s: FP32 %.4f -> %s %.4f (drop %.4f) on %d validation images",
        p,
        report.metric,
        report.fp32,
        p,
        report.int8,
        report.drop,
        report.images,
    )
    if max_accuracy_drop is not None and report.drop > max_accuracy_drop:
        instead = "FP16 or FP32" if p == "INT8" else "FP32"
        raise AccuracyDropError(
            f"{p} lowered {report.metric} from {report.fp32:.4f} (FP32) to {report.int8:.4f} "
            f"(drop {report.drop:.4f}), more than the allowed {max_accuracy_drop:.4f}; nothing "
            f"was written. Export at {instead} instead, or allow a larger drop."
        )


def _infer_fn(compiled: ov.CompiledModel) -> InferFn:
    request = compiled.create_infer_request()

    def infer(x: np.ndarray) -> np.ndarray:
        request.infer({0: x})
        output: np.ndarray = request.get_output_tensor(0).data.copy()
        return output

    return infer
