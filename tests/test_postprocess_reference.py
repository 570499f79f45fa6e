"""Independent references for the post-processor tests: what OpenCV and NumPy say the answer is.

The example-based (test_postprocess.py) and property-based (test_postprocess_properties.py)
tests share this one definition of "correct"; the tests at the bottom pin the references
themselves to hand-worked cases.
"""

from __future__ import annotations

import cv2
import numpy as np

from anomaly_edge.postprocess import PostprocessParams


def normalise(raw: np.ndarray | float, threshold: float, scale: float) -> np.ndarray:
    threshold = float(np.float32(threshold))  # thresholds act in the map's float32 precision
    return np.clip((np.asarray(raw, dtype=np.float64) - threshold) / scale + 0.5, 0.0, 1.0)


def decision_map(
    anomaly_map: np.ndarray, params: PostprocessParams, raw_score: float | None = None
) -> tuple[np.ndarray, np.float32] | None:
    """The decision (cpp/postprocess.hpp), written again with OpenCV: None for an image labelled
    Normal; for an Anomaly image, the map with every unreported component sunk just below the
    extent, and the extent (pixels >= it inside reported regions form the regions and mask).
    """
    raw = float(anomaly_map.max()) if raw_score is None else raw_score
    if not raw >= float(np.float32(params.image_threshold)):
        return None
    seed = min(np.float32(params.image_threshold), anomaly_map.max())
    pixel_threshold = np.float32(params.pixel_threshold)
    extent = pixel_threshold if anomaly_map.max() >= pixel_threshold else seed
    binary = (anomaly_map >= extent).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    maxima = np.full(count, -np.inf, np.float32)
    np.maximum.at(maxima, labels.ravel(), anomaly_map.ravel())
    peak_label = labels.ravel()[int(np.argmax(anomaly_map))]
    keep = (maxima >= seed) & (stats[:, cv2.CC_STAT_AREA] >= params.min_area)
    keep[peak_label] = True
    keep[0] = False  # the background
    kept = anomaly_map.copy()
    kept[(labels > 0) & ~keep[labels]] = np.nextafter(extent, np.float32(-np.inf))
    return kept, np.float32(extent)


def reference_boxes(
    anomaly_map: np.ndarray,
    frame_size: tuple[int, int],
    params: PostprocessParams,
    raw_score: float | None = None,
) -> list[tuple]:
    """(x1, y1, x2, y2, area, score, mean_score) per reported region, scores in image units,
    via connectedComponentsWithStats on :func:`decision_map`'s map."""
    decided = decision_map(anomaly_map, params, raw_score)
    if decided is None:
        return []
    kept, extent = decided
    h, w = anomaly_map.shape
    frame_h, frame_w = frame_size
    binary = (kept >= extent).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    normalised = normalise(kept, params.image_threshold, params.image_scale).ravel()
    flat_labels = labels.ravel()
    sums = np.bincount(flat_labels, weights=normalised, minlength=count)
    maxima = np.full(count, -np.inf)
    np.maximum.at(maxima, flat_labels, kept.ravel().astype(np.float64))
    boxes = []
    for label in range(1, count):
        x, y, bw, bh, area = (int(v) for v in stats[label])
        boxes.append(
            (
                x * frame_w // w,
                y * frame_h // h,
                -(-(x + bw) * frame_w // w),  # ceil division
                -(-(y + bh) * frame_h // h),
                area,
                float(normalise(maxima[label], params.image_threshold, params.image_scale)),
                float(sums[label] / area),
            )
        )
    return boxes


def decision_mask_mismatches(
    mask: np.ndarray, anomaly_map: np.ndarray, params: PostprocessParams
) -> np.ndarray:
    """:func:`mask_mismatches` against the decision: all zeros for a Normal image, else the
    upsampled :func:`decision_map` at its extent (or, where that leaves nothing, the peak's own
    frame pixels)."""
    decided = decision_map(anomaly_map, params)
    if decided is None:
        return mask != 0
    kept, extent = decided
    mismatches = mask_mismatches(mask, kept, float(extent))
    if not (upsampled(kept, mask.shape) >= extent).any():  # the peak stands for the region
        expected = np.zeros(mask.shape, bool)
        h, w = anomaly_map.shape
        py, px = np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)
        fh, fw = mask.shape
        y1, x1 = py * fh // h, px * fw // w
        y2, x2 = max(y1 + 1, -(-(py + 1) * fh // h)), max(x1 + 1, -(-(px + 1) * fw // w))
        expected[y1:y2, x1:x2] = True
        mismatches = expected != (mask == 255)
    return mismatches


def upsampled(anomaly_map: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    frame_h, frame_w = frame_size
    up = cv2.resize(anomaly_map, (frame_w, frame_h), interpolation=cv2.INTER_LINEAR)
    return up.reshape(frame_h, frame_w)  # cv2 drops a trailing axis of 1


def mask_mismatches(mask: np.ndarray, anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels where ``mask`` disagrees with cv2.resize + threshold, ties excluded.

    A tie is an upsampled value within float rounding of the threshold: there the two
    implementations may round the bilinear blend differently, and either answer is right.
    """
    up = upsampled(anomaly_map, mask.shape)
    threshold32 = np.float32(threshold)
    expected = up >= threshold32
    tolerance = 4e-6 * max(1.0, float(np.abs(anomaly_map).max()), abs(float(threshold32)))
    tie = np.abs(up.astype(np.float64) - float(threshold32)) <= tolerance
    return (expected != (mask == 255)) & ~tie


def reference_heatmap(
    anomaly_map: np.ndarray, frame_size: tuple[int, int], params: PostprocessParams
) -> np.ndarray:
    normalised = normalise(anomaly_map, params.image_threshold, params.image_scale) * 255.0
    return upsampled(normalised.astype(np.float32), frame_size)


def blobby_map(rng: np.random.Generator, shape: tuple[int, int], blobs: int) -> np.ndarray:
    """A smooth map, ~0 everywhere with `blobs` Gaussian bumps reaching ~1."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros(shape, np.float32)
    for _ in range(blobs):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        sigma = rng.uniform(0.5, max(1.0, min(h, w) / 12))
        peak = rng.uniform(0.6, 1.0)
        out = np.maximum(out, peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))
    return out.astype(np.float32)


# ---- the references themselves, on cases worked out by hand ----------------------------------


def test_reference_boxes_scale_model_pixels_to_their_frame_footprint():
    anomaly_map = np.zeros((3, 3), np.float32)
    anomaly_map[1, 1] = 1.0
    params = PostprocessParams(0.5, 0.5, 1.0, 1.0)
    # model pixel 1 of 3 covers frame pixels [floor(10/3), ceil(20/3)) = [3, 7)
    assert reference_boxes(anomaly_map, (10, 10), params) == [(3, 3, 7, 7, 1, 1.0, 1.0)]


def test_reference_decision_by_hand():
    anomaly_map = np.zeros((5, 9), np.float32)
    anomaly_map[1, 1] = 0.9  # the peak: a region even under min_area
    anomaly_map[1, 4] = 0.6  # above the pixel threshold but below the image threshold: no seed
    anomaly_map[3, 6:9] = 0.8  # seeded, area 3
    params = PostprocessParams(0.7, 0.5, 1.0, 1.0, min_area=2)
    boxes = reference_boxes(anomaly_map, (5, 9), params)
    assert sorted(b[:5] for b in boxes) == [(1, 1, 2, 2, 1), (6, 3, 9, 4, 3)]
    assert reference_boxes(anomaly_map, (5, 9), params.replace(image_threshold=0.95)) == []
    # a raw score from elsewhere flags an image whose map stays under the image threshold:
    # the peak seeds the only region
    high = params.replace(image_threshold=0.95)
    assert [b[:5] for b in reference_boxes(anomaly_map, (5, 9), high, raw_score=2.0)] == [
        (1, 1, 2, 2, 1)
    ]


def test_reference_mask_is_opencv_bilinear():
    anomaly_map = np.array([[0.0, 1.0]], np.float32)
    up = upsampled(anomaly_map, (1, 4))  # src x = (dx + 0.5) / 2 - 0.5: -0.25, 0.25, 0.75, 1.25
    np.testing.assert_allclose(up, [[0.0, 0.25, 0.75, 1.0]])
