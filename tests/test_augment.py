"""Training augmentation (the deployment camera's path) and what training records for the line:
the expected false-alarm rate and the normal score range."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anomaly_edge.cli.main import main
from anomaly_edge.metadata import ModelMetadata
from anomaly_edge.model_loading import read_ir
from anomaly_edge.train import train
from anomaly_edge.train.augment import (
    DEFAULT,
    Augmentation,
    AugmentedDataset,
    parse_augment,
)
from anomaly_edge.train.data import ImageDataset, scan_category
from tests.test_data_factory import make_category


def texture(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((96, 128, 3)) * 255).astype(np.uint8)


def test_apply_compresses_and_jitters_a_little_and_is_deterministic():
    image = texture()
    mild = Augmentation(quality=(90, 90), brightness=0.0, contrast=0.0)
    harsh = Augmentation(quality=(10, 10), brightness=0.0, contrast=0.0)
    out = mild.apply(image, np.random.default_rng(1))
    assert out.shape == image.shape and out.dtype == np.uint8
    error_mild = np.abs(out.astype(int) - image).mean()
    error_harsh = np.abs(harsh.apply(image, np.random.default_rng(1)).astype(int) - image).mean()
    assert 0 < error_mild < error_harsh
    jitter = Augmentation(quality=(100, 100), brightness=0.05, contrast=0.0)
    shift = jitter.apply(image, np.random.default_rng(2)).astype(int).mean() - image.mean()
    assert abs(shift) <= 0.05 * 255 + 2
    again = DEFAULT.apply(image, np.random.default_rng(7))
    assert np.array_equal(again, DEFAULT.apply(image, np.random.default_rng(7)))


def test_parse_augment():
    assert parse_augment("off") is None and parse_augment(None) is None
    assert parse_augment(False) is None
    assert parse_augment("on") == DEFAULT and parse_augment(True) == DEFAULT
    custom = parse_augment("jpeg=30-60,jitter=0.02,copies=2")
    assert custom == Augmentation(quality=(30, 60), brightness=0.02, contrast=0.02, copies=2)
    assert parse_augment("jpeg=50").quality == (50, 50)
    for bad in ("jpeg=0-50", "copies=0", "blur=3", "jpeg=x"):
        with pytest.raises(ValueError, match=r"augment|quality|copies"):
            parse_augment(bad)


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return make_category(
        tmp_path_factory.mktemp("data") / "cat", train=8, good=6, defects={"scratch": 5, "spot": 5}
    )


def test_augmented_dataset_keeps_the_originals_and_adds_copies(category):
    samples = scan_category(category).train
    base = ImageDataset(samples, 64)
    data = AugmentedDataset(base, Augmentation(copies=2), seed=0)
    assert len(data) == 3 * len(base)
    assert torch.equal(data[0]["image"], base[0]["image"])
    copy = data[len(base)]["image"]
    assert copy.shape == base[0]["image"].shape and not torch.equal(copy, base[0]["image"])
    assert torch.equal(
        copy, AugmentedDataset(base, Augmentation(copies=2), seed=0)[len(base)]["image"]
    )


def test_train_with_augmentation_records_it(category):
    result = train(
        category,
        backbone="efficientnet_lite0",
        image_size=64,
        export=False,
        augment="jpeg=50-90,copies=1",
    )
    assert result.metrics["augment"]["quality"] == [50, 90] or tuple(
        result.metrics["augment"]["quality"]
    ) == (50, 90)
    assert result.metrics["image_auroc"] > 0.8
    with pytest.raises(ValueError, match="augment"):
        train(
            category,
            backbone="efficientnet_lite0",
            image_size=64,
            export=False,
            augment="sharpen=2",
        )


def test_export_records_false_alarm_rate_and_normal_range(category, tmp_path, capsys):
    result = train(category, backbone="efficientnet_lite0", image_size=64, out=tmp_path / "run")
    metrics_file = tmp_path / "run" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    assert metrics_file.stat().st_mode & 0o044, "metrics.json must be readable by others"
    assert metrics["false_alarm_rate"] == 0.0  # the threshold stays above normal validation
    assert metrics["normal_validation_images"] >= 1
    metadata = ModelMetadata.read_from(read_ir(result.ir_path))
    low, high = metadata.normal_score_range
    assert low <= metadata.normal_score_median <= high < metadata.image_threshold
    assert metadata.metrics["false_alarm_rate"] == 0.0
    assert main(["info", str(result.ir_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["expected_false_alarm_rate"] == 0.0 and info["normal_score_range"] == [low, high]
