"""anomaly-edge: visual anomaly detection for the edge.

Train on normal images only (``anomaly_edge.train``, extra ``[train]``), export to OpenVINO IR,
and run the IR anywhere OpenVINO runs with :class:`AnomalyModel`.

The runtime part of this package never imports torch.
"""

__version__ = "0.2.0"

from typing import TYPE_CHECKING

from anomaly_edge.errors import AnomalyEdgeError
from anomaly_edge.prediction import Box, Prediction, Task

if TYPE_CHECKING:  # lets type checkers see the lazily imported class below
    from anomaly_edge.model import AnomalyModel

__all__ = ["AnomalyEdgeError", "AnomalyModel", "Box", "Prediction", "Task", "__version__"]


def __getattr__(name: str) -> "type[AnomalyModel]":
    # Imported lazily so that `import anomaly_edge` stays cheap (no OpenVINO load) for the CLI
    # and for the C++-only users of `anomaly_edge.postprocess`.
    if name == "AnomalyModel":
        from anomaly_edge.model import AnomalyModel

        return AnomalyModel
    raise AttributeError(f"module 'anomaly_edge' has no attribute {name!r}")
