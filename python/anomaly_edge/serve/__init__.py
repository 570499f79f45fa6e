"""``anomaly-edge serve``: an exported model behind KServe's Open Inference Protocol (v2).

Needs the ``serve`` extra (``pip install 'anomaly-edge[serve]'``, which brings ``kserve``).
:mod:`~anomaly_edge.v2_protocol` (the encoding shared with the remote backend) does not;
the other modules import ``kserve``.

Example::

    from anomaly_edge.serve import serve

    serve("runs/plate/model.xml", name="plate", http_port=8080, grpc_port=8081)

It listens on 127.0.0.1 unless told otherwise; give a ``token`` to listen beyond this box
(clients then send ``Authorization: Bearer <token>``).
"""

from __future__ import annotations

from pathlib import Path


def serve(
    model: str | Path,
    name: str,
    *,
    host: str = "127.0.0.1",
    http_port: int = 8080,
    grpc_port: int = 8081,
    device: str = "AUTO",
    num_requests: int | None = None,
    max_body_mb: float = 64.0,
    token: str | None = None,
) -> None:
    """Load ``model`` and serve it until SIGINT/SIGTERM (blocks).

    Requests larger than ``max_body_mb`` megabytes get 413; with a ``token``, requests
    without ``Authorization: Bearer <token>`` get 401 (an empty token is a ValueError).
    """
    from anomaly_edge.serve.model import AnomalyServeModel
    from anomaly_edge.serve.server import AnomalyModelServer

    server = AnomalyModelServer(
        host,
        http_port,
        grpc_port,
        enable_grpc=grpc_port > 0,
        max_body=int(max_body_mb * 1e6),
        token=token,
    )
    served = AnomalyServeModel(model, name, device=device, num_requests=num_requests)
    served.load()
    server.start([served])
