"""`anomaly-edge run`: outputs, exit codes, Ctrl-C / SIGTERM, reconnection, as a user sees them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anomaly_edge.cli.common import ExitCode
from anomaly_edge.cli.main import main
from tests.conftest import REPO
from tests.stream_media import MjpegServer, count_frames, make_frame, make_video

DEFECTS = {2, 9, 10, 25}


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("cli_video") / "line.avi", 30, DEFECTS, fps=15)


def _start(*args: object) -> subprocess.Popen:
    # The repository root for `tests.*`; anomaly_edge itself comes from the installed package.
    paths = [str(REPO), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    return subprocess.Popen(
        [sys.executable, "-m", "anomaly_edge", "run", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def _wait_for_lines(path: Path, count: int, process: subprocess.Popen, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= count:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {count} lines")


def _frames(path: Path) -> list[int]:
    return [json.loads(line)["frame"] for line in path.read_text().splitlines()]


def _processed(stdout: str) -> int:
    return int(re.search(r"processed (\d+) frames", stdout).group(1))


def test_run_writes_every_output(synthetic_ir, video, tmp_path):
    process = _start(
        "--model",
        synthetic_ir,
        "--source",
        video,
        "--device",
        "CPU",
        "--task",
        "detection",
        "--output",
        tmp_path / "out.mp4",
        "--events",
        tmp_path / "events.jsonl",
        "--snapshots",
        tmp_path / "snaps",
        "--snapshot-interval",
        "0",
    )
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == ExitCode.OK, stderr
    assert _frames(tmp_path / "events.jsonl") == sorted(DEFECTS)
    assert count_frames(tmp_path / "out.mp4")[:2] == (30, (160, 120))
    assert len(list((tmp_path / "snaps").glob("*.jpg"))) == len(DEFECTS)
    assert _processed(stdout) == 30
    assert "anomalous frames: 4" in stdout
    assert "30/30" in stderr  # the status line knew the length


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_mid_run_leaves_complete_outputs(signum, synthetic_ir, tmp_path):
    long_video = make_video(tmp_path / "long.avi", 3000, defects=range(0, 3000, 50), fps=25)
    out, events = tmp_path / "out.mp4", tmp_path / "events.jsonl"
    process = _start(
        "--model",
        synthetic_ir,
        "--source",
        long_video,
        "--device",
        "CPU",
        "--output",
        out,
        "--events",
        events,
        "--all-frames",
    )
    _wait_for_lines(events, 20, process)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    processed = _processed(stdout)
    assert 20 <= processed < 3000
    frames, size, _ = count_frames(out)
    assert frames == processed and size == (160, 120)
    assert _frames(events) == list(range(processed))  # complete lines, every frame written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "long.avi", "out.mp4"]


def test_http_stream_cut_reconnects_and_says_so(synthetic_ir, tmp_path):
    phase = {"defects": False}
    server = MjpegServer(lambda n: make_frame(n, phase["defects"]), fps=30).start()
    events = tmp_path / "events.jsonl"
    process = _start(
        "--model",
        synthetic_ir,
        "--source",
        server.url,
        "--device",
        "CPU",
        "--events",
        events,
        "--all-frames",
        "--reconnect-delay",
        "0.1",
        "--timeout",
        "3",
    )
    try:
        _wait_for_lines(events, 10, process)
        server.stop()
        phase["defects"] = True
        server.start()
        deadline = time.monotonic() + 60
        while not any(json.loads(line)["anomalous"] for line in events.read_text().splitlines()):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        server.stop()
        if process.poll() is None:
            process.kill()
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    assert "reconnecting" in stderr and "reconnected" in stderr
    assert re.search(r"reconnects: [1-9]", stdout)
    frames = _frames(events)
    assert frames == sorted(frames)


def test_lost_stream_gives_up_with_the_input_code(synthetic_ir, tmp_path):
    server = MjpegServer(lambda n: make_frame(n, False), fps=30).start()
    events = tmp_path / "events.jsonl"
    process = _start(
        "--model",
        synthetic_ir,
        "--source",
        server.url,
        "--device",
        "CPU",
        "--events",
        events,
        "--all-frames",
        "--reconnect-attempts",
        "2",
        "--reconnect-delay",
        "0.1",
        "--timeout",
        "2",
    )
    try:
        _wait_for_lines(events, 5, process)
    finally:
        server.stop()
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == ExitCode.INPUT, stderr
    assert "did not come back after 2 reconnect attempts" in stderr
    assert _processed(stdout) == len(_frames(events))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("missing.mp4", "not found"),
        ("http://127.0.0.1:9/stream.mjpg", "cannot open stream"),
        ("97", "cannot open camera 97"),
    ],
)
def test_unusable_sources_exit_with_the_input_code(
    source, message, synthetic_ir, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    # --start-attempts 0: a live source down at the start fails at once (by default it is
    # retried; tests/test_camera_changes.py).
    code = main(
        ["run", "--model", str(synthetic_ir), "--source", source, "--timeout", "2",
         "--start-attempts", "0"]
    )  # fmt: skip
    assert code == ExitCode.INPUT
    assert message in capsys.readouterr().err


def test_missing_or_broken_model_exits_with_the_model_code(video, tmp_path, capsys):
    assert (
        main(["run", "--model", str(tmp_path / "none.xml"), "--source", str(video)])
        == ExitCode.MODEL
    )
    assert "not found" in capsys.readouterr().err
    broken = tmp_path / "broken.xml"
    broken.write_text("<net>not really</net>")
    assert main(["run", "--model", str(broken), "--source", str(video)]) == ExitCode.MODEL
    assert "cannot load model" in capsys.readouterr().err


def test_bad_output_and_show_without_gui_are_usage_errors(
    synthetic_ir, video, tmp_path, monkeypatch, capsys
):
    base = ["run", "--model", str(synthetic_ir), "--source", str(video)]
    assert main([*base, "--output", str(tmp_path / "out.gif")]) == ExitCode.USAGE
    assert "unknown video container" in capsys.readouterr().err
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main([*base, "--show"]) == ExitCode.USAGE
    assert "cannot open a window" in capsys.readouterr().err
    assert main([*base, "--events", str(tmp_path / "no" / "e.jsonl")]) == ExitCode.INPUT
    assert "does not exist" in capsys.readouterr().err
