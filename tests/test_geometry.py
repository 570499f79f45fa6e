"""The network input chosen from the training images, and the runtime's aspect warning."""

from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pytest

from anomaly_edge.metadata import OUR_SECTION, ModelMetadata
from anomaly_edge.train.geometry import (
    MAX_ASPECT_SPREAD,
    choose_input_size,
    image_sizes,
    round_to_stride,
    size_for_aspect,
)
from anomaly_edge.train.options import PadimOptions


@pytest.mark.parametrize(
    ("aspect", "stride", "expected"),
    [
        (1.0, 16, (256, 256)),
        (2.4565, 16, (256, 624)),  # bsdata/ball_screw, 565 x 230: 628.9 -> 624
        (0.75, 16, (336, 256)),  # mvtec3d/tire, 300 x 400: 341.3 -> 336
        (0.75, 32, (352, 256)),  # the same with a stride-32 layer: 341.3 -> 352
        (1260 / 500, 16, (256, 640)),  # the 500 x 1260 parts: 645 -> 640
        (1.02, 16, (256, 256)),  # a hair off square stays square
    ],
)
def test_short_side_is_the_base_and_the_long_side_keeps_the_aspect(aspect, stride, expected):
    size = size_for_aspect(aspect, stride=stride)
    assert size == expected
    assert all(side % stride == 0 for side in size)


def test_long_side_is_capped():
    assert size_for_aspect(10.0) == (256, 1024)
    assert size_for_aspect(0.1) == (1024, 256)
    assert size_for_aspect(10.0, max_aspect=2.5) == (256, 640)
    assert size_for_aspect(3.0, base=128) == (128, 384)


def test_bad_geometry_arguments_are_refused():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive number"):
            size_for_aspect(bad)
    with pytest.raises(ValueError, match="not a multiple"):
        size_for_aspect(1.0, base=250, stride=16)
    with pytest.raises(ValueError, match="no training image"):
        choose_input_size([])


def test_rounding_to_the_stride():
    assert [round_to_stride(v, 16) for v in (1, 7.9, 8.1, 23.9, 24.1, 640)] == [
        16,
        16,
        16,
        16,
        32,
        640,
    ]


def test_median_aspect_of_a_varied_set_ignores_a_few_odd_images():
    sizes = [(300, 100)] + [(200, 400)] * 8 + [(100, 100)]  # tall, wide, square (h, w)
    geometry = choose_input_size(sizes)
    assert geometry.median_aspect == pytest.approx(2.0)
    assert geometry.aspect_spread == pytest.approx(1.0) and geometry.shapes_agree
    assert geometry.size == (256, 512)
    assert geometry.train_aspect == pytest.approx(2.0)
    assert geometry.source == "data" and geometry.images_measured == 10
    # 2:1 and 1:2 weigh the same: the median of an even split is square
    assert choose_input_size([(100, 200), (200, 100)]).size == (256, 256)


def test_a_set_that_disagrees_on_shape_gets_a_square_and_no_expected_aspect():
    # aspects spread like magnetic_tile's (interquartile 0.71-1.32): no one shape fits
    aspects = [0.4, 0.57, 0.7, 0.8, 0.85, 0.9, 1.0, 1.2, 1.35, 1.6, 2.5]
    sizes = [(200, round(200 * a)) for a in aspects]
    geometry = choose_input_size(sizes)
    assert geometry.aspect_spread > MAX_ASPECT_SPREAD and not geometry.shapes_agree
    assert geometry.median_aspect == pytest.approx(0.9, abs=0.01)
    assert geometry.size == (256, 256)
    assert geometry.train_aspect is None  # frames of any shape are expected
    # a modest spread keeps the median's shape: 2.0-2.4 around 2.2
    close = choose_input_size([(100, 200), (100, 220), (100, 220), (100, 240)])
    assert close.shapes_agree and close.size == (256, 560)


def test_image_sizes_reads_headers(tmp_path):
    paths = []
    for i, (h, w) in enumerate([(50, 120), (80, 60)]):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), np.zeros((h, w, 3), np.uint8))
    assert image_sizes(paths) == [(50, 120), (80, 60)]


# ---- train(): chosen from the data, or overridden ---------------------------------------------


def _wide_category(root, count=10, shape=(48, 120)):
    """A tiny category of 2.5:1 images (h, w = 48 x 120)."""
    rng = np.random.default_rng(0)
    for folder, n in (("train/good", count), ("test/good", 3), ("test/bad", 3)):
        for i in range(n):
            image = rng.integers(90, 110, (*shape, 3), dtype=np.uint8)
            if folder == "test/bad":
                image[10:20, 30:40] = 255
                mask = np.zeros(shape, np.uint8)
                mask[10:20, 30:40] = 255
                (root / "ground_truth" / "bad").mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / "ground_truth" / "bad" / f"{i}_mask.png"), mask)
            (root / folder).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / folder / f"{i}.png"), image)
    return root


def test_train_picks_the_input_from_the_data_and_records_it(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from anomaly_edge.train import api

    # a smaller base keeps this test fast; the rule is the same
    monkeypatch.setattr(
        api,
        "choose_input_size",
        lambda sizes, stride: choose_input_size(sizes, base=64, stride=stride),
    )
    root = _wide_category(tmp_path / "wide")
    result = api.train(root, options=PadimOptions(pool=1), out=tmp_path / "run", export=False)
    assert result.metadata.input_size == (64, 160)  # 2.5:1, long side on the stride 16
    assert result.model.input_size == (64, 160)
    assert result.metadata.train_aspect == pytest.approx(2.5)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["image_size"] == [64, 160]
    assert written["input_geometry"] == {
        "input_size": [64, 160],
        "source": "data",
        "median_aspect": 2.5,
        "aspect_spread": 1.0,
        "images_measured": 10,
    }

    overridden = api.train(root, image_size=64, options=PadimOptions(pool=1), export=False)
    assert overridden.metadata.input_size == (64, 64)
    assert overridden.metrics["input_geometry"]["source"] == "user"
    assert overridden.metadata.train_aspect == pytest.approx(2.5)  # still what training saw
    with pytest.raises(ValueError, match="each >= 32"):
        api.train(root, image_size=(16, 64), export=False)


def test_cli_defaults_to_the_lite_backbone_and_the_data_geometry():
    from anomaly_edge.cli.main import build_parser

    args = build_parser().parse_args(["train", "--data", "d", "--out", "o"])
    assert args.backbone == "efficientnet_lite0" and args.image_size is None
    args = build_parser().parse_args(
        ["train", "--data", "d", "--out", "o", "--image-size", "256x640"]
    )
    assert args.image_size == (256, 640)


# ---- rt_info and the runtime warning ---------------------------------------------------------


def _metadata(**extra) -> ModelMetadata:
    return ModelMetadata(
        model="padim",
        backbone="efficientnet_lite0",
        input_size=(64, 160),
        mean=(0, 0, 0),
        std=(1, 1, 1),
        image_threshold=1,
        pixel_threshold=1,
        image_min=0,
        image_max=2,
        pixel_min=0,
        pixel_max=2,
        **extra,
    )


def test_train_aspect_round_trips_through_rt_info_and_old_irs_lack_it():
    ov = pytest.importorskip("openvino")
    from openvino import opset13 as ops

    def model() -> ov.Model:
        image = ops.parameter([1, 3, 64, 160], ov.Type.f32)
        score = ops.reduce_mean(image, np.array([1], dtype=np.int64), keep_dims=True)
        return ov.Model([score], [image])  # a [1, 1, H, W] map, as the runtime requires

    new = model()
    _metadata(train_aspect=2.46).write_to(new)
    assert ModelMetadata.read_from(new).train_aspect == pytest.approx(2.46)
    old = model()
    _metadata().write_to(old)  # what every IR before this change holds: no such key
    assert not old.has_rt_info([OUR_SECTION, "train_aspect"])
    assert ModelMetadata.read_from(old).train_aspect is None


@pytest.fixture
def square_trained_ir(synthetic_ir, tmp_path):
    """The synthetic 64x64 IR, marked as trained on square images."""
    ov = pytest.importorskip("openvino")
    graph = ov.Core().read_model(synthetic_ir)
    graph.set_rt_info("1.0", [OUR_SECTION, "train_aspect"])
    path = tmp_path / "square.xml"
    ov.save_model(graph, str(path), compress_to_fp16=False)
    return path


def test_frames_of_another_aspect_warn_once_per_model(square_trained_ir):
    from anomaly_edge import AnomalyModel

    model = AnomalyModel(square_trained_ir, device="CPU", cache_dir=None)
    square = np.full((100, 103, 3), 128, np.uint8)  # 3 % off: within the tolerance
    wide = np.full((100, 200, 3), 128, np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict(square)
        assert not caught
        model.predict(wide)
        model.predict(wide)
        model.submit(wide)
        model.drain()
        list(model.predict_iter([wide, wide]))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "200x100" in messages[0] and "1.00" in messages[0]
    model.close()

    # the asynchronous path (streams) warns too, once, on a fresh model
    model = AnomalyModel(square_trained_ir, device="CPU", cache_dir=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for index in range(3):
            model.submit(wide, userdata=index)
        model.drain()
    assert len(caught) == 1
    model.close()


def test_irs_without_a_training_aspect_never_warn(synthetic_ir):
    from anomaly_edge import AnomalyModel

    model = AnomalyModel(synthetic_ir, device="CPU", cache_dir=None)
    assert model.metadata.train_aspect is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(np.full((100, 300, 3), 128, np.uint8))


def test_a_broken_training_image_is_named(tmp_path):
    pytest.importorskip("torch")
    from anomaly_edge.train import train
    from anomaly_edge.train.data import DatasetError

    root = _wide_category(tmp_path / "wide", count=3)
    (root / "train" / "good" / "1.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match=r"1\.png"):
        image_sizes(sorted((root / "train" / "good").iterdir()))
    with pytest.raises(DatasetError, match=r"1\.png"):
        train(root, export=False)


def test_cli_summary_says_which_input_was_chosen():
    from anomaly_edge.cli.train import summary_table

    metrics = {"image_size": [256, 624], "input_geometry": {"source": "data"}}
    assert "624 x 256 (w x h), from the training images" in summary_table(metrics, None, None)
    metrics["input_geometry"]["source"] = "user"
    assert "--image-size" in summary_table(metrics, None, None)
