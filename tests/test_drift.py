"""Score drift: the monitor's rule, and its warning in the stream (log, events, status, summary)."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest

from anomaly_edge.metadata import ModelMetadata
from anomaly_edge.stream import EventsSink, StatusLine, StreamRunner, format_summary
from anomaly_edge.stream.drift import SUSTAIN, DriftMonitor
from tests.stream_media import make_image_folder


def feed(monitor: DriftMonitor, scores, threshold: float = 10.0) -> list:
    return [w for s in scores if (w := monitor.update(s, s >= threshold)) is not None]


def test_scores_within_the_normal_range_never_warn():
    monitor = DriftMonitor(4.0, 6.0, 10.0)
    rng = np.random.default_rng(0)
    assert feed(monitor, rng.uniform(4.0, 6.5, 2000)) == []
    assert monitor.drift_frames == 0


def test_a_sustained_rise_warns_exactly_once_naming_cause_and_command():
    monitor = DriftMonitor(4.0, 6.0, 10.0, command="anomaly-edge calibrate --model m.xml")
    assert monitor.upper_limit == 8.0  # half way from the normal high to the threshold
    warnings = feed(monitor, [5.0] * 40 + [9.0] * 200)
    assert len(warnings) == 1
    warning = warnings[0]
    assert warning.direction == "up" and warning.median == 9.0 and warning.frames == SUSTAIN
    assert (
        "compression" in warning.message
        and "anomaly-edge calibrate --model m.xml" in warning.message
    )
    assert monitor.drift_frames > SUSTAIN


def test_a_short_excursion_or_a_few_defects_do_not_warn():
    monitor = DriftMonitor(4.0, 6.0, 10.0)
    burst = [9.0] * (SUSTAIN - 2)  # the median is out for about as many frames: too briefly
    defects = [50.0] * 30  # flagged frames, a minority
    assert feed(monitor, [5.0] * 40 + burst + [5.0] * 60 + defects + [5.0] * 100) == []


def test_mostly_flagged_frames_count_as_drift():
    monitor = DriftMonitor(4.0, 6.0, 10.0)
    long_defect = [5.0] * 30 + [12.0] * 80 + [5.0] * 30  # one part in view for a while
    assert feed(monitor, long_defect) == []
    warnings = feed(DriftMonitor(4.0, 6.0, 10.0), [12.0] * 200)  # no frame looks normal
    assert len(warnings) == 1 and warnings[0].median is None
    assert "% of the last" in warnings[0].message


def test_a_fall_warns_about_lost_detail():
    monitor = DriftMonitor(4.0, 6.0, 10.0)
    warnings = feed(monitor, [1.0] * 100)
    assert len(warnings) == 1 and warnings[0].direction == "down"
    assert "blur" in warnings[0].message


def _metadata(**extra) -> ModelMetadata:
    return ModelMetadata(
        model="padim",
        backbone="x",
        input_size=(64, 64),
        mean=(0, 0, 0),
        std=(1, 1, 1),
        image_threshold=10.0,
        pixel_threshold=10.0,
        image_min=3.0,
        image_max=20.0,
        pixel_min=0.0,
        pixel_max=20.0,
        **extra,
    )


def test_the_range_comes_from_the_ir_or_from_old_irs_thresholds():
    recorded = DriftMonitor.from_metadata(_metadata(normal_score_low=4.0, normal_score_high=6.0))
    assert (recorded.low, recorded.high, recorded.range_source) == (4.0, 6.0, "recorded")
    derived = DriftMonitor.from_metadata(_metadata())
    assert (derived.low, derived.high) == (3.0, 10.0)
    assert derived.range_source == "derived from thresholds"


@pytest.fixture(scope="module")
def bright_folder(tmp_path_factory):
    """Frames far from mid-grey: the synthetic IR flags every one, as a bad codec would."""
    folder = make_image_folder(tmp_path_factory.mktemp("bright"), 130)
    import cv2

    for path in sorted(folder.iterdir()):
        cv2.imwrite(str(path), np.full((120, 160, 3), 200, np.uint8))
    return folder


def test_the_stream_warns_once_in_the_log_events_status_and_summary(
    synthetic_ir, bright_folder, tmp_path, caplog
):
    from anomaly_edge.model import AnomalyModel

    model = AnomalyModel(synthetic_ir, device="CPU", cache_dir=None)
    status_text = io.StringIO()
    runner = StreamRunner(model, bright_folder, sinks=[EventsSink(tmp_path / "e.jsonl")])
    runner.sinks.append(StatusLine(runner.stats, stream=status_text, interval=0))
    with caplog.at_level(logging.WARNING, logger="anomaly_edge.stream"):
        results = list(runner)

    warned = [r for r in results if r.drift is not None]
    assert len(warned) == 1
    assert [r.message for r in caplog.records].count(warned[0].drift.message) == 1
    assert "anomaly-edge calibrate --model" in warned[0].drift.message
    events = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    drift_events = [e for e in events if e.get("event") == "drift"]
    assert len(drift_events) == 1 and drift_events[0]["frame"] == warned[0].index
    assert len(events) == 131  # 130 anomalous frames + the warning
    assert "SCORE DRIFT" in status_text.getvalue().splitlines()[-1]
    assert runner.summary.drift_warnings == 1 and runner.summary.drift_frames > 0
    assert "score drift: warned" in format_summary(runner.summary)


def test_drift_can_be_turned_off(synthetic_ir, bright_folder):
    from anomaly_edge.model import AnomalyModel

    model = AnomalyModel(synthetic_ir, device="CPU", cache_dir=None)
    runner = StreamRunner(model, bright_folder, drift=False)
    assert all(r.drift is None for r in runner)
    assert runner.summary.drift_warnings == 0
    assert "score drift" not in format_summary(runner.summary)
