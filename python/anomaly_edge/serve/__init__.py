"""``anomaly-edge serve``: an exported model behind KServe's Open Inference Protocol (v2).

Needs the ``serve`` extra (``pip install 'anomaly-edge[serve]'``, which brings ``kserve``).
:mod:`~anomaly_edge.v2_protocol` (the encoding shared with the remote backend) does not;
the other modules import ``kserve``.

Example::

    from anomaly_edge.serve import serve

    serve("runs/plate/model.xml", name="plate", http_port=8080, grpc_port=8081)
"""

from __future__ import annotations

from pathlib import Path


def serve(
    model: str | Path,
    name: str,
    *,
    host: str = "0.0.0.0",
    http_port: int = 8080,
    grpc_port: int = 8081,
    device: str = "AUTO",
    num_requests: int | None = None,
) -> None:
    """Load ``model`` and serve it until SIGINT/SIGTERM (blocks)."""
    from anomaly_edge.serve.model import AnomalyServeModel
    from anomaly_edge.serve.server import AnomalyModelServer

    served = AnomalyServeModel(model, name, device=device, num_requests=num_requests)
    served.load()
    AnomalyModelServer(host, http_port, grpc_port, enable_grpc=grpc_port > 0).start([served])
