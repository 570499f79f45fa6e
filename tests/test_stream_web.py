"""The live web view: its API and token, and the page in a real (headless) Chromium."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from anomaly_edge.cli.common import ExitCode
from anomaly_edge.model import AnomalyModel
from anomaly_edge.stream import Camera, StreamRunner
from anomaly_edge.stream.events import EventLog, JsonLinesWriter
from tests.conftest import REPO
from tests.stream_media import MjpegServer, make_frame


def _request(
    url: str,
    *,
    data: dict | bytes | None = None,
    headers: dict | None = None,
    content_type: str = "application/json",
) -> tuple[int, bytes, dict]:
    body = json.dumps(data).encode() if isinstance(data, dict) else data
    request = urllib.request.Request(url, data=body, headers=headers or {})
    if body is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


@pytest.fixture
def live_run(synthetic_ir, tmp_path):
    from anomaly_edge.stream.web import WebView

    servers = [MjpegServer(lambda n: make_frame(n, n % 4 == 0), fps=20).start() for _ in range(2)]
    web = WebView("127.0.0.1", 0, token="s3cret")
    events = EventLog([JsonLinesWriter(tmp_path / "events.jsonl"), web])
    runner = StreamRunner(
        AnomalyModel(synthetic_ir, device="CPU", task="detection"),
        [Camera("a", servers[0].url), Camera("b", servers[1].url)],
        events=events,
        observers=[web],
    )
    runner.start()
    yield runner, web, tmp_path / "events.jsonl"
    runner.stop()
    runner.join()
    for server in servers:
        server.stop()


def test_every_route_needs_the_token(live_run):
    _, web, _ = live_run
    base = f"http://127.0.0.1:{web.port}"
    for path in ("/", "/api/state", "/stream/a.mjpg"):
        status, body, _ = _request(base + path)
        assert status == 401 and b"token" in body
    status, _, _ = _request(base + "/api/state?token=wrong")
    assert status == 401
    # a token outside ASCII is a wrong token, not a server error
    status, _, _ = _request(base + "/api/state?token=%C3%A9t%C3%A9")
    assert status == 401
    status, body, headers = _request(base + "/?token=s3cret")
    assert status == 200 and b"anomaly-edge live" in body
    assert "anomaly_edge_token=s3cret" in headers["set-cookie"]
    status, body, _ = _request(base + "/api/state", headers={"Authorization": "Bearer s3cret"})
    assert status == 200
    assert [c["name"] for c in json.loads(body)["cameras"]] == ["a", "b"]


def test_thresholds_change_through_the_api_and_are_logged(live_run):
    runner, web, events = live_run
    base = f"http://127.0.0.1:{web.port}"
    auth = {"Authorization": "Bearer s3cret"}
    url = base + "/api/cameras/a/thresholds"
    status, body, _ = _request(url, data={"image_threshold": 3.25}, headers=auth)
    assert status == 200, body
    assert runner.lane("a").settings.image_threshold == 3.25
    assert runner.lane("b").settings.image_threshold != 3.25
    logged = [json.loads(line) for line in events.read_text().splitlines()]
    change = [e for e in logged if e.get("event") == "thresholds_changed"]
    assert change[-1]["source"] == "a" and change[-1]["image_threshold"]["new"] == 3.25
    assert change[-1]["by"] == "web (127.0.0.1)"
    for data, expected in (
        (b'{"image_threshold": "x"}', 400),
        (b'{"speed": 3}', 400),
        (b"not json", 400),
        (b'{"image_threshold": NaN}', 400),
    ):
        assert _request(url, data=data, headers=auth)[0] == expected, data
    assert (
        _request(
            url,
            data=b"image_threshold=1",
            headers=auth,
            content_type="application/x-www-form-urlencoded",
        )[0]
        == 415
    )
    assert (
        _request(base + "/api/cameras/zz/thresholds", data={"image_threshold": 1}, headers=auth)[0]
        == 404
    )
    assert (
        _request(
            url, data={"image_threshold": 1}, headers={**auth, "Origin": "http://evil.example"}
        )[0]
        == 403
    )


def test_the_stream_is_mjpeg_of_annotated_frames(live_run):
    _, web, _ = live_run
    request = urllib.request.Request(
        f"http://127.0.0.1:{web.port}/stream/a.mjpg", headers={"Authorization": "Bearer s3cret"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["content-type"].startswith("multipart/x-mixed-replace")
        data = b""
        while data.count(b"\xff\xd9") < 2:
            data += response.read1(65536)
    assert data.startswith(b"--frame\r\nContent-Type: image/jpeg")


def test_the_stream_rate_is_capped(live_run):
    """The sources run at 20 fps; the page gets at most max_fps (5) pictures a second."""
    _, web, _ = live_run
    request = urllib.request.Request(
        f"http://127.0.0.1:{web.port}/stream/b.mjpg", headers={"Authorization": "Bearer s3cret"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read1(65536)  # the first picture: the clock starts now
        start = time.monotonic()
        data = b""
        while time.monotonic() - start < 2.0:
            data += response.read1(65536)
    pictures = data.count(b"--frame\r\n")
    assert 4 <= pictures <= 2.0 * web.max_fps + 2, pictures


def test_a_non_local_address_needs_a_token(synthetic_ir, tmp_path, capsys):
    """Without --web-token, a token is generated for other addresses, and printed."""
    from anomaly_edge.cli.main import main
    from tests.stream_media import make_video

    video = make_video(tmp_path / "v.avi", 5)
    code = main(
        [
            "run",
            "--model",
            str(synthetic_ir),
            "--source",
            str(video),
            "--device",
            "CPU",
            "--web",
            "0.0.0.0:0",
            "--web-linger",
            "0",
            "--quiet",
        ]
    )
    assert code == 0
    assert re.search(r"web view: http://0\.0\.0\.0:\d+/\?token=\S{20,}", capsys.readouterr().err)


def test_the_web_view_stays_up_after_a_file_source_ends(synthetic_ir, tmp_path):
    """Before: the page went away as soon as the video ended."""
    process, stderr = _lingering_run(synthetic_ir, tmp_path)
    try:
        url = re.search(r"stays up at (\S+)", "".join(stderr)).group(1)
        status, body, _ = _request(url.rstrip("/") + "/api/state")
        assert status == 200
        assert [c["state"] for c in json.loads(body)["cameras"]] == ["ended"]
        process.send_signal(signal.SIGINT)
        assert _exit_code(process, stderr) == ExitCode.OK  # the run's code, not 130
    finally:
        if process.poll() is None:
            process.kill()


def test_ctrl_c_ends_the_lingering_page_of_a_run_started_with_sigint_ignored(
    synthetic_ir, tmp_path
):
    """A job started with `&` by a script (or nohup) inherits SIGINT ignored: Ctrl-C still
    ends the page it keeps up, as it stops the run (before: it lingered forever)."""
    process, stderr = _lingering_run(synthetic_ir, tmp_path, sigint_ignored=True)
    try:
        process.send_signal(signal.SIGINT)
        assert _exit_code(process, stderr) == ExitCode.OK
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def _lingering_run(
    synthetic_ir: Path, tmp_path: Path, sigint_ignored: bool = False
) -> tuple[subprocess.Popen, list[str]]:
    """`run --web` on a 5-frame video, once it says its page stays up after the video."""
    from tests.stream_media import make_video

    video = make_video(tmp_path / "v.avi", 5)
    process, stderr = _start_cli(
        "--model", synthetic_ir, "--device", "CPU", "--source", str(video),
        "--web", "127.0.0.1:0", "--quiet", sigint_ignored=sigint_ignored,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    try:
        while not any("stays up" in line for line in stderr):
            assert process.poll() is None and time.monotonic() < deadline, "".join(stderr)
            time.sleep(0.1)
    except BaseException:
        process.kill()
        raise
    return process, stderr


def _exit_code(process: subprocess.Popen, stderr: list[str], timeout: float = 30) -> int:
    """The child's exit code; if it hangs, fail with every thread's stack (faulthandler
    dumps them on SIGABRT) and what it printed, so a rare hang says where it waits."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        process.wait(timeout=30)
        time.sleep(0.5)  # the reader thread drains the rest of stderr
        pytest.fail(f"the run did not exit within {timeout:g} s:\n" + "".join(stderr))


# ---- in a real browser -----------------------------------------------------------------------


def _start_cli(*args: object, sigint_ignored: bool = False) -> tuple[subprocess.Popen, list[str]]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        PYTHONFAULTHANDLER="1",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "anomaly_edge", "run", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
        # Children inherit an ignored SIGINT (pytest itself started with `&`): say which.
        preexec_fn=lambda: signal.signal(
            signal.SIGINT, signal.SIG_IGN if sigint_ignored else signal.SIG_DFL
        ),
    )
    lines: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return process, lines


@pytest.mark.slow
def test_the_page_in_chromium_shows_live_frames_and_changes_a_threshold(synthetic_ir, tmp_path):
    from tests.browser import Chromium

    servers = [MjpegServer(lambda n: make_frame(n, n % 3 == 0), fps=15).start() for _ in range(2)]
    events = tmp_path / "events.jsonl"
    process, stderr = _start_cli(
        "--model",
        synthetic_ir,
        "--device",
        "CPU",
        "--task",
        "detection",
        "--source",
        f"line1={servers[0].url}",
        "--source",
        f"line2={servers[1].url}",
        "--events",
        events,
        "--web",
        "127.0.0.1:0",
        "--web-token",
        "t0ken",
        "--quiet",
    )
    browser = None
    try:
        deadline = time.monotonic() + 60
        while not any("web view:" in line for line in stderr):
            assert process.poll() is None and time.monotonic() < deadline, "".join(stderr)
            time.sleep(0.1)
        url = re.search(r"web view: (\S+)", "".join(stderr)).group(1)
        assert url.endswith("?token=t0ken")
        browser = Chromium(url)
        browser.wait_for(
            "document.querySelectorAll('section.camera').length === 2",
            what="both cameras on the page",
        )
        # Frames arrive: the MJPEG pictures load and keep changing.
        browser.wait_for(
            "document.getElementById('img-line1').naturalWidth === 160", what="the first frame"
        )
        grab = """(() => { const img = document.getElementById('img-line1');
            const c = document.createElement('canvas'); c.width = 160; c.height = 120;
            c.getContext('2d').drawImage(img, 0, 0); return c.toDataURL(); })()"""
        first = browser.evaluate(grab)
        browser.wait_for(f"{grab} !== {json.dumps(first)}", what="a new frame")
        frames = int(browser.evaluate("document.getElementById('frames-line1').textContent"))
        browser.wait_for(
            f"Number(document.getElementById('frames-line1').textContent) > {frames}",
            what="the frame counter to move",
        )
        browser.wait_for(
            "document.querySelector('#events img') !== null && "
            "document.querySelector('#events img').naturalWidth > 0",
            what="an event with its snapshot",
        )
        # An operator raises line1's image threshold on the page.
        browser.evaluate("""(() => {
            const input = document.getElementById('it-line1');
            input.value = '1000000';
            input.dispatchEvent(new Event('input'));
            document.getElementById('apply-line1').click(); })()""")
        browser.wait_for(
            "document.getElementById('msg-line1').textContent.includes('thresholds changed')",
            what="the confirmation",
        )
        browser.wait_for(
            "window.aeState.cameras[0].image_threshold === 1000000",
            what="the new threshold in the state",
        )
        browser.wait_for(
            "[...document.querySelectorAll('#events td')].some("
            "td => td.textContent.includes('thresholds changed by web'))",
            what="the change in the events list",
        )
        anomalies = browser.evaluate("window.aeState.cameras.map(c => c.anomalies)")
        time.sleep(1.5)
        later = browser.wait_for("window.aeState.cameras.map(c => c.anomalies)")
        assert later[0] - anomalies[0] <= 2  # frames in flight at the change, at most
        assert later[1] > anomalies[1]  # line2 untouched
        shot = os.environ.get("ANOMALY_EDGE_WEB_SCREENSHOT")
        browser.screenshot(Path(shot) if shot else tmp_path / "page.png")
    finally:
        if browser is not None:
            browser.close()
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=60)
        for server in servers:
            server.stop()
    assert process.returncode == ExitCode.INTERRUPTED, "".join(stderr)
    logged = [json.loads(line) for line in events.read_text().splitlines()]
    change = [e for e in logged if e.get("event") == "thresholds_changed"]
    assert len(change) == 1 and change[0]["source"] == "line1"
    assert change[0]["image_threshold"]["new"] == 1000000
    assert change[0]["by"].startswith("web")
    assert "[line1]" in stdout and "[line2]" in stdout


def test_a_forged_host_is_refused_even_on_loopback():
    """DNS rebinding: before, a threshold change with `Host: evil.example` and a matching
    Origin was accepted on 127.0.0.1."""
    from anomaly_edge.stream.web import WebView

    web = WebView("127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{web.port}"
        forged = {"Host": f"evil.example:{web.port}", "Origin": f"http://evil.example:{web.port}"}
        status, body, _ = _request(
            base + "/api/cameras/a/thresholds", data={"image_threshold": 1e9}, headers=forged
        )
        assert status == 403 and b"Host" in body
        assert _request(base + "/", headers={"Host": f"evil.example:{web.port}"})[0] == 403
        assert _request(base + "/", headers={"Host": "127.0.0.1:1"})[0] == 403  # other port
        for host in (f"127.0.0.1:{web.port}", f"localhost:{web.port}", f"[::1]:{web.port}"):
            assert _request(base + "/", headers={"Host": host})[0] == 200, host
    finally:
        web.close()


def test_on_every_interface_addresses_pass_and_names_do_not():
    from anomaly_edge.stream.web import WebView

    web = WebView("0.0.0.0", 0, token="t")
    try:
        assert web.serves(f"10.1.2.3:{web.port}") and web.serves(f"localhost:{web.port}")
        assert not web.serves(f"evil.example:{web.port}") and not web.serves("")
    finally:
        web.close()


def test_an_empty_web_token_is_refused(synthetic_ir, tmp_path, capsys):
    """Before: `--web-token ""` was accepted and locked everyone out."""
    from anomaly_edge.cli.main import main
    from anomaly_edge.stream.web import WebView

    with pytest.raises(ValueError, match="empty"):
        WebView("127.0.0.1", 0, token="")
    code = main(
        ["run", str(synthetic_ir), "--source", str(tmp_path), "--web", "127.0.0.1:0",
         "--web-token", ""]
    )  # fmt: skip
    assert code == ExitCode.USAGE
    assert "--web-token is empty" in capsys.readouterr().err
