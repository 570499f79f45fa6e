"""ONNX export: `export RUN --format onnx` writes a model.onnx that carries the IR's metadata
(metadata_props) and that the runtime loads through OpenVINO's ONNX frontend, predicting what
the IR predicts."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from anomaly_edge import AnomalyModel
from anomaly_edge.cli.main import main
from anomaly_edge.errors import ModelLoadError
from anomaly_edge.metadata import ModelMetadata
from anomaly_edge.model_loading import read_ir
from anomaly_edge.onnx_metadata import OnnxFormatError, encode_props, read_props
from tests.test_data_factory import make_category

F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # parity is measured in float32 (see train/export.py)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package (pip install onnx)")
    from anomaly_edge.train import train

    data = make_category(
        tmp_path_factory.mktemp("data") / "cat", train=10, good=4, defects={"d": 6}
    )
    out = tmp_path_factory.mktemp("runs") / "run"
    train(data, backbone="efficientnet_lite0", image_size=64, out=out, precision="FP32")
    assert main(["export", str(out), "--format", "onnx"]) == 0
    return data, out


def test_the_onnx_file_carries_the_irs_metadata(run):
    _, out = run
    onnx_meta = ModelMetadata.read_from(read_ir(out / "model.onnx"))
    ir_meta = ModelMetadata.read_from(read_ir(out / "model.xml"))
    assert onnx_meta == ir_meta
    props = read_props(out / "model.onnx")
    assert props["anomaly_edge.image_threshold"] == repr(ir_meta.image_threshold)
    assert props["model_info.model_type"] == "AnomalyDetection"


def test_the_onnx_package_reads_the_same_props(run):
    import onnx

    model = onnx.load(str(run[1] / "model.onnx"))
    onnx.checker.check_model(model)
    assert {p.key: p.value for p in model.metadata_props} == read_props(run[1] / "model.onnx")


def test_onnx_predicts_what_the_ir_predicts(run):
    data, out = run
    ir = AnomalyModel(out / "model.xml", "CPU", properties=F32)
    onnx_model = AnomalyModel(out / "model.onnx", "CPU", properties=F32)
    images = sorted((data / "test").glob("*/*.png"))
    ir_maps, onnx_maps = [], []
    for path in images:
        frame = cv2.imread(str(path))
        expected, got = ir.predict(frame), onnx_model.predict(frame)
        assert got.label == expected.label, path
        assert [b.to_dict() for b in got.boxes] == [b.to_dict() for b in expected.boxes], path
        assert got.raw_score == pytest.approx(expected.raw_score, rel=1e-4)
        ir_maps.append(expected.anomaly_map)
        onnx_maps.append(got.anomaly_map)
    correlation = np.corrcoef(np.ravel(ir_maps), np.ravel(onnx_maps))[0, 1]
    assert correlation >= 0.999


def test_cli_predict_takes_the_onnx_file(run, capsys):
    data, out = run
    image = next((data / "test" / "d").glob("*.png"))
    assert main(["predict", str(out / "model.onnx"), str(image), "--device", "CPU"]) == 0
    assert "anomal" in capsys.readouterr().out.lower()
    # info counts the one file: an ONNX model has no .bin beside it (a model.bin that happens
    # to sit there belongs to the IR)
    assert main(["info", str(out / "model.onnx"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size_mb"] == round((out / "model.onnx").stat().st_size / 1e6, 2)


def test_out_names_the_file_or_its_folder(run, tmp_path):
    _, out = run
    assert main(["export", str(out), "--format", "onnx", "--out", str(tmp_path / "a.onnx")]) == 0
    assert main(["export", str(out), "--format", "onnx", "--out", str(tmp_path / "dir")]) == 0
    assert read_props(tmp_path / "a.onnx") == read_props(tmp_path / "dir" / "model.onnx")


@pytest.mark.parametrize(
    "extra", [["--precision", "INT8"], ["--precision", "FP16"], ["--repository", "x"]]
)
def test_options_that_do_not_apply_to_onnx_are_refused(run, extra, capsys):
    assert main(["export", str(run[1]), "--format", "onnx", *extra]) == 2
    assert "--format onnx" in capsys.readouterr().err


def test_an_ir_is_not_converted(run, capsys):
    assert main(["export", str(run[1] / "model.xml"), "--format", "onnx"]) == 2
    assert "checkpoint.pt" in capsys.readouterr().err


def test_an_onnx_file_without_our_metadata_is_refused(run, tmp_path):
    import onnx

    model = onnx.load(str(run[1] / "model.onnx"))
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))
    with pytest.raises(ModelLoadError, match="no anomaly-edge metadata in its metadata_props"):
        read_ir(foreign)


def test_a_truncated_or_foreign_file_is_a_clear_error(run, tmp_path):
    whole = (run[1] / "model.onnx").read_bytes()
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelLoadError, match="could not be read as an ONNX model"):
        read_ir(truncated)
    with pytest.raises(ModelLoadError, match="does not exist"):
        read_ir(tmp_path / "none.onnx")


def test_props_round_trip_without_onnx(tmp_path):
    props = {"anomaly_edge.a": "1.5", "model_info.labels": "Normal Anomaly", "k": "é" * 300}
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07" + encode_props(props))  # ir_version = 7, then the props
    assert read_props(path) == props
    path.write_bytes(b"\x72\xff")  # a field longer than the file
    with pytest.raises(OnnxFormatError):
        read_props(path)


def test_train_writes_onnx_when_asked(run, tmp_path):
    data, _ = run
    out = tmp_path / "onnx_run"
    argv = ["train", "--data", str(data), "--out", str(out), "--image-size", "64", "--quiet"]
    assert main([*argv, "--export-format", "onnx"]) == 0
    assert (out / "model.onnx").is_file() and not (out / "model.xml").exists()
    model = AnomalyModel(out / "model.onnx", device="CPU", cache_dir=None)
    assert (
        model.metadata.image_threshold
        == json.loads((out / "metrics.json").read_text())["image_threshold"]
    )
    with pytest.raises(ValueError, match="'onnx', 'both'"):
        from anomaly_edge.train import train

        train(data, out=tmp_path / "bad", export="tflite")
    assert not (tmp_path / "bad").exists()
