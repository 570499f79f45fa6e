"""`anomaly-edge demo` without the train extra, and the scoring of stream verdicts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from anomaly_edge.cli.common import ExitCode
from anomaly_edge.cli.main import main
from anomaly_edge.demo.run import find_metric
from anomaly_edge.demo.scoring import score_frames
from anomaly_edge.demo.video import VideoTruth


def test_demo_without_torch_says_how_to_get_it(monkeypatch, tmp_path, capsys):
    real_find_spec = importlib.util.find_spec

    def no_torch(name, *args, **kwargs):
        return None if name == "torch" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", no_torch)
    code = main(["demo", "--out", str(tmp_path / "demo")])
    assert code == ExitCode.MISSING_EXTRA
    assert "pip install 'anomaly-edge[train]'" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_demo_has_its_own_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out


def _truth() -> VideoTruth:
    return VideoTruth(
        path=Path("v.avi"),
        n_frames=20,
        fps=10.0,
        frame_size=(48, 64),
        anomalous_frames=[3, 4, 5, 12, 13],
        defects=[
            {"kind": "hole", "first_frame": 3, "last_frame": 5, "area_px": 50},
            {"kind": "stain", "first_frame": 12, "last_frame": 13, "area_px": 90},
        ],
        partial_frames=[2, 6, 11, 14],
    )


def test_score_frames_counts_hits_misses_and_false_alarms():
    score = score_frames(_truth(), flagged=[4, 5, 6, 9, 19], processed=20)
    assert (score.hits, score.false_alarms, score.frames_with_defects) == (2, 2, 5)
    assert score.frames_ambiguous == 4  # frame 6 is a sliver: neither hit nor false alarm
    assert score.defects_caught == ["hole"] and score.defects_missed == ["stain"]
    assert score.recall == 0.4
    assert score.false_alarm_rate == 2 / (20 - 5 - 4)
    assert score.to_dict()["recall"] == 0.4


def test_score_frames_of_a_cut_short_stream():
    score = score_frames(_truth(), flagged=[3], processed=8)
    assert score.frames_with_defects == 3 and score.defects_caught == ["hole"]
    assert score.defects_missed == []  # the stain never came into view


def test_find_metric_in_nested_metrics():
    metrics = {"test": {"image_AUROC": 0.93, "pixel_auroc": 0.97}, "threshold": 3.2}
    assert find_metric(metrics, "image", "auroc") == 0.93
    assert find_metric(metrics, "pixel", "auroc") == 0.97
    assert find_metric(metrics, "aupro") is None


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs the train extra")
def test_demo_never_replaces_a_folder_it_did_not_make(tmp_path, capsys):
    mine = tmp_path / "out" / "dataset" / "train" / "good"
    mine.mkdir(parents=True)
    (mine / "photo.png").write_bytes(b"not really")
    assert main(["demo", "--out", str(tmp_path / "out")]) == ExitCode.INPUT
    assert "was not made by the demo" in capsys.readouterr().err
    assert (mine / "photo.png").read_bytes() == b"not really"


def test_generators_and_demo_command_do_not_import_torch():
    code = (
        "import sys, anomaly_edge.demo, anomaly_edge.cli.demo; "
        "from anomaly_edge.demo import run_demo; "
        "sys.exit('torch' in sys.modules or 'openvino' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
