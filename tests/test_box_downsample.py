"""The C++ block-mean kernel behind the host resize: exact means, any layout, clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from anomaly_edge import _post


def reference(image: np.ndarray, bh: int, bw: int) -> np.ndarray:
    """Block means as the kernel defines them: float32 total * (1 / area), rounded half even."""
    h, w = image.shape[0] // bh * bh, image.shape[1] // bw * bw
    blocks = image[:h, :w].reshape(h // bh, bh, w // bw, bw, *image.shape[2:])
    totals = blocks.astype(np.int64).sum(axis=(1, 3)).astype(np.float32)
    inverse = np.float32(1.0) / np.float32(bh * bw)
    return np.rint(totals * inverse).astype(np.uint8)


@pytest.mark.parametrize("channels", [None, 1, 3, 4])
@pytest.mark.parametrize(("bh", "bw"), [(1, 1), (1, 2), (2, 1), (3, 5), (4, 7), (9, 6), (1, 13)])
def test_block_means(channels, bh, bw):
    shape = (53, 71) if channels is None else (53, 71, channels)
    image = np.random.default_rng(bh * 10 + bw).integers(0, 256, shape, dtype=np.uint8)
    out = _post.box_downsample(image, bh, bw)
    expected = reference(image, bh, bw)
    assert out.shape == expected.shape and out.dtype == np.uint8
    assert np.array_equal(out, expected)
    h, w = shape[0] // bh * bh, shape[1] // bw * bw
    true_mean = image[:h, :w].reshape(h // bh, bh, w // bw, bw, *shape[2:]).mean(axis=(1, 3))
    assert np.abs(out - true_mean).max() <= 0.5 + 1e-4  # rounded to nearest


def test_extremes_do_not_overflow():
    white = np.full((256, 256, 3), 255, np.uint8)
    assert (_post.box_downsample(white, 256, 255) == 255).all()
    assert (_post.box_downsample(np.zeros((40, 40), np.uint8), 40, 40) == 0).all()


def test_views_of_larger_frames():
    frame = np.random.default_rng(1).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    crop = frame[10:90, 20:180]  # rows wider than the crop: used in place
    assert np.array_equal(
        _post.box_downsample(crop, 4, 5), reference(np.ascontiguousarray(crop), 4, 5)
    )
    for view in (frame[::2, ::3], frame[::-1], frame[:, :, ::-1], frame[:, :, 1]):
        assert np.array_equal(
            _post.box_downsample(view, 3, 2), reference(np.ascontiguousarray(view), 3, 2)
        )


def test_same_numbers_as_opencv_area_interpolation():
    """Integer factors give OpenCV's INTER_AREA exactly, except 2x2, where OpenCV's own fast
    path rounds ties up; resize_for_network hands 2x2 to OpenCV, so it matches everywhere."""
    rng = np.random.default_rng(2)
    for bh, bw in [(4, 4), (3, 5), (4, 7), (1, 2), (9, 6), (16, 15)]:
        for shape in [(bh * 37, bw * 29, 3), (bh * 37, bw * 29)]:
            image = rng.integers(0, 256, shape, dtype=np.uint8)
            expected = cv2.resize(image, (29, 37), interpolation=cv2.INTER_AREA)
            assert np.array_equal(_post.box_downsample(image, bh, bw), expected), (bh, bw)


def test_bad_input_is_explained():
    image = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(TypeError, match=r"numpy\.ndarray of uint8, got list"):
        _post.box_downsample([[1, 2]], 1, 1)
    with pytest.raises(TypeError, match="dtype uint8, got float32"):
        _post.box_downsample(image.astype(np.float32), 2, 2)
    with pytest.raises(ValueError, match=r"H x W or H x W x C, got shape \(20,\)"):
        _post.box_downsample(np.zeros(20, np.uint8), 2, 2)
    with pytest.raises(ValueError, match="1 to 4 channels"):
        _post.box_downsample(np.zeros((20, 30, 5), np.uint8), 2, 2)
    with pytest.raises(ValueError, match="image height must be between 1"):
        _post.box_downsample(np.zeros((0, 30, 3), np.uint8), 1, 1)
    for bh, bw in [(0, 2), (2, -1), (21, 1), (1, 31)]:
        with pytest.raises(ValueError, match=r"blocks must be at least 1 x 1, fit in the 20 x 30"):
            _post.box_downsample(image, bh, bw)
    with pytest.raises(ValueError, match="at most 65535 pixels"):
        _post.box_downsample(np.zeros((300, 300), np.uint8), 256, 256)
