"""PaDiM moved to its plug-in folder, :mod:`anomaly_edge.train.models.padim`; this module keeps
the older import path working (tools, notebooks and checkpoints written before the move)."""

from __future__ import annotations

from anomaly_edge.train.models.padim.model import (
    BLUR_SIGMA,
    DEFAULT_POOL,
    Padim,
    default_channels,
    default_layers,
    default_upsample,
    triangle_blocks,
)
from anomaly_edge.train.resample import gaussian_kernel_1d

__all__ = [
    "BLUR_SIGMA",
    "DEFAULT_POOL",
    "Padim",
    "default_channels",
    "default_layers",
    "default_upsample",
    "gaussian_kernel_1d",
    "triangle_blocks",
]
