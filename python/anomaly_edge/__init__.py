"""anomaly-edge: visual anomaly detection for the edge.

Train on normal images only (``anomaly_edge.train``, extra ``[train]``), export to OpenVINO IR,
and run the IR anywhere OpenVINO runs: :func:`open_model` opens an IR (or its folder) here, or
a model on a v2 model server by its URL; :class:`AnomalyModel` is the local one. Both follow
the :class:`Model` protocol and give the same predictions.

The runtime part of this package never imports torch.
"""

__version__ = "0.2.0"

from typing import TYPE_CHECKING, Any

from anomaly_edge.errors import AnomalyEdgeError
from anomaly_edge.prediction import Box, Prediction, Task

if TYPE_CHECKING:  # lets type checkers see the lazily imported names below
    from anomaly_edge.core import Model
    from anomaly_edge.factory import open_model
    from anomaly_edge.model import AnomalyModel

__all__ = [
    "AnomalyEdgeError",
    "AnomalyModel",
    "Box",
    "Model",
    "Prediction",
    "Task",
    "__version__",
    "open_model",
]

# Imported lazily so that `import anomaly_edge` stays cheap (no OpenVINO load) for the CLI
# and for the C++-only users of `anomaly_edge.postprocess`.
_LAZY = {
    "AnomalyModel": "anomaly_edge.model",
    "Model": "anomaly_edge.core",
    "open_model": "anomaly_edge.factory",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anomaly_edge' has no attribute {name!r}")
