"""Every command maps bad arguments, inputs and models to the README's exit codes, before it
does any work, with a message and never a traceback (table-driven, in-process)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from anomaly_edge.cli.common import ExitCode
from anomaly_edge.cli.main import main
from tests.conftest import child_env
from tests.ir_factory import GREY

USAGE, INPUT, MODEL, OK = ExitCode.USAGE, ExitCode.INPUT, ExitCode.MODEL, ExitCode.OK
ROOT = Path(__file__).resolve().parents[1]


def cli(argv: list[str]) -> int:
    try:
        return int(main(argv))
    except SystemExit as exc:  # argparse's own usage errors
        return int(exc.code)


@pytest.fixture
def paths(synthetic_ir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    frame = np.full((48, 64, 3), GREY, np.uint8)
    cv2.imwrite(str(folder / "a.png"), frame)
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    return {
        "model": str(synthetic_ir),
        "model_dir": str(synthetic_ir.parent),
        "images": str(folder),
        "image": str(folder / "a.png"),
        "dir": str(tmp_path),
        "file": str(a_file),
        "missing": str(tmp_path / "missing.xml"),
    }


def _predict(p, *extra):
    return ["predict", "--model", p["model"], p["images"], "--device", "CPU", *extra]


def _run(p, *extra):
    return [
        "run",
        "--model",
        p["model"],
        "--source",
        p["images"],
        "--device",
        "CPU",
        "--quiet",
        *extra,
    ]


def _benchmark(p, *extra):
    return [
        "benchmark",
        "--model",
        p["model"],
        "--device",
        "CPU",
        "--seconds",
        "0.05",
        "--frame",
        "64x48",
        *extra,
    ]


# (what, argv builder, expected exit code)
CASES = [
    ("predict: unknown device", lambda p: [*_predict(p), "--device", "FOO"], USAGE),
    ("run: unknown device", lambda p: [*_run(p), "--device", "FOO"], USAGE),
    ("benchmark: unknown device", lambda p: [*_benchmark(p), "--device", "FOO"], USAGE),
    ("predict: nan threshold", lambda p: _predict(p, "--image-threshold", "nan"), USAGE),
    ("run: nan threshold", lambda p: _run(p, "--image-threshold", "nan"), USAGE),
    ("predict: threshold above 1", lambda p: _predict(p, "--image-threshold", "1.5"), USAGE),
    ("run: threshold below 0", lambda p: _run(p, "--pixel-threshold", "-0.1"), USAGE),
    (
        "predict: raw threshold",
        lambda p: _predict(p, "--image-threshold", "5", "--raw-thresholds"),
        OK,
    ),
    ("predict: alpha 5", lambda p: _predict(p, "--alpha", "5"), USAGE),
    ("run: alpha 5", lambda p: _run(p, "--alpha", "5"), USAGE),
    ("predict: min-area 0", lambda p: _predict(p, "--min-area", "0"), USAGE),
    ("run: min-area 0", lambda p: _run(p, "--min-area", "0"), USAGE),
    ("benchmark: negative seconds", lambda p: _benchmark(p, "--seconds", "-1"), USAGE),
    ("benchmark: nan seconds", lambda p: _benchmark(p, "--seconds", "nan"), USAGE),
    ("benchmark: zero requests", lambda p: _benchmark(p, "--num-requests", "0"), USAGE),
    ("predict: --jsonl is a folder", lambda p: _predict(p, "--jsonl", p["dir"]), USAGE),
    ("predict: --overlays is a file", lambda p: _predict(p, "--overlays", p["file"]), USAGE),
    ("run: --events is a folder", lambda p: _run(p, "--events", p["dir"]), USAGE),
    ("run: --snapshots is a file", lambda p: _run(p, "--snapshots", p["file"]), USAGE),
    ("predict: missing model", lambda p: ["predict", "--model", p["missing"], p["image"]], MODEL),
    (
        "run: missing model",
        lambda p: ["run", "--model", p["missing"], "--source", p["images"]],
        MODEL,
    ),
    ("benchmark: missing model", lambda p: ["benchmark", "--model", p["missing"]], MODEL),
    ("info: missing model", lambda p: ["info", p["missing"]], MODEL),
    ("info: not a model", lambda p: ["info", "--model", p["file"]], MODEL),
    ("predict: no model at all", lambda p: ["predict", p["image"]], USAGE),
    ("run: no model at all", lambda p: ["run", "--source", p["images"]], USAGE),
    (
        "run: missing source",
        lambda p: ["run", "--model", p["model"], "--source", p["missing"]],
        INPUT,
    ),
    (
        "predict: missing image",
        lambda p: ["predict", "--model", p["model"], p["missing"], "--device", "CPU"],
        INPUT,
    ),
    ("benchmark: missing image", lambda p: _benchmark(p, "--image", p["missing"]), INPUT),
    # the model given every way, in every command
    (
        "calibrate: missing model folder",
        lambda p: ["calibrate", p["missing"], "--source", p["images"], "--out", p["dir"]],
        MODEL,
    ),
    ("serve: missing model folder", lambda p: ["serve", p["missing"]], MODEL),
    ("info: a server URL", lambda p: ["info", "http://127.0.0.1:1"], USAGE),
    ("serve: no model at all", lambda p: ["serve"], USAGE),
    ("calibrate: no model at all", lambda p: ["calibrate", "--source", "0", "--out", "x"], USAGE),
    (
        "predict: two models",
        lambda p: ["predict", p["model_dir"], "--model", p["missing"], p["image"]],
        USAGE,
    ),
    ("info: positional", lambda p: ["info", p["model"]], OK),
    ("info: --model", lambda p: ["info", "--model", p["model"]], OK),
    ("info: folder", lambda p: ["info", p["model_dir"]], OK),
    ("predict: model first", lambda p: ["predict", p["model"], p["image"], "--device", "CPU"], OK),
    (
        "predict: --model folder",
        lambda p: ["predict", "--model", p["model_dir"], p["image"], "--device", "CPU"],
        OK,
    ),
    (
        "run: --model folder",
        lambda p: [
            "run",
            "--model",
            p["model_dir"],
            "--source",
            p["images"],
            "--device",
            "CPU",
            "--quiet",
        ],
        OK,
    ),
    (
        "run: positional model",
        lambda p: ["run", p["model"], "--source", p["images"], "--device", "CPU", "--quiet"],
        OK,
    ),
    (
        "benchmark: positional model",
        lambda p: [
            "benchmark",
            p["model"],
            "--device",
            "CPU",
            "--seconds",
            "0.05",
            "--frame",
            "64x48",
        ],
        OK,
    ),
]


@pytest.mark.parametrize(("what", "argv", "expected"), CASES, ids=[c[0] for c in CASES])
def test_exit_codes(paths, capsys, what, argv, expected):
    code = cli(argv(paths))
    captured = capsys.readouterr()
    assert code == expected, (what, captured.err)
    assert "Traceback" not in captured.err
    if expected not in (OK, INPUT):
        assert captured.err.strip(), "an error says what is wrong"
        assert captured.out == "", "nothing is printed as a result before the arguments pass"


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "D", "--out", "O", "--image-threshold", "3"],  # raw needs the flag
        ["train", "--data", "D", "--out", "O", "--batch-size", "0"],
        ["train", "--data", "D", "--out", "O", "--arch", "stfpm", "--steps", "0"],
        ["train", "--data", "D", "--out", "O", "--model", "stfpm", "--steps", "0"],  # old name
        ["train", "--data", "D", "--out", "O", "--steps", "100"],  # PaDiM takes no steps
        ["train", "--data", "D", "--out", "O", "--epochs", "3"],
        ["train", "--data", "D", "--out", "O", "--map-layers", "2"],
        ["train", "--data", "D", "--out", "O", "--arch", "stfpm", "--map-layers", "0"],
        ["train", "--data", "D", "--out", "O", "--lr-schedule", "constant"],  # PaDiM: no rate
        ["train", "--data", "D", "--out", "O", "--arch", "stfpm", "--lr-schedule", "step"],
        ["train", "--data", "D", "--out", "O", "--fine-layer-weight", "0.5"],  # PaDiM: no layers
        ["train", "--data", "D", "--out", "O", "--arch", "stfpm", "--fine-layer-weight", "-1"],
        ["train", "--data", "D", "--out", "O", "--arch", "stfpm", "--fine-layer-weight", "nan"],
        ["train", "--data", "D", "--out", "O", "--image-threshold", "inf", "--raw-thresholds"],
        ["train", "--data", "D", "--out", "O", "--normal-holdout", "1"],
        ["train", "--data", "D", "--out", "O", "--normal-holdout", "-0.1"],
        ["export", "--run", "R", "--calibration-images", "0"],
        ["demo", "--device", "FOO"],
        ["export", "--run", "R", "--precision", "FP16", "--max-accuracy-drop", "0.1"],
    ],
)
def test_training_commands_refuse_bad_arguments(argv, capsys):
    assert cli(argv) == USAGE
    assert "Traceback" not in capsys.readouterr().err


def test_normalised_thresholds_map_through_the_models_statistics(paths, capsys):
    # synthetic model: raw threshold 0.5, scale 2.0; normalised 0.7 -> raw 0.5 + 0.2 * 2 = 0.9
    from anomaly_edge.cli.common import raw_threshold

    assert raw_threshold(0.7, 0.5, 2.0) == pytest.approx(0.9)
    assert raw_threshold(0.5, 0.5, 2.0) == 0.5
    blob = np.full((48, 64, 3), GREY, np.uint8)
    blob[10:30, 10:30] = 255  # raw score about 2 (|255 - 128| / 64), normalised ~1
    path = Path(paths["dir"]) / "blob.png"
    cv2.imwrite(str(path), blob)
    for threshold, label in (("0.7", "Anomaly"), ("0.999", "Anomaly")):
        assert (
            cli(
                [
                    "predict",
                    paths["model"],
                    str(path),
                    "--device",
                    "CPU",
                    "--image-threshold",
                    threshold,
                ]
            )
            == OK
        )
        assert json.loads(capsys.readouterr().out)["label"] == label
    # 0.7 in raw units would flag nearly everything; normalised 0.7 is stricter than trained
    assert (
        cli(
            [
                "predict",
                paths["model"],
                paths["image"],
                "--device",
                "CPU",
                "--image-threshold",
                "0.7",
            ]
        )
        == OK
    )
    assert json.loads(capsys.readouterr().out)["label"] == "Normal"
    assert cli(["info", paths["model"], "--json"]) == OK
    info = json.loads(capsys.readouterr().out)
    assert info["image_threshold"] == 0.5
    assert info["image_threshold_normalised"]["0.7"] == pytest.approx(0.9)


def test_predict_finishes_the_batch_and_reports_bad_files(paths, tmp_path, capsys):
    folder = Path(paths["images"])
    (folder / "broken.png").write_bytes(b"\x89PNG truncated")
    cv2.imwrite(str(folder / "huge.png"), np.zeros((2, 40000), np.uint8))
    cv2.imwrite(str(folder / "z_last.png"), np.full((48, 64, 3), GREY, np.uint8))
    out = tmp_path / "results.jsonl"
    assert cli(_predict(paths, "--jsonl", str(out))) == INPUT  # 3: some inputs failed
    lines = {Path(line["file"]).name: line for line in map(json.loads, out.open())}
    assert set(lines) == {"a.png", "broken.png", "huge.png", "z_last.png"}
    assert "score" in lines["a.png"] and "score" in lines["z_last.png"]
    assert "longest side" in lines["huge.png"]["error"]
    err = capsys.readouterr().err
    assert "broken.png" in err and "huge.png" in err and "2 could not be read" in err


def test_run_over_a_folder_skips_a_huge_image(paths, tmp_path, capsys):
    folder = Path(paths["images"])
    cv2.imwrite(str(folder / "huge.png"), np.zeros((2, 40000), np.uint8))
    cv2.imwrite(str(folder / "z_last.png"), np.full((48, 64, 3), GREY, np.uint8))
    events = tmp_path / "events.jsonl"
    assert cli(_run(paths, "--events", str(events), "--all-frames")) == OK
    assert len(events.read_text().splitlines()) == 2  # the two readable images


def test_sigterm_during_startup_exits_130(tmp_path):
    # main() is held at its very start (before the parser is even built): a SIGTERM there
    # must already be the clean stop of exit code 130, not the default death (143 / -15).
    script = (
        "import sys, time\n"
        "import anomaly_edge.cli.main as m\n"
        "def slow():\n"
        "    print('ready', flush=True); time.sleep(30)\n"
        "m.build_parser = slow\n"
        "sys.exit(m.main(['info', 'x']))\n"
    )
    env = child_env()
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == ExitCode.INTERRUPTED, err
    assert "interrupted" in err and "Traceback" not in err
