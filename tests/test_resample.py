"""Per-axis resampling matrices reproduce the torch operations they stand for."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from anomaly_edge.train.padim import gaussian_kernel_1d  # noqa: E402
from anomaly_edge.train.resample import (  # noqa: E402
    apply_separable,
    blur_matrix,
    interpolation_matrix,
    pooling_matrix,
)


def maps(h: int, w: int) -> torch.Tensor:
    return torch.randn(
        2, 3, h, w, generator=torch.Generator().manual_seed(h * 100 + w), dtype=torch.float64
    )


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize(
    ("size_in", "size_out"),
    [((16, 12), (64, 48)), ((8, 8), (64, 32)), ((13, 7), (31, 29)), ((9, 9), (9, 9))],
)
def test_interpolation(mode, size_in, size_out):
    x = maps(*size_in)
    options = {"align_corners": False} if mode == "bilinear" else {}
    expected = F.interpolate(x, size=size_out, mode=mode, **options)
    rows, cols = (interpolation_matrix(a, b, mode) for a, b in zip(size_in, size_out, strict=True))
    torch.testing.assert_close(apply_separable(x, rows, cols.T), expected)


@pytest.mark.parametrize(("size", "pool"), [((16, 16), 4), ((18, 14), 4), ((7, 5), 2), ((6, 6), 1)])
def test_pooling_with_partial_edge_windows(size, pool):
    x = maps(*size)
    expected = F.avg_pool2d(x, pool, ceil_mode=True)
    rows, cols = (pooling_matrix(side, pool) for side in size)
    torch.testing.assert_close(apply_separable(x, rows, cols.T), expected)


@pytest.mark.parametrize("sigma", [4.0, 1.5, 0.0])
def test_blur_with_reflected_borders(sigma):
    x = maps(40, 36)
    kernel = gaussian_kernel_1d(sigma).double()
    r = (kernel.numel() - 1) // 2
    expected = F.conv2d(
        F.conv2d(
            F.pad(x.reshape(6, 1, 40, 36), (r, r, r, r), mode="reflect"),
            kernel.reshape(1, 1, 1, -1),
        ),
        kernel.reshape(1, 1, -1, 1),
    )
    rows, cols = blur_matrix(40, kernel), blur_matrix(36, kernel)
    torch.testing.assert_close(apply_separable(x, rows, cols.T), expected.reshape(2, 3, 40, 36))


def test_errors():
    with pytest.raises(ValueError, match="mode must be one of nearest, bilinear"):
        interpolation_matrix(4, 8, "bicubic")
    with pytest.raises(ValueError, match="radius 16 needs an axis longer than 16"):
        blur_matrix(16, gaussian_kernel_1d(4.0))
