"""PaDiM's own knobs for :func:`anomaly_edge.train.train` (no torch here: the CLI reads them).

A field left at ``None`` takes the model's default, which lives with the model
(:mod:`.model`), not here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PadimOptions:
    """PaDiM: the random channel subset, the Gaussian grid, and the backbone's weights."""

    n_channels: int | None = None  # random channel subset (default per backbone)
    pool: int | None = None  # one Gaussian per pool x pool block of the finest grid; 1 = paper
    pretrained: bool = True  # False starts the backbone from random weights (tests only)
    tile_gaussians: str = "auto"  # tiled models: "position", "shared" or "auto"
