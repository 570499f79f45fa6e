"""Each model's own knobs for :func:`anomaly_edge.train.train`, as one object per model.

    train(data, model="padim", options=PadimOptions(pool=1))
    train(data, model="stfpm", options=StfpmOptions(max_epochs=60, cosine=False))

A field left at ``None`` takes the model's default, which lives with the model
(``train/padim.py``, ``train/stfpm_training.py``), not here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PadimOptions:
    """PaDiM: the random channel subset, the Gaussian grid, and the backbone's weights."""

    n_channels: int | None = None  # random channel subset (default per backbone)
    pool: int | None = None  # one Gaussian per pool x pool block of the finest grid; 1 = paper
    pretrained: bool = True  # False starts the backbone from random weights (tests only)
    tile_gaussians: str = "auto"  # tiled models: "position", "shared" or "auto"


@dataclass(frozen=True)
class StfpmOptions:
    """STFPM's training schedule (see ``train/stfpm_training.py`` for each default)."""

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


ModelOptions = PadimOptions | StfpmOptions
