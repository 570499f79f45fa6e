"""Nothing lost, and the exit code tells the truth (issue 24): full disks, torn spools,
redirecting webhooks. The full disks are small tmpfs mounts (root only; skipped otherwise)."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import cv2
import pytest

from anomaly_edge.atomic import atomic_write
from anomaly_edge.cli.common import ExitCode
from anomaly_edge.cli.main import main
from anomaly_edge.stream.events import EventLog, JsonLinesWriter
from anomaly_edge.stream.sinks import fit_file_name
from anomaly_edge.stream.spool import Spool
from tests.stream_media import make_video


def _wait(condition, limit_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def _small_disk(folder: Path, size: str = "256k"):
    """A tmpfs of ``size`` at ``folder``; skips the test where mounting is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("a small disk (tmpfs) needs root")
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the disk at ``folder`` to the last byte; returns the filler to delete."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for chunk in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while handle.write(b"\0" * chunk):
                    pass
    return filler


class _Receiver:
    def __init__(self) -> None:
        self.up = threading.Event()
        self.got: list[int] = []

    def __call__(self, record: dict) -> None:
        if not self.up.is_set():
            raise ConnectionError("down")
        self.got.append(record["n"])


# ---- the spool survives power cuts --------------------------------------------------------


def test_a_torn_last_line_is_skipped_counted_and_nothing_duplicated(tmp_path):
    """Before: JSONDecodeError killed the delivery thread; new events were glued to the
    torn line and every later start delivered 0."""
    spool_file = tmp_path / "test.jsonl"
    whole = "".join(json.dumps({"n": n}) + "\n" for n in range(5))
    spool_file.write_text(whole + '{"n": 5, "sco')  # what a power cut leaves
    receiver = _Receiver()
    receiver.up.set()
    spool = Spool("test", receiver, spool_dir=tmp_path, memory=1, retry_delay=0.01)
    assert spool.torn == 1
    for n in range(6, 9):
        spool.put({"n": n})
    _wait(lambda: spool.pending == 0, what="delivery")
    assert spool.close() == 0
    assert receiver.got == [0, 1, 2, 3, 4, 6, 7, 8]
    assert spool.health.ok


def test_a_broken_line_in_the_middle_does_not_stop_delivery(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"n": 0}\nnot json\n[1, 2]\n{"n": 1}\n')
    receiver = _Receiver()
    receiver.up.set()
    spool = Spool("test", receiver, spool_dir=tmp_path, retry_delay=0.01)
    _wait(lambda: spool.pending == 0, what="delivery")
    spool.put({"n": 2})
    _wait(lambda: spool.pending == 0, what="delivery of a new event")
    spool.close()
    assert receiver.got == [0, 1, 2]
    assert spool.torn == 2


def test_after_a_crash_the_next_start_sends_no_event_twice(tmp_path):
    got: list[int] = []

    def first_run(record: dict) -> None:
        if len(got) >= 5:
            raise ConnectionError("the process is about to die")
        got.append(record["n"])

    crashed = Spool("test", first_run, spool_dir=tmp_path, memory=1, retry_delay=0.05)
    for n in range(10):
        crashed.put({"n": n})
    _wait(lambda: crashed.failures > 0, what="the first run's deliveries")
    # The process dies here: no close(), the spool file still holds every disk event.
    receiver = _Receiver()
    receiver.up.set()
    again = Spool("test", receiver, spool_dir=tmp_path, retry_delay=0.01)
    _wait(lambda: again.pending == 0, what="the second run's deliveries")
    again.close()
    assert got == [0, 1, 2, 3, 4] and receiver.got == [5, 6, 7, 8, 9]
    assert not list(tmp_path.iterdir())


def test_events_undelivered_from_a_temporary_spool_count_as_lost(tmp_path):
    spool = Spool("test", _Receiver(), retry_delay=0.01)
    spool.put({"n": 0})
    assert spool.close(timeout=0.1) == 1
    assert spool.health.lost == 1 and "spool-dir" in (spool.health.describe() or "")


def test_the_spool_rides_out_a_full_disk_and_loses_nothing(tmp_path):
    """Before: the publisher was dropped for the rest of the run; 740 events were lost."""
    with _small_disk(tmp_path / "disk") as disk:
        receiver = _Receiver()
        spool = Spool("test", receiver, spool_dir=disk, memory=2, retry_delay=0.01)
        filler = _fill(disk)
        for n in range(200):
            spool.put({"n": n, "pad": "x" * 200})  # never raises, though the disk is full
        assert spool.health.failing and spool.pending == 200
        text = (disk / "test.jsonl").read_bytes()
        assert not text or text.endswith(b"\n")  # no torn line
        filler.unlink()
        for n in range(200, 210):
            spool.put({"n": n})  # the waiting events go to disk now, in order
        receiver.up.set()
        _wait(lambda: spool.pending == 0, what="delivery")
        spool.close()
    assert receiver.got == list(range(210))
    assert spool.health.ok


# ---- the events file ----------------------------------------------------------------------


def test_events_wait_while_the_disk_is_full_and_the_file_stays_whole(tmp_path):
    """Before: the writer was dropped for the rest of the run and the last line was cut."""
    with _small_disk(tmp_path / "disk") as disk:
        writer = JsonLinesWriter(disk / "e.jsonl")
        events = EventLog([writer])
        filler = _fill(disk)
        for n in range(50):
            events.emit({"source": "a", "frame": n, "pad": "y" * 300})
        assert writer.health.failing
        assert (disk / "e.jsonl").read_bytes().endswith(b"\n") or writer.lines == 0
        filler.unlink()
        events.emit({"source": "a", "frame": 50})
        events.close()
        lines = [json.loads(line) for line in (disk / "e.jsonl").read_text().splitlines()]
    assert [e["frame"] for e in lines] == list(range(51))
    assert writer.health.ok and events.losses() == []


def test_events_that_never_found_room_are_counted_as_lost(tmp_path):
    with _small_disk(tmp_path / "disk") as disk:
        writer = JsonLinesWriter(disk / "e.jsonl")
        _fill(disk)
        for n in range(20):
            writer.event({"frame": n, "pad": "z" * 300}, None)
        writer.close()
        text = (disk / "e.jsonl").read_bytes()
    assert not text or text.endswith(b"\n")
    assert writer.health.lost == 20 - writer.lines > 0
    assert "LOST" in (writer.health.describe() or "")


class _BrokenConsumer:
    def __init__(self) -> None:
        self.calls = 0

    def event(self, record, result) -> None:
        self.calls += 1
        if self.calls <= 2:
            raise OSError("disk full (simulated)")

    def close(self) -> None:
        pass


def test_a_failing_consumer_is_kept_and_its_losses_counted():
    consumer = _BrokenConsumer()
    events = EventLog([consumer])
    for n in range(5):
        events.emit({"n": n})
    assert consumer.calls == 5  # not left out after the first failure
    assert events.losses() == [
        "event consumer _BrokenConsumer: 2 event(s) LOST (disk full (simulated))"
    ]


# ---- run on a full disk -------------------------------------------------------------------


@pytest.mark.parametrize("cameras", [1, 2])
def test_run_on_a_full_disk_says_what_was_lost_and_exits_6(synthetic_ir, tmp_path, capsys, cameras):
    """Before: exit 0, '324 frames', an mp4 without its index that nothing could open, the
    events writer dropped after 90 of 300 events with its last line cut, snapshots that
    stopped the stream and left a .partial.jpg behind."""
    video = make_video(tmp_path / "in.avi", 80, defects=range(10, 80), size=(320, 240))
    sources = [f"c{n}={video}" for n in range(cameras)]
    with _small_disk(tmp_path / "disk", "384k") as disk:
        code = main(
            [
                "run", str(synthetic_ir), "--device", "CPU", "--quiet", "--task", "detection",
                *[arg for spec in sources for arg in ("--source", spec)],
                "--output", str(disk / "out.avi"),
                "--events", str(disk / "e.jsonl"), "--all-frames",
                "--snapshots", str(disk / "snaps"), "--snapshot-interval", "0",
            ]
        )  # fmt: skip
        out = capsys.readouterr()
        assert code == ExitCode.OUTPUT == 6, out.err
        assert "LOST" in out.out and "incomplete" in out.err
        assert out.out.count("processed 80 frames") == cameras  # the cameras went on
        for target in disk.glob("out*.avi"):  # finalised up to its last good frame: it plays
            capture = cv2.VideoCapture(str(target))
            assert capture.isOpened() and capture.read()[0]
            capture.release()
        leftovers = [p.name for p in disk.rglob("*") if "partial" in p.name or ".tmp" in p.name]
        assert not leftovers
        for snapshot in disk.rglob("*.jpg"):
            assert cv2.imread(str(snapshot)) is not None
        text = (disk / "e.jsonl").read_bytes()
        assert not text or text.endswith(b"\n")


def test_run_refuses_one_path_for_events_and_video(synthetic_ir, tmp_path, capsys):
    video = make_video(tmp_path / "in.avi", 5)
    same = tmp_path / "out.avi"
    code = main(
        ["run", str(synthetic_ir), "--source", str(video), "--output", str(same),
         "--events", str(same)]
    )  # fmt: skip
    assert code == ExitCode.USAGE
    assert "same file" in capsys.readouterr().err


def test_snapshot_folders_get_their_parents(synthetic_ir, tmp_path):
    video = make_video(tmp_path / "in.avi", 5)
    snaps = tmp_path / "snaps" / "{source}"
    code = main(
        ["run", str(synthetic_ir), "--device", "CPU", "--quiet", "--source", f"line1={video}",
         "--snapshots", str(snaps), "--task", "detection", "--image-threshold", "0"]
    )  # fmt: skip
    assert code == ExitCode.OK
    assert list((tmp_path / "snaps" / "line1").glob("*.jpg"))


# ---- names near the limit -----------------------------------------------------------------


def test_a_name_near_the_limit_can_still_be_written(tmp_path):
    """Before: a legal 246-character image name stopped `run` after one frame."""
    name = fit_file_name("frame_00000001_" + "é" * 240, ".jpg")
    assert len(name.encode()) <= 200 and name.endswith(".jpg")
    with atomic_write(tmp_path / ("b" * 250), "wb") as handle:  # the temp name fits too
        handle.write(b"ok")
    assert (tmp_path / ("b" * 250)).read_bytes() == b"ok"


# ---- webhooks: a redirect is a failure ----------------------------------------------------


def test_a_webhook_behind_a_redirect_delivers_nothing_and_says_so(tmp_path):
    """Before: the 301 turned each POST into an empty GET; '20 event(s) delivered'."""
    from anomaly_edge.stream.webhook import WebhookPublisher

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            seen.append("POST " + self.path)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(301)
            self.send_header("Location", "/moved")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            seen.append("GET " + self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = WebhookPublisher(f"http://127.0.0.1:{server.server_address[1]}/in")
        for n in range(3):
            hook.event({"source": "a", "frame": n}, None)
        _wait(lambda: hook.pending == 0, what="the attempts")
        hook.close()
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["POST /in"] * 3  # no GET followed
    assert "0 event(s) delivered" in hook.report()
    assert "redirect" in (hook._spool.health.describe() or "")


# ---- predict: overlays keep the tree, long names, full disks, long paths ------------------


def _image_tree(root: Path) -> Path:
    from tests.stream_media import make_frame

    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True)
        cv2.imwrite(str(root / sub / "x.png"), make_frame(1, True))
    long_name = "n" * 242 + ".png"  # 246 characters: legal
    cv2.imwrite(str(root / long_name), make_frame(2, True))
    return root


def test_predict_overlays_keep_the_tree_and_long_names(synthetic_ir, tmp_path, capsys):
    """Before: sub-folders were flattened and renamed, and a 246-character name stopped
    `predict` at that file."""
    root = _image_tree(tmp_path / "in")
    overlays, jsonl = tmp_path / "over", tmp_path / "r.jsonl"
    code = main(
        ["predict", str(synthetic_ir), str(root), "--recursive", "--device", "CPU",
         "--overlays", str(overlays), "--jsonl", str(jsonl)]
    )  # fmt: skip
    assert code == ExitCode.OK, capsys.readouterr().err
    written = sorted(str(p.relative_to(overlays)) for p in overlays.rglob("*.png"))
    assert written[:2] == ["a/x.png", "b/x.png"]
    assert len(written) == 3 and written[2].startswith("nnnn")
    assert len(jsonl.read_text().splitlines()) == 3


def test_predict_on_a_full_disk_still_writes_every_score(synthetic_ir, tmp_path, capsys):
    """Before: overlays failing on a full disk meant --jsonl was never written."""
    root = _image_tree(tmp_path / "in")
    jsonl = tmp_path / "r.jsonl"
    with _small_disk(tmp_path / "disk", "64k") as disk:
        _fill(disk)
        code = main(
            ["predict", str(synthetic_ir), str(root), "--recursive", "--device", "CPU",
             "--overlays", str(disk / "over"), "--jsonl", str(jsonl)]
        )  # fmt: skip
        err = capsys.readouterr().err
        assert code == ExitCode.OUTPUT, err
        assert "3 overlays LOST" in err
        assert not [p for p in disk.rglob("*.tmp")]
    assert len(jsonl.read_text().splitlines()) == 3


def test_a_path_over_path_max_is_an_input_error(synthetic_ir, capsys):
    too_long = "/tmp/" + "d/" * 3000 + "x.png"
    assert main(["predict", str(synthetic_ir), too_long, "--device", "CPU"]) == ExitCode.INPUT
    assert main(["run", str(synthetic_ir), "--source", too_long]) == ExitCode.INPUT
    assert "Traceback" not in capsys.readouterr().err


def test_info_into_a_closed_pipe_stops_quietly(synthetic_ir):
    """Before: `info model | head` sometimes ended with 'Broken pipe' and exit 3."""
    import sys

    from tests.conftest import child_env

    env = child_env()  # the same anomaly_edge as this process: the checkout's, or the installed one
    script = (
        "import sys; from anomaly_edge.cli.main import main; "
        f"sys.exit(main(['info', {str(synthetic_ir)!r}]))"
    )
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: every write fails
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], stdout=write_end, stderr=subprocess.PIPE, env=env
        )
    finally:
        os.close(write_end)
    assert b"Broken pipe" not in done.stderr and b"Traceback" not in done.stderr, done.stderr
    assert done.returncode == ExitCode.READER_GONE


def test_a_video_cut_short_by_the_disk_is_finalised_up_to_its_last_good_frame(
    synthetic_ir, tmp_path
):
    from anomaly_edge.model import AnomalyModel
    from anomaly_edge.stream import StreamRunner
    from anomaly_edge.stream.sinks import VideoSink
    from tests.stream_media import count_frames

    video = make_video(tmp_path / "in.avi", 150, size=(320, 240))
    model = AnomalyModel(synthetic_ir, device="CPU", task="detection")
    with _small_disk(tmp_path / "disk", "1m") as disk:
        # Leave room for a few dozen frames only: the disk "fills" part way through.
        sink = VideoSink(disk / "out.avi", 20.0, reserve=(1 << 20) - (160 << 10))
        summary = StreamRunner(model, video, sinks=[sink]).run()
        assert summary.frames == 150  # the camera went on
        assert summary.losses == [sink.health.describe()]
        assert 0 < sink.frames < 150
        frames, _, _ = count_frames(disk / "out.avi")
        assert frames == sink.frames
        assert sink.health.lost == 150 - sink.frames
        assert "LOST" in (sink.health.describe() or "")
        assert [p.name for p in disk.iterdir()] == ["out.avi"]


def test_mqtt_events_that_cannot_be_kept_are_said_and_exit_6(synthetic_ir, tmp_path, capsys):
    """Before: the publisher was dropped, the summary had no MQTT line and the exit code
    was 0. Here the broker never comes and the spool folder's disk is full."""
    pytest.importorskip("paho.mqtt")
    from tests.system_tools import free_port

    video = make_video(tmp_path / "in.avi", 12)
    with _small_disk(tmp_path / "disk", "64k") as disk:
        (disk / "spool").mkdir()
        _fill(disk)
        code = main(
            ["run", str(synthetic_ir), "--device", "CPU", "--quiet", "--source", str(video),
             "--all-frames", "--mqtt", f"mqtt://127.0.0.1:{free_port()}",
             "--spool-dir", str(disk / "spool")]
        )  # fmt: skip
        out = capsys.readouterr()
        assert code == ExitCode.OUTPUT, out.err
        assert "mqtt: 0 event(s) delivered" in out.out
        assert "12 event(s) LOST" in out.out
        for left in (disk / "spool").iterdir():  # nothing half-written, no temporary files
            text = left.read_bytes()
            assert left.suffix == ".jsonl" and (not text or text.endswith(b"\n"))


def test_run_snapshots_of_an_image_with_a_246_character_name(synthetic_ir, tmp_path, capsys):
    """Before: a legal 246-character image name with --snapshots stopped `run` after one
    frame."""
    from tests.stream_media import make_frame

    folder = tmp_path / "shots"
    folder.mkdir()
    cv2.imwrite(str(folder / ("n" * 242 + ".png")), make_frame(1, True))
    cv2.imwrite(str(folder / "z_second.png"), make_frame(2, True))
    code = main(
        ["run", str(synthetic_ir), "--device", "CPU", "--quiet", "--source", str(folder),
         "--task", "detection", "--snapshots", str(tmp_path / "snaps"),
         "--snapshot-interval", "0", "--snapshot-overlay"]
    )  # fmt: skip
    assert code == ExitCode.OK, capsys.readouterr().err
    names = sorted(p.name for p in (tmp_path / "snaps").iterdir())
    assert len(names) == 2 and names[0].startswith("frame_00000000_nnnn")
    assert all(len(name.encode()) <= 200 for name in names)


def test_predict_jsonl_on_a_full_disk_is_absent_and_said(synthetic_ir, tmp_path, capsys):
    root = _image_tree(tmp_path / "in")
    with _small_disk(tmp_path / "disk", "64k") as disk:
        _fill(disk)
        code = main(
            ["predict", str(synthetic_ir), str(root), "--recursive", "--device", "CPU",
             "--jsonl", str(disk / "r.jsonl")]
        )  # fmt: skip
        err = capsys.readouterr().err
        assert code == ExitCode.OUTPUT, err
        assert "could not be written" in err and "3 images were scored" in err
        assert [p.name for p in disk.iterdir()] == ["filler"]  # absent, no temporary file
