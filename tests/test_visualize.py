"""draw_prediction: what the operator sees on every frame."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from anomaly_edge.errors import InvalidInputError
from anomaly_edge.prediction import Box, Prediction, Task
from anomaly_edge.visualize import ANOMALY_COLOUR, NORMAL_COLOUR, draw_prediction


def _prediction(task: Task, label: bool = True, **arrays) -> Prediction:
    return Prediction(score=0.9 if label else 0.1, label=label, raw_score=1.0, task=task, **arrays)


def _is_red(pixel: np.ndarray) -> bool:
    b, g, r = (int(v) for v in pixel)
    return r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("shape", [(120, 160), (120, 160, 1), (120, 160, 3), (120, 160, 4)])
def test_any_uint8_layout_gives_a_bgr_image_of_the_same_size(shape):
    frame = np.full(shape, 128, np.uint8)
    out = draw_prediction(frame, _prediction(Task.CLASSIFICATION))
    assert out.shape == (120, 160, 3)
    assert out.dtype == np.uint8


def test_the_input_frame_is_not_modified():
    frame = np.full((120, 160, 3), 128, np.uint8)
    mask = np.zeros((120, 160), np.uint8)
    mask[40:80, 60:100] = 255
    draw_prediction(frame, _prediction(Task.SEGMENTATION, mask=mask, heatmap=mask))
    assert (frame == 128).all()


def test_segmentation_tints_only_the_mask_and_outlines_it():
    frame = np.full((120, 160, 3), 128, np.uint8)
    mask = np.zeros((120, 160), np.uint8)
    mask[40:80, 60:100] = 255
    out = draw_prediction(frame, _prediction(Task.SEGMENTATION, mask=mask), alpha=0.5)
    inside = out[60, 80]
    assert inside[2] > inside[0] + 50  # tinted red
    assert (out[110, 150] == 128).all()  # far from the mask and the banner: untouched
    assert _is_red(out[40, 80])  # the outline


def test_segmentation_heatmap_colours_only_where_the_map_says_something():
    """Before: JET at alpha over the whole frame, so every normal part was washed blue."""
    frame = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    heatmap = np.full((120, 160), 40, np.uint8)  # well below the threshold (128)
    heatmap[40:80, 60:100] = 255
    heatmap[100:, :40] = 96  # rising towards the threshold: a faint tint
    out = draw_prediction(
        frame,
        _prediction(
            Task.SEGMENTATION, heatmap=heatmap, mask=(heatmap > 127).astype(np.uint8) * 255
        ),
    )
    normal = (slice(85, 100), slice(110, 160))  # away from the blob and the banner
    assert np.abs(out[normal].astype(int) - frame[normal]).max() <= 1
    red = cv2.applyColorMap(np.full((1, 1), 255, np.uint8), cv2.COLORMAP_JET)[0, 0]
    expected = 0.6 * frame[60, 80] + 0.4 * red  # alpha (0.4) at and above the threshold
    assert np.abs(out[60, 80] - expected).max() <= 2
    faint = np.abs(out[110, 20].astype(int) - frame[110, 20]).max()
    full = np.abs(out[60, 80].astype(int) - frame[60, 80]).max()
    assert 0 < faint < full


def test_a_normal_frame_gets_no_overlay_only_the_reason():
    frame = np.random.default_rng(2).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    heatmap = np.full((120, 160), 100, np.uint8)  # below the threshold everywhere
    out = draw_prediction(frame, _prediction(Task.SEGMENTATION, heatmap=heatmap, label=False))
    below_banner = (slice(40, 120), slice(0, 160))
    assert (out[below_banner] == frame[below_banner]).all()
    assert not (out[:20, :60] == frame[:20, :60]).all()  # the banner: "Normal 0.30 < 0.50"


def test_banner_grows_with_the_frame():
    """Before: the banner's text was about 2 % of a large frame's height."""
    heights = {}
    for height, width in [(240, 320), (720, 1280), (2160, 3840), (3648, 5472)]:
        frame = np.full((height, width, 3), 128, np.uint8)
        out = draw_prediction(frame, _prediction(Task.DETECTION, label=False))
        column = out[:, 1]  # the banner's left padding: no text there
        banner = int(np.argmax(~(column == NORMAL_COLOUR).all(axis=1)))
        heights[height] = banner
        if height >= 720:
            assert banner >= 0.05 * height, (height, banner)
    assert heights[240] >= 12  # still legible on small frames
    assert heights[3648] > 4 * heights[720]


def test_detection_draws_each_box_with_exclusive_corners():
    frame = np.full((120, 160, 3), 128, np.uint8)
    box = Box(x1=60, y1=50, x2=100, y2=90, score=0.8, mean_score=0.7, area=10)
    out = draw_prediction(frame, _prediction(Task.DETECTION, boxes=[box]))
    assert _is_red(out[70, 60]) and _is_red(out[70, 99])  # left and right edges
    assert _is_red(out[89, 80])  # bottom edge: y2 - 1
    assert (out[70, 80] == 128).all()  # inside stays visible
    assert (out[70, 101] == 128).all()  # x2 itself is outside


def test_classification_border_says_normal_or_anomalous():
    frame = np.full((120, 160, 3), 128, np.uint8)
    anomalous = draw_prediction(frame, _prediction(Task.CLASSIFICATION, label=True))
    normal = draw_prediction(frame, _prediction(Task.CLASSIFICATION, label=False))
    assert tuple(anomalous[119, 80]) == ANOMALY_COLOUR
    assert tuple(normal[119, 80]) == NORMAL_COLOUR


def test_banner_is_always_there():
    frame = np.full((120, 160, 3), 128, np.uint8)
    for task in Task:
        out = draw_prediction(frame, _prediction(task, label=False))
        assert not (out[2:8, 2:8] == 128).all(), task


def test_mask_of_another_size_is_fitted():
    frame = np.full((120, 160, 3), 128, np.uint8)
    mask = np.full((60, 80), 255, np.uint8)
    assert draw_prediction(frame, _prediction(Task.SEGMENTATION, mask=mask)).shape == (120, 160, 3)


@pytest.mark.parametrize(
    "frame", [np.zeros((10, 10), np.float32), np.zeros((10, 10, 2), np.uint8), "frame.png"]
)
def test_unusable_frames_are_refused_clearly(frame):
    with pytest.raises(InvalidInputError, match="draw_prediction"):
        draw_prediction(frame, _prediction(Task.CLASSIFICATION))


def test_alpha_outside_0_1_is_refused():
    with pytest.raises(InvalidInputError, match="alpha"):
        draw_prediction(np.zeros((8, 8, 3), np.uint8), _prediction(Task.CLASSIFICATION), alpha=2)


def test_fast_enough_for_every_frame_of_a_720p_stream():
    frame = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    heatmap = np.zeros((720, 1280), np.uint8)
    heatmap[300:400, 500:700] = 255
    prediction = _prediction(Task.SEGMENTATION, heatmap=heatmap, mask=heatmap)
    draw_prediction(frame, prediction)
    start = time.perf_counter()
    for _ in range(10):
        draw_prediction(frame, prediction)
    per_frame = (time.perf_counter() - start) / 10
    assert per_frame < 0.05  # generous: a shared, busy CI machine; typically ~3 ms
