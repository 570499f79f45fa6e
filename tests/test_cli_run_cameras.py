"""`anomaly-edge run` with several cameras: outputs per camera, config file, exit codes."""

from __future__ import annotations

import json
import threading

import pytest

from anomaly_edge.cli.common import ExitCode
from anomaly_edge.cli.main import main
from tests.stream_media import MjpegServer, count_frames, make_frame, make_video

DEFECTS = {2, 9}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_cameras")
    return [make_video(folder / f"v{i}.avi", 20, DEFECTS) for i in range(2)]


def _run(synthetic_ir, *args: object) -> int:
    return main(
        ["run", "--model", str(synthetic_ir), "--device", "CPU", "--quiet", *map(str, args)]
    )


def test_two_sources_get_their_own_outputs_and_share_the_events(
    synthetic_ir, videos, tmp_path, capsys
):
    code = _run(
        synthetic_ir,
        "--source",
        f"left={videos[0]}",
        "--source",
        videos[1],
        "--output",
        tmp_path / "out.mp4",
        "--snapshots",
        tmp_path / "snaps_{source}",
        "--snapshot-interval",
        "0",
        "--events",
        tmp_path / "events.jsonl",
    )
    out = capsys.readouterr().out
    assert code == ExitCode.OK
    for name in ("left", "cam2"):
        assert count_frames(tmp_path / f"out-{name}.mp4")[0] == 20
        assert len(list((tmp_path / f"snaps_{name}").glob("*.jpg"))) == len(DEFECTS)
        assert f"[{name}]" in out
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert sorted((e["source"], e["frame"]) for e in events) == sorted(
        (name, frame) for name in ("left", "cam2") for frame in DEFECTS
    )
    assert "all sources: 40 frames" in out


def test_config_file_cameras_with_their_own_settings(synthetic_ir, videos, tmp_path):
    config = tmp_path / "cameras.toml"
    config.write_text(f"""
[defaults]
task = "classification"

[[camera]]
name = "strict"
source = "{videos[0]}"

[[camera]]
name = "lenient"
source = "{videos[1]}"
raw_thresholds = true
image_threshold = 1e9
output = "lenient.avi"
""")
    code = _run(synthetic_ir, "--config", config, "--events", tmp_path / "events.jsonl")
    assert code == ExitCode.OK
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert {e["source"] for e in events} == {"strict"}
    assert all(e["boxes"] == [] for e in events)  # classification
    assert count_frames(tmp_path / "lenient.avi")[0] == 20


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--web", "nonsense"], ExitCode.USAGE, "give HOST:PORT"),
        (["--metrics", "127.0.0.1:99999"], ExitCode.USAGE, "give HOST:PORT"),
        (["--show"], ExitCode.USAGE, "use --web"),
        (["--output", "x.gif"], ExitCode.USAGE, "unknown video container"),
        (["--source", "missing.mp4"], ExitCode.INPUT, "not found"),
        (["--events", "/no/such/folder/e.jsonl"], ExitCode.INPUT, "does not exist"),
        (["--mqtt", "http://broker"], ExitCode.USAGE, "mqtt://"),
    ],
)
def test_bad_arguments_fail_clearly(
    synthetic_ir, videos, tmp_path, capsys, args, code, message, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert _run(synthetic_ir, "--source", videos[0], "--source", videos[1], *args) == code
    assert message in capsys.readouterr().err


def test_bad_config_is_a_usage_error(synthetic_ir, tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("[[camera]]\nname = 'a'\n")
    assert _run(synthetic_ir, "--config", config) == ExitCode.USAGE
    assert "needs both 'name' and 'source'" in capsys.readouterr().err


def test_a_list_as_source_is_a_usage_error(synthetic_ir, tmp_path, capsys):
    """Before: `source = ["x"]` gave a traceback with exit code 1."""
    config = tmp_path / "c.toml"
    config.write_text("[[camera]]\nname = 'a'\nsource = ['x']\n")
    assert _run(synthetic_ir, "--config", config) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "source ['x'] is a list" in err and "Traceback" not in err


def test_no_source_at_all(synthetic_ir, capsys):
    assert _run(synthetic_ir) == ExitCode.USAGE
    assert "give --source" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "extra", "module"),
    [
        (["--web", "127.0.0.1:0"], "web", "fastapi"),
        (["--mqtt", "mqtt://127.0.0.1"], "mqtt", "paho.mqtt"),
        (["--metrics", "127.0.0.1:0"], "metrics", "prometheus_client"),
    ],
)
def test_a_missing_extra_says_what_to_install(
    synthetic_ir, videos, monkeypatch, capsys, option, extra, module
):
    import anomaly_edge.cli.run_cameras as run_cameras

    real = run_cameras._find_spec
    monkeypatch.setattr(
        run_cameras, "_find_spec", lambda name: None if name == module else real(name)
    )
    assert _run(synthetic_ir, "--source", videos[0], *option) == ExitCode.MISSING_EXTRA
    assert f"pip install 'anomaly-edge[{extra}]'" in capsys.readouterr().err


def test_a_lost_camera_ends_with_exit_code_3_after_the_others(synthetic_ir, capsys):
    servers = [MjpegServer(lambda n: make_frame(n, False), fps=20).start() for _ in range(2)]
    threading.Timer(1.0, servers[0].stop).start()
    try:
        code = _run(
            synthetic_ir,
            "--source",
            f"lost={servers[0].url}",
            "--source",
            f"fine={servers[1].url}",
            "--max-frames",
            "60",
            "--reconnect-attempts",
            "0",
            "--timeout",
            "2",
        )
    finally:
        for server in servers:
            server.stop()
    out = capsys.readouterr().out
    assert code == ExitCode.INPUT, out
    assert "stopped early" in out
    fine = out[out.index("[fine]") :]
    assert "processed 60 frames" in fine
