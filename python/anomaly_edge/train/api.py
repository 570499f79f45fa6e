"""``anomaly_edge.train.train``: from an MVTec-layout folder to a trained, evaluated model.

    from anomaly_edge.train import train
    result = train("datasets/mpdd/metal_plate", model="padim", backbone="efficientnet_lite0",
                   out="runs/metal_plate")
    result.metrics["image_auroc"], result.ir_path

Steps: scan the folder and carve the validation split (:mod:`.data`), fit the model on
train/good, predict the whole test folder, pick thresholds and normalisation statistics on
the validation split, compute metrics (AUROC and AUPRO over all test images, F1 on the part
the thresholds never saw), then, with ``out``, write ``metrics.json``, ROC/PR curves,
``checkpoint.pt`` and (``export=True``) the OpenVINO IR ``model.xml``/``model.bin``.
Everything is deterministic for a given ``seed``.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from anomaly_edge.metadata import ModelMetadata
from anomaly_edge.operating_point import DEFAULT_POLICY, Policy
from anomaly_edge.prediction import Task
from anomaly_edge.tiles import TileLayout, parse_tile_option
from anomaly_edge.train.augment import Augmentation, parse_augment
from anomaly_edge.train.data import (
    DEFAULT_VALIDATION_FRACTION,
    ImageDataset,
    Sample,
    Split,
    scan_category,
)
from anomaly_edge.train.evaluate import (
    Predictions,
    calibrate,
    operating_point_report,
    predict_samples,
    test_metrics,
)
from anomaly_edge.train.geometry import InputGeometry, choose_input_size, image_sizes
from anomaly_edge.train.models.base import FitRequest, ModelPlugin, ProgressFactory
from anomaly_edge.train.models.registry import get_model
from anomaly_edge.train.thresholds import false_alarm_rate, normal_score_range
from anomaly_edge.train.tiling import (
    TileOption,
    choose_layout,
    median_image_size,
    predict_tiled,
    tile_summary,
)

# Off by default: see the measurement in the README ("On the line") and train/augment.py.
DEFAULT_AUGMENT = "off"
METRIC_KEYS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "image_f1",
    "pixel_f1",
    "image_threshold",
    "pixel_threshold",
    "false_alarm_rate",
    "image_threshold_method",
)


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    model: nn.Module  # the anomaly module, eval mode
    metadata: ModelMetadata
    metrics: dict[str, Any]  # also written to out/metrics.json
    ir_path: Path | None = None
    out: Path | None = None
    files: list[Path] = field(default_factory=list)


def train(
    data: str | Path,
    model: str = "padim",
    backbone: str = "efficientnet_lite0",
    out: str | Path | None = None,
    image_size: int | tuple[int, int] | None = None,
    seed: int = 0,
    *,
    layers: list[str] | None = None,
    weights: str | Path | None = None,
    options: Any | None = None,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    normal_holdout: float = 0.0,
    image_threshold: float | None = None,
    pixel_threshold: float | None = None,
    policy: str = DEFAULT_POLICY,
    task: str = "segmentation",
    batch_size: int = 16,
    threads: int | None = None,
    export: bool | str = True,
    precision: str = "FP16",
    progress: bool | ProgressFactory = False,
    augment: str | bool | Augmentation | None = DEFAULT_AUGMENT,
    tile: TileOption = "auto",
) -> TrainResult:
    """Train ``model`` on ``data/train/good``, evaluate on ``data/test`` and (with ``out``) save.

    Args:
        data: category folder in MVTec layout (train/good, test/<defect>, ground_truth/...).
        model: a registered model (:func:`.models.registry.model_names`): ``"padim"``,
            ``"stfpm"``, ...
        backbone: ``resnet18``, ``wide_resnet50_2`` or ``efficientnet_lite0/1/2``.
        out: output folder for metrics.json, curves, checkpoint.pt and model.xml/.bin.
        image_size: network input, one int (square) or (height, width). Default: chosen
            from the training images (their median aspect ratio, short side 256, long side
            rounded to the backbone's stride; see :mod:`.geometry`).
        seed: fixes channel choice / student init, the validation split and data order.
        layers, weights: backbone layers and a weights file (see ``build_backbone``).
        options: the model's own knobs, an instance of its plug-in's ``options_type``
            (e.g. :class:`.PadimOptions`: channels, Gaussian grid, pretrained weights,
            Gaussians of tiles; :class:`.StfpmOptions`: the training schedule); ``None``
            takes every default.
        validation_fraction: share of the test images used to tune thresholds.
        normal_holdout: share of train/good kept out of fitting and added to the validation
            images as normal parts, so the false-alarm threshold stands on more of them (at
            least 10 images are always fitted on). Worth it where train/good is large and
            the test folder holds few good images; the model learns from fewer images.
        image_threshold, pixel_threshold: fixed thresholds (raw units) instead of tuned ones.
        policy: the operating point, in the user's terms: ``"far:0.05"`` (at most 5% of
            normal parts flagged on the validation images) or ``"f1"`` (F1-optimal); see
            :mod:`anomaly_edge.operating_point`.
        task: what the exported model reports by default (classification, detection,
            segmentation); changeable at run time.
        batch_size: images per fitting batch.
        threads: torch threads (default: all cores torch sees).
        export: write the OpenVINO IR (needs ``out``): ``True`` or ``"ir"``; ``"onnx"`` for
            ``model.onnx`` instead (same metadata, loadable by ``AnomalyModel``), ``"both"``
            for both; ``False`` for none.
        precision: IR precision, ``FP32``, ``FP16`` or ``INT8``.
        progress: ``True`` for tqdm bars, or a factory ``(description, total) -> bar``.
        augment: add compressed, re-lit copies of the training images (the deployment
            camera's path; :mod:`.augment`): ``"on"``, ``"off"``, an :class:`Augmentation`
            or a spec such as ``"jpeg=40-90,jitter=0.05,copies=1"``.
        tile: ``"auto"`` (tile when the training images are much larger than ``image_size``,
            see :mod:`.tiling`), ``"off"``, a grid ``"RxC"``, or a ``TileLayout``. A tiled
            model cuts each frame into overlapping ``image_size`` tiles at (near) native
            resolution, runs them as one batch and stitches their maps.
    """
    augmentation = parse_augment(augment)
    policy = str(Policy.parse(policy))
    plugin = get_model(model)
    options = plugin.resolve_options(options)
    plugin.check_options(options)
    task = Task.parse(task).value
    export_formats(export)  # a bad value fails before any fitting
    if export and out is None:
        raise ValueError("export=True needs an output folder (out=...)")
    if out is not None:
        check_output_folder(out)
    bar = _progress_factory(progress)
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))

    category = scan_category(data)
    split = category.split(validation_fraction, seed, normal_holdout)
    geometry = _input_geometry(image_size, split.train, plugin, backbone, layers)
    size = geometry.size
    notes = [split.note] if split.note else []
    layout, native = _tile_layout(tile, size, category.train, precision)
    if layout is not None and augmentation is not None:
        raise ValueError(
            f"augmentation of tiled training is not supported yet "
            f"({layout.describe()}): train with augment='off', or tile='off'"
        )

    started = time.perf_counter()
    request = FitRequest(
        split=split,
        backbone=backbone,
        size=size,
        seed=seed,
        layers=layers,
        weights=str(weights) if weights is not None else None,
        batch_size=batch_size,
        bar=bar,
        show_progress=bool(progress),
        augmentation=augmentation,
        layout=layout,
    )
    fitted = plugin.fit(request, options)
    anomaly_module, mean, std = fitted.module, fitted.mean, fitted.std
    fit_seconds = time.perf_counter() - started
    fit_peak_rss_mb = _peak_rss_mb()

    evaluated = _evaluate(anomaly_module, category.test, split, size, mean, std, bar, layout)
    validation, test, everything = evaluated
    calibration = calibrate(validation, image_threshold, pixel_threshold, policy)
    scores, metric_notes = test_metrics(test, calibration, everything)
    operating = operating_point_report(validation, test, calibration)
    notes += calibration.notes + metric_notes
    notes += _explain_null_metrics(scores, notes)
    if category.unmasked and not any("mask" in note for note in notes):
        notes.append(
            f"{len(category.unmasked)} defect images have no mask; pixel metrics use the others"
        )
    normal_scores = validation.scores[validation.labels == 0]
    metrics = {
        **scores,
        # share of normal validation images flagged at the chosen threshold (None: none seen)
        "false_alarm_rate": false_alarm_rate(normal_scores, calibration.image_threshold.value),
        "normal_validation_images": int(normal_scores.size),
        "image_threshold": calibration.image_threshold.value,
        "pixel_threshold": calibration.pixel_threshold.value,
        "image_threshold_method": calibration.image_threshold.method,
        "pixel_threshold_method": calibration.pixel_threshold.method,
        "policy": policy,
        "operating_point": operating,
        **dataclasses.asdict(calibration.normalization),
        "model": model,
        "backbone": backbone,
        "image_size": list(size),
        "input_geometry": geometry.as_dict(),
        "tiles": tile_summary(
            layout, native, plugin.tile_statistics(anomaly_module) if layout else None
        ),
        "model_settings": plugin.settings(anomaly_module, options),
        "seed": seed,
        "augment": dataclasses.asdict(augmentation) if augmentation else None,
        "train_images": len(split.train),
        "validation_images": len(split.validation),
        "test_images": len(split.test),
        "fit_seconds": round(fit_seconds, 3),
        "fit_peak_rss_mb": round(fit_peak_rss_mb, 1),
        "data": str(category.root.resolve()),  # `export --precision INT8` calibrates on it
        "notes": notes,
    }
    norm = calibration.normalization
    metadata = ModelMetadata(
        model=model,
        backbone=backbone,
        input_size=size,
        mean=mean,
        std=std,
        image_threshold=calibration.image_threshold.value,
        pixel_threshold=calibration.pixel_threshold.value,
        image_min=norm.image_min,
        image_max=norm.image_max,
        pixel_min=norm.pixel_min,
        pixel_max=norm.pixel_max,
        task=task,
        precision=precision.upper(),
        train_aspect=geometry.train_aspect,
        metrics={k: metrics[k] for k in METRIC_KEYS if metrics[k] is not None},
        **normal_score_range(normal_scores),
        operating_point=operating,
        tile_grid=layout.grid if layout else (1, 1),
        tile_frame_size=layout.frame_size if layout else None,
        tile_blend=layout.blend if layout else "cosine",
    )
    result = TrainResult(anomaly_module, metadata, metrics)
    if out is not None:
        _write_outputs(result, Path(out), everything, export, precision, split, size, mean, std)
    return result


# ---- input geometry ------------------------------------------------------------------------


def _input_geometry(
    image_size: int | tuple[int, int] | None,
    train_samples: tuple[Sample, ...],
    plugin: ModelPlugin,
    backbone: str,
    layers: list[str] | None,
) -> InputGeometry:
    """The user's size, or one chosen from the training images; either way with their
    median aspect ratio and its spread, which decide what the runtime compares frames with."""
    from anomaly_edge.train.backbones import deepest_stride

    if not layers:
        layers = plugin.default_layers(backbone)
    chosen = choose_input_size(
        image_sizes(s.path for s in train_samples), stride=deepest_stride(backbone, layers)
    )
    if image_size is None:
        return chosen
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or any(int(v) < 32 for v in size):
        raise ValueError(
            f"image_size must be one int or (height, width), each >= 32; got {image_size!r}"
        )
    return dataclasses.replace(chosen, size=(int(size[0]), int(size[1])), source="user")


# ---- fitting -------------------------------------------------------------------------------


def _tile_layout(
    tile: TileOption,
    size: tuple[int, int],
    train_samples: tuple[Sample, ...],
    precision: str,
) -> tuple[TileLayout | None, tuple[int, int] | None]:
    """(layout or None, median training image size or None when not measured)."""
    if tile is None or (isinstance(tile, str) and parse_tile_option(tile) == "off"):
        return None, None
    native = median_image_size(train_samples)
    layout = choose_layout(tile, size, native)
    if layout is not None and precision.upper() == "INT8":
        raise ValueError(
            f"INT8 export of tiled models is not supported yet ({layout.describe()})"
            ": export FP16, or train a single view with tile='off'"
        )
    return layout, native


# ---- evaluation ----------------------------------------------------------------------------


def _evaluate(
    module: nn.Module,
    test_samples: tuple[Sample, ...],
    split: Split,
    size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    bar: ProgressFactory,
    layout: TileLayout | None = None,
) -> tuple[Predictions, Predictions, Predictions]:
    """(validation, test, all test-folder images) predictions, each image run once."""
    in_test = {s.path for s in test_samples}
    # train images held out of fitting join the validation set only
    held_out = tuple(s for s in split.validation if s.path not in in_test)
    sources = (*test_samples, *held_out)
    progress = bar("evaluating", len(sources))
    if layout is not None:  # whole frames, tile maps stitched as the runtime does
        scored = predict_tiled(module, sources, layout, mean, std, progress=progress.update)
    else:
        scored = predict_samples(module, sources, size, mean, std, progress=progress.update)
    progress.close()
    position = {sample.path: i for i, sample in enumerate(scored.samples)}

    def subset(samples: tuple[Sample, ...]) -> Predictions:
        index = np.array([position[s.path] for s in samples], dtype=np.int64)
        return Predictions(
            tuple(samples),
            scored.scores[index],
            scored.maps[index],
            scored.masks[index],
            scored.labels[index],
            scored.has_mask[index],
        )

    if not split.validation:
        raise ValueError(
            f"{split.note or 'no validation images'}: thresholds need validation "
            "images; add test images or pass a validation fraction > 0"
        )
    validation = subset(split.validation)
    if not test_samples:  # validation was held out of train: nothing to report on
        return validation, subset(()), subset(())
    return validation, subset(split.test), subset(test_samples)


# ---- outputs -------------------------------------------------------------------------------

RUN_FILES = ("metrics.json", "checkpoint.pt", "model.xml")
# `train --precision INT8` refuses the IR beyond this image AUROC drop, as `export` does.
INT8_MAX_ACCURACY_DROP = 0.01


def check_output_folder(out: str | Path) -> None:
    """Refuse, before any work, an existing folder that a run would replace but is not a run."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder; choose a folder for the run")
    if out.is_dir() and any(out.iterdir()) and not any((out / n).exists() for n in RUN_FILES):
        raise ValueError(
            f"output folder {out} is not empty and holds no training run; a run "
            "replaces its folder as a whole, so choose a new or empty folder"
        )


def _write_outputs(
    result: TrainResult,
    out: Path,
    everything: Predictions,
    export: bool | str,
    precision: str,
    split: Split,
    size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> None:
    """Build the run in a fresh folder beside ``out`` and swap it in at the end, so ``out``
    holds the previous run or this one, never a mix (e.g. after a kill during the export)."""
    from anomaly_edge.atomic import make_staging_folder, swap_in_folder
    from anomaly_edge.train.quantize import AccuracyDropError

    check_output_folder(out)
    staging = make_staging_folder(out)
    refused: AccuracyDropError | None = None
    try:
        try:
            written = _write_run(
                result, staging, everything, export, precision, split, size, mean, std
            )
        except AccuracyDropError as exc:
            refused, written = exc, [p for p in staging.iterdir() if not p.name.startswith(".")]
        swap_in_folder(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    if refused is not None:
        raise AccuracyDropError(
            f"{refused} The run is in {out} without an IR (checkpoint, metrics, curves): export "
            f"it with `anomaly-edge export --run {out} --precision FP16`, or INT8 with a larger "
            "--max-accuracy-drop."
        ) from None
    result.out = out
    result.files = [out / path.relative_to(staging) for path in written]
    if result.ir_path is not None:
        result.ir_path = out / result.ir_path.relative_to(staging)


def _write_run(
    result: TrainResult,
    folder: Path,
    everything: Predictions,
    export: bool | str,
    precision: str,
    split: Split,
    size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> list[Path]:
    md = result.metadata
    written = list(
        _write_curves(
            everything,
            folder,
            (md.image_threshold, md.pixel_threshold),
            str(result.metrics.get("policy", "")),
        )
    )
    from anomaly_edge.train.checkpoint import can_checkpoint, save_checkpoint

    if can_checkpoint(result.model):
        written.append(save_checkpoint(result.model, result.metadata, folder / "checkpoint.pt"))
    else:  # a model plugged in from outside the package: `export --run` could not rebuild it
        result.metrics["notes"].append(
            f"no checkpoint.pt: {type(result.model).__name__} lives outside anomaly_edge.train "
            "or has no init_kwargs, so `anomaly-edge export --run` could not rebuild it"
        )
    refused: Exception | None = None
    formats = export_formats(export)
    if "onnx" in formats:
        from anomaly_edge.train.export import export_onnx

        onnx_path = export_onnx(result.model, result.metadata, folder / "model.onnx")
        written.append(onnx_path)
        result.ir_path = onnx_path  # the model file of the run, unless an IR follows
    if "ir" in formats:
        from anomaly_edge.train.export import AccuracyDropError, ValidationSet, export_ir

        calibration = validation = max_drop = None
        if precision.upper() == "INT8":
            calibration = ImageDataset(split.train, size, mean, std)
            if len(everything.samples):  # the guard `export` applies too
                # An ImageDataset is a sequence in all but name (len, int indexing, iteration)
                images = cast("Sequence[Any]", ImageDataset(everything.samples, size, mean, std))
                validation = ValidationSet(images, [int(v) for v in everything.labels])
                max_drop = INT8_MAX_ACCURACY_DROP
        try:
            result.ir_path = export_ir(
                result.model,
                result.metadata,
                folder,
                precision=precision,
                calibration_images=calibration,
                validation=validation,
                max_accuracy_drop=max_drop,
            )
            written += [result.ir_path, result.ir_path.with_suffix(".bin")]
        except AccuracyDropError as exc:  # keep the run; only the IR is refused
            refused = exc
            result.metrics["notes"].append(f"no IR written: {exc}")
    metrics_path = folder / "metrics.json"
    write_json_atomically(metrics_path, result.metrics)
    written.append(metrics_path)
    if refused is not None:
        raise refused
    return written


EXPORT_FORMATS = {"ir": ("ir",), "onnx": ("onnx",), "both": ("ir", "onnx")}


def export_formats(export: bool | str) -> tuple[str, ...]:
    """What ``train(export=...)`` writes: ``True``/``"ir"``, ``"onnx"``, ``"both"`` or
    ``False`` (nothing)."""
    if export is True:
        return ("ir",)
    if export is False:
        return ()
    if isinstance(export, str) and export.lower() in EXPORT_FORMATS:
        return EXPORT_FORMATS[export.lower()]
    raise ValueError(f"export={export!r}: use True or 'ir' (OpenVINO IR), 'onnx', 'both', or False")


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` via a temporary file in the same folder."""
    from anomaly_edge.atomic import atomic_write

    with atomic_write(path) as handle:
        json.dump(_jsonable(payload), handle, indent=2, sort_keys=True, allow_nan=False)
        handle.write("\n")


def _explain_null_metrics(scores: dict[str, Any], notes: list[str]) -> list[str]:
    """A note for every metric that came out undefined and no other note mentions."""
    reasons = {
        "image_auroc": "needs normal and anomalous test images",
        "pixel_auroc": "needs defect pixels in the masks and normal pixels (are all masks "
        "empty, or the defects too small for the network input?)",
        "aupro": "needs non-empty defect masks",
        "image_f1": "needs anomalous images in the test split",
        "pixel_f1": "needs masks with defect pixels in the test split",
    }
    return [
        f"{key} is null: it {reason}"
        for key, reason in reasons.items()
        if scores.get(key) is None and not any(key in note for note in notes)
    ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _write_curves(
    predictions: Predictions, out: Path, thresholds: tuple[float, float], policy: str
) -> list[Path]:
    """ROC and precision-recall curves (image level, and pixel level when masks allow), the
    operating point marked."""
    from anomaly_edge.train.curves import plot_curves

    return plot_curves(predictions, out, thresholds, policy)


# ---- helpers -------------------------------------------------------------------------------


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_factory(progress: bool | ProgressFactory) -> ProgressFactory:
    if callable(progress):
        return progress
    if not progress:
        return lambda description, total: _NoBar()
    from tqdm import tqdm  # part of the train extra

    return lambda description, total: tqdm(
        total=total, desc=description, unit="img", file=sys.stderr, leave=False
    )


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
