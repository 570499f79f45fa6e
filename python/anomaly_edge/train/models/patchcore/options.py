"""PatchCore's own knobs for :func:`anomaly_edge.train.train` (no torch here: the CLI reads them).

A field left at ``None`` takes the default in :mod:`.model`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PatchcoreOptions:
    """PatchCore: the memory bank's size, the re-weighting and the fit's memory bound."""

    coreset_ratio: float | None = None  # share of the training patches kept in the bank
    max_bank: int | None = None  # most bank patches (default: a frame's kNN within a budget)
    neighbours: int | None = None  # bank neighbours in the re-weighting; 1 = plain max
    projection_dim: int | None = None  # random projection the coreset selection works in
    pool_limit: int | None = None  # patches held before a chunk is reduced (fit memory)
    pretrained: bool = True  # False starts the backbone from random weights (tests only)
