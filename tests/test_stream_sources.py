"""Sources and the decode thread: what opens, what fails clearly, what gets dropped."""

from __future__ import annotations

import time

import numpy as np
import pytest

from anomaly_edge.stream.feed import FrameFeed
from anomaly_edge.stream.sources import (
    Frame,
    ImageFolderSource,
    ReconnectPolicy,
    Source,
    SourceError,
    VideoFileSource,
    _redact,
    open_source,
)
from tests.stream_media import (
    MjpegServer,
    damage_frames,
    make_frame,
    make_image_folder,
    make_video,
)


def _read_all(source: Source) -> list[Frame]:
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    source.close()
    return frames


def test_video_file_gives_every_frame_with_index_and_timestamp(tmp_path):
    source = open_source(make_video(tmp_path / "v.avi", 12, fps=10))
    assert isinstance(source, VideoFileSource) and not source.live
    assert source.fps == pytest.approx(10)
    assert source.frame_count == 12
    frames = _read_all(source)
    assert [f.index for f in frames] == list(range(12))
    assert frames[3].timestamp == pytest.approx(0.3)
    assert frames[0].image.shape == (120, 160, 3)


def test_damaged_video_frames_are_skipped_counted_and_keep_their_numbers(tmp_path):
    video = damage_frames(make_video(tmp_path / "v.avi", 20), [8, 9])
    source = open_source(video)
    frames = _read_all(source)
    assert [f.index for f in frames] == [i for i in range(20) if i not in (8, 9)]
    assert source.corrupt == 2


def test_grey_video_comes_out_as_bgr(tmp_path):
    frames = _read_all(open_source(make_video(tmp_path / "g.avi", 3, grey=True)))
    assert len(frames) == 3 and frames[0].image.shape == (120, 160, 3)


def test_image_folder_in_natural_order_skips_and_counts_broken_images(tmp_path):
    folder = make_image_folder(tmp_path / "imgs", 11)
    (folder / "img_5.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("ignored")
    source = open_source(folder)
    assert isinstance(source, ImageFolderSource) and source.frame_count == 11
    frames = _read_all(source)
    assert [f.name for f in frames] == [f"img_{i}.png" for i in range(11) if i != 5]
    assert [f.index for f in frames] == [i for i in range(11) if i != 5]
    assert source.corrupt == 1


def test_glob_and_single_image(tmp_path):
    make_image_folder(tmp_path / "a", 3, suffix=".jpg")
    make_image_folder(tmp_path / "a", 2, suffix=".png")
    assert len(_read_all(open_source(str(tmp_path / "a" / "*.jpg")))) == 3
    assert len(_read_all(open_source(tmp_path / "a" / "img_0.png"))) == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.mp4", "not found"),
        ("nothing/*.png", "no image matches"),
        ("ftp://host/video", "unsupported URL scheme"),
    ],
)
def test_bad_specs_fail_clearly(spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=message):
        open_source(spec)


def test_empty_folder_and_non_video_file_fail_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_source(tmp_path / "empty")
    fake = tmp_path / "clip.mp4"
    fake.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match="cannot decode"):
        open_source(fake)


def test_unreachable_url_fails_within_the_timeout():
    start = time.monotonic()
    with pytest.raises(SourceError, match="cannot open stream"):
        open_source("http://127.0.0.1:9/stream.mjpg", timeout=2)  # discard port: refused
    assert time.monotonic() - start < 5


def test_unopenable_camera_fails_clearly():
    with pytest.raises(SourceError, match="cannot open camera 97"):
        open_source("97")


def test_password_is_not_shown_in_messages():
    assert _redact("rtsp://admin:secret@cam/1") == "rtsp://admin:***@cam/1"


def test_reconnect_backoff_doubles_up_to_the_cap():
    policy = ReconnectPolicy(attempts=6, delay=0.5, max_delay=3)
    assert [policy.wait_before(n) for n in range(1, 6)] == [0.5, 1, 2, 3, 3]
    with pytest.raises(ValueError):
        ReconnectPolicy(attempts=-1)


def test_network_source_reconnects_after_the_server_restarts():
    server = MjpegServer(lambda n: make_frame(n, False), fps=50).start()
    try:
        source = open_source(server.url, reconnect=ReconnectPolicy(10, 0.1, 0.5), timeout=3)
        assert source.live
        assert source.read() is not None
        server.stop()
        server.start()
        frames = [source.read() for _ in range(20)]
        assert source.reconnects >= 1
        assert all(f is not None for f in frames)
        indices = [f.index for f in frames]
        assert indices == sorted(indices)  # numbering continues across the reconnect
        source.close()
    finally:
        server.stop()


def test_network_source_gives_up_after_the_allowed_attempts():
    server = MjpegServer(lambda n: make_frame(n, False), fps=50).start()
    source = open_source(server.url, reconnect=ReconnectPolicy(2, 0.05, 0.1), timeout=2)
    assert source.read() is not None
    server.stop()
    with pytest.raises(SourceError, match="after 2 reconnect attempts"):
        for _ in range(1000):
            source.read()
    source.close()


class _FastLiveSource(Source):
    """Produces numbered frames as fast as it can, like a camera nobody keeps up with."""

    live = True
    description = "fake camera"

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.index = 0

    def _read(self) -> Frame | None:
        if self.index >= self.count:
            return None
        self.index += 1
        time.sleep(0.001)
        return Frame(self.index - 1, 0.0, np.zeros((2, 2, 3), np.uint8))


def test_live_feed_keeps_the_newest_frame_and_counts_the_dropped():
    feed = FrameFeed(_FastLiveSource(200)).start()
    taken = []
    while not feed.finished:
        frame = feed.get(0.05)
        if frame is not None:
            taken.append(frame.index)
            time.sleep(0.02)  # a slow consumer
    feed.join()
    assert taken == sorted(taken)
    assert taken[-1] == 199  # the newest frame is never the one dropped
    assert feed.dropped > 0
    assert feed.dropped + len(taken) == 200


def test_file_feed_delivers_every_frame_in_order(tmp_path):
    feed = FrameFeed(open_source(make_video(tmp_path / "v.avi", 30)), buffer=2).start()
    taken = []
    while not feed.finished:
        frame = feed.get(0.05)
        if frame is not None:
            taken.append(frame.index)
            time.sleep(0.002)
    feed.join()
    assert taken == list(range(30)) and feed.dropped == 0


def test_stopped_feed_ends_promptly(tmp_path):
    feed = FrameFeed(open_source(make_video(tmp_path / "v.avi", 200)), buffer=2).start()
    assert feed.get(1.0) is not None
    feed.stop()
    feed.join(timeout=2)
    while feed.get(0.01) is not None:
        pass
    assert feed.finished
