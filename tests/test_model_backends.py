"""One core, three ways to run it: local, remote (REST and gRPC) and served predictions of the
same frames are equal (score, label, boxes, mask), for a single-view and a tiled model, each
as the stand-in IR and as PatchCore."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import cv2
import httpx
import numpy as np
import openvino as ov
import pytest

from anomaly_edge import AnomalyModel, Model, open_model
from anomaly_edge.errors import InvalidInputError
from anomaly_edge.images import ColorFormat
from anomaly_edge.metadata import ModelMetadata
from anomaly_edge.model_loading import (
    HostNormalisation,
    attach_preprocessing,
    read_ir,
    shared_core,
)
from anomaly_edge.remote import RemoteAnomalyModel
from tests.ir_factory import GREY
from tests.test_remote import frames as single_view_frames
from tests.test_serve import ServeProcess
from tests.test_tiling_runtime import LAYOUT as TILED
from tests.test_tiling_runtime import build_tiled_ir, grey_frame

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "anomaly_edge"


def tiled_frames() -> list[np.ndarray]:
    out = [grey_frame()]
    for i in range(4):
        frame = grey_frame()
        # blobs on and across tile borders (the tiles of 64 overlap around x = 48..64)
        frame[20 + 20 * i : 40 + 20 * i, 40 + 10 * i : 75 + 10 * i] = 255 if i % 2 else 0
        out.append(frame)
    out.append(cv2.resize(out[2], (320, 240)))  # another frame size, same layout
    return out


@pytest.fixture(scope="module", params=["single", "tiled", "patchcore", "patchcore-tiled"])
def case(request, synthetic_ir, tmp_path_factory):
    """(IR, frames, a running server of that IR): the stand-in IRs, and PatchCore's (its kNN
    inside the graph) single-view and tiled, which read the same frames alike."""
    from tests.toy_models import patchcore_ir

    folder = tmp_path_factory.mktemp(request.param) / "model.xml"
    if request.param == "single":
        ir, frames = synthetic_ir, single_view_frames()
    elif request.param == "tiled":
        ir, frames = build_tiled_ir(folder), tiled_frames()
    elif request.param == "patchcore":
        ir, frames = patchcore_ir(folder), single_view_frames()
    else:
        ir = patchcore_ir(folder, TILED.tile_size, task="detection", layout=TILED)
        frames = tiled_frames()
    server = ServeProcess(ir, "plate", tmp_path_factory.mktemp("backends")).start()
    yield ir, frames, server
    server.kill()


def boxes(prediction) -> list[tuple[int, int, int, int, int]]:
    return [(b.x1, b.y1, b.x2, b.y2, b.area) for b in prediction.boxes]


def assert_same(local, other) -> None:
    assert other.score == pytest.approx(local.score, abs=1e-4)
    assert other.raw_score == pytest.approx(local.raw_score, abs=1e-4)
    assert other.label == local.label
    assert boxes(other) == boxes(local)
    assert np.array_equal(other.mask, local.mask)


def served(server: ServeProcess, frame: np.ndarray) -> dict[str, np.ndarray]:
    """The convenience call: the server decides, with its local backend."""
    body = {
        "inputs": [
            {
                "name": "frame",
                "datatype": "UINT8",
                "shape": list(frame.shape),
                "data": frame.ravel().tolist(),
            }
        ],
        "parameters": {"mask": True},
    }
    response = httpx.post(f"{server.rest_url}/v2/models/plate/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return {
        o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]
    }


def test_local_remote_and_served_predictions_are_equal(case) -> None:
    ir, frames, server = case
    local_model = AnomalyModel(ir, "CPU", task="segmentation", cache_dir=None)
    local = [local_model.predict(frame) for frame in frames]
    labels = {p.label for p in local}
    assert labels == {True, False}, "the frames must show both decisions"
    assert all(p.mask is not None for p in local)
    assert [p.score for p in local_model.predict_batch(frames)] == [p.score for p in local]

    for url in (server.rest_url, server.grpc_url):
        with open_model(url, name="plate", task="segmentation", num_requests=3) as remote:
            assert isinstance(remote, RemoteAnomalyModel)
            for frame, want in zip(frames, local, strict=True):
                assert_same(want, remote.predict(frame))
            for i, frame in enumerate(frames):  # the asynchronous path: order kept
                remote.submit(frame, i)
            results = remote.drain()
            assert [i for i, _ in results] == list(range(len(frames)))
            for (_, got), want in zip(results, local, strict=True):
                assert_same(want, got)

    for frame, want in zip(frames, local, strict=True):
        out = served(server, frame)
        assert float(out["score"][0]) == pytest.approx(want.score, abs=1e-4)
        assert bool(out["label"][0]) == want.label
        got_boxes = out["boxes"].reshape(-1, 7)
        assert [tuple(int(v) for v in row[[0, 1, 2, 3, 6]]) for row in got_boxes] == boxes(want)
        assert np.array_equal(out["mask"].astype(np.uint8), want.mask)


def test_remote_submit_contract_is_the_local_one(case) -> None:
    """Unread results are bounded alike: PendingResultsError, not memory growth."""
    from anomaly_edge.core import PendingResultsError

    ir, frames, server = case
    local = AnomalyModel(ir, "CPU", max_pending=2, num_requests=2, cache_dir=None)
    with open_model(server.rest_url, name="plate", max_pending=2, num_requests=2) as remote:
        for model in (local, remote):
            with pytest.raises(PendingResultsError, match="2 finished results wait"):
                for i in range(10):  # nobody collects: the third finished result is refused
                    model.submit(frames[0], i)
            assert 2 <= model.in_flight <= model.max_pending + 2 * model.num_requests
            model.close()
            assert model.in_flight == 0


def test_open_model_picks_the_backend(synthetic_ir: Path) -> None:
    by_file = open_model(synthetic_ir, "CPU", cache_dir=None)
    by_folder = open_model(str(synthetic_ir.parent), cache_dir=None)
    assert isinstance(by_file, AnomalyModel) and isinstance(by_folder, AnomalyModel)
    assert isinstance(by_file, Model)
    with pytest.raises(InvalidInputError, match="server chooses the device"):
        open_model("http://127.0.0.1:1", "CPU")
    with pytest.raises(InvalidInputError, match="names a model on a server"):
        open_model(synthetic_ir, name="plate")
    with pytest.raises(InvalidInputError, match="unexpected keyword argument 'timeout'"):
        open_model(synthetic_ir, timeout=3)
    with pytest.raises(InvalidInputError, match="must be model server URLs"):
        open_model([str(synthetic_ir)])


@pytest.mark.parametrize("color", ["BGR", "RGB", "GRAY"])
def test_host_normalisation_is_the_graphs_own(synthetic_ir: Path, color: str) -> None:
    """A remote model's network input equals what a local graph's pre-processing makes."""
    ir = read_ir(synthetic_ir)
    metadata = ModelMetadata.read_from(ir)
    fmt = ColorFormat.parse(color)
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (1, *metadata.input_size, fmt.channels), dtype=np.uint8)
    images[0, :8] = GREY
    with_graph = shared_core().compile_model(attach_preprocessing(ir, metadata, fmt), "CPU")
    raw = shared_core().compile_model(ir, "CPU")
    want = with_graph(images)[0]
    got = raw(HostNormalisation(metadata, fmt)(images))[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert isinstance(raw.inputs[0].get_element_type(), ov.Type)


@pytest.mark.parametrize("color", ["BGR", "RGB", "GRAY"])
def test_the_graphs_normalisation_is_the_training_one(synthetic_ir: Path, color: str) -> None:
    """RGB order, float, (x - mean) / std, planar: checked against numpy, per colour format."""
    metadata = ModelMetadata.read_from(read_ir(synthetic_ir))
    fmt = ColorFormat.parse(color)
    images = np.random.default_rng(5).integers(0, 256, (1, 16, 24, fmt.channels), np.uint8)
    planar = images.astype(np.float32).transpose(0, 3, 1, 2)
    if fmt is ColorFormat.GRAY:
        planar = np.repeat(planar, 3, axis=1)
    elif fmt is ColorFormat.BGR:
        planar = planar[:, ::-1]
    mean = np.asarray(metadata.mean, np.float32)[:, None, None]
    std = np.asarray(metadata.std, np.float32)[:, None, None]
    small = dataclasses.replace(metadata, input_size=(16, 24))
    got = HostNormalisation(small, fmt)(images)
    np.testing.assert_allclose(got, (planar - mean) / std, rtol=1e-6, atol=1e-6)


def _imports(path: Path) -> set[str]:
    """Every anomaly_edge module a file imports, lazily or for type checking included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("anomaly_edge.")}


def test_the_core_names_no_backend_and_the_client_not_the_server() -> None:
    core = _imports(PACKAGE / "core.py")
    assert not core & {"anomaly_edge.model", "anomaly_edge.remote", "anomaly_edge.factory"}
    remote = _imports(PACKAGE / "remote.py")
    assert not {m for m in remote if m.startswith("anomaly_edge.serve")}
    assert "anomaly_edge.v2_protocol" in remote
    serve = set().union(*(_imports(p) for p in (PACKAGE / "serve").glob("*.py")))
    assert "anomaly_edge.remote" not in serve and "anomaly_edge.v2_protocol" in serve
    # calibration <-> model <-> remote was a circle: calibration types against the core
    assert not _imports(PACKAGE / "calibration.py") & {"anomaly_edge.model", "anomaly_edge.remote"}
    assert "anomaly_edge.model" not in remote
