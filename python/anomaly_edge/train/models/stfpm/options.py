"""STFPM's own knobs for :func:`anomaly_edge.train.train` (no torch here: the CLI reads them).

A field left at ``None`` takes the default of :func:`~.training.fit_stfpm`, which lives with the
training loop, not here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StfpmOptions:
    """STFPM's training schedule (see :mod:`.training` for each default)."""

    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    max_epochs: int | None = None
    max_steps: int | None = None  # optimiser steps, in whole epochs (large sets: fewer epochs)
    patience: int | None = None
    warmup_epochs: float | None = None
    cosine: bool | None = None
    max_grad_norm: float | None = None
    map_layers: int | None = None  # the deepest layers that make the map (default per model)
    fine_layer_weight: float | None = None  # the finest layer's exponent in the map's product

    def fit_arguments(self) -> dict[str, Any]:
        """The keyword arguments for ``fit_stfpm``: only the fields that were set. An epoch
        count given without a step cap is run in full (the default cap would cut it)."""
        arguments = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if self.max_epochs is not None and self.max_steps is None:
            arguments["max_steps"] = None
        return arguments
