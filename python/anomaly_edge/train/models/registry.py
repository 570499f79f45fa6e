"""The model plug-ins :func:`anomaly_edge.train.train` and ``anomaly-edge train`` know.

Each built-in model is one line below, ``"module:Class"`` of its :class:`.base.ModelPlugin`;
modules load on first use. A model added at run time (a test, a user's own model) calls
:func:`register`.
"""

from __future__ import annotations

import importlib

from anomaly_edge.train.models.base import ModelPlugin

BUILT_IN = (
    "anomaly_edge.train.models.padim.plugin:PadimPlugin",
    "anomaly_edge.train.models.stfpm.plugin:StfpmPlugin",
    "anomaly_edge.train.models.patchcore.plugin:PatchcorePlugin",
)

_registered: dict[str, ModelPlugin] = {}
_loaded = False


def _load_built_in() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for entry in BUILT_IN:
        module, _, name = entry.partition(":")
        plugin = getattr(importlib.import_module(module), name)()
        _registered.setdefault(plugin.name, plugin)


def register(plugin: ModelPlugin) -> None:
    """Make ``plugin`` trainable as ``train(model=plugin.name)``; a name is taken once."""
    _load_built_in()
    if not isinstance(plugin, ModelPlugin):
        raise TypeError(f"a model plug-in must be a ModelPlugin, got {type(plugin).__name__}")
    if plugin.name in _registered:
        raise ValueError(f"a model named {plugin.name!r} is registered already")
    _registered[plugin.name] = plugin


def unregister(name: str) -> None:
    """Forget the model ``name`` (tests register and remove their own)."""
    _load_built_in()
    _registered.pop(name, None)


def model_names() -> tuple[str, ...]:
    """The names of every registered model, built-in first."""
    _load_built_in()
    return tuple(_registered)


def plugins() -> tuple[ModelPlugin, ...]:
    """Every registered plug-in, in :func:`model_names` order."""
    _load_built_in()
    return tuple(_registered.values())


def get_model(name: str) -> ModelPlugin:
    """The plug-in called ``name``, or a ``ValueError`` listing the choices."""
    _load_built_in()
    try:
        return _registered[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model {name!r}; choose one of {', '.join(model_names())}"
        ) from None
