"""Running an anomaly module over image sets and turning the results into metrics.

:func:`predict_samples` gives raw anomaly maps at model resolution (what the exported IR
outputs) and the image scores (their maxima). :func:`calibrate` picks thresholds and
normalisation statistics on the validation split (see :mod:`.thresholds`);
:func:`test_metrics` computes the report on the test split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from anomaly_edge import operating_point
from anomaly_edge.operating_point import DEFAULT_POLICY, Policy
from anomaly_edge.postprocess import PostprocessParams
from anomaly_edge.train import metrics
from anomaly_edge.train.data import ImageDataset, Sample, iter_batches
from anomaly_edge.train.thresholds import (
    Normalization,
    Threshold,
    choose_image,
    choose_pixel,
    normalization_stats,
)


@dataclass
class Predictions:
    """Outputs for a list of samples, in order."""

    samples: tuple[Sample, ...]
    scores: np.ndarray  # [N] float32, max of each map
    maps: np.ndarray  # [N, H, W] float32 raw anomaly maps
    masks: np.ndarray  # [N, H, W] bool ground truth (all False for normal images)
    labels: np.ndarray  # [N] int 0/1
    has_mask: np.ndarray  # [N] bool: False for an anomalous image without mask

    @property
    def pixel_ready(self) -> bool:
        """Whether every anomalous image has a mask (pixel metrics are meaningful)."""
        return bool(self.has_mask.all())


def predict_samples(
    model: nn.Module,
    samples: Sequence[Sample],
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> Predictions:
    """Run ``model`` (an anomaly module) over ``samples``."""
    samples = tuple(samples)
    count = len(samples)
    height, width = image_size
    maps = np.empty((count, height, width), dtype=np.float32)
    masks = np.zeros((count, height, width), dtype=bool)
    has_mask = np.ones(count, dtype=bool)
    model.eval()
    dataset = ImageDataset(samples, image_size, mean, std)
    with torch.inference_mode():
        for batch in iter_batches(dataset, batch_size):
            index = batch["index"].numpy()
            output = model(batch["image"])
            maps[index] = output[:, 0].float().numpy()
            masks[index] = batch["mask"][:, 0].numpy() > 0.5
            has_mask[index] = batch["has_mask"].numpy()
            if progress is not None:
                progress(len(index))
    scores = maps.reshape(count, -1).max(axis=1) if count else np.empty(0, np.float32)
    labels = np.array([s.label for s in samples], dtype=np.int64)
    return Predictions(samples, scores, maps, masks, labels, has_mask)


@dataclass
class Calibration:
    image_threshold: Threshold
    pixel_threshold: Threshold
    normalization: Normalization
    policy: Policy
    notes: list[str] = field(default_factory=list)

    def params(self) -> PostprocessParams:
        """The post-processing parameters the exported model will carry."""
        norm = self.normalization
        return PostprocessParams(
            self.image_threshold.value,
            self.pixel_threshold.value,
            max(norm.image_max - norm.image_min, 1e-12),
            max(norm.pixel_max - norm.pixel_min, 1e-12),
        )


def calibrate(
    validation: Predictions,
    image_threshold: float | None = None,
    pixel_threshold: float | None = None,
    policy: str | Policy = DEFAULT_POLICY,
) -> Calibration:
    """Thresholds and normalisation statistics from the validation predictions, the image
    threshold placed by ``policy`` (see :mod:`anomaly_edge.operating_point`)."""
    policy = Policy.parse(policy)
    norm = normalization_stats(validation.scores, validation.maps)
    image = choose_image(validation.scores, validation.labels, policy, image_threshold)
    fit_on = (validation.labels == 1) & validation.has_mask
    pixel = choose_pixel(
        validation.maps[fit_on],
        validation.masks[fit_on] if fit_on.any() else None,
        image,
        max(norm.image_max - norm.image_min, 1e-12),
        pixel_threshold,
    )
    notes = [t.note for t in (image, pixel) if t.note and t.method != "best_overlap"]
    return Calibration(image, pixel, norm, policy, notes)


def operating_point_report(
    validation: Predictions, test: Predictions, calibration: Calibration
) -> dict[str, Any]:
    """What a user sees at the chosen thresholds: measured on the test split (which the
    thresholds never saw) through the runtime's post-processor, beside what the policy
    expected on the validation split and how many images stand behind each figure."""
    params = calibration.params()
    expected_far, expected_recall = operating_point.rates(
        validation.scores, validation.labels, calibration.image_threshold.value
    )
    report: dict[str, Any] = {
        "policy": str(calibration.policy),
        "image_threshold_method": calibration.image_threshold.method,
        "expected": {
            "far": expected_far,
            "recall": expected_recall,
            "good_images": int(np.count_nonzero(validation.labels == 0)),
            "defect_images": int(np.count_nonzero(validation.labels == 1)),
            # what `calibrate` moves with the camera's normal level to estimate recall
            "defect_scores": sorted(
                float(f"{v:.6g}") for v in validation.scores[validation.labels == 1]
            ),
        },
    }
    if len(test.samples):
        measured = operating_point.measure(
            test.maps, test.labels, test.masks, test.has_mask, params, str(calibration.policy)
        )
        report.update({k: v for k, v in measured.items() if k != "policy"})
    return report


def test_metrics(
    test: Predictions, calibration: Calibration, threshold_free: Predictions | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Metrics dict and notes.

    AUROC and AUPRO do not depend on thresholds, so they are computed on ``threshold_free``
    (e.g. validation + test, the whole test folder, as anomalib reports) when given; F1 uses
    only ``test``, which the thresholds never saw.
    """
    notes: list[str] = []
    result: dict[str, Any] = dict.fromkeys(
        ("image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1")
    )
    curves = threshold_free or test
    if len(curves.samples) == 0:
        notes.append("no test images: metrics cannot be computed")
        return result, notes
    if not curves.labels.any() or curves.labels.all():
        notes.append(
            "the test images are all of one class (normal or anomalous): AUROC, "
            "AUPRO and F1 need both"
        )
    result["image_auroc"] = metrics.auroc(curves.scores, curves.labels)
    if curves.pixel_ready:
        result["pixel_auroc"] = metrics.auroc(curves.maps, curves.masks)
        result["aupro"] = metrics.aupro(curves.maps, curves.masks)
    elif curves.labels.any():
        missing = [
            str(s.path) for s, ok in zip(curves.samples, curves.has_mask, strict=True) if not ok
        ]
        notes.append(
            f"pixel metrics need a mask for every defect image; {len(missing)} have "
            f"none (e.g. {missing[0]}): pixel_auroc, aupro and pixel_f1 are null"
        )
    if len(test.samples):
        result["image_f1"] = metrics.f1_at(
            test.scores, test.labels, calibration.image_threshold.value
        )
        if test.pixel_ready:
            result["pixel_f1"] = metrics.f1_at(
                test.maps, test.masks, calibration.pixel_threshold.value
            )
    return result, notes
