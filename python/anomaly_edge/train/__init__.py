"""The training world (needs the ``train`` extra: torch, torchvision).

``anomaly_edge.train.train(data, model="padim", backbone="resnet18", out=...)`` goes from an
MVTec-layout folder to a trained, evaluated and (optionally) exported model; see
:mod:`anomaly_edge.train.api`. Submodules: ``data`` (datasets), ``backbones``,
``efficientnet_lite``, ``padim``, ``stfpm``, ``metrics``, ``thresholds``, ``evaluate``, ``export``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anomaly_edge.train.api import TrainResult, train

__all__ = ["TrainResult", "train"]


def __getattr__(name: str) -> Any:
    # Lazy, so importing one submodule (e.g. export) does not pull in the whole pipeline.
    if name in __all__:
        from anomaly_edge.train import api

        return getattr(api, name)
    raise AttributeError(f"module 'anomaly_edge.train' has no attribute {name!r}")
