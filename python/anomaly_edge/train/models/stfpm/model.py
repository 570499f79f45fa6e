"""STFPM's model and loss (Wang, Wu, Cui and Lu, BMVC 2021); the training loop is in
:mod:`.training`, the public API in :mod:`.stfpm`.

A frozen, ImageNet-pretrained teacher and a randomly initialised student of the same architecture
see the same normal images, and the student learns to reproduce the teacher's feature maps at
three scales. The student never saw a defect, so where it disagrees with the teacher the image is
anomalous: the disagreement is the anomaly map.

Conventions (those of the paper's reference code, which anomalib follows too):

* Features are L2-normalised over channels at every position; the distance of one layer at one
  position is ``d = 0.5 * ||t/|t| - s/|s|||^2`` (so it lies in [0, 2]).
* Loss = sum over layers of ``d`` averaged over the layer's positions, **summed** over the images
  of a batch (not averaged). That is what makes the paper's SGD settings (lr 0.4, momentum 0.9)
  mean what they mean; the losses we report are divided by the number of images.
* Anomaly map = the per-layer ``d`` maps upsampled bilinearly to the input size and multiplied
  (anomalib's choice; the finest layer's map raised to the power 0.25, see below), then
  smoothed by a Gaussian blur of sigma 4 (anomalib does not blur STFPM maps; PaDiM's maps get
  the same blur). Measured on mpdd/metal_plate, EfficientNet-Lite0,
  256 px, batch 8 (image AUROC / pixel AUROC / AUPRO):

      epochs   product                product + blur 4       sum
      5        0.931 / 0.971 / 0.857  0.977 / 0.978 / 0.888  0.925 / 0.960 / 0.802
      10       0.975 / 0.987 / 0.933  0.977 / 0.988 / 0.936  0.966 / 0.987 / 0.932
      15       0.967 / 0.988 / 0.942  0.973 / 0.989 / 0.946  0.960 / 0.988 / 0.941

  The product asks a defect to show at every scale; the blur removes isolated one-position
  disagreements, which otherwise decide the maximum (the image score) of normal images.

  Checked again on all four shared categories (30 epochs, input geometry from the data, whole
  test sets), scoring one trained model per category several ways:

      map                      metal_plate*           ball_screw             tire
      product, blur 4 (dflt)   0.989 / 0.993 / 0.956  0.888 / 0.989 / 0.900  0.689 / 0.991 / 0.963
      product, no blur         0.991 / 0.992 / 0.958  0.893 / 0.973 / 0.889  0.688 / 0.985 / 0.944
      product, blur 8          0.988 / 0.990 / 0.929  0.885 / 0.989 / 0.837  0.690 / 0.991 / 0.962
      sum, blur 4              0.988 / 0.993 / 0.957  0.884 / 0.984 / 0.880  0.711 / 0.991 / 0.963
      deepest 2, blur 4        0.996 / 0.992 / 0.953  0.880 / 0.987 / 0.877  0.760 / 0.990 / 0.959

  (* metal_plate's model was trained with the warm-up/cosine schedule, see
  :mod:`.training`; the paper's constant rate scores 0.989 / 0.992 / 0.958 there.) These
  models were trained at the paper's constant rate. Leaving the finest layer out of the map
  (``map_layers=2``; the student still learns it) lifts tire's image AUROC by 0.07, where the
  finest layer's disagreements on the dark, noisy texture decide normal images' maxima, but
  costs ball_screw's small pits 0.023 AUPRO. With the default cosine-decayed rate it costs less
  and gains less (all four categories, seed 0; magnetic_tile 8 epochs):

      category        all 3, plain product   deepest 2
      metal_plate     0.991 / 0.990 / 0.952  0.994 / 0.989 / 0.947
      magnetic_tile   0.653 / 0.578 / 0.660  0.672 / 0.614 / 0.678
      ball_screw      0.876 / 0.992 / 0.932  0.886 / 0.992 / 0.926
      tire            0.713 / 0.991 / 0.963  0.736 / 0.990 / 0.956

  Between the two lies a weight on the finest layer: the map is ``d1^w * d2 * d3``
  (``fine_layer_weight``; ``w = 0`` is ``map_layers=2``, ``w = 1`` the paper's product). Its
  one-position disagreements then decide fewer image scores, while its sharp outlines still
  shape the map. Scored on the same cosine-trained models (seed 0):

      w          metal_plate            magnetic_tile          ball_screw
      1          0.991 / 0.990 / 0.952  0.653 / 0.578 / 0.660  0.876 / 0.992 / 0.933
      0.75       0.991 / 0.991 / 0.952  0.656 / 0.586 / 0.665  0.880 / 0.992 / 0.931
      0.5        0.992 / 0.990 / 0.952  0.658 / 0.594 / 0.670  0.881 / 0.992 / 0.930
      0.25 dflt  0.993 / 0.990 / 0.951  0.662 / 0.604 / 0.675  0.881 / 0.992 / 0.928
      0          0.994 / 0.989 / 0.947  0.672 / 0.614 / 0.678  0.886 / 0.992 / 0.926

      w          tire                   seed 1: metal_plate    seed 1: ball_screw
      1          0.713 / 0.991 / 0.963  0.979 / 0.991 / 0.955  0.892 / 0.992 / 0.932
      0.5        0.728 / 0.991 / 0.962  0.981 / 0.991 / 0.956  0.897 / 0.992 / 0.931
      0.25 dflt  0.740 / 0.991 / 0.961  0.981 / 0.990 / 0.954  0.903 / 0.992 / 0.930
      0          0.736 / 0.990 / 0.956  0.983 / 0.989 / 0.951  0.907 / 0.993 / 0.930

  0.25 lifts image AUROC on every set and seed (+0.002 to +0.027) for at most 0.005 AUPRO, and
  keeps every metric within 0.01 of the paper's layout (constant rate, plain product), which
  ``w = 0`` does not (metal_plate AUPRO 0.947 against 0.958). Scoring images on the deepest two
  layers while mapping all three would take the best of both (metal_plate 0.994 / 0.990 /
  0.952), but only with a second output: here an image's score is its map's maximum, in the
  IR, the tiled stitch and the post-processor alike.

  Two other maps were scored on the same models and rejected: the unnormalised squared
  distance ``mean_c (t - s)^2`` (magnetic_tile AUPRO 0.20 -> 0.68 on the constant-rate model,
  but metal_plate image AUROC 0.989 -> 0.446: a few strong channels drown the rest), and each
  layer's distance standardised per position by its mean and spread over held-out normal
  images (metal_plate image AUROC 0.997 but AUPRO 0.924; tire pixel AUROC 0.991 -> 0.904).

The teacher's batch norms are folded (it is frozen); the student's batch-norm momentum is
torch's 0.1 (see :data:`STUDENT_BN_MOMENTUM`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_edge.train.models.stfpm.history import StfpmHistory
from anomaly_edge.train.resample import gaussian_kernel_1d

Combine = Literal["product", "sum"]

STUDENT_BN_MOMENTUM = 0.1
BLUR_SIGMA = 4.0
# The finest layer's exponent in the product (its factor in a sum); measured in the docstring.
FINE_LAYER_WEIGHT = 0.25
# Checkpoints written before the weight existed combined the layers unweighted.
LEGACY_FINE_LAYER_WEIGHT = 1.0


def layer_distance(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Per-position ``0.5 * ||t/|t| - s/|s|||^2`` over channels: [N,C,h,w] x2 -> [N,1,h,w]."""
    diff = F.normalize(teacher, dim=1) - F.normalize(student, dim=1)
    return 0.5 * diff.pow(2).sum(dim=1, keepdim=True)


def stfpm_loss(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of the mean per-position distance, summed over the batch's images."""
    total = teacher[0].new_zeros(())
    for t, s in zip(teacher, student, strict=True):
        total = total + layer_distance(t, s).mean(dim=(1, 2, 3)).sum()
    return total


class Stfpm(nn.Module):
    """A trained STFPM as an anomaly module: ``forward(x [N,3,H,W] normalised) -> map [N,1,H,W]``.

    Only the teacher, the student and the map arithmetic are in the graph, so
    ``openvino.convert_model`` turns it into an IR as it is. The teacher stays in eval mode and
    frozen whatever mode the module is put in.
    """

    blur_kernel: torch.Tensor  # a buffer, registered in __init__

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        *,
        combine: Combine = "product",
        blur_sigma: float = BLUR_SIGMA,
        map_layers: int | None = None,
        fine_layer_weight: float = FINE_LAYER_WEIGHT,
    ):
        super().__init__()
        if combine not in ("product", "sum"):
            raise ValueError(f"combine must be 'product' or 'sum', got {combine!r}")
        trained = len(getattr(teacher, "layers", [])) or None
        if map_layers is not None and not (
            isinstance(map_layers, int) and 1 <= map_layers <= (trained or map_layers)
        ):
            raise ValueError(
                f"map_layers must be between 1 and the {trained} trained layers (or None for "
                f"all), got {map_layers!r}"
            )
        if not (blur_sigma >= 0 and math.isfinite(blur_sigma)):
            raise ValueError(f"blur_sigma must be >= 0 (0 = no blur), got {blur_sigma}")
        if not (
            isinstance(fine_layer_weight, int | float)
            and not isinstance(fine_layer_weight, bool)
            and math.isfinite(fine_layer_weight)
            and fine_layer_weight >= 0
        ):
            raise ValueError(
                "fine_layer_weight must be a finite number >= 0 (1 = as much as the other "
                f"layers, 0 = left out of the map), got {fine_layer_weight!r}"
            )
        for attr in ("channels", "mean", "std"):
            if getattr(teacher, attr, None) != getattr(student, attr, None):
                raise ValueError(
                    f"teacher and student differ in {attr}: they must be the "
                    "same backbone with the same layers"
                )
        self.teacher = teacher
        self.student = student
        self.combine: Combine = combine
        self.blur_sigma = float(blur_sigma)
        # The map combines the deepest ``map_layers`` layers; the finer ones still teach.
        self.map_layers = map_layers
        # The finest (first) layer's exponent in the product, or factor in the sum.
        self.fine_layer_weight = float(fine_layer_weight)
        self.register_buffer("blur_kernel", gaussian_kernel_1d(self.blur_sigma), persistent=False)
        self.teacher.requires_grad_(False)
        # Channels-last weights make PyTorch's CPU convolutions take the oneDNN path, which is
        # an order of magnitude faster for EfficientNet's depthwise convolutions; inputs may
        # stay NCHW (the first convolution's output follows the weights).
        self.to(memory_format=torch.channels_last)
        self.history: StfpmHistory | None = None
        self.eval()

    # How anomaly_edge.train.checkpoint rebuilds this module without downloading weights.
    checkpoint_factory = "anomaly_edge.train.models.stfpm.model:rebuild_stfpm"

    @property
    def init_kwargs(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "layers": list(getattr(self.teacher, "layers", [])),
            "combine": self.combine,
            "blur_sigma": self.blur_sigma,
            "map_layers": self.map_layers,
            "fine_layer_weight": self.fine_layer_weight,
        }

    # What the train API needs for the metadata, taken from the backbone.
    @property
    def backbone(self) -> str:
        return str(getattr(self.teacher, "name", type(self.teacher).__name__))

    @property
    def mean(self) -> tuple[float, float, float]:
        return tuple(self.teacher.mean)  # type: ignore[arg-type]

    @property
    def std(self) -> tuple[float, float, float]:
        return tuple(self.teacher.std)  # type: ignore[arg-type]

    def train(self, mode: bool = True) -> Stfpm:
        super().train(mode)
        self.teacher.eval()  # BatchNorm must keep the ImageNet statistics
        return self

    def distances(
        self,
        teacher: list[torch.Tensor],
        student: list[torch.Tensor],
        size: tuple[int, int] | torch.Size,
    ) -> torch.Tensor:
        """Combine per-layer distances, each upsampled to ``size``, into one [N,1,H,W] map
        (the deepest ``map_layers`` of them; the finest layer weighted by
        ``fine_layer_weight``)."""
        amap: torch.Tensor | None = None
        skip = 0 if self.map_layers is None else max(0, len(teacher) - self.map_layers)
        for index, (t, s) in enumerate(zip(teacher, student, strict=True)):
            if index < skip:
                continue
            d = F.interpolate(layer_distance(t, s), size=size, mode="bilinear", align_corners=False)
            if index == 0 and self.fine_layer_weight != 1.0:
                w = self.fine_layer_weight
                d = d * w if self.combine == "sum" else d.pow(w)
            if amap is None:
                amap = d
            elif self.combine == "product":
                amap = amap * d
            else:
                amap = amap + d
        assert amap is not None  # at least one layer, checked by the backbone
        return amap

    def blur(self, maps: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur with reflected borders, [N,1,H,W] -> same."""
        radius = (self.blur_kernel.numel() - 1) // 2
        if radius == 0:
            return maps
        maps = F.pad(maps, (radius, radius, radius, radius), mode="reflect")
        maps = F.conv2d(maps, self.blur_kernel.reshape(1, 1, 1, -1))
        return F.conv2d(maps, self.blur_kernel.reshape(1, 1, -1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(self.distances(self.teacher(x), self.student(x), x.shape[-2:]))


def build_stfpm(
    backbone: str = "resnet18",
    *,
    layers: list[str] | None = None,
    weights: str | None = None,
    combine: Combine = "product",
    blur_sigma: float = BLUR_SIGMA,
    map_layers: int | None = None,
    fine_layer_weight: float = FINE_LAYER_WEIGHT,
    seed: int = 0,
    pretrained: bool = True,
) -> Stfpm:
    """A pretrained teacher and a seeded random student of the same backbone, not yet trained
    (``pretrained=False``: a random teacher too, the structure alone)."""
    from anomaly_edge.train.backbones import build_backbone

    teacher = build_backbone(backbone, layers=layers, pretrained=pretrained, weights=weights)
    if hasattr(teacher, "fold_batchnorm"):
        teacher.fold_batchnorm()  # frozen: same outputs, about half the CPU time
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = build_backbone(backbone, layers=layers, pretrained=False)
    for module in student.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # The Lite networks carry TensorFlow's slow running-statistics decay (0.99), made
            # for long ImageNet runs; over a few hundred steps it would leave the eval-mode
            # statistics far behind the weights. torch's default follows them.
            module.momentum = STUDENT_BN_MOMENTUM
    return Stfpm(
        teacher,
        student,
        combine=combine,
        blur_sigma=blur_sigma,
        map_layers=map_layers,
        fine_layer_weight=fine_layer_weight,
    )


def rebuild_stfpm(
    backbone: str,
    layers: list[str] | None = None,
    combine: Combine = "product",
    blur_sigma: float = BLUR_SIGMA,
    map_layers: int | None = None,
    fine_layer_weight: float = LEGACY_FINE_LAYER_WEIGHT,
) -> Stfpm:
    """An untrained STFPM with the structure of :func:`build_stfpm`'s, for loading a state dict.

    Nothing is downloaded: the state dict restores every weight (the teacher's folded too). A
    checkpoint that names no ``fine_layer_weight`` predates it and weighted every layer alike.
    """
    return build_stfpm(
        backbone,
        layers=layers or None,
        combine=combine,
        blur_sigma=blur_sigma,
        map_layers=map_layers,
        fine_layer_weight=fine_layer_weight,
        pretrained=False,
    )
