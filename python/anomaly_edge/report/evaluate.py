"""Run the exported model over a run's test images, as a user would: one prediction per image
at the exported thresholds, with the segmentation task (label, boxes and mask)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from anomaly_edge.errors import InvalidInputError
from anomaly_edge.media import read_image, read_mask
from anomaly_edge.model import AnomalyModel
from anomaly_edge.report.dataset import Sample, list_test_images
from anomaly_edge.report.run_folder import ReportError, RunFolder

# How long the report measures latency itself when no benchmark.json was saved.
OWN_LATENCY_SECONDS = 1.0


@dataclass(frozen=True)
class Scored:
    """What the model said about one test image, and how well its regions fit the truth."""

    sample: Sample
    raw_score: float
    score: float
    flagged: bool
    boxes: int
    # intersection over union of the mask with the ground truth (None: no ground truth)
    iou: float | None


@dataclass
class Evaluation:
    """One run's model over its test images."""

    run: RunFolder
    model: AnomalyModel
    scored: list[Scored] = field(default_factory=list)
    latency: dict[str, Any] = field(default_factory=dict)

    @property
    def image_threshold(self) -> float:
        return float(self.model.image_threshold)

    def scores(self, defect: bool) -> np.ndarray:
        """Raw scores of the defect (True) or good (False) test images."""
        return np.array([s.raw_score for s in self.scored if s.sample.is_defect == defect])


def evaluate(
    run: RunFolder, *, device: str = "CPU", progress: Callable[[str], None] | None = None
) -> Evaluation:
    """Predict every test image of ``run``'s dataset with its exported model."""
    samples = list_test_images(run.data)
    if not samples:
        raise ReportError(
            f"{run.data} holds no test images in MVTec layout (test/good, test/<defect>): "
            "the report shows what the model does on them; pass --data DIR with the "
            "category folder"
        )
    model = AnomalyModel(run.model_xml, device, task="segmentation")
    evaluation = Evaluation(run, model)
    for index, sample in enumerate(samples):
        if progress is not None and index % 50 == 0:
            progress(f"{run.path.name}: image {index + 1} of {len(samples)}")
        try:
            frame = read_image(sample.path)
        except InvalidInputError as exc:
            raise ReportError(f"test image {sample.path}: {exc}") from None
        prediction = model.predict(frame)
        iou = None
        if sample.mask_path is not None and prediction.mask is not None:
            iou = _iou(prediction.mask > 0, _truth(sample, frame.shape[:2]))
        evaluation.scored.append(
            Scored(
                sample,
                float(prediction.raw_score),
                float(prediction.score),
                bool(prediction.label),
                len(prediction.boxes),
                iou,
            )
        )
    evaluation.latency = run.benchmark or _own_latency(model, read_image(samples[0].path))
    return evaluation


def truth_mask(sample: Sample, shape: tuple[int, ...]) -> np.ndarray | None:
    """The ground truth at the image's size (bool), or None without a mask."""
    return None if sample.mask_path is None else _truth(sample, shape[:2])


def _truth(sample: Sample, shape: tuple[int, ...]) -> np.ndarray:
    assert sample.mask_path is not None
    try:
        mask = read_mask(sample.mask_path)
    except InvalidInputError as exc:
        raise ReportError(f"mask {sample.mask_path}: {exc}") from None
    if mask.shape != shape[:2]:
        resized = cv2.resize(
            mask.view(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST
        )
        mask = resized > 0
    return mask


def _iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    union = np.count_nonzero(predicted | truth)
    return 1.0 if union == 0 else float(np.count_nonzero(predicted & truth) / union)


def _own_latency(model: AnomalyModel, frame: np.ndarray) -> dict[str, Any]:
    """A short single-frame latency measurement, marked as the report's own."""
    from anomaly_edge.cli.benchmark import measure_sync

    sync = measure_sync(model, frame, OWN_LATENCY_SECONDS)
    return {
        "source": "report",
        "model": model.metadata.model,
        "device": model.device,
        "task": model.task.value,
        "frame": f"{frame.shape[1]}x{frame.shape[0]}",
        "sync": sync,
    }
