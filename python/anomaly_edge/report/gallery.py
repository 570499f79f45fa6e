"""The gallery: the images a person judges an anomaly model by (its worst false alarms, its
misses, its best and worst localisations), each drawn with its heatmap, regions and boxes
beside the image with its ground truth."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from anomaly_edge.media import read_image
from anomaly_edge.prediction import Prediction
from anomaly_edge.report.evaluate import Evaluation, Scored, truth_mask
from anomaly_edge.visualize import ANOMALY_COLOUR, draw_prediction

PER_GROUP = 3  # images per gallery group: 4 groups, 12 images when the test set allows
# Longest side of a gallery image in the page: enough to see a defect, small enough that a
# report of two runs stays a few MB.
SHOT_SIDE = 320
TRUTH_COLOUR = (0, 220, 255)  # BGR yellow: the ground truth, apart from the model's red
JPEG_QUALITY = 85
HEAT_ALPHA = 0.45  # opacity of the heatmap over the image


@dataclass(frozen=True)
class Shot:
    """One gallery entry: why it is shown, and its two pictures as data URIs."""

    group: str
    verdict: str  # e.g. "false alarm", "missed", "caught"
    scored: Scored
    image_uri: str  # the image with its ground truth outlined
    overlay_uri: str  # heatmap, regions and boxes, with the banner


@dataclass(frozen=True)
class Group:
    title: str
    explanation: str
    shots: list[Shot]


def build_gallery(evaluation: Evaluation) -> list[Group]:
    """Up to :data:`PER_GROUP` images in each of the four groups."""
    good = sorted(
        (s for s in evaluation.scored if not s.sample.is_defect), key=lambda s: -s.raw_score
    )
    defects = sorted(
        (s for s in evaluation.scored if s.sample.is_defect), key=lambda s: s.raw_score
    )
    localised = sorted(
        (s for s in evaluation.scored if s.iou is not None), key=lambda s: -(s.iou or 0.0)
    )
    best = localised[:PER_GROUP]
    worst = [s for s in reversed(localised) if s not in best][:PER_GROUP]
    chosen: list[tuple[str, str, list[Scored], Callable[[Scored], str]]] = [
        (
            "Worst false alarms",
            "good images, highest score first: flagged ones are false alarms; unflagged ones "
            "are the good images closest to the threshold",
            good[:PER_GROUP],
            lambda s: "false alarm" if s.flagged else "not flagged (closest to threshold)",
        ),
        (
            "Misses",
            "defect images, lowest score first: unflagged ones are misses; flagged ones are "
            "the defects closest to being missed",
            defects[:PER_GROUP],
            lambda s: "caught (closest to being missed)" if s.flagged else "missed",
        ),
        (
            "Best localisations",
            "defect images whose regions overlap the ground truth most (IoU of mask and truth)",
            best,
            _localisation_verdict,
        ),
        (
            "Worst localisations",
            "defect images whose regions overlap the ground truth least",
            worst,
            _localisation_verdict,
        ),
    ]
    groups = []
    for title, explanation, members, verdict in chosen:
        shots = [_shot(evaluation, title, s, verdict(s)) for s in members]
        groups.append(Group(title, explanation, shots))
    return groups


def _localisation_verdict(scored: Scored) -> str:
    return f"IoU {scored.iou:.2f}" + ("" if scored.flagged else " (missed)")


def _shot(evaluation: Evaluation, group: str, scored: Scored, verdict: str) -> Shot:
    frame = read_image(scored.sample.path)
    prediction = evaluation.model.predict(frame, heatmap=True)
    truth = truth_mask(scored.sample, frame.shape)
    image = frame.copy()
    overlay = _heat(frame, prediction)
    # the regions' outline and the banner; the heatmap is already there
    overlay = draw_prediction(overlay, dataclasses.replace(prediction, heatmap=None), alpha=0.0)
    _draw_boxes(overlay, prediction)
    if truth is not None:
        for canvas in (image, overlay):
            _outline(canvas, truth)
    return Shot(group, verdict, scored, data_uri(image), data_uri(overlay))


def _heat(frame: np.ndarray, prediction: Prediction) -> np.ndarray:
    """The whole heatmap over the frame, flagged or not: a miss is judged by where the model
    looked (overlays on the line draw nothing on frames labelled Normal)."""
    assert prediction.heatmap is not None
    heat = prediction.heatmap
    if heat.shape[:2] != frame.shape[:2]:
        heat = cv2.resize(heat, (frame.shape[1], frame.shape[0]))
    coloured = cv2.applyColorMap(heat, cv2.COLORMAP_JET)
    return cv2.addWeighted(frame, 1.0 - HEAT_ALPHA, coloured, HEAT_ALPHA, 0.0)


def _thickness(canvas: np.ndarray) -> int:
    return max(1, round(int(min(canvas.shape[:2])) / 200))


def _outline(canvas: np.ndarray, truth: np.ndarray) -> None:
    contours, _ = cv2.findContours(
        truth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cv2.drawContours(canvas, contours, -1, TRUTH_COLOUR, _thickness(canvas))


def _draw_boxes(canvas: np.ndarray, prediction: Prediction) -> None:
    # draw_prediction's segmentation view outlines regions; the boxes are what detection shows
    for box in prediction.boxes:
        cv2.rectangle(
            canvas,
            (int(box.x1), int(box.y1)),
            (int(box.x2) - 1, int(box.y2) - 1),
            ANOMALY_COLOUR,
            _thickness(canvas),
        )


def data_uri(image: np.ndarray) -> str:
    """A BGR image as a JPEG data URI, no longer than :data:`SHOT_SIDE` on its long side."""
    scale = SHOT_SIDE / max(image.shape[:2])
    if scale < 1:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode a gallery image as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")
