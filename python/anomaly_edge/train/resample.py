"""Separable resampling steps as small per-axis matrices.

Bilinear or nearest interpolation (``align_corners=False``), average pooling (with partial
edge windows) and a Gaussian blur with reflected borders are all linear and act on each image
axis on its own. So any chain of them is ``A_h @ X @ A_wᵀ`` for two small matrices, built
here by running the torch operation on an identity matrix. PaDiM's head uses this to go from
each backbone layer to the Gaussians' grid, and from that grid to the blurred input-size
map, in two small matrix products instead of an upsample to a large intermediate grid
followed by pooling, or an upsample followed by a 33-tap blur.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

INTERPOLATION_MODES = ("nearest", "bilinear")


def _basis(size: int) -> torch.Tensor:
    # one image per basis vector, the axis as height and a width of 1: [size, 1, size, 1]
    return torch.eye(size, dtype=torch.float64).reshape(size, 1, size, 1)


def _as_matrix(images: torch.Tensor) -> torch.Tensor:
    # column j is the response to basis vector j
    return images.reshape(images.shape[0], -1).T.contiguous()


def interpolation_matrix(size_in: int, size_out: int, mode: str = "bilinear") -> torch.Tensor:
    """``[size_out, size_in]``: ``F.interpolate`` along one axis (``align_corners=False``)."""
    if mode not in INTERPOLATION_MODES:
        raise ValueError(f"mode must be one of {', '.join(INTERPOLATION_MODES)}, got {mode!r}")
    if size_in == size_out:
        return torch.eye(size_in, dtype=torch.float64)
    options = {"align_corners": False} if mode == "bilinear" else {}
    return _as_matrix(F.interpolate(_basis(size_in), size=(size_out, 1), mode=mode, **options))


def pooling_matrix(size_in: int, pool: int) -> torch.Tensor:
    """``[ceil(size_in / pool), size_in]``: mean over windows of ``pool``; a partial last
    window averages what it has (``avg_pool2d(..., ceil_mode=True)``)."""
    if pool == 1:
        return torch.eye(size_in, dtype=torch.float64)
    return _as_matrix(F.avg_pool2d(_basis(size_in), (pool, 1), ceil_mode=True))


def blur_matrix(size: int, kernel: torch.Tensor) -> torch.Tensor:
    """``[size, size]``: convolution with the odd 1-D ``kernel``, borders reflected."""
    radius = (kernel.numel() - 1) // 2
    if radius == 0:
        return torch.eye(size, dtype=torch.float64) * float(kernel[0])
    if radius >= size:
        raise ValueError(
            f"a blur of radius {radius} needs an axis longer than {radius} "
            f"pixels, got {size}: lower the blur sigma or enlarge the input"
        )
    padded = F.pad(_basis(size), (0, 0, radius, radius), mode="reflect")
    return _as_matrix(F.conv2d(padded, kernel.double().reshape(1, 1, -1, 1)))


def apply_separable(x: torch.Tensor, rows: torch.Tensor, cols_t: torch.Tensor) -> torch.Tensor:
    """``rows @ x @ cols_t`` over the last two axes of ``x`` [..., h, w] (``cols_t`` is the
    width matrix transposed, as stored, so a traced graph has no transpose in it)."""
    return torch.matmul(rows, torch.matmul(x, cols_t))


def gaussian_kernel_1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian, radius 4 sigma (33 taps for sigma 4, as anomalib).

    ``sigma <= 0`` gives the identity kernel (no blur).
    """
    if sigma <= 0:
        return torch.ones(1)
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).float()
