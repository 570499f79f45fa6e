"""The torch checkpoint a training run leaves behind, so it can be exported again later.

An IR cannot be re-exported at another precision (INT8 needs the float graph and calibration
images), so ``anomaly-edge train`` also saves ``<out>/checkpoint.pt``, and
``anomaly-edge export --run <out>`` rebuilds the module from it.

Format (a plain dict, loadable with ``torch.load(weights_only=True)``, so no pickled code):

* ``"format"``: ``"anomaly-edge-checkpoint"``, ``"version"``: 1
* ``"module"``: what rebuilds the module, ``"module.path:name"``, a class or a factory
  function (e.g. ``"anomaly_edge.train.models.padim.model:Padim"``); only names inside
  ``anomaly_edge.train`` are accepted (older names of moved modules are read through
  :data:`MOVED`)
* ``"init_kwargs"``: keyword arguments for it that rebuild the module *without downloading
  anything* (e.g. a backbone name with ``pretrained=False``): the state dict restores every
  weight
* ``"state_dict"``: the module's ``state_dict()``
* ``"metadata"``: :class:`~anomaly_edge.metadata.ModelMetadata` as a dict
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anomaly_edge.atomic import atomic_path
from anomaly_edge.errors import ModelLoadError
from anomaly_edge.metadata import ModelMetadata

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "anomaly-edge-checkpoint"
VERSION = 1
ALLOWED_PACKAGE = "anomaly_edge.train."
# Where modules that older checkpoints name live now (the models moved into plug-in folders).
MOVED = {
    "anomaly_edge.train.padim:Padim": "anomaly_edge.train.models.padim.model:Padim",
    "anomaly_edge.train.tiling:TilePositionPadim": (
        "anomaly_edge.train.models.padim.tiled:TilePositionPadim"
    ),
    "anomaly_edge.train.stfpm:rebuild_stfpm": "anomaly_edge.train.models.stfpm.model:rebuild_stfpm",
}


def save_checkpoint(
    model: nn.Module,
    metadata: ModelMetadata,
    path: str | Path,
    init_kwargs: dict[str, Any] | None = None,
    factory: str | None = None,
) -> Path:
    """Save ``model`` so :func:`load_checkpoint` can rebuild it (atomically).

    ``factory`` (``"module.path:function"``) and ``init_kwargs`` say how to rebuild it; they
    default to ``model.checkpoint_factory`` (else the model's class) and ``model.init_kwargs``.
    """
    if init_kwargs is None:
        init_kwargs = getattr(model, "init_kwargs", None)
    if init_kwargs is None:
        raise ValueError(
            f"{type(model).__name__} has no init_kwargs: pass the constructor arguments that "
            "rebuild it without downloads"
        )
    factory = factory or factory_of(model)
    if not factory.startswith(ALLOWED_PACKAGE):
        raise ValueError(f"only anomaly_edge.train modules can be checkpointed, not {factory}")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "module": factory,
        "init_kwargs": dict(init_kwargs),
        "state_dict": model.state_dict(),
        "metadata": dataclasses.asdict(metadata),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def factory_of(model: nn.Module) -> str:
    """What a checkpoint of ``model`` names to rebuild it: ``model.checkpoint_factory``, else
    its class."""
    cls = type(model)
    return getattr(model, "checkpoint_factory", None) or f"{cls.__module__}:{cls.__qualname__}"


def can_checkpoint(model: nn.Module) -> bool:
    """Whether :func:`load_checkpoint` could rebuild ``model`` (it lives in anomaly_edge.train
    and records its constructor arguments)."""
    has_kwargs = getattr(model, "init_kwargs", None) is not None
    return has_kwargs and factory_of(model).startswith(ALLOWED_PACKAGE)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, ModelMetadata]:
    """Rebuild the module and its metadata from a checkpoint file or a run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise ModelLoadError(
            f"no checkpoint at {path}: give a training output folder (`anomaly-edge train "
            "--out DIR` writes DIR/checkpoint.pt) or the checkpoint file itself"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise ModelLoadError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelLoadError(f"{path} is not an anomaly-edge checkpoint")
    if int(payload.get("version", 0)) > VERSION:
        raise ModelLoadError(f"{path} was written by a newer anomaly-edge; upgrade to export it")
    factory = str(payload["module"])
    module_path, _, class_name = MOVED.get(factory, factory).partition(":")
    if not module_path.startswith(ALLOWED_PACKAGE):
        raise ModelLoadError(f"{path} names a module outside anomaly_edge.train: {module_path}")
    try:
        cls = getattr(importlib.import_module(module_path), class_name)
        init_kwargs, state_dict = dict(payload["init_kwargs"]), payload["state_dict"]
        upgrade = getattr(cls, "upgrade_checkpoint", None)  # older layouts of the same module
        if upgrade is not None:
            init_kwargs, state_dict = upgrade(init_kwargs, state_dict)
        model = cls(**init_kwargs)
        model.load_state_dict(state_dict)
    except (ImportError, AttributeError, TypeError, RuntimeError) as exc:
        raise ModelLoadError(
            f"{path} cannot be rebuilt by this version of anomaly-edge ({exc}); retrain"
        ) from exc
    metadata = payload["metadata"]
    metadata["input_size"] = tuple(metadata["input_size"])
    return model.eval(), ModelMetadata(**metadata)
