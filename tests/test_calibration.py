"""Calibration on the line: `model.calibrate(frames)`, `model.save(path)`, `anomaly-edge calibrate`.

The synthetic IR (tests/ir_factory.py) scores a frame by how far it is from mid-grey, so a
"camera" that delivers brighter frames plays the part of a lossy codec: every normal frame
scores above the trained threshold until calibration moves it.
"""

from __future__ import annotations

import json
import os
import stat

import cv2
import numpy as np
import pytest

from anomaly_edge.calibration import (
    MIN_FRAMES,
    CalibrationError,
    CalibrationReport,
)
from anomaly_edge.cli.common import ExitCode
from anomaly_edge.cli.main import main
from anomaly_edge.metadata import ModelMetadata
from anomaly_edge.model_loading import read_ir
from tests.stream_media import make_frame, make_image_folder

BRIGHT = 168  # the new camera's "normal" level; the synthetic IR scores it ~0.62 (> 0.5)


def bright_frame(index: int, defect: bool = False, size=(160, 120)) -> np.ndarray:
    rng = np.random.default_rng(index)
    frame = np.full((size[1], size[0], 3), BRIGHT, np.int16)
    frame += rng.integers(-3, 4, frame.shape, dtype=np.int16)
    frame = frame.clip(0, 255).astype(np.uint8)
    if defect:
        cv2.circle(frame, (size[0] // 2, size[1] // 2), 15, (255, 255, 255), -1)
    return frame


def write_bright_video(path, frames: int, defects=(), size=(160, 120), fps=10.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for index in range(frames):
        writer.write(bright_frame(index, index in set(defects), size))
    writer.release()
    return path


@pytest.fixture
def model(synthetic_ir):
    from anomaly_edge.model import AnomalyModel

    return AnomalyModel(synthetic_ir, device="CPU", cache_dir=None)


def test_calibrate_moves_the_threshold_above_the_new_cameras_normal_frames(model):
    frames = [bright_frame(i) for i in range(20)]
    assert all(p.label for p in model.predict_batch(frames)), "premise: all flagged before"
    trained = model.image_threshold

    report = model.calibrate(iter(frames), source="camera 0")

    assert isinstance(report, CalibrationReport)
    assert report.frames == 20 and report.frame_size == (120, 160)
    # the default policy, far:0.05: above the highest of 20 frames (1 in 21 new ones is
    # expected higher), with no margin
    assert report.flagged_before == 20 and report.flagged_after == 0
    assert report.policy == "far:0.05"
    assert report.before["image_threshold"] == trained
    highest = max(p.raw_score for p in model.predict_batch(frames))
    assert highest < model.image_threshold < highest * 1.0001
    assert model.image_threshold == report.after["image_threshold"] > trained
    # unseen normal frames of the same camera mostly pass, defects are still found
    unseen = model.predict_batch(bright_frame(i) for i in range(50, 90))
    assert sum(p.label for p in unseen) <= 4
    assert model.predict(bright_frame(99, defect=True)).label
    # the normal range the drift monitor watches is the frames' range now
    low, high = model.metadata.normal_score_range
    assert low == report.scores["min"] and high == report.scores["max"]
    assert "20 frames" in str(report) and "camera 0" in str(report)


def test_calibration_speaks_the_policy_and_estimates_recall(model):
    import dataclasses

    frames = [bright_frame(i) for i in range(20)]
    scores = sorted(p.raw_score for p in model.predict_batch(frames))
    median = float(np.median(scores))
    trained = model.metadata

    def far_model(normal_median: float) -> None:
        model._apply_metadata(
            dataclasses.replace(
                trained,
                metrics={"image_threshold_method": "far"},
                normal_score_median=normal_median,
                operating_point={
                    "policy": "far:0",
                    "expected": {"defect_scores": [0.5, 0.6, 0.7, 0.8], "defect_images": 4},
                },
            )
        )

    # The policy's level on the camera's frames decides, wherever the stills put the normal
    # level: far:0.15 of 20 frames leaves 2 flagged (3 in 21 expected).
    far_model(normal_median=10.0)
    report = model.calibrate(frames, policy="far:0.15")  # the caller's policy wins
    assert report.policy == "far:0.15" and report.flagged_after == 2
    # the recall estimate: the validation defects at their own scores, not moved with the
    # normal level (a camera's noise lifts normal parts, not the peaks of defects)
    defects = np.array([0.5, 0.6, 0.7, 0.8])
    assert report.expected_recall == pytest.approx(np.mean(defects >= model.image_threshold))
    assert "defects expected to be flagged" in str(report)

    # Trained where normal parts scored lower than this camera's: the trained threshold is not
    # carried up with the normal level (that lost most defects on lossy real cameras); the
    # model's own far:0 puts it just above every frame.
    far_model(normal_median=median - 0.2)
    report = model.calibrate(frames)  # the model's own far:0
    assert report.policy == "far:0"
    assert scores[-1] < model.image_threshold < scores[-1] * 1.0001
    assert report.flagged_after == 0


def grey_frame(index: int) -> np.ndarray:
    """A normal frame of the synthetic camera, one pixel apart from the others (identical
    frames would be a frozen camera, which calibration refuses)."""
    frame = make_frame(index, False)
    frame[0, 0] = index % 256
    return frame


@pytest.mark.parametrize("method", ["f1", "far", "max_normal"])
def test_a_camera_scoring_lower_keeps_the_trained_threshold(model, method):
    """Calibration never makes a model more sensitive than trained, whatever placed its
    threshold: a few seconds of video show few independent parts."""
    import dataclasses

    model._apply_metadata(
        dataclasses.replace(model.metadata, metrics={"image_threshold_method": method})
    )
    grey = [grey_frame(i) for i in range(15)]  # scores ~0, far below 0.5
    trained = model.image_threshold
    report = model.calibrate(grey)
    assert model.image_threshold == trained
    assert report.flagged_after == 0
    # the normal range the drift monitor watches still follows the camera
    assert model.metadata.normal_score_range[1] == report.scores["max"]


def test_save_writes_same_weights_and_a_calibration_record(model, synthetic_ir, tmp_path):
    model.calibrate([bright_frame(i) for i in range(12)], source="line.mp4")
    target = model.save(tmp_path / "calibrated.xml")

    assert target == tmp_path / "calibrated.xml"
    assert target.with_suffix(".bin").read_bytes() == synthetic_ir.with_suffix(".bin").read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    for path in (target, target.with_suffix(".bin")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibrated.bin", "calibrated.xml"]

    metadata = ModelMetadata.read_from(read_ir(target))
    assert metadata.image_threshold == pytest.approx(model.image_threshold)
    record = metadata.calibration
    assert record["source"] == "line.mp4" and record["frames"] == 12 and record["date"]
    assert record["before"]["image_threshold"] == 0.5
    assert record["after"]["image_threshold"] == pytest.approx(model.image_threshold)
    assert metadata.normal_score_range is not None

    from anomaly_edge.model import AnomalyModel

    reloaded = AnomalyModel(target, device="CPU", cache_dir=None)
    assert not reloaded.predict(bright_frame(3)).label
    assert reloaded.predict(bright_frame(4, defect=True)).label


def test_save_over_the_model_in_use(model, synthetic_ir, tmp_path):
    copy = tmp_path / "model.xml"
    copy.write_bytes(synthetic_ir.read_bytes())
    copy.with_suffix(".bin").write_bytes(synthetic_ir.with_suffix(".bin").read_bytes())
    from anomaly_edge.model import AnomalyModel

    in_use = AnomalyModel(copy, device="CPU", cache_dir=None)
    in_use.calibrate([bright_frame(i) for i in range(12)])
    in_use.save(tmp_path)  # a folder: model.xml in it
    assert ModelMetadata.read_from(read_ir(copy)).calibration["frames"] == 12


@pytest.mark.parametrize(
    "frames, message",
    [
        ([], "no frames"),
        ([bright_frame(i) for i in range(MIN_FRAMES - 1)], f"at least {MIN_FRAMES}"),
        (
            [bright_frame(i) for i in range(6)] + [bright_frame(6, size=(200, 120))] * 6,
            "frame 6 is 200x120 but the first frames are 160x120",
        ),
    ],
)
def test_bad_frames_give_a_clear_error_and_change_nothing(model, frames, message):
    before = model.metadata
    with pytest.raises(CalibrationError, match=message):
        model.calibrate(iter(frames))
    assert model.metadata is before and model.image_threshold == 0.5


def test_old_irs_without_the_new_fields_still_load(synthetic_ir):
    metadata = ModelMetadata.read_from(read_ir(synthetic_ir))
    assert metadata.normal_score_range is None and metadata.calibration == {}


# ---- the command ---------------------------------------------------------------------------


def test_cli_calibrates_on_the_first_seconds_of_a_video(synthetic_ir, tmp_path, capsys):
    video = write_bright_video(tmp_path / "line.avi", 40, defects={35}, fps=10.0)
    out = tmp_path / "calibrated.xml"
    code = main(
        [
            "calibrate",
            "--model",
            str(synthetic_ir),
            "--source",
            str(video),
            "--seconds",
            "2",
            "--out",
            str(out),
            "--device",
            "CPU",
        ]
    )
    assert code == ExitCode.OK
    printed = capsys.readouterr().out
    assert "calibrated on 20 frames (160x120)" in printed and str(out) in printed
    record = ModelMetadata.read_from(read_ir(out)).calibration
    assert record["frames"] == 20 and record["source"] == str(video)

    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["calibrated"].endswith(f"on 20 frames of {video}")
    assert info["normal_score_range"][0] > 0.5


def _no_output(folder) -> bool:
    return not any(p.name.startswith("calibrated") or "save" in p.name for p in folder.iterdir())


def test_cli_corrupt_empty_short_and_mixed_sources_fail_and_write_nothing(
    synthetic_ir, tmp_path, capsys
):
    corrupt = tmp_path / "corrupt.avi"
    corrupt.write_bytes(b"RIFF" + os.urandom(4000))
    empty = tmp_path / "empty"
    empty.mkdir()
    short = write_bright_video(tmp_path / "short.avi", MIN_FRAMES - 3)
    mixed = make_image_folder(tmp_path / "mixed", 12)
    cv2.imwrite(str(mixed / "frame_0005.png"), np.full((50, 70, 3), 128, np.uint8))
    out = tmp_path / "calibrated.xml"
    cases = {
        corrupt: "",
        empty: "",
        short: f"at least {MIN_FRAMES}",
        mixed: "but the first frames are",
    }
    for source, message in cases.items():
        code = main(
            [
                "calibrate",
                "--model",
                str(synthetic_ir),
                "--source",
                str(source),
                "--frames",
                "20",
                "--out",
                str(out),
                "--device",
                "CPU",
            ]
        )
        err = capsys.readouterr().err
        assert code == ExitCode.INPUT, (source, err)
        assert "error:" in err and message in err
        assert _no_output(tmp_path), source


def test_cli_arguments_and_model_errors(synthetic_ir, tmp_path, capsys):
    video = write_bright_video(tmp_path / "line.avi", 15)
    base = ["calibrate", "--source", str(video), "--out", str(tmp_path / "c.xml")]
    assert main([*base, "--model", str(synthetic_ir), "--frames", "3"]) == ExitCode.USAGE
    assert "at least" in capsys.readouterr().err
    assert main([*base, str(synthetic_ir), "--policy", "p99"]) == ExitCode.USAGE
    assert "--policy" in capsys.readouterr().err and not (tmp_path / "c.xml").exists()
    assert main([*base, str(synthetic_ir), "--policy", "far:0.2", "--device", "CPU"]) == 0
    assert "policy far:0.2" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # --frames and --seconds exclude each other
        main([*base, "--model", str(synthetic_ir), "--frames", "12", "--seconds", "2"])
    assert exit_info.value.code == ExitCode.USAGE
    assert main([*base, "--model", str(tmp_path / "missing.xml")]) == ExitCode.MODEL
    missing_folder = [
        "calibrate",
        "--model",
        str(synthetic_ir),
        "--source",
        str(video),
        "--out",
        str(tmp_path / "nope" / "c.xml"),
    ]
    assert main(missing_folder) == ExitCode.INPUT
    assert _no_output(tmp_path)


def test_a_frozen_camera_is_refused(model, tmp_path, synthetic_ir, capsys):
    """Before: 20 identical frames (a frozen camera) were accepted without comment."""
    still = bright_frame(1)
    with pytest.raises(CalibrationError, match="all 20 frames are identical"):
        model.calibrate(iter([still.copy() for _ in range(20)]))
    assert model.image_threshold == 0.5
    video = tmp_path / "frozen.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    for _ in range(20):
        writer.write(still)
    writer.release()
    out = tmp_path / "calibrated.xml"
    code = main(
        ["calibrate", "--model", str(synthetic_ir), "--source", str(video), "--frames", "20",
         "--out", str(out), "--device", "CPU"]
    )  # fmt: skip
    assert code == ExitCode.INPUT
    assert "frozen" in capsys.readouterr().err and not out.exists()


def test_calibrate_out_on_a_full_disk_says_so(synthetic_ir, tmp_path, capsys):
    """Before: the error said "basic_ios::clear: iostream error"."""
    from tests.test_outputs_lost import _fill, _small_disk

    video = write_bright_video(tmp_path / "line.avi", 15)
    with _small_disk(tmp_path / "disk", "64k") as disk:
        _fill(disk)
        code = main(
            ["calibrate", "--model", str(synthetic_ir), "--source", str(video), "--frames",
             "12", "--out", str(disk / "calibrated.xml"), "--device", "CPU"]
        )  # fmt: skip
        err = capsys.readouterr().err
        assert code == ExitCode.FAILURE
        assert "disk is full" in err and "basic_ios" not in err, err
