"""Prometheus metrics of a multi-camera run, read by scraping /metrics over HTTP."""

from __future__ import annotations

import urllib.request

import pytest

from anomaly_edge.model import AnomalyModel
from anomaly_edge.stream import Camera, run_many
from tests.stream_media import damage_frames, make_video


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_per_camera(synthetic_ir, tmp_path):
    from anomaly_edge.stream.metrics import MetricsExporter

    clean = make_video(tmp_path / "clean.avi", 30, {4, 5, 6})
    damaged = damage_frames(make_video(tmp_path / "damaged.avi", 30, {20}), [10, 11])
    exporter = MetricsExporter("127.0.0.1", 0)
    scraped: dict[str, float] = {}

    def scrape_at_the_end(result):
        if result.source == "clean" and result.index == 29:  # every metric of "clean" is final here
            scraped.update(_scrape(exporter.port))

    model = AnomalyModel(synthetic_ir, device="CPU", task="detection")
    run_many(
        model,
        [Camera("clean", str(clean)), Camera("damaged", str(damaged))],
        observers=[exporter],
        on_result=scrape_at_the_end,
    )
    assert scraped['anomaly_edge_frames_total{source="clean"}'] == 30
    assert scraped['anomaly_edge_anomalies_total{source="clean"}'] == 3
    assert scraped['anomaly_edge_undecodable_frames_total{source="clean"}'] == 0
    assert scraped['anomaly_edge_dropped_frames_total{source="clean"}'] == 0
    assert scraped['anomaly_edge_reconnects_total{source="clean"}'] == 0
    assert scraped['anomaly_edge_inference_seconds_count{source="clean"}'] == 30
    assert scraped['anomaly_edge_latency_seconds_count{source="clean"}'] == 30
    assert scraped['anomaly_edge_latency_seconds_sum{source="clean"}'] > 0
    assert scraped['anomaly_edge_camera_up{source="clean"}'] == 1
    assert 'anomaly_edge_frames_total{source="damaged"}' in scraped
    # The exporter stops with the run.
    with pytest.raises(OSError):
        _scrape(exporter.port)


def test_damaged_frames_are_counted(synthetic_ir, tmp_path):
    from anomaly_edge.stream.metrics import MetricsExporter

    damaged = damage_frames(make_video(tmp_path / "damaged.avi", 30), [10, 11])
    exporter = MetricsExporter("127.0.0.1", 0)
    scraped: dict[str, float] = {}

    def scrape_at_the_end(result):
        if result.index == 29:
            scraped.update(_scrape(exporter.port))

    run_many(
        AnomalyModel(synthetic_ir, device="CPU"),
        [Camera("d", str(damaged))],
        observers=[exporter],
        on_result=scrape_at_the_end,
    )
    assert scraped['anomaly_edge_undecodable_frames_total{source="d"}'] == 2
    assert scraped['anomaly_edge_frames_total{source="d"}'] == 28


def test_a_port_in_use_is_a_clear_error():
    from anomaly_edge.stream.metrics import MetricsExporter

    first = MetricsExporter("127.0.0.1", 0)
    try:
        with pytest.raises(ValueError, match="cannot listen"):
            MetricsExporter("127.0.0.1", first.port)
    finally:
        first.close()
