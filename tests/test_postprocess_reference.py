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


def reference_boxes(
    anomaly_map: np.ndarray, frame_size: tuple[int, int], params: PostprocessParams
) -> list[tuple]:
    """(x1, y1, x2, y2, area, score, mean_score) per component, via connectedComponentsWithStats."""
    h, w = anomaly_map.shape
    frame_h, frame_w = frame_size
    binary = (anomaly_map >= np.float32(params.pixel_threshold)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    normalised = normalise(anomaly_map, params.pixel_threshold, params.pixel_scale).ravel()
    flat_labels = labels.ravel()
    sums = np.bincount(flat_labels, weights=normalised, minlength=count)
    maxima = np.full(count, -np.inf)
    np.maximum.at(maxima, flat_labels, anomaly_map.ravel().astype(np.float64))
    boxes = []
    for label in range(1, count):
        x, y, bw, bh, area = (int(v) for v in stats[label])
        if area < params.min_area:
            continue
        boxes.append(
            (
                x * frame_w // w,
                y * frame_h // h,
                -(-(x + bw) * frame_w // w),  # ceil division
                -(-(y + bh) * frame_h // h),
                area,
                float(normalise(maxima[label], params.pixel_threshold, params.pixel_scale)),
                float(sums[label] / area),
            )
        )
    return boxes


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
    normalised = normalise(anomaly_map, params.pixel_threshold, params.pixel_scale) * 255.0
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


def test_reference_mask_is_opencv_bilinear():
    anomaly_map = np.array([[0.0, 1.0]], np.float32)
    up = upsampled(anomaly_map, (1, 4))  # src x = (dx + 0.5) / 2 - 0.5: -0.25, 0.25, 0.75, 1.25
    np.testing.assert_allclose(up, [[0.0, 0.25, 0.75, 1.0]])
