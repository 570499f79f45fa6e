"""The demo end to end at toy sizes: dataset -> PaDiM -> IR -> video -> stream -> report."""

from __future__ import annotations

import json

import cv2
import pytest

from anomaly_edge.demo.run import DemoSettings, format_report, run_demo

TOY = DemoSettings(
    n_train=12,
    n_test_good=6,
    n_test_per_defect=3,
    dataset_size=128,
    image_size=128,
    video_seconds=3.0,
    video_fps=8.0,
    video_size=(240, 320),
    video_speed=40,
    video_defects=("hole", "missing"),
    device="CPU",
)


@pytest.mark.slow
def test_reduced_demo_end_to_end(tmp_path):
    messages: list[str] = []
    report = run_demo(tmp_path / "demo", TOY, log=messages.append, quiet=True)

    assert [m[:5] for m in messages if m.startswith("[")] == [
        "[1/5]",
        "[2/5]",
        "[3/5]",
        "[4/5]",
        "[5/5]",
    ]
    assert report.model.is_file() and report.model.with_suffix(".bin").is_file()
    assert report.metrics_file.is_file()
    assert report.image_auroc is not None and report.image_auroc >= 0.8

    truth = json.loads(report.truth_file.read_text())
    # 3 s of normal production (calibration) and then the 3 s with the defects, at 8 fps
    assert report.frames.frames_processed == truth["n_frames"] == 48
    assert report.clean_frames == 24 and report.frames_calibrated.frames_processed == 24
    assert report.calibrated_model.is_file() and report.lossy_video.is_file()
    capture = cv2.VideoCapture(str(report.annotated_video))
    written = 0
    while capture.read()[0]:
        written += 1
    capture.release()
    assert written == truth["n_frames"]

    events = [json.loads(line) for line in report.events.read_text().splitlines()]
    assert report.frames.frames_flagged + 0 <= len(events) <= truth["n_frames"]
    assert report.frames.hits > 0, "the model flagged none of the frames with a defect"

    summary = json.loads(report.summary_file.read_text())
    assert summary["frames"]["frames_processed"] == 48
    assert summary["frames_calibrated"]["frames_processed"] == 24
    text = format_report(report)
    assert str(report.annotated_video) in text and str(report.events) in text
    assert str(report.metrics_file) in text and "image AUROC" in text
    assert "JPEG 22, as trained" in text and "JPEG 22, calibrated" in text
