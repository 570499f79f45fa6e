"""Events to the plant: the disk spool, MQTT through a real broker that restarts, a webhook."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

from anomaly_edge.model import AnomalyModel
from anomaly_edge.stream import Camera, EventLog, StreamRunner
from anomaly_edge.stream.events import JsonLinesWriter
from anomaly_edge.stream.spool import RejectedError, Spool
from tests.stream_media import MjpegServer, make_frame
from tests.system_tools import Mosquitto


def _wait(condition, limit_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class _Receiver:
    """A receiver that can be down (raises) and records what it got."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.got: list[int] = []

    def __call__(self, record: dict) -> None:
        if not self.up.is_set():
            raise ConnectionError("down")
        if record.get("bad"):
            raise RejectedError("refused")
        self.got.append(record["n"])


def test_spool_spills_to_disk_while_down_and_delivers_in_order(tmp_path):
    receiver = _Receiver()
    spool = Spool(
        "test", receiver, spool_dir=tmp_path, memory=5, retry_delay=0.01, max_retry_delay=0.05
    )
    for n in range(40):
        spool.put({"n": n})  # never waits, though the receiver is down
    assert spool.pending == 40
    assert (tmp_path / "test.jsonl").read_text().count("\n") == 35  # beyond the memory
    receiver.up.set()
    _wait(lambda: spool.pending == 0, what="delivery")
    for n in range(40, 50):
        spool.put({"n": n})
    assert spool.close() == 0
    assert receiver.got == list(range(50))
    assert not (tmp_path / "test.jsonl").exists()


def test_spool_keeps_undelivered_events_for_the_next_start(tmp_path):
    receiver = _Receiver()
    spool = Spool("test", receiver, spool_dir=tmp_path, memory=3, retry_delay=0.01)
    for n in range(10):
        spool.put({"n": n})
    assert spool.close(timeout=0.2) == 10
    receiver.up.set()
    again = Spool("test", receiver, spool_dir=tmp_path, memory=3, retry_delay=0.01)
    again.put({"n": 10})
    _wait(lambda: again.pending == 0, what="delivery after the restart")
    again.close()
    assert receiver.got == list(range(11))


def test_a_full_spool_drops_new_events_rather_than_fill_the_disk(tmp_path):
    receiver = _Receiver()
    spool = Spool("test", receiver, spool_dir=tmp_path, memory=2, max_spooled=3, retry_delay=0.01)
    for n in range(10):
        spool.put({"n": n})
    assert (spool.pending, spool.dropped) == (5, 5)
    receiver.up.set()
    _wait(lambda: spool.pending == 0, what="delivery")
    spool.close()
    assert receiver.got == [0, 1, 2, 3, 4]


def test_spool_drops_what_the_receiver_refuses_and_goes_on(tmp_path):
    receiver = _Receiver()
    receiver.up.set()
    spool = Spool("test", receiver, spool_dir=tmp_path)
    for record in ({"n": 0}, {"n": 1, "bad": True}, {"n": 2}):
        spool.put(record)
    spool.close()
    assert receiver.got == [0, 2]
    assert spool.rejected == 1


# ---- MQTT ------------------------------------------------------------------------------------


class _Subscriber:
    """A plant-side subscriber with a persistent session (the broker keeps its messages while
    it is away, and across the broker's restart)."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[dict] = []
        self.status: list[str] = []
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id="plant-subscriber",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(topic, 1)])
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        if message.topic.endswith("/status"):
            self.status.append(message.payload.decode())
        else:
            self.messages.append(json.loads(message.payload))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.slow
def test_a_broker_restart_mid_run_loses_no_event(synthetic_ir, tmp_path):
    from anomaly_edge.stream.mqtt import MqttPublisher

    broker = Mosquitto(tmp_path / "broker").start()
    subscriber = _Subscriber(broker.port, "plant/#")
    servers = [MjpegServer(lambda n: make_frame(n, n % 2 == 0), fps=20).start() for _ in range(2)]
    model = AnomalyModel(synthetic_ir, device="CPU", task="detection")
    publisher = MqttPublisher(f"{broker.url}/plant", spool_dir=tmp_path / "spool", ack_timeout=1.0)
    events = EventLog([JsonLinesWriter(tmp_path / "events.jsonl"), publisher])
    runner = StreamRunner(
        model, [Camera(f"cam{i}", s.url) for i, s in enumerate(servers)], events=events
    )
    try:
        runner.start()
        _wait(lambda: len(subscriber.messages) >= 10, what="the first events")
        assert subscriber.status[-1] == "online"
        broker.stop()
        sent_before = events.count
        _wait(lambda: events.count >= sent_before + 20, what="events while the broker is down")
        assert publisher.pending > 0  # waiting in the spool, the cameras go on
        broker.start()
        _wait(
            lambda: publisher.connected.is_set() and events.count >= sent_before + 30,
            what="the publisher to reconnect",
        )
        runner.stop()
        runner.join()  # closes the publisher after it delivered what was spooled
        lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
        expected = {(e["source"], e["frame"]) for e in lines}
        _wait(
            lambda: {(m["source"], m["frame"]) for m in subscriber.messages} >= expected,
            what="every event at the subscriber",
        )
        received = {(m["source"], m["frame"]) for m in subscriber.messages}
        assert received == expected  # nothing lost, nothing invented
        assert len(expected) == len(lines)
        assert publisher.pending == 0
        for camera in ("cam0", "cam1"):  # in order within each camera
            frames = [m["frame"] for m in subscriber.messages if m["source"] == camera]
            assert frames == sorted(frames)
        assert set(subscriber.messages[0]) >= {"source", "frame", "time", "score", "boxes"}
        _wait(
            lambda: subscriber.status and subscriber.status[-1] == "offline",
            what="the retained offline status",
        )
    finally:
        runner.stop()
        subscriber.close()
        for server in servers:
            server.stop()
        broker.stop()


def test_the_broker_says_offline_when_the_box_vanishes(tmp_path):
    """The last will: no goodbye from the publisher, yet the status turns offline."""
    from anomaly_edge.stream.mqtt import MqttPublisher

    broker = Mosquitto(tmp_path / "broker").start()
    try:
        subscriber = _Subscriber(broker.port, "box/status")
        publisher = MqttPublisher(f"{broker.url}/box", spool_dir=tmp_path / "spool", keepalive=1)
        _wait(lambda: subscriber.status[-1:] == ["online"], what="online")
        publisher._client.loop_stop()  # paho's thread would reconnect
        publisher._client._sock.close()  # the connection dies without a DISCONNECT
        publisher._spool.close(timeout=0)
        _wait(lambda: subscriber.status[-1:] == ["offline"], limit_s=10, what="the last will")
        subscriber.close()
    finally:
        broker.stop()


def test_bad_mqtt_urls_are_refused():
    from anomaly_edge.stream.mqtt import MqttPublisher

    for url in ("http://broker", "mqtt://", "mqtt://host:notaport"):
        with pytest.raises(ValueError, match="--mqtt"):
            MqttPublisher(url)


# ---- webhook ---------------------------------------------------------------------------------


class _Endpoint:
    """An HTTP endpoint that answers 503 while ``down``; records the JSON it accepted."""

    def __init__(self) -> None:
        self.down = True
        self.got: list[dict] = []
        self.auth: list[str | None] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.auth.append(self.headers.get("Authorization"))
                if owner.down:
                    self.send_response(503)
                elif body.get("frame") == -1:
                    self.send_response(400)
                else:
                    owner.got.append(body)
                    self.send_response(204)
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_waits_for_the_endpoint_and_delivers_in_order(tmp_path):
    from anomaly_edge.stream.webhook import WebhookPublisher

    endpoint = _Endpoint()
    try:
        hook = WebhookPublisher(endpoint.url.replace("//", "//plant:pw@"), spool_dir=tmp_path)
        for n in range(20):
            hook.event({"source": "a", "frame": n}, None)
        hook.event({"source": "a", "frame": -1}, None)  # refused for good: dropped
        hook.event({"source": "a", "frame": 20}, None)
        time.sleep(0.3)
        assert hook.pending == 22 and not endpoint.got
        endpoint.down = False
        _wait(lambda: hook.pending == 0, what="webhook delivery")
        hook.close()
        assert [e["frame"] for e in endpoint.got] == list(range(21))
        assert "refused" in hook.report() and "pw" not in hook.report()
        assert set(endpoint.auth) == {"Basic cGxhbnQ6cHc="}  # plant:pw
    finally:
        endpoint.close()
    with pytest.raises(ValueError, match="--webhook"):
        WebhookPublisher("ftp://x")
