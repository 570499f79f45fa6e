"""Tiled models at run time, without torch: layout, rt_info, one batched call, stitched regions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from anomaly_edge import AnomalyModel
from anomaly_edge.errors import InvalidInputError, ModelLoadError
from anomaly_edge.metadata import ModelMetadata
from anomaly_edge.model_loading import read_ir
from anomaly_edge.tiles import TileLayout, parse_tile_option
from tests.ir_factory import GREY, build_synthetic_ir

TILE = (64, 64)
LAYOUT = TileLayout((112, 160), TILE, (2, 3))  # frames 160x120 -> 6 overlapping tiles


def build_tiled_ir(path: Path, layout: TileLayout = LAYOUT, threshold: float = 0.5) -> Path:
    """The synthetic model of tests/ir_factory.py with a static batch of ``layout.count``
    tiles: its map is the per-pixel deviation from grey, so a blob's map is the blob."""
    h, w = layout.tile_size
    image = ops.parameter([layout.count, 3, h, w], ov.Type.f32, name="image")
    deviation = ops.reduce_mean(ops.abs(image), np.array([1], dtype=np.int64), keep_dims=True)
    deviation.output(0).get_tensor().set_names({"anomaly_map"})
    model = ov.Model([deviation], [image], "synthetic_tiled")
    ModelMetadata(
        model="synthetic",
        backbone="none",
        input_size=layout.tile_size,
        mean=(GREY, GREY, GREY),
        std=(64.0, 64.0, 64.0),
        image_threshold=threshold,
        pixel_threshold=threshold,
        image_min=0.0,
        image_max=2.0,
        pixel_min=0.0,
        pixel_max=2.0,
        task="detection",
        precision="FP32",
        tile_grid=layout.grid,
        tile_frame_size=layout.frame_size,
        tile_blend=layout.blend,
    ).write_to(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


@pytest.fixture(scope="module")
def tiled_ir(tmp_path_factory) -> Path:
    return build_tiled_ir(tmp_path_factory.mktemp("tiled") / "model.xml")


class CountingRequest:
    """Stands in for an InferRequest and counts inference calls and their batch sizes."""

    def __init__(self, request: ov.InferRequest) -> None:
        self.request = request
        self.batches: list[int] = []

    def infer(self, inputs: dict, **kwargs: object) -> object:
        self.batches.append(int(inputs[0].shape[0]))
        return self.request.infer(inputs, **kwargs)

    def get_output_tensor(self, index: int) -> ov.Tensor:
        return self.request.get_output_tensor(index)


def grey_frame(height: int = 120, width: int = 160) -> np.ndarray:
    return np.full((height, width, 3), GREY, np.uint8)


# ---- layout ----------------------------------------------------------------------------------


def test_covering_layout_overlaps_and_reaches_every_edge() -> None:
    layout = TileLayout.covering((1024, 1224), (256, 256), overlap=0.125)
    assert layout.grid == (5, 6) and layout.count == 30
    assert layout.ys[0] == 0 and layout.ys[-1] + 256 == 1024
    assert layout.xs[0] == 0 and layout.xs[-1] + 256 == 1224
    assert min(layout.overlap) >= 32


def test_cut_gives_crops_of_the_resized_frame() -> None:
    frame = np.random.default_rng(0).integers(0, 255, (112, 160, 3), dtype=np.uint8)
    tiles = LAYOUT.cut(frame)
    assert tiles.shape == (6, 64, 64, 3) and tiles.flags.c_contiguous
    np.testing.assert_array_equal(
        tiles[4], frame[LAYOUT.ys[1] : LAYOUT.ys[1] + 64, LAYOUT.xs[1] : LAYOUT.xs[1] + 64]
    )
    grey = LAYOUT.cut(frame[:, :, :1], channels=3)  # grey frame, colour model
    assert grey.shape == (6, 64, 64, 3)


@pytest.mark.parametrize(
    ("frame", "tile", "grid", "message"),
    [
        ((100, 100), (120, 50), (1, 2), "larger than the frame"),
        ((100, 100), (50, 50), (1, 2), "one tile of height 50 cannot cover"),
        ((100, 300), (100, 50), (1, 3), "leave gaps"),
        ((100, 100), (100, 50), (2, 2), "all be the same tile"),
        ((100, 100), (50, 50), (0, 2), "two positive ints"),
        ((4000, 4000), (50, 50), (80, 80), "at most 64"),
    ],
)
def test_impossible_layouts_are_refused(frame, tile, grid, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        TileLayout(frame, tile, grid)


def test_tile_option_parsing() -> None:
    assert parse_tile_option("auto") == "auto"
    assert parse_tile_option(" OFF ") == "off"
    assert parse_tile_option("3x4") == (3, 4)
    for bad in ("3", "0x2", "x", "tiles"):
        with pytest.raises(ValueError, match="auto, off, or a grid"):
            parse_tile_option(bad)


# ---- rt_info -----------------------------------------------------------------------------------


def test_tile_layout_round_trips_through_rt_info(tiled_ir: Path) -> None:
    metadata = ModelMetadata.read_from(read_ir(tiled_ir))
    assert metadata.tiled and metadata.batch_size == 6
    assert metadata.tile_layout == LAYOUT
    assert metadata.format_version == 2  # older runtimes refuse it instead of misreading it
    graph = read_ir(tiled_ir)
    assert graph.get_rt_info(["anomaly_edge", "tile_overlap"]).astype(str) == "{} {}".format(
        *LAYOUT.overlap
    )
    assert list(graph.inputs[0].get_shape()) == [6, 3, 64, 64]


def test_old_ir_without_tile_keys_loads_as_a_single_view(tmp_path: Path) -> None:
    # An IR exported before tiling existed: format 1, no tile_* keys in rt_info.
    xml = build_synthetic_ir(tmp_path / "model.xml")
    text = xml.read_text()
    stripped = re.sub(r"\s*<tile_\w+ value=\"[^\"]*\"\s*/>", "", text)
    assert stripped != text and "tile_" not in stripped
    xml.write_text(stripped)
    model = AnomalyModel(xml, "CPU", cache_dir=None)
    assert not model.metadata.tiled and model.metadata.format_version == 1
    assert model.metadata.tile_layout is None and model.info()["tiles"] is None
    frame = grey_frame(64, 64)
    frame[20:30, 20:30] = 255
    assert model.predict(frame).label


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("2 9", "takes batches of 6 but its metadata describes 18"),  # a valid grid, wrong IR
        ("2 x", "malformed"),
        ("1 3", "malformed.*cannot cover"),  # one row of 64 px for 112 px frames
    ],
)
def test_inconsistent_tile_metadata_is_a_load_error(
    tmp_path: Path, grid: str, message: str
) -> None:
    xml = build_tiled_ir(tmp_path / "model.xml")
    xml.write_text(xml.read_text().replace('<tile_grid value="2 3"', f'<tile_grid value="{grid}"'))
    with pytest.raises(ModelLoadError, match=message):
        AnomalyModel(xml, "CPU", cache_dir=None)


# ---- inference -----------------------------------------------------------------------------------


def test_every_tile_of_a_frame_goes_in_one_inference_call(tiled_ir: Path) -> None:
    model = AnomalyModel(tiled_ir, "CPU", cache_dir=None)
    counter = CountingRequest(model._request)
    model._request = counter  # type: ignore[assignment]
    for _ in range(3):
        model.predict(grey_frame())
    assert counter.batches == [6, 6, 6]  # one call per frame, all six tiles in it
    assert list(model._compiled.inputs[0].get_shape()) == [6, 64, 64, 3]
    assert "2x3 tiles" in model.info()["tiles"]


def test_defect_across_tile_borders_is_one_region(tiled_ir: Path) -> None:
    # A blob over the corner where four tiles meet: stitched first, it is one box.
    model = AnomalyModel(tiled_ir, "CPU", task="segmentation", cache_dir=None)
    frame = grey_frame(240, 320)  # twice the layout's frame: resized to it first
    y, x = 2 * LAYOUT.ys[1] + 20, 2 * LAYOUT.xs[1] + 20  # rows 0/1 and columns 0/1 overlap here
    frame[y - 24 : y + 24, x - 24 : x + 24] = 255
    prediction = model.predict(frame)
    assert prediction.label
    assert len(prediction.boxes) == 1
    box = prediction.boxes[0]
    assert abs(box.x1 - (x - 24)) <= 4 and abs(box.x2 - (x + 24)) <= 4
    assert abs(box.y1 - (y - 24)) <= 4 and abs(box.y2 - (y + 24)) <= 4
    assert prediction.mask.shape == (240, 320)
    assert prediction.anomaly_map.shape == LAYOUT.frame_size
    assert not model.predict(grey_frame()).label


def test_async_and_sync_agree_on_tiled_models(tiled_ir: Path) -> None:
    model = AnomalyModel(tiled_ir, "CPU", num_requests=2, cache_dir=None)
    frames = []
    for i in range(5):
        frame = grey_frame()
        frame[10 + 15 * i : 30 + 15 * i, 40:70] = 255 if i % 2 else 0
        frames.append(frame)
    expected = [model.predict(f) for f in frames]
    for i, frame in enumerate(frames):
        model.submit(frame, i)
    results = model.drain()
    assert [i for i, _ in results] == list(range(5))
    for (_, got), want in zip(results, expected, strict=True):
        assert got.score == pytest.approx(want.score)
        assert [(b.x1, b.y1, b.x2, b.y2) for b in got.boxes] == [
            (b.x1, b.y1, b.x2, b.y2) for b in want.boxes
        ]
    model.close()


def test_info_shows_the_tile_layout(tiled_ir: Path, capsys) -> None:
    import json

    from anomaly_edge.cli.main import main as cli_main

    assert cli_main(["info", str(tiled_ir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tiles"] == LAYOUT.describe()
    assert info["input"].endswith("[6,3,64,64]")


def test_run_and_benchmark_take_tiled_models_with_no_new_flags(
    tiled_ir: Path, tmp_path: Path, capsys
) -> None:
    import json

    import cv2

    from anomaly_edge.cli.main import main as cli_main

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        frame = grey_frame(240, 320)
        if i == 1:  # a defect on the border between the first two tile columns
            x = 2 * LAYOUT.xs[1] + 10
            frame[100:140, x - 20 : x + 20] = 255
        cv2.imwrite(str(folder / f"{i}.png"), frame)
    events = tmp_path / "events.jsonl"
    assert (
        cli_main(
            [
                "run",
                "--model",
                str(tiled_ir),
                "--device",
                "CPU",
                "--source",
                str(folder),
                "--events",
                str(events),
                "--quiet",
            ]
        )
        == 0
    )
    flagged = [json.loads(line) for line in events.read_text().splitlines()]
    assert [event["frame"] for event in flagged] == [1]
    assert len(flagged[0]["boxes"]) == 1
    capsys.readouterr()
    assert (
        cli_main(
            [
                "benchmark",
                "--model",
                str(tiled_ir),
                "--device",
                "CPU",
                "--seconds",
                "0.3",
                "--frame",
                "320x240",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["sync"]["fps"] > 0 and result["frame"] == "320x240"
