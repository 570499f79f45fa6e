"""Prometheus metrics of a run, one camera or many (prometheus-client, the ``metrics`` extra).

Served at ``http://HOST:PORT/metrics``, one label ``source`` per camera:

* counters ``anomaly_edge_frames_total``, ``anomaly_edge_anomalies_total``,
  ``anomaly_edge_dropped_frames_total`` (stale live frames),
  ``anomaly_edge_undecodable_frames_total``,
  ``anomaly_edge_reconnects_total``; they are read from the cameras' own counters when
  scraped, so counting costs nothing per frame;
* histograms ``anomaly_edge_inference_seconds`` (submission to result, request queueing
  included) and ``anomaly_edge_latency_seconds`` (decoded frame to delivered result);
* ``anomaly_edge_camera_up`` (1 while the camera runs) and
  ``anomaly_edge_events_pending{target}`` (events waiting for MQTT / the webhook).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from anomaly_edge.stream.engine import FrameObserver

if TYPE_CHECKING:
    from anomaly_edge.stream.engine import SourceLane, StreamRunner
    from anomaly_edge.stream.result import FrameResult

# Edge inference: from a millisecond to a few seconds.
BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class MetricsExporter(FrameObserver):
    """Serves the metrics of the runner it is attached to (see :meth:`attach`).

    Args:
        host, port: where to listen (port 0: any free port, see :attr:`port`).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 9100) -> None:
        self.registry = CollectorRegistry()
        self._runner: StreamRunner | None = None
        self.inference = Histogram(
            "anomaly_edge_inference_seconds",
            "Submission to result of one frame (queueing included)",
            ["source"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "anomaly_edge_latency_seconds",
            "Decoded frame to delivered result (end to end)",
            ["source"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_CameraCounters(self))
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ValueError(
                f"--metrics {host}:{port}: cannot listen there ({exc.strerror}); "
                "choose another port or address"
            ) from None
        self.host = host
        self.port = self._server.server_address[1]
        self._children: dict[str, tuple[Histogram, Histogram]] = {}

    def attach(self, runner: StreamRunner) -> None:
        self._runner = runner

    def frame(self, camera: SourceLane, result: FrameResult, inference_s: float) -> None:
        children = self._children.get(camera.name)
        if children is None:  # labels() looks the child up under a lock; do it once
            children = (self.inference.labels(camera.name), self.latency.labels(camera.name))
            self._children[camera.name] = children
        children[0].observe(inference_s)
        children[1].observe(result.latency)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _CameraCounters:
    """Counters and gauges read from the runner at scrape time."""

    def __init__(self, exporter: MetricsExporter) -> None:
        self.exporter = exporter

    def describe(self) -> list[Metric]:
        return []  # computed at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        runner = self.exporter._runner
        families = {
            "frames": CounterMetricFamily(
                "anomaly_edge_frames", "Frames processed", labels=["source"]
            ),
            "anomalies": CounterMetricFamily(
                "anomaly_edge_anomalies", "Anomalous frames", labels=["source"]
            ),
            "dropped": CounterMetricFamily(
                "anomaly_edge_dropped_frames",
                "Stale live frames dropped to keep up",
                labels=["source"],
            ),
            "corrupt": CounterMetricFamily(
                "anomaly_edge_undecodable_frames",
                "Frames that could not be decoded",
                labels=["source"],
            ),
            "reconnects": CounterMetricFamily(
                "anomaly_edge_reconnects", "Reconnections of live sources", labels=["source"]
            ),
        }
        up = GaugeMetricFamily(
            "anomaly_edge_camera_up", "1 while the camera runs", labels=["source"]
        )
        pending = GaugeMetricFamily(
            "anomaly_edge_events_pending", "Events waiting for delivery", labels=["target"]
        )
        if runner is not None:
            for lane in runner.lanes:
                values = {
                    "frames": lane.stats.frames,
                    "anomalies": lane.stats.anomalies,
                    "dropped": lane.dropped,
                    "corrupt": lane.corrupt,
                    "reconnects": lane.reconnects,
                }
                for key, family in families.items():
                    family.add_metric([lane.name], values[key])
                up.add_metric([lane.name], 1.0 if lane.summary is None else 0.0)
            for consumer in runner.events.consumers:
                if hasattr(consumer, "pending"):
                    target = type(consumer).__name__.replace("Publisher", "").lower()
                    pending.add_metric([target], consumer.pending)
        yield from families.values()
        yield up
        yield pending
