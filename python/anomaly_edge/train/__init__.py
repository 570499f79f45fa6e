"""The training world (needs the ``train`` extra: torch, torchvision).

``anomaly_edge.train.train(data, model="padim", out=...)`` goes from an MVTec-layout
folder to a trained, evaluated and (optionally) exported model; see
:mod:`anomaly_edge.train.api`. Each model is a plug-in, one folder under ``models/`` and
one line in :mod:`.models.registry`; its own knobs are one options object (e.g.
:class:`PadimOptions`, :class:`StfpmOptions`, :class:`PatchcoreOptions`). Submodules:
``data`` (datasets), ``backbones``, ``efficientnet_lite``, ``models``, ``tiling``,
``metrics``, ``thresholds``, ``evaluate``, ``export``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anomaly_edge.train.options import PadimOptions, PatchcoreOptions, StfpmOptions

if TYPE_CHECKING:
    from anomaly_edge.train.api import TrainResult, train

__all__ = ["PadimOptions", "PatchcoreOptions", "StfpmOptions", "TrainResult", "train"]


def __getattr__(name: str) -> Any:
    # Lazy, so importing one submodule (e.g. export) does not pull in the whole pipeline.
    if name in ("TrainResult", "train"):
        from anomaly_edge.train import api

        return getattr(api, name)
    raise AttributeError(f"module 'anomaly_edge.train' has no attribute {name!r}")
