"""One decision, every surface: the Python API, `predict`'s JSON Lines, `run`'s events (one
camera and three) and MQTT payloads give the same label, boxes and mask for the same image,
and on each of them label, boxes and mask agree (Normal: no box, empty mask; Anomaly: boxes and
a mask). The remote and served paths are checked in tests/test_remote.py and test_serve.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import pytest

from anomaly_edge.cli.main import main
from anomaly_edge.model import AnomalyModel
from tests.stream_media import make_image_folder
from tests.system_tools import Mosquitto

DEFECTS = {1, 4, 6}


def decision(record: dict) -> tuple:
    """The parts of a prediction's JSON that make the decision a user sees."""
    mask = record.get("mask") or {}
    return (
        record["label"],
        tuple((b["x1"], b["y1"], b["x2"], b["y2"], round(b["score"], 5)) for b in record["boxes"]),
        mask.get("anomalous_pixels"),
    )


def assert_agrees(record: dict) -> None:
    label, boxes, pixels = decision(record)
    if label == "Anomaly":
        assert boxes and pixels, record
    else:
        assert not boxes and not pixels, record


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("decision") / "shots", 8, defects=DEFECTS)


@pytest.fixture(scope="module", params=["synthetic", "patchcore"])
def ir(request, synthetic_ir, tmp_path_factory) -> Path:
    """The stand-in IR, and a PatchCore IR (kNN inside the graph) that reads the same frames."""
    if request.param == "synthetic":
        return synthetic_ir
    from tests.toy_models import patchcore_ir

    return patchcore_ir(tmp_path_factory.mktemp("patchcore") / "model.xml")


@pytest.fixture(scope="module")
def api(ir, images) -> dict[str, tuple]:
    model = AnomalyModel(ir, device="CPU", task="segmentation", cache_dir=None)
    expected = {}
    for path in sorted(images.iterdir()):
        record = model.predict(cv2.imread(str(path))).to_dict()
        assert_agrees(record)
        expected[path.name] = decision(record)
    labels = [expected[f"img_{i}.png"][0] for i in range(8)]
    assert "Anomaly" in labels and "Normal" in labels  # both sides of the decision are tried
    return expected


def events_by_image(path: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if "event" not in event:
            found.setdefault(event["image"], []).append(event)
    return found


def test_predict_json_lines_agree_with_the_api(ir, images, api, tmp_path):
    out = tmp_path / "predict.jsonl"
    argv = ["predict", str(ir), str(images), "--task", "segmentation"]
    assert main([*argv, "--device", "CPU", "--jsonl", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 8
    for record in lines:
        assert_agrees(record)
        assert decision(record) == api[Path(record["file"]).name]


@pytest.mark.parametrize("cameras", [1, 3])
def test_run_events_agree_with_the_api(ir, images, api, tmp_path, cameras):
    events = tmp_path / "events.jsonl"
    sources = []
    for i in range(cameras):
        sources += ["--source", f"cam{i}={images}"]
    argv = ["run", str(ir), *sources, "--task", "segmentation", "--all-frames"]
    assert main([*argv, "--device", "CPU", "--events", str(events), "--quiet"]) == 0
    found = events_by_image(events)
    assert set(found) == set(api)
    for name, records in found.items():
        assert len(records) == cameras
        assert {r["source"] for r in records} == {f"cam{i}" for i in range(cameras)}
        for record in records:
            assert_agrees(record)
            assert decision(record) == api[name]


@pytest.mark.slow
def test_mqtt_payloads_agree_with_the_api(ir, images, api, tmp_path):
    import paho.mqtt.client as mqtt

    broker = Mosquitto(tmp_path / "broker").start()
    received: list[dict] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="decision-test")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe([("line/#", 1)])
    client.on_message = lambda c, u, m: (
        None if m.topic.endswith("/status") else received.append(json.loads(m.payload))
    )
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        time.sleep(0.5)  # subscribed before the run publishes
        argv = ["run", str(ir), "--source", f"cam0={images}", "--all-frames"]
        argv += ["--task", "segmentation", "--device", "CPU", "--quiet"]
        assert main([*argv, "--mqtt", f"{broker.url}/line"]) == 0
        deadline = time.monotonic() + 20
        while len([r for r in received if "image" in r]) < len(api):
            assert time.monotonic() < deadline, f"{len(received)} MQTT messages"
            time.sleep(0.1)
    finally:
        client.disconnect()
        client.loop_stop()
        broker.stop()
    for record in received:
        if "image" in record:
            assert_agrees(record)
            assert decision(record) == api[record["image"]]
