"""The post-processor on worked examples: scores, boxes, masks, heatmaps, bad inputs, threads."""

from __future__ import annotations

import ast
import dataclasses
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from anomaly_edge import _post
from anomaly_edge.errors import InvalidInputError
from anomaly_edge.metadata import ModelMetadata
from anomaly_edge.postprocess import PostprocessParams, postprocess, postprocess_batch
from anomaly_edge.prediction import Box, Task
from tests.test_postprocess_reference import (
    blobby_map,
    decision_mask_mismatches,
    reference_boxes,
    reference_heatmap,
)

PARAMS = PostprocessParams(
    image_threshold=0.5, pixel_threshold=0.5, image_scale=1.0, pixel_scale=1.0
)


def one_pixel_map(shape=(4, 4), at=(1, 1), value=1.0) -> np.ndarray:
    anomaly_map = np.zeros(shape, np.float32)
    anomaly_map[at] = value
    return anomaly_map


def box_tuples(prediction) -> list[tuple]:
    return [(b.x1, b.y1, b.x2, b.y2, b.area) for b in prediction.boxes]


# ---- scores and labels -----------------------------------------------------------------------


def test_score_is_the_normalised_map_maximum():
    anomaly_map = one_pixel_map(value=0.8)
    params = PostprocessParams(0.6, 0.5, image_scale=2.0, pixel_scale=1.0)
    prediction = postprocess(anomaly_map, (8, 8), params, "classification")
    assert prediction.raw_score == pytest.approx(0.8)
    assert prediction.score == pytest.approx((0.8 - 0.6) / 2.0 + 0.5, abs=1e-6)
    assert prediction.label is True
    assert prediction.task is Task.CLASSIFICATION
    assert prediction.boxes == [] and prediction.mask is None and prediction.heatmap is None
    assert prediction.anomaly_map is anomaly_map


def test_score_on_the_threshold_is_one_half_and_anomalous():
    prediction = postprocess(one_pixel_map(value=0.3), (4, 4), PARAMS.replace(image_threshold=0.3))
    assert prediction.score == 0.5
    assert prediction.label is True


@pytest.mark.parametrize(("raw", "score"), [(-100.0, 0.0), (100.0, 1.0)])
def test_score_is_clipped_to_zero_one(raw, score):
    prediction = postprocess(one_pixel_map(), (4, 4), PARAMS, raw_score=raw)
    assert prediction.score == score
    assert prediction.raw_score == raw
    assert prediction.label is (raw >= 0.5)


def test_explicit_raw_score_overrides_the_map_maximum():
    prediction = postprocess(np.zeros((4, 4), np.float32), (4, 4), PARAMS, raw_score=0.75)
    assert prediction.raw_score == 0.75 and prediction.label is True
    assert prediction.score == pytest.approx(0.75)


# ---- boxes -----------------------------------------------------------------------------------


def test_box_covers_the_frame_footprint_of_its_model_pixels():
    # model pixel 1 of 3 covers frame pixels [floor(1 * 10 / 3), ceil(2 * 10 / 3)) = [3, 7)
    prediction = postprocess(one_pixel_map((3, 3)), (10, 10), PARAMS, "detection")
    assert prediction.boxes == [Box(3, 3, 7, 7, score=1.0, mean_score=1.0, area=1)]
    assert prediction.mask is None


def test_diagonal_neighbours_are_one_region():
    anomaly_map = np.eye(5, dtype=np.float32)
    prediction = postprocess(anomaly_map, (5, 5), PARAMS, "detection")
    assert box_tuples(prediction) == [(0, 0, 5, 5, 5)]


def test_boxes_are_sorted_by_score_with_mean_scores():
    anomaly_map = np.zeros((6, 6), np.float32)
    anomaly_map[0, 0] = 0.7
    anomaly_map[4:6, 4:6] = [[0.9, 0.6], [0.6, 0.6]]
    anomaly_map[0, 4] = 0.8
    boxes = postprocess(anomaly_map, (6, 6), PARAMS, "detection").boxes
    assert [b.score for b in boxes] == pytest.approx([0.9, 0.8, 0.7])
    assert boxes[0].mean_score == pytest.approx((0.9 + 3 * 0.6) / 4)
    assert boxes[0].area == 4


def test_min_area_drops_small_regions_but_never_the_peak():
    anomaly_map = np.zeros((8, 8), np.float32)
    anomaly_map[0, 0] = 0.9
    anomaly_map[4:7, 4:7] = 1.0
    anomaly_map[5, 5] = 1.2  # the peak
    assert len(postprocess(anomaly_map, (8, 8), PARAMS, "detection").boxes) == 2
    assert len(postprocess(anomaly_map, (8, 8), PARAMS.replace(min_area=0), "detection").boxes) == 2
    only_big = postprocess(anomaly_map, (8, 8), PARAMS.replace(min_area=2), "segmentation")
    assert [b.area for b in only_big.boxes] == [9]
    assert not only_big.mask[0, 0]  # a dropped region leaves the mask too
    # the region that flagged the image stays, whatever min_area says
    peak_only = postprocess(anomaly_map, (8, 8), PARAMS.replace(min_area=10), "segmentation")
    assert [b.area for b in peak_only.boxes] == [9]
    single = one_pixel_map((8, 8), at=(2, 3), value=0.8)
    flagged = postprocess(single, (8, 8), PARAMS.replace(min_area=10), "segmentation")
    assert box_tuples(flagged) == [(3, 2, 4, 3, 1)]
    assert flagged.mask[2, 3] == 255 and np.count_nonzero(flagged.mask) == 1


@pytest.mark.parametrize("zero_sign", [1.0, -1.0])
def test_when_pixels_tie_at_the_peak_the_first_in_raster_order_keeps_its_region(zero_sign):
    # min_area drops every region but the peak's; with two pixels at the maximum the peak is
    # the first one in raster order (row by row), as numpy's argmax would say. A smooth
    # upsampling leaves no frame pixel above the threshold, so the mask is painted there.
    anomaly_map = np.full((12, 12), zero_sign * 0.0, np.float32)
    anomaly_map[7, 1] = anomaly_map[2, 9] = 1.0  # (2, 9) comes first
    anomaly_map[9, 9] = 0.9
    params = PARAMS.replace(min_area=5)
    for task in ("detection", "segmentation"):
        prediction = postprocess(anomaly_map, (48, 48), params, task)
        assert box_tuples(prediction) == [(36, 8, 40, 12, 1)]
    mask = postprocess(anomaly_map, (48, 48), params, "segmentation").mask
    assert np.count_nonzero(mask[:24, 24:]) > 0 and np.count_nonzero(mask[24:]) == 0
    # a zero peak, signed either way, is still found in its first pixel
    zeros = np.full((6, 6), -zero_sign * 0.0, np.float32)
    zeros[3, 4] = zero_sign * 0.0
    zeros[:2] = -1.0
    flat = postprocess(
        zeros,
        (6, 6),
        PARAMS.replace(image_threshold=0.0, pixel_threshold=0.0, min_area=100),
        "detection",
    )
    assert box_tuples(flat) == [(0, 2, 6, 6, 24)]


def test_mean_scores_are_the_exact_sums_even_for_pixels_that_barely_score():
    # Pixels far under the image threshold score 0 and are skipped when summing; the first
    # value that scores above 0 must still count, to the last bit. The row sweeps float32
    # values ulp by ulp across that edge (0.5 - scale / 2), then flags the image.
    threshold, scale = 0.5, 0.3
    edge = np.float32(threshold - scale / 2)
    steps = np.arange(-40, 41)
    sweep = np.array([np.float32(edge)] * len(steps), np.float32)
    for i, k in enumerate(steps):
        for _ in range(abs(int(k))):
            sweep[i] = np.nextafter(sweep[i], np.float32(np.sign(k) * np.inf), dtype=np.float32)
    row = np.concatenate([sweep, np.float32([0.45, 0.9, 0.2])])[None, :]
    params = PostprocessParams(threshold, 0.0, scale, 1.0)
    (box,) = postprocess(row, row.shape, params, "detection").boxes
    total = 0.0  # the library's order: pixel by pixel along the run, in double
    for value in row[0]:
        total += min(max((float(value) - threshold) * (1.0 / scale) + 0.5, 0.0), 1.0)
    assert box.area == row.size
    assert box.mean_score == min(total / row.size, box.score)
    assert any(0.0 < (float(v) - threshold) / scale + 0.5 < 1e-6 for v in sweep)


# ---- the decision: label, boxes and mask agree -------------------------------------------------


def test_a_normal_image_has_no_box_and_an_empty_mask():
    anomaly_map = np.zeros((8, 8), np.float32)
    anomaly_map[2:5, 2:5] = 0.6  # above the pixel threshold, below the image threshold
    params = PARAMS.replace(image_threshold=0.7, pixel_threshold=0.5)
    prediction = postprocess(anomaly_map, (16, 16), params, "segmentation", heatmap=True)
    assert prediction.label is False
    assert prediction.boxes == [] and not prediction.mask.any()
    assert prediction.heatmap.any()  # the raw picture stays available


def test_only_regions_that_would_flag_the_image_are_reported():
    anomaly_map = np.zeros((8, 16), np.float32)
    anomaly_map[1:4, 1:4] = 0.6  # reaches the pixel threshold only: not a region
    anomaly_map[1:4, 8:12] = 0.6
    anomaly_map[2, 9] = 0.9  # seeded: the whole 0.6 blob around it is the region
    params = PARAMS.replace(image_threshold=0.8, pixel_threshold=0.5)
    prediction = postprocess(anomaly_map, (8, 16), params, "segmentation")
    assert box_tuples(prediction) == [(8, 1, 12, 4, 12)]
    assert prediction.mask[1:4, 8:12].all() and not prediction.mask[:, :6].any()


def test_a_pixel_threshold_above_the_image_threshold_cannot_hide_the_region():
    anomaly_map = one_pixel_map((6, 6), at=(3, 3), value=0.7)
    anomaly_map[2:5, 2:5] = np.maximum(anomaly_map[2:5, 2:5], 0.65)
    params = PARAMS.replace(image_threshold=0.6, pixel_threshold=0.9)
    prediction = postprocess(anomaly_map, (6, 6), params, "segmentation")
    assert prediction.label is True
    assert box_tuples(prediction) == [(2, 2, 5, 5, 9)]  # grown at the image threshold
    assert prediction.mask.any()


def test_a_raw_score_from_elsewhere_makes_the_peak_the_region():
    anomaly_map = one_pixel_map((4, 4), at=(2, 1), value=0.2)
    prediction = postprocess(anomaly_map, (4, 4), PARAMS, "segmentation", raw_score=0.9)
    assert prediction.label is True
    assert box_tuples(prediction) == [(1, 2, 2, 3, 1)]
    assert prediction.mask[2, 1] == 255
    below = postprocess(one_pixel_map(value=0.9), (4, 4), PARAMS, "segmentation", raw_score=0.1)
    assert below.label is False and below.boxes == [] and not below.mask.any()


def test_box_scores_share_the_image_unit():
    anomaly_map = np.zeros((8, 8), np.float32)
    anomaly_map[1, 1] = 3.0
    anomaly_map[5, 5] = 2.5
    params = PostprocessParams(2.0, 1.0, image_scale=4.0, pixel_scale=0.1)
    prediction = postprocess(anomaly_map, (8, 8), params, "detection")
    assert prediction.score == pytest.approx((3.0 - 2.0) / 4.0 + 0.5)
    assert [b.score for b in prediction.boxes] == pytest.approx(
        [prediction.score, (2.5 - 2.0) / 4.0 + 0.5]
    )


def test_boxes_match_connected_components_of_opencv():
    rng = np.random.default_rng(7)
    anomaly_map = blobby_map(rng, (64, 80), blobs=25)
    for frame in [(480, 640), (1080, 1920), (37, 53), (64, 80)]:
        params = PARAMS.replace(pixel_threshold=0.4, pixel_scale=0.7, min_area=2)
        prediction = postprocess(anomaly_map, frame, params, "detection")
        expected = reference_boxes(anomaly_map, frame, params)
        assert sorted(box_tuples(prediction)) == sorted(b[:5] for b in expected)
        by_corner = {b[:5]: b for b in expected}
        for box in prediction.boxes:
            ref = by_corner[(box.x1, box.y1, box.x2, box.y2, box.area)]
            assert box.score == pytest.approx(ref[5], abs=1e-6)
            assert box.mean_score == pytest.approx(ref[6], abs=1e-6)
        scores = [b.score for b in prediction.boxes]
        assert scores == sorted(scores, reverse=True)


def test_nothing_and_everything_above_threshold():
    zeros = np.zeros((16, 16), np.float32)
    nothing = postprocess(zeros, (100, 50), PARAMS)
    assert nothing.boxes == [] and not nothing.mask.any() and nothing.label is False
    everything = postprocess(zeros + 1, (100, 50), PARAMS)
    assert box_tuples(everything) == [(0, 0, 50, 100, 256)]
    assert (everything.mask == 255).all()


# ---- mask and heatmap ------------------------------------------------------------------------


def test_mask_is_opencv_bilinear_upsampling_then_threshold():
    rng = np.random.default_rng(3)
    anomaly_map = blobby_map(rng, (64, 64), blobs=12)
    for frame in [(480, 640), (1080, 1920), (2160, 3840), (31, 17), (64, 64), (1, 1000)]:
        prediction = postprocess(anomaly_map, frame, PARAMS.replace(pixel_threshold=0.45))
        assert prediction.mask.shape == frame and prediction.mask.dtype == np.uint8
        assert set(np.unique(prediction.mask)) <= {0, 255}
        assert not decision_mask_mismatches(
            prediction.mask, anomaly_map, PARAMS.replace(pixel_threshold=0.45)
        ).any(), frame


def test_mask_of_a_one_pixel_map_is_all_or_nothing():
    for value, expected in [(0.4, 0), (0.5, 255)]:
        mask = postprocess(np.full((1, 1), value, np.float32), (3, 7), PARAMS).mask
        assert (mask == expected).all()


def test_heatmap_is_the_upsampled_normalised_map():
    rng = np.random.default_rng(5)
    anomaly_map = blobby_map(rng, (32, 48), blobs=5) * 3 - 1
    params = PARAMS.replace(pixel_threshold=0.2, pixel_scale=1.5)
    prediction = postprocess(anomaly_map, (120, 100), params, "classification", heatmap=True)
    assert prediction.heatmap.shape == (120, 100) and prediction.heatmap.dtype == np.uint8
    expected = reference_heatmap(anomaly_map, (120, 100), params)
    assert np.abs(prediction.heatmap.astype(np.float64) - expected).max() <= 1.0
    assert prediction.mask is None


def test_heatmap_skips_rows_that_score_zero_but_no_pixel_that_scores():
    # Source rows wholly under threshold - scale / 2 score 0 and are not computed; a single
    # pixel above it, even the last one of its row, must still show wherever it reaches.
    anomaly_map = np.full((20, 37), -5.0, np.float32)
    anomaly_map[7, 36] = 1.5
    anomaly_map[13, :9] = 0.9
    anomaly_map[19, 0] = 0.2
    for frame in [(20, 37), (61, 100), (9, 15), (1, 1)]:
        heat = postprocess(anomaly_map, frame, PARAMS, "classification", heatmap=True).heatmap
        expected = reference_heatmap(anomaly_map, frame, PARAMS)
        assert np.abs(heat.astype(np.float64) - expected).max() <= 1.0
        assert not heat[expected == 0].any()
    up = postprocess(anomaly_map, (61, 100), PARAMS, "classification", heatmap=True).heatmap
    assert up[18:26, 95:].max() > 100 and up[38:42, :20].max() > 100 and up[56:, :3].max() > 0


# ---- the batch entry point -------------------------------------------------------------------


def test_batch_equals_one_by_one():
    rng = np.random.default_rng(11)
    maps = np.stack([blobby_map(rng, (32, 32), blobs=k) for k in (0, 1, 5, 20)])
    sizes = [(64, 64), (100, 30), (1, 1), (480, 640)]
    batch = postprocess_batch(maps, sizes, PARAMS, "segmentation", heatmap=True)
    assert len(batch) == 4
    for anomaly_map, size, got in zip(maps, sizes, batch, strict=True):
        want = postprocess(anomaly_map, size, PARAMS, "segmentation", heatmap=True)
        assert got.boxes == want.boxes and got.score == want.score
        np.testing.assert_array_equal(got.mask, want.mask)
        np.testing.assert_array_equal(got.heatmap, want.heatmap)


def test_batch_takes_one_frame_size_for_all_and_model_output_shape():
    maps = np.zeros((3, 1, 8, 8), np.float32)
    maps[1, 0, 2, 2] = 1.0
    batch = postprocess_batch(maps, (16, 16), PARAMS, "detection")
    assert [len(p.boxes) for p in batch] == [0, 1, 0]
    assert batch[1].anomaly_map.shape == (8, 8)
    as_array = postprocess_batch(maps, np.array([[16, 16]] * 3), PARAMS, "detection")
    assert [p.boxes for p in as_array] == [p.boxes for p in batch]


# ---- inputs that are fine although unusual ---------------------------------------------------


def test_strided_readonly_and_misaligned_maps_give_the_same_answer():
    rng = np.random.default_rng(1)
    anomaly_map = blobby_map(rng, (24, 24), blobs=6)
    want = postprocess(anomaly_map, (50, 70), PARAMS)
    wide = np.zeros((24, 48), np.float32)
    wide[:, ::2] = anomaly_map
    readonly = anomaly_map.copy()
    readonly.flags.writeable = False
    raw = bytearray(1) + anomaly_map.tobytes()
    misaligned = np.frombuffer(raw, np.float32, count=anomaly_map.size, offset=1).reshape(24, 24)
    assert not misaligned.flags.aligned
    for variant in (
        wide[:, ::2],
        readonly,
        misaligned,
        np.asfortranarray(anomaly_map),
        anomaly_map[None, None],
    ):
        got = postprocess(variant, (50, 70), PARAMS)
        assert got.boxes == want.boxes
        np.testing.assert_array_equal(got.mask, want.mask)


def test_task_accepts_enum_and_any_case():
    for task in (Task.DETECTION, "Detection", "DETECTION"):
        assert postprocess(one_pixel_map(), (4, 4), PARAMS, task).task is Task.DETECTION


# ---- parameters ------------------------------------------------------------------------------


def test_params_from_metadata_and_replace():
    metadata = ModelMetadata(
        model="padim", backbone="resnet18", input_size=(256, 256), mean=(0, 0, 0), std=(1, 1, 1),
        image_threshold=3.0, pixel_threshold=2.0, image_min=1.0, image_max=5.0, pixel_min=0.0,
        pixel_max=8.0,
    )  # fmt: skip
    params = PostprocessParams.from_metadata(metadata, min_area=5)
    assert params == PostprocessParams(3.0, 2.0, 4.0, 8.0, 5)
    assert params.replace(pixel_threshold=2.5).pixel_threshold == 2.5
    assert params.pixel_threshold == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.min_area = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"image_threshold": float("nan")}, ValueError),
        ({"pixel_threshold": float("inf")}, ValueError),
        ({"image_scale": 0.0}, ValueError),
        ({"pixel_scale": -1.0}, ValueError),
        ({"pixel_scale": float("nan")}, ValueError),
        ({"min_area": -1}, ValueError),
        ({"min_area": 1.5}, TypeError),
        ({"min_area": True}, TypeError),
        ({"image_threshold": "0.5"}, TypeError),
        ({"image_threshold": None}, TypeError),
    ],
)
def test_params_that_make_no_sense_are_refused(changes, error):
    with pytest.raises(error, match=next(iter(changes))):
        PARAMS.replace(**changes)


# ---- every bad input -------------------------------------------------------------------------

GOOD = np.zeros((4, 4), np.float32)


@pytest.mark.parametrize(
    ("anomaly_map", "error", "message"),
    [
        (GOOD.astype(np.float64), TypeError, "float32"),
        (GOOD.astype(np.float16), TypeError, "float32"),
        (GOOD.astype(np.int32), TypeError, "float32"),
        (GOOD.astype(bool), TypeError, "float32"),
        (GOOD.astype(">f4"), TypeError, "float32"),
        (GOOD.astype(object), TypeError, "float32"),
        (GOOD.tolist(), TypeError, "ndarray"),
        (None, TypeError, "ndarray"),
        (np.zeros(4, np.float32), ValueError, "2-D"),
        (np.zeros((2, 4, 4), np.float32), ValueError, "2-D"),
        (np.float32(1.0), TypeError, "ndarray"),
        (np.zeros((), np.float32), ValueError, "2-D"),
        (np.zeros((0, 4), np.float32), ValueError, "empty"),
        (np.zeros((4, 0), np.float32), ValueError, "empty"),
        (np.full((4, 4), np.nan, np.float32), ValueError, "NaN"),
        (np.where(np.eye(4) > 0, np.inf, 0).astype(np.float32), ValueError, "NaN or infinite"),
        (np.full((4, 4), -np.inf, np.float32), ValueError, "infinite"),
        (np.zeros((1, 40000), np.float32), ValueError, "32768"),
    ],
)
def test_bad_maps_are_refused_clearly(anomaly_map, error, message):
    with pytest.raises(error, match=message):
        postprocess(anomaly_map, (8, 8), PARAMS)


def test_nan_anywhere_is_found():
    for index in [(0, 0), (63, 63), (10, 37)]:
        anomaly_map = np.zeros((64, 64), np.float32)
        anomaly_map[index] = np.nan
        with pytest.raises(InvalidInputError, match="NaN"):
            postprocess(anomaly_map, (8, 8), PARAMS, "classification")


@pytest.mark.parametrize(
    ("frame_size", "error"),
    [
        ((0, 10), ValueError),
        ((10, 0), ValueError),
        ((-5, 10), ValueError),
        ((32769, 10), ValueError),
        ((10, 10**12), ValueError),
        ((10.0, 10), TypeError),
        ((True, 10), TypeError),
        ((10,), TypeError),
        ((10, 10, 3), TypeError),
        ("1080x1920", TypeError),
        (np.array([10.0, 10.0]), TypeError),
        (np.array([[10, 10]]), TypeError),
        (None, TypeError),
    ],
)
def test_bad_frame_sizes_are_refused(frame_size, error):
    with pytest.raises(error, match="frame_size"):
        postprocess(GOOD, frame_size, PARAMS)


def test_numpy_ints_are_fine_as_frame_size():
    image = np.zeros((12, 9, 3), np.uint8)
    assert postprocess(GOOD, image.shape[:2], PARAMS).mask.shape == (12, 9)
    assert postprocess(GOOD, (np.int64(5), np.int32(6)), PARAMS).mask.shape == (5, 6)
    assert postprocess(GOOD, np.array([7, 3]), PARAMS).mask.shape == (7, 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"task": "boxes"}, ValueError, "unknown task"),
        ({"raw_score": float("nan")}, ValueError, "raw_score"),
        ({"raw_score": float("inf")}, ValueError, "raw_score"),
        ({"raw_score": "high"}, TypeError, "raw_score"),
        ({"params": {"image_threshold": 0.5}}, TypeError, "PostprocessParams"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, message):
    args = {"anomaly_map": GOOD, "frame_size": (8, 8), "params": PARAMS, **kwargs}
    with pytest.raises(error, match=message):
        postprocess(**args)


def test_bad_batches_are_refused():
    maps = np.zeros((2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="2 anomaly maps"):
        postprocess_batch(maps, [(8, 8)] * 3, PARAMS)
    with pytest.raises(ValueError, match=r"frame_sizes\[1\]"):
        postprocess_batch(maps, [(8, 8), (0, 8)], PARAMS)
    with pytest.raises(TypeError, match="frame_sizes"):
        postprocess_batch(maps, 8, PARAMS)
    with pytest.raises(ValueError, match="3-D"):
        postprocess_batch(np.zeros((2, 3, 4, 4), np.float32), (8, 8), PARAMS)
    with pytest.raises(TypeError, match="float32"):
        postprocess_batch(maps.astype(np.float64), (8, 8), PARAMS)
    maps[1, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"anomaly_maps\[1\].*NaN"):
        postprocess_batch(maps, (8, 8), PARAMS)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"frame_height": 0}, ValueError, "frame height"),
        ({"frame_width": 40000}, ValueError, "frame width"),
        ({"task": "everything"}, TypeError, "incompatible"),
        ({"raw_score": float("nan")}, ValueError, "raw_score"),
        ({"anomaly_map": [[0.0]]}, TypeError, "ndarray"),
        ({"anomaly_map": GOOD[:, :, None]}, ValueError, "2-D"),
        ({"params": (0.5, 0.5, 1.0, 1.0)}, TypeError, "incompatible"),
    ],
)
def test_the_extension_validates_on_its_own(kwargs, error, message):
    args = {
        "anomaly_map": GOOD,
        "frame_height": 8,
        "frame_width": 8,
        "params": _post.Params(0.5, 0.5, 1.0, 1.0),
        "task": _post.Task.segmentation,
        **kwargs,
    }
    with pytest.raises(error, match=message):
        _post.postprocess(**args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_threshold": float("nan")}, "finite"),
        ({"pixel_threshold": 1e300}, "float32"),
        ({"image_scale": 0.0}, "scale"),
        ({"pixel_scale": float("inf")}, "scale"),
        ({"min_area": -3}, "min_area"),
    ],
)
def test_native_params_are_validated_once_when_built(kwargs, message):
    values = {
        "image_threshold": 0.5,
        "pixel_threshold": 0.5,
        "image_scale": 1.0,
        "pixel_scale": 1.0,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        _post.Params(**values)
    assert _post.Params(0.5, 0.25, 2.0, 4.0, 3).pixel_threshold == 0.25


def test_the_extension_batch_validates_frame_sizes():
    maps = np.zeros((2, 4, 4), np.float32)
    params = _post.Params(0.5, 0.5, 1.0, 1.0)
    for sizes, error in [
        ("ab", TypeError),
        ([(8, 8)], ValueError),
        ([(8, 8), (8,)], TypeError),
        ([(8, 8), (8, 2**70)], ValueError),
        ([(8, 8), (8, 1.0)], TypeError),
    ]:
        with pytest.raises(error, match="frame_sizes"):
            _post.postprocess_batch(maps, sizes, params)


# ---- threads ---------------------------------------------------------------------------------


def test_threads_give_the_same_results_as_one():
    rng = np.random.default_rng(21)
    maps = [blobby_map(rng, (48, 64), blobs=int(rng.integers(0, 30))) for _ in range(24)]
    frames = [(int(rng.integers(1, 800)), int(rng.integers(1, 800))) for _ in maps]

    def run(i: int):
        p = postprocess(maps[i], frames[i], PARAMS.replace(pixel_threshold=0.4), heatmap=True)
        return p.score, p.boxes, p.mask.tobytes(), p.heatmap.tobytes()

    serial = [run(i) for i in range(len(maps))]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            assert list(pool.map(run, range(len(maps)))) == serial


# ---- the typed stub --------------------------------------------------------------------------


def test_stub_declares_what_the_extension_has():
    stub = ast.parse((Path(_post.__file__).parent / "_post.pyi").read_text())
    functions = {n.name: n for n in stub.body if isinstance(n, ast.FunctionDef)}
    classes = {n.name for n in stub.body if isinstance(n, ast.ClassDef)}
    exported = {
        name for name in dir(_post) if callable(getattr(_post, name)) and not name.startswith("_")
    }
    assert set(functions) | classes == exported
    assert classes == {"Params", "Task"}
    assert {"postprocess", "postprocess_batch", "box_downsample", "set_isa"} <= exported
    for name, node in functions.items():
        declared = [a.arg for a in node.args.args]
        # pybind11 puts the signature on the docstring's first line
        signature = getattr(_post, name).__doc__.splitlines()[0]
        assert declared == re.findall(r"(?:\(|, )(\w+): ", signature), name
    assert isinstance(_post.MAX_SIDE, int)
    assert _post.ISAS == ("baseline", "avx2", "avx512")
