"""Each model's own knobs for :func:`anomaly_edge.train.train`, as one object per model.

    train(data, model="padim", options=PadimOptions(pool=1))
    train(data, model="stfpm", options=StfpmOptions(max_epochs=60, cosine=False))
    train(data, model="patchcore", options=PatchcoreOptions(coreset_ratio=0.05))

Each options class lives in its model's plug-in folder (:mod:`anomaly_edge.train.models`);
this module names the built-in ones for the public API.
"""

from __future__ import annotations

from anomaly_edge.train.models.padim.options import PadimOptions
from anomaly_edge.train.models.patchcore.options import PatchcoreOptions
from anomaly_edge.train.models.stfpm.options import StfpmOptions

__all__ = ["PadimOptions", "PatchcoreOptions", "StfpmOptions"]
