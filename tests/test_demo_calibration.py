"""The demo's promise on the line: at most one false alarm on the lossless video and every
defect caught, at every seed (issue 23's bar; the demo trains at far:0.01 on 9 normal
validation images), and on the lossy one after `calibrate` on its first 3 s of normal
production, at most 5 % of the later clean frames flagged while at least 75 % of the frames
with a defect still are."""

from __future__ import annotations

import pytest

from anomaly_edge.cli.demo import QUICK
from anomaly_edge.demo.run import DemoSettings, format_report, run_demo


@pytest.mark.slow
def test_demo_lossless_clean_and_lossy_calibrated(tmp_path):
    report = run_demo(tmp_path / "demo", DemoSettings(device="CPU"), log=lambda _: None, quiet=True)
    text = format_report(report)
    lossless = report.frames
    assert lossless.false_alarms <= 1 and not lossless.defects_missed, text
    before, after = report.frames_lossy, report.frames_calibrated
    # Before calibration the false-alarm rate is what it is (reported; with the PaDiM defaults
    # chosen on the four real categories, JPEG 22 raises none); calibration must not add any
    # and must keep the defects.
    assert before.false_alarm_rate is not None, text
    assert after.false_alarm_rate <= min(0.05, before.false_alarm_rate + 1e-9), text
    assert after.recall >= 0.75 and not after.defects_missed, text
    assert report.calibration["frames"] == report.clean_frames == 36
    assert (
        report.calibrated_model.with_suffix(".bin").read_bytes()
        == report.model.with_suffix(".bin").read_bytes()
    )  # same weights
    # No drift on the lossless video. After calibration at far:0.01 the threshold sits high
    # above the frames' normal range, and the frames of a defect passing under it (65-79 of 83
    # flagged at seeds 0-4) may raise one drift warning: they are out of the normal range.
    assert report.drift_warnings["lossless"] == 0, text
    assert report.drift_warnings["calibrated"] <= 1, text


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_quick_demo_has_at_most_one_false_alarm_on_its_lossless_video(tmp_path, seed):
    settings = DemoSettings(device="CPU", seed=seed, **QUICK)
    report = run_demo(tmp_path / "demo", settings, log=lambda _: None, quiet=True)
    text = format_report(report)
    assert report.frames.false_alarms <= 1 and not report.frames.defects_missed, text
    assert report.frames_calibrated.false_alarms <= 1, text  # of 6 clean frames after 3 s
