"""Property-based tests of the post-processor against OpenCV, on maps and frames hypothesis draws.

Maps from 1x1 to 256x256, frames from 1x1 to 3840x2160 (odd aspect ratios included), with
nothing, everything, single pixels, diagonal chains, exact threshold ties or many blobs above
threshold. Example counts stay modest so the file runs in seconds; for a deeper search set
ANOMALY_EDGE_PROPERTY_SCALE (e.g. 10 runs ten times as many examples).
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomaly_edge.postprocess import PostprocessParams, postprocess, postprocess_batch
from tests.test_postprocess_reference import (
    blobby_map,
    decision_mask_mismatches,
    reference_boxes,
    reference_heatmap,
)

SCALE = float(os.environ.get("ANOMALY_EDGE_PROPERTY_SCALE", "1"))


def examples(count: int) -> settings:
    return settings(
        max_examples=max(1, round(count * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


sides = st.one_of(st.integers(1, 8), st.integers(1, 64), st.integers(1, 256))
frame_heights = st.one_of(st.integers(1, 16), st.integers(1, 600), st.integers(1, 2160))
frame_widths = st.one_of(st.integers(1, 16), st.integers(1, 800), st.integers(1, 3840))


@st.composite
def anomaly_maps(draw) -> np.ndarray:
    h, w = draw(sides), draw(sides)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["levels", "sparse", "blobs", "constant", "diagonals", "noise"]))
    if kind == "levels":  # plateaus that sit exactly on a threshold of 0.5
        return rng.choice(np.float32([0.0, 0.25, 0.5, 0.75, 1.0]), size=(h, w))
    if kind == "sparse":  # isolated single pixels
        return (rng.random((h, w)) < draw(st.floats(0.0, 0.2))).astype(np.float32)
    if kind == "blobs":
        return blobby_map(rng, (h, w), blobs=draw(st.integers(0, 120)))
    if kind == "constant":  # nothing or everything above threshold
        return np.full((h, w), draw(st.sampled_from([0.0, 1.0])), np.float32)
    if kind == "diagonals":  # regions that touch only at corners
        yy, xx = np.mgrid[0:h, 0:w]
        return (((yy + xx) % draw(st.integers(2, 5))) == 0).astype(np.float32)
    return rng.normal(0.0, 1.0, (h, w)).astype(np.float32)


@st.composite
def params(draw) -> PostprocessParams:
    return PostprocessParams(
        image_threshold=draw(st.floats(-1.0, 1.5)),
        pixel_threshold=draw(st.sampled_from([0.5, 0.3, 0.9]) | st.floats(-1.0, 1.5)),
        image_scale=draw(st.floats(0.01, 10.0)),
        pixel_scale=draw(st.floats(0.01, 10.0)),
        min_area=draw(st.integers(0, 4)),
    )


@examples(40)
@given(anomaly_map=anomaly_maps(), frame_h=frame_heights, frame_w=frame_widths, p=params())
def test_boxes_and_mask_agree_with_opencv(anomaly_map, frame_h, frame_w, p):
    frame = (frame_h, frame_w)
    prediction = postprocess(anomaly_map, frame, p, "segmentation")

    # Boxes of distinct components may coincide after scaling down: compare sorted lists.
    expected = sorted(reference_boxes(anomaly_map, frame, p))
    got = sorted((b.x1, b.y1, b.x2, b.y2, b.area, b.score, b.mean_score) for b in prediction.boxes)
    assert [g[:5] for g in got] == [e[:5] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert abs(g[5] - e[5]) < 1e-6 and abs(g[6] - e[6]) < 1e-6
    for box in prediction.boxes:
        assert 0 <= box.x1 < box.x2 <= frame_w and 0 <= box.y1 < box.y2 <= frame_h
        # one unit: every region would flag the image on its own, none out-scores the image
        assert 0.0 <= box.mean_score <= box.score <= prediction.score
        assert box.score >= 0.5
    box_scores = [b.score for b in prediction.boxes]
    assert box_scores == sorted(box_scores, reverse=True)

    assert prediction.mask.shape == frame
    assert not decision_mask_mismatches(prediction.mask, anomaly_map, p).any()

    raw = float(anomaly_map.max())
    assert prediction.raw_score == raw
    assert prediction.label == (raw >= float(np.float32(p.image_threshold)))
    # the decision: label, boxes and mask agree, and the peak lies in a region
    if prediction.label:
        assert prediction.boxes and prediction.mask.any()
        py, px = np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)
        h, w = anomaly_map.shape
        fy, fx = py * frame_h // h, px * frame_w // w  # a frame pixel of the peak
        assert any(b.x1 <= fx < b.x2 and b.y1 <= fy < b.y2 for b in prediction.boxes)
    else:
        assert not prediction.boxes and not prediction.mask.any()


@examples(25)
@given(
    anomaly_map=anomaly_maps(), frame_h=st.integers(1, 300), frame_w=st.integers(1, 300), p=params()
)
def test_heatmap_is_within_one_level_of_opencv(anomaly_map, frame_h, frame_w, p):
    prediction = postprocess(anomaly_map, (frame_h, frame_w), p, "classification", heatmap=True)
    expected = reference_heatmap(anomaly_map, (frame_h, frame_w), p)
    assert np.abs(prediction.heatmap.astype(np.float64) - expected).max() <= 1.0


@examples(15)
@given(
    maps=st.lists(anomaly_maps(), min_size=1, max_size=4),
    frame_h=st.integers(1, 200),
    frame_w=st.integers(1, 200),
    p=params(),
)
def test_batch_equals_single_calls(maps, frame_h, frame_w, p):
    shape = maps[0].shape
    stack = np.stack([m if m.shape == shape else np.resize(m, shape) for m in maps])
    batch = postprocess_batch(stack, (frame_h, frame_w), p, "segmentation")
    for anomaly_map, got in zip(stack, batch, strict=True):
        want = postprocess(anomaly_map, (frame_h, frame_w), p, "segmentation")
        assert (got.score, got.label, got.boxes) == (want.score, want.label, want.boxes)
        np.testing.assert_array_equal(got.mask, want.mask)
