"""Broken, foreign or missing IRs are refused with ModelLoadError and a useful message."""

from __future__ import annotations

import shutil

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from anomaly_edge import AnomalyModel
from anomaly_edge.errors import ModelLoadError


@pytest.fixture
def ir_copy(synthetic_ir, tmp_path):
    xml = tmp_path / "model.xml"
    shutil.copy(synthetic_ir, xml)
    shutil.copy(synthetic_ir.with_suffix(".bin"), xml.with_suffix(".bin"))
    return xml


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        AnomalyModel(tmp_path / "nothing.xml", "CPU")


def test_missing_weights(ir_copy):
    ir_copy.with_suffix(".bin").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.bin is missing"):
        AnomalyModel(ir_copy, "CPU")


def test_not_an_xml(tmp_path):
    other = tmp_path / "model.pb"
    other.write_bytes(b"\x08\x01")
    with pytest.raises(ModelLoadError, match=r"\.xml"):
        AnomalyModel(other, "CPU")
    # .onnx files are read (exported with `export --format onnx`); one with no graph is refused
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x01")
    with pytest.raises(ModelLoadError, match="could not be read as an ONNX model"):
        AnomalyModel(onnx, "CPU")


def test_folder_holding_model_xml(ir_copy):
    assert AnomalyModel(ir_copy.parent, "CPU", cache_dir=None).metadata.model == "synthetic"


def test_truncated_xml(ir_copy):
    text = ir_copy.read_bytes()
    ir_copy.write_bytes(text[: len(text) // 2])
    with pytest.raises(ModelLoadError, match="corrupted or truncated"):
        AnomalyModel(ir_copy, "CPU")


def test_garbage_xml(ir_copy):
    ir_copy.write_bytes(b"\x00\xffnot xml at all")
    with pytest.raises(ModelLoadError, match="could not be read"):
        AnomalyModel(ir_copy, "CPU")


def test_truncated_weights(ir_copy):
    weights = ir_copy.with_suffix(".bin")
    weights.write_bytes(weights.read_bytes()[:3])
    with pytest.raises(ModelLoadError, match="corrupted or truncated"):
        AnomalyModel(ir_copy, "CPU", cache_dir=None)


def test_ir_from_another_tool(tmp_path):
    image = ops.parameter([1, 3, 32, 32], ov.Type.f32, name="image")
    out = ops.reduce_mean(image, np.array([1]), keep_dims=True)
    xml = tmp_path / "foreign.xml"
    ov.save_model(ov.Model([out], [image], "foreign"), str(xml))
    with pytest.raises(ModelLoadError, match="not exported by anomaly-edge"):
        AnomalyModel(xml, "CPU")


def test_ir_with_two_outputs(tmp_path):
    image = ops.parameter([1, 3, 32, 32], ov.Type.f32, name="image")
    a = ops.reduce_mean(image, np.array([1]), keep_dims=True)
    xml = tmp_path / "two.xml"
    ov.save_model(ov.Model([a, ops.relu(a)], [image], "two"), str(xml))
    with pytest.raises(ModelLoadError, match="one input and one output"):
        AnomalyModel(xml, "CPU")


class _CoreWhoseCacheBreaks:
    """An OpenVINO Core whose compile fails whenever the model cache is used, as when another
    process removes a blob while this one reads it."""

    def __init__(self, real: ov.Core) -> None:
        self.real, self.configs = real, []

    def __getattr__(self, name):  # everything but compiling, as the real Core does it
        return getattr(self.real, name)

    def compile_model(self, model, device, config):
        self.configs.append(dict(config))
        if "CACHE_DIR" in config:
            raise RuntimeError("Exception from src/core.cpp\ncannot set permissions: No such file")
        return self.real.compile_model(model, device, config)


def test_a_broken_model_cache_costs_a_warning_not_the_load(ir_copy, tmp_path, monkeypatch):
    from anomaly_edge import model_loading

    core = _CoreWhoseCacheBreaks(model_loading.shared_core())
    monkeypatch.setattr(model_loading, "shared_core", lambda: core)
    with pytest.warns(UserWarning, match="model cache skipped.*No such file"):
        model = AnomalyModel(ir_copy, device="CPU", cache_dir=tmp_path / "cache")
    assert model.predict(np.zeros((64, 64, 3), np.uint8)).score >= 0.0
    assert "CACHE_DIR" in core.configs[0] and "CACHE_DIR" not in core.configs[1]
