"""Malformed rt_info is refused at load with a clear ModelLoadError, never a traceback."""

from __future__ import annotations

import re

import pytest

from anomaly_edge.cli.common import ExitCode
from anomaly_edge.cli.main import main
from anomaly_edge.errors import ModelLoadError
from anomaly_edge.model import AnomalyModel
from tests.ir_factory import build_synthetic_ir


def _edited(tmp_path, key, value):
    """A synthetic IR whose anomaly_edge rt_info ``key`` was edited to ``value``."""
    xml = build_synthetic_ir(tmp_path / f"{key}.xml")
    text = xml.read_text()
    pattern = rf'(<anomaly_edge>.*?<{key} value=")[^"]*(")'
    text, count = re.subn(pattern, rf"\g<1>{value}\g<2>", text, flags=re.S)
    assert count == 1, key
    xml.write_text(text)
    return xml


CASES = [
    ("format_version", "one", "format_version"),
    ("input_size", "32 32", "does not match the graph"),
    ("input_size", "64", "malformed"),
    ("mean", "128 128", "3 values"),
    ("std", "0 0 0", "std must be positive"),
    ("std", "64 nan 64", "finite"),
    ("image_threshold", "abc", "malformed"),
    ("metrics", "{not json", "malformed"),
    ("task", "everything", "malformed"),
    ("image_min", "5", "image_min 5 is above image_max 2"),  # the score scale collapsed
    ("pixel_max", "-1", "pixel_min 0 is above pixel_max -1"),
]


@pytest.mark.parametrize(("key", "value", "message"), CASES)
def test_malformed_metadata_is_a_model_error(tmp_path, capsys, key, value, message):
    xml = _edited(tmp_path, key, value)
    with pytest.raises(ModelLoadError, match=message):
        AnomalyModel(xml, "CPU")
    for command in (["info", str(xml)], ["predict", "--model", str(xml), str(xml)]):
        assert main(command) == ExitCode.MODEL
        err = capsys.readouterr().err
        assert message.split()[0] in err and "Traceback" not in err


def test_wrong_output_rank_is_a_model_error(tmp_path):
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    from anomaly_edge.metadata import ModelMetadata

    image = ops.parameter([1, 3, 16, 16], ov.Type.f32, name="image")
    flat = ops.reduce_mean(image, np.array([1], dtype=np.int64), keep_dims=False)  # [1, H, W]
    model = ov.Model([flat], [image], "rank3")
    ModelMetadata(
        model="x",
        backbone="x",
        input_size=(16, 16),
        mean=(0, 0, 0),
        std=(1, 1, 1),
        image_threshold=1,
        pixel_threshold=1,
        image_min=0,
        image_max=2,
        pixel_min=0,
        pixel_max=2,
    ).write_to(model)
    ov.save_model(model, str(tmp_path / "m.xml"))
    with pytest.raises(ModelLoadError, match=r"\[1, 1, H, W\] map"):
        AnomalyModel(tmp_path / "m.xml", "CPU")
