"""Moved to :mod:`anomaly_edge.v2_protocol` (the encoding the server and the remote backend
share); kept so that older imports of ``anomaly_edge.serve.wire`` go on working."""

from anomaly_edge.v2_protocol import *  # noqa: F403
from anomaly_edge.v2_protocol import DEFAULT_MODEL_NAME as DEFAULT_MODEL_NAME
