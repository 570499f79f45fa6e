"""export_ir: the IR's interface, metadata, precisions, atomic writes, torch parity, INT8."""

from __future__ import annotations

import os
import re

import numpy as np
import openvino as ov
import pytest
import torch

from anomaly_edge import AnomalyModel
from anomaly_edge.metadata import ModelMetadata
from anomaly_edge.train.export import (
    PARITY_PROPERTIES,
    AccuracyDropError,
    ValidationSet,
    compare_maps,
    export_ir,
    ir_size_mb,
)
from anomaly_edge.train.metrics import auroc as image_auroc
from tests.toy_models import fitted_toy, synthetic_images, to_input

# openvino.convert_model sends usage telemetry unless it runs in CI; offline, every attempt
# costs seconds per export. (CI=true is what OpenVINO's own opt-out check looks at.)
os.environ.setdefault("CI", "true")


@pytest.fixture(scope="module")
def toy():
    return fitted_toy()


@pytest.fixture(scope="module")
def exported(toy, tmp_path_factory):
    """The toy exported once per precision (exports take seconds; tests share them)."""
    model, metadata = toy
    root = tmp_path_factory.mktemp("exported")
    return {p: export_ir(model, metadata, root / p.lower(), precision=p) for p in ("FP32", "FP16")}


@pytest.fixture(scope="module")
def evaluation_set():
    normal = synthetic_images(12, seed=10)
    defect = synthetic_images(12, anomalous=True, seed=11)
    return to_input(np.concatenate([normal, defect])), [0] * 12 + [1] * 12


def ir_scores(xml, images):
    """Image scores of the IR at float32 (parity is about the IR, not the CPU's bf16 choice)."""
    request = ov.Core().compile_model(str(xml), "CPU", PARITY_PROPERTIES).create_infer_request()
    scores = []
    for x in images:
        request.infer({0: x[None].numpy()})
        scores.append(float(request.get_output_tensor(0).data.max()))
    return scores


def test_ir_interface_and_metadata(toy, exported):
    _, metadata = toy
    xml = exported["FP32"]
    assert xml.name == "model.xml" and xml.with_suffix(".bin").is_file()
    graph = ov.Core().read_model(str(xml))
    assert [i.get_any_name() for i in graph.inputs] == ["image"]
    assert [o.get_any_name() for o in graph.outputs] == ["anomaly_map"]
    assert list(graph.inputs[0].get_shape()) == [1, 3, 64, 64]
    assert list(graph.outputs[0].get_shape()) == [1, 1, 64, 64]
    stored = ModelMetadata.read_from(graph)
    assert stored.precision == "FP32"
    assert stored.image_threshold == pytest.approx(metadata.image_threshold)
    assert metadata.precision == "FP16"  # the caller's metadata is not modified
    assert sorted(p.name for p in xml.parent.iterdir()) == ["model.bin", "model.xml"]


def test_runtime_runs_the_export(exported):
    runtime = AnomalyModel(exported["FP16"], "CPU", color="RGB", cache_dir=None)
    normal = runtime.predict(synthetic_images(1, seed=20)[0])
    defect = runtime.predict(synthetic_images(1, anomalous=True, seed=21)[0])
    assert not normal.label and defect.label and defect.boxes


def test_fp32_maps_match_torch(toy, exported, evaluation_set, isa_level):
    model, _ = toy
    images, labels = evaluation_set
    xml = exported["FP32"]
    parity = compare_maps(model, xml, images)
    assert parity["correlation"] >= 0.999
    with torch.no_grad():
        torch_scores = [float(model(x[None]).max()) for x in images]
    assert round(image_auroc(ir_scores(xml, images), labels), 3) == round(
        image_auroc(torch_scores, labels), 3
    )


def test_fp16_is_smaller_and_close(toy, exported, evaluation_set):
    model, _ = toy
    images, labels = evaluation_set
    fp32, fp16 = exported["FP32"], exported["FP16"]
    assert fp16.with_suffix(".bin").stat().st_size < 0.6 * fp32.with_suffix(".bin").stat().st_size
    parity = compare_maps(model, fp16, images)
    assert parity["correlation"] >= 0.999
    assert (
        abs(
            image_auroc(ir_scores(fp16, images), labels)
            - image_auroc(ir_scores(fp32, images), labels)
        )
        <= 0.01
    )
    assert ir_size_mb(fp16) > 0


def test_int8_reports_the_accuracy_change(toy, evaluation_set, tmp_path):
    model, metadata = toy
    images, labels = evaluation_set
    calibration = to_input(synthetic_images(16, seed=1))
    xml = export_ir(
        model,
        metadata,
        tmp_path,
        precision="INT8",
        calibration_images=calibration,
        validation=ValidationSet(list(images), labels),
        max_accuracy_drop=0.05,
    )
    stored = ModelMetadata.read_from(ov.Core().read_model(str(xml)))
    report = stored.metrics["int8"]
    assert stored.precision == "INT8" and report["metric"] == "image_auroc"
    assert report["drop"] <= 0.05 and report["images"] == 24
    assert compare_maps(model, xml, images)["correlation"] > 0.95

    # A bound that cannot be met: refused, and nothing is written.
    with pytest.raises(AccuracyDropError, match="nothing was written"):
        export_ir(
            model,
            metadata,
            tmp_path / "refused",
            precision="INT8",
            calibration_images=calibration,
            max_accuracy_drop=-1.0,
            validation=ValidationSet(list(images), labels),
        )
    assert not (tmp_path / "refused" / "model.xml").exists()


def test_fp16_is_checked_against_fp32_on_request(toy, evaluation_set, tmp_path):
    model, metadata = toy
    images, labels = evaluation_set
    xml = export_ir(
        model,
        metadata,
        tmp_path,
        precision="FP16",
        max_accuracy_drop=0.01,
        validation=ValidationSet(list(images), labels),
    )
    report = ModelMetadata.read_from(ov.Core().read_model(str(xml))).metrics["fp16"]
    assert report["metric"] == "image_auroc" and abs(report["drop"]) <= 0.01
    with pytest.raises(AccuracyDropError, match="FP16 lowered"):
        export_ir(
            model,
            metadata,
            tmp_path / "refused",
            precision="FP16",
            max_accuracy_drop=-1.0,
            validation=ValidationSet(list(images), labels),
        )
    assert not (tmp_path / "refused" / "model.xml").exists()


def test_int8_with_a_custom_accuracy_function(toy, tmp_path):
    model, metadata = toy
    calibration = [(x, 0) for x in to_input(synthetic_images(8, seed=1))]  # loader-style items
    calls = []

    def accuracy(infer):
        calls.append(infer)
        return float(-infer(to_input(synthetic_images(1, seed=5)).numpy()).max())

    xml = export_ir(
        model,
        metadata,
        tmp_path,
        precision="INT8",
        calibration_images=calibration,
        validation=accuracy,
    )
    assert len(calls) == 2
    report = ModelMetadata.read_from(ov.Core().read_model(str(xml))).metrics["int8"]
    assert report["metric"] == "custom"


def test_bad_arguments(toy, tmp_path):
    model, metadata = toy
    with pytest.raises(ValueError, match="precision"):
        export_ir(model, metadata, tmp_path, precision="INT4")
    with pytest.raises(ValueError, match="calibration_images"):
        export_ir(model, metadata, tmp_path, precision="INT8")
    with pytest.raises(ValueError, match="INT8"):
        export_ir(model, metadata, tmp_path, precision="FP16", calibration_images=[])
    with pytest.raises(ValueError, match="FP32"):
        export_ir(model, metadata, tmp_path, precision="FP32", max_accuracy_drop=0.1)
    with pytest.raises(ValueError, match="validation"):
        export_ir(
            model,
            metadata,
            tmp_path,
            precision="INT8",
            max_accuracy_drop=0.1,
            calibration_images=[torch.zeros(3, 64, 64)],
        )


def test_a_module_that_is_not_an_anomaly_module(toy, tmp_path):
    _, metadata = toy
    with pytest.raises(ValueError, match=r"\[1, 1, H, W\]"):
        export_ir(torch.nn.Conv2d(3, 2, 1), metadata, tmp_path)


def test_export_keeps_the_training_flag(tmp_path):
    model, metadata = fitted_toy()
    model.train()
    export_ir(model, metadata, tmp_path)
    assert model.training


def test_failed_export_leaves_the_previous_ir(toy, tmp_path, monkeypatch):
    model, metadata = toy
    xml = export_ir(model, metadata, tmp_path)
    before = xml.read_bytes(), xml.with_suffix(".bin").read_bytes()

    def crash_half_way(graph, path, compress_to_fp16=True):
        with open(path, "w") as half_written:
            half_written.write("<?xml")
        raise OSError("disk full")

    monkeypatch.setattr("anomaly_edge.train.export.ov.save_model", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        export_ir(model, metadata, tmp_path)
    assert (xml.read_bytes(), xml.with_suffix(".bin").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]


@pytest.mark.parametrize("lower", [True, False])
def test_triangular_constants_are_stored_packed(tmp_path, lower):
    import openvino.opset13 as ops

    from anomaly_edge.model_loading import save_ir
    from anomaly_edge.train.export import pack_sparse_constants

    rng = np.random.default_rng(0)
    square = rng.standard_normal((64, 40, 40)).astype(np.float32)
    factor = np.tril(square) if lower else np.triu(square)
    x = ops.parameter([64, 1, 40], ov.Type.f32, name="image")
    graph = ov.Model([ops.matmul(x, ops.constant(factor), False, False)], [x])
    dense = save_ir(graph.clone(), tmp_path / "dense" / "model.xml", compress_to_fp16=False)
    assert pack_sparse_constants(graph, min_elements=1000) == 1
    packed = save_ir(graph, tmp_path / "packed" / "model.xml", compress_to_fp16=False)
    size = {p.parent.name: p.with_suffix(".bin").stat().st_size for p in (dense, packed)}
    assert size["packed"] < 0.55 * size["dense"]
    inputs = rng.standard_normal((64, 1, 40)).astype(np.float32)
    core = ov.Core()
    expected = core.compile_model(str(dense), "CPU")(inputs)[0]
    assert np.array_equal(core.compile_model(str(packed), "CPU")(inputs)[0], expected)

    full = ov.Model([ops.matmul(x, ops.constant(square), False, False)], [x])
    assert pack_sparse_constants(full, min_elements=1000) == 0  # no structural zeros: untouched


def test_column_blocks_of_triangular_factors_are_stored_packed(tmp_path):
    """PaDiM slices its factors into column blocks; each block keeps only its non-zeros."""
    import openvino.opset13 as ops

    from anomaly_edge.model_loading import save_ir
    from anomaly_edge.train.export import pack_sparse_constants

    rng = np.random.default_rng(1)
    upper = np.triu(rng.standard_normal((64, 40, 40))).astype(np.float32)
    block = np.ascontiguousarray(upper[:, :30, 20:30])  # 20 full rows, then a triangle
    x = ops.parameter([64, 1, 30], ov.Type.f32, name="image")
    graph = ov.Model([ops.matmul(x, ops.constant(block), False, False)], [x])
    dense = save_ir(graph.clone(), tmp_path / "dense" / "model.xml", compress_to_fp16=False)
    assert pack_sparse_constants(graph, min_elements=1000) == 1
    packed = save_ir(graph, tmp_path / "packed" / "model.xml", compress_to_fp16=False)
    inputs = rng.standard_normal((64, 1, 30)).astype(np.float32)
    core = ov.Core()
    expected = core.compile_model(str(dense), "CPU")(inputs)[0]
    assert np.array_equal(core.compile_model(str(packed), "CPU")(inputs)[0], expected)
    nonzero = 20 * 10 + 10 * 11 // 2
    assert packed.with_suffix(".bin").stat().st_size < 64 * (nonzero + 1) * 4 + 2000


def test_padim_ir_is_a_small_fraction_of_anomalibs(tmp_path):
    """anomalib's ResNet18 PaDiM IR at 256x256 is 160-168 MB; the goal is at most a quarter."""
    from anomaly_edge.train.models.padim.model import Padim

    torch.manual_seed(0)
    padim = Padim("resnet18", (256, 256), pretrained=False)  # 100 channels, as anomalib
    padim.fit([torch.randn(4, 3, 256, 256)])
    metadata = ModelMetadata(
        model="padim",
        backbone="resnet18",
        input_size=(256, 256),
        mean=(123.7, 116.3, 103.5),
        std=(58.4, 57.1, 57.4),
        image_threshold=1.0,
        pixel_threshold=1.0,
        image_min=0.0,
        image_max=2.0,
        pixel_min=0.0,
        pixel_max=2.0,
    )
    xml = export_ir(padim, metadata, tmp_path, precision="FP16")
    assert ir_size_mb(xml) < 160 / 4
    # measured 16.0 MB with the default pool 2 (8.3 MB with pool 4, 47 MB with pool 1)
    assert ir_size_mb(xml) < 20


def _export_pair(toy, folder, threshold):
    import dataclasses

    model, metadata = toy
    return export_ir(
        model, dataclasses.replace(metadata, image_threshold=threshold), folder, precision="FP32"
    )


def test_a_kill_between_the_renames_is_refused_at_load(toy, tmp_path, monkeypatch):
    from anomaly_edge.errors import ModelLoadError
    from anomaly_edge.train import export as export_module

    folder = tmp_path / "ir"
    xml = _export_pair(fitted_toy((32, 32)), folder, 1.0)  # the old pair: other weights
    renames, real_replace = [], os.replace

    def replace_then_die(src, dst):
        if renames:
            raise KeyboardInterrupt  # killed after the .bin landed, before the .xml did
        renames.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(export_module.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        _export_pair(toy, folder, 2.0)
    monkeypatch.undo()
    assert renames == [folder / "model.bin"]
    with pytest.raises(ModelLoadError, match=r"does not belong to model\.xml"):
        AnomalyModel(xml, "CPU")
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_irs_without_the_stamp_still_load(toy, tmp_path):
    xml = _export_pair(toy, tmp_path / "ir", 1.0)
    text = xml.read_text()
    assert "weights_sha256" in text
    import re

    xml.write_text(re.sub(r'<weights_(sha256|bytes) value="[^"]*" />', "", text))
    assert "weights_sha256" not in xml.read_text()
    AnomalyModel(xml, "CPU").close()


def test_a_model_saved_again_does_not_carry_a_stale_stamp(toy, tmp_path):
    from anomaly_edge.model_loading import read_ir

    xml = _export_pair(toy, tmp_path / "ir", 1.0)
    graph = read_ir(xml)
    again = tmp_path / "again.xml"
    ov.save_model(graph, str(again), compress_to_fp16=True)  # other bytes
    # the weights changed, so the export's fingerprint would refuse them if it were carried over
    assert again.with_suffix(".bin").read_bytes() != xml.with_suffix(".bin").read_bytes()
    assert not re.search(r'<weights_sha256 value="[^"]+"', again.read_text())
    with AnomalyModel(again, "CPU") as model:
        assert model.image_threshold == pytest.approx(1.0)


def test_int8_is_the_smallest_ir(toy, exported, evaluation_set, tmp_path):
    model, metadata = toy
    images, _ = evaluation_set
    xml = export_ir(
        model, metadata, tmp_path / "int8", precision="INT8", calibration_images=images[:8]
    )
    # the weights: features in INT8, the head in FP16 (the toy's .xml text outweighs them)
    fp16_bin = exported["FP16"].with_suffix(".bin").stat().st_size
    assert xml.with_suffix(".bin").stat().st_size < fp16_bin
    text = xml.read_text()
    assert 'element_type="i8"' in text


def test_quantize_has_no_auroc_of_its_own():
    import anomaly_edge.train.quantize as quantize

    assert not hasattr(quantize, "image_auroc")  # one AUROC: train/metrics.auroc
