"""PaDiM: Gaussians over a grid of feature positions, anomaly = Mahalanobis distance.

The paper (Defard et al. 2020, as anomalib implements it): layers 1-3 of the backbone, deeper
maps upsampled to the first layer's resolution and concatenated, a seeded random subset of the
channels, one Gaussian per position with covariance + 0.01 I, the distance map upsampled
(bilinear) to the input size and smoothed with a Gaussian blur of sigma 4 (33 taps, reflected
borders); the image score is the maximum of the map (taken in post-processing). That is
``pool=1``. Our defaults differ in measured ways, below.

Defaults, chosen on the four shared categories together (mpdd/metal_plate, magnetic_tile,
bsdata/ball_screw, mvtec3d/tire; Lite0, seed 0, input geometry from the data, AUROC and AUPRO
over the whole test set, as anomalib reports them):

* layers: anomalib's for Lite (timm ``blocks.1/2/4`` = our stage2, stage3, stage5: 24/40/112
  channels at strides 4/8/16; :func:`default_layers`); the paper's layer1-3 for the ResNets.
* channels: a seeded random 100 (Lite and ResNet18, as anomalib), 550 for Wide ResNet50.
* upsampling of the deeper maps: bilinear for Lite (higher on metal_plate, magnetic_tile
  and tire, see the table); nearest for the ResNets, as the paper and anomalib (their weights
  cannot be had offline here, so nothing was measured for them). ``upsample=`` chooses.
* Gaussian grid ``pool`` = 2 and blur sigma 2 (below; the paper blurs with sigma 4).
* the Lite models keep the normalisation they were trained with; ImageNet mean/std (what
  anomalib feeds every backbone) scored lower: metal_plate AUPRO 0.876, tire image AUROC
  0.747 (bilinear, pool 2; against 0.899 and 0.801).

Gaussian grid (``pool``): the embedding is averaged over ``pool`` x ``pool`` blocks of the
first layer's grid and the distance map is upsampled from there. Reading the Gaussians is
nearly all the cost of PaDiM's head (memory-bound), so pool 2 cuts that step and its share of
the IR 4x, and each Gaussian describes a larger, less noisy patch. Image AUROC / pixel AUROC /
AUPRO, blur sigma 4 unless said (``nearest 1`` is anomalib's layout at our input size,
``nearest 1, 256x256`` the same squashed to anomalib's square; * marks the defaults):

====================  =================  =================  =================  =================
upsample, pool        metal_plate        magnetic_tile      ball_screw         tire
                      256x256            288x256            256x624            336x256
====================  =================  =================  =================  =================
nearest 1             0.813/0.963/0.873  0.941/0.730/0.745  0.961/0.991/0.880  0.793/0.625/0.179
bilinear 1            0.843/0.971/0.892  0.948/0.748/0.748  0.957/0.991/0.870  0.802/0.708/0.265
nearest 2             0.857/0.966/0.879  0.940/0.736/0.744  0.959/0.991/0.871  0.768/0.679/0.240
bilinear 2            0.880/0.975/0.899  0.948/0.755/0.746  0.954/0.991/0.856  0.801/0.757/0.336
bilinear 2, blur 2 *  0.873/0.974/0.897  0.949/0.752/0.749  0.952/0.991/0.870  0.801/0.770/0.367
nearest 4             0.945/0.977/0.905  0.943/0.758/0.739  0.962/0.991/0.850  0.772/0.792/0.389
bilinear 4            0.965/0.983/0.915  0.953/0.773/0.738  0.961/0.989/0.821  0.770/0.822/0.461
nearest 1, 256x256    0.813/0.963/0.873  0.945/0.739/0.754  0.945/0.982/0.734  0.760/0.621/0.179
anomalib 2.7          0.848/0.967/0.884  0.952/0.745/0.747  0.940/0.984/0.748  0.762/0.582/0.146
====================  =================  =================  =================  =================

Pool 4 (the earlier default, chosen on metal_plate alone) is best there but loses localisation
where defects are small: ball_screw AUPRO 0.821-0.850 against 0.880, tire image AUROC
0.770-0.772 against 0.793. Pool 2 with bilinear upsampling and blur sigma 2 loses at most 0.010
to the paper's layout (``nearest 1`` or ``bilinear 1``) on any metric of any category:
ball_screw, AUPRO 0.8698 and image AUROC 0.952 against 0.8801 and 0.961 (with blur 4 its AUPRO
fell to 0.856); everywhere else it is within 0.002 or higher. The table's magnetic_tile column
is at the median aspect (288x256); its images vary in shape (width/height 0.36-2.6), and the
square input scored higher with every layout (``nearest 1``: 0.945/0.739/0.754 against
0.941/0.730/0.745; the defaults: 0.953/0.761/0.756 against 0.949/0.752/0.749), so a set that
disagrees on shape now gets a square input (``train/geometry.py``). With that, the defaults are
higher than anomalib 2.7 on every metric of every category. Tried and
rejected earlier: one covariance shared by 2x2 positions with their own means (metal_plate pixel
AUROC 0.957, AUPRO 0.81); the blur left out on the pooled grid (a little lower everywhere on
metal_plate).

``forward`` is a plain tensor graph (gathers and matrix products), so
``openvino.convert_model(padim, example_input=...)`` exports it with static shapes. The
inverse covariance is stored as W, the inverse of its Cholesky factor (lower triangular,
Wᵀ W = Σ⁻¹), so the distance is ‖W (x - μ)‖ with no quadratic form to assemble; the
product runs in column blocks that skip most of W's zeros. Upsampling, pooling and blur are
linear and separable, so they run as small per-axis matrices
(:mod:`anomaly_edge.train.resample`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_edge.train import efficientnet_lite
from anomaly_edge.train.backbones import DEFAULT_LAYERS, FeatureExtractor, build_backbone
from anomaly_edge.train.memory import release_freed_memory
from anomaly_edge.train.models.common import check_images
from anomaly_edge.train.resample import (
    apply_separable,
    blur_matrix,
    gaussian_kernel_1d,
    interpolation_matrix,
    pooling_matrix,
)
from anomaly_edge.train.running_gaussian import RunningGaussian

DEFAULT_CHANNELS = {"resnet18": 100, "wide_resnet50_2": 550}
LITE_DEFAULT_CHANNELS = 100
# anomalib's Lite layers: timm's blocks.1/2/4, our stages 2, 3 and 5 (strides 4/8/16)
LITE_LAYERS = ["stage2", "stage3", "stage5"]
NEAREST_UPSAMPLE = frozenset({"resnet18", "wide_resnet50_2"})  # as the paper and anomalib
UPSAMPLE_MODES = ("nearest", "bilinear")
REGULARIZATION = 0.01
BLUR_SIGMA = 2.0  # the paper and anomalib: 4 (see the module docstring)
DEFAULT_POOL = 2
TRIANGLE_BLOCKS = 4


def default_channels(backbone_name: str) -> int:
    return DEFAULT_CHANNELS.get(backbone_name, LITE_DEFAULT_CHANNELS)


def default_layers(backbone_name: str) -> list[str]:
    """The backbone layers PaDiM reads by default (see the module docstring)."""
    if backbone_name in efficientnet_lite.VARIANTS:
        return list(LITE_LAYERS)
    return list(DEFAULT_LAYERS[backbone_name])


def default_upsample(backbone_name: str) -> str:
    """How deeper feature maps are brought to the first layer's grid by default."""
    return "nearest" if backbone_name in NEAREST_UPSAMPLE else "bilinear"


def triangle_blocks(dims: int, blocks: int = TRIANGLE_BLOCKS) -> list[tuple[int, int]]:
    """Column ranges ``(lo, hi)`` that split a ``dims``-wide triangular product."""
    bounds = sorted({round(dims * i / blocks) for i in range(blocks + 1)})
    return list(itertools.pairwise(bounds))


class Padim(nn.Module):
    """PaDiM anomaly module: ``forward(x [N,3,H,W] normalised) -> raw anomaly map [N,1,H,W]``.

    ``input_size`` is fixed at construction (one Gaussian per position). Call :meth:`fit`
    with batches of normal images before use. The backbone's batch norms are folded (it is
    frozen); the module is always in eval mode. ``upsample`` (``"nearest"`` or
    ``"bilinear"``) says how deeper layers reach the first layer's grid; the default depends
    on the backbone (see :func:`default_upsample`). ``pool`` averages the embedding over
    ``pool`` x ``pool`` blocks of that grid before the Gaussians (1 = one Gaussian per
    first-layer position, as in the paper; default 2, see the module docstring).
    """

    # Buffers registered in __init__, declared so that type checkers see tensors rather than
    # the `Tensor | Module` that nn.Module.__getattr__ is typed to return.
    mean: torch.Tensor
    whiten_t: torch.Tensor
    to_input_rows: torch.Tensor
    to_input_cols_t: torch.Tensor

    def __init__(
        self,
        backbone: FeatureExtractor | str = "efficientnet_lite0",
        input_size: tuple[int, int] = (256, 256),
        n_channels: int | None = None,
        seed: int = 0,
        blur_sigma: float = BLUR_SIGMA,
        regularization: float = REGULARIZATION,
        *,
        layers: list[str] | None = None,
        pretrained: bool = True,
        weights: str | None = None,
        upsample: str | None = None,
        pool: int = DEFAULT_POOL,
    ) -> None:
        super().__init__()
        if upsample is not None and upsample not in UPSAMPLE_MODES:
            raise ValueError(
                f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}"
            )
        if isinstance(pool, bool) or not isinstance(pool, int) or not 1 <= pool <= 16:
            raise ValueError(f"pool must be an integer from 1 to 16, got {pool!r}")
        if isinstance(backbone, str):
            if backbone in DEFAULT_LAYERS and not layers:
                layers = default_layers(backbone)
            backbone = build_backbone(
                backbone, layers=layers, pretrained=pretrained, weights=weights
            )
        upsample = upsample or default_upsample(backbone.name)
        # What rebuilds this module offline (checkpoints): the state dict restores the weights.
        self.init_kwargs: dict[str, Any] = {
            "backbone": backbone.name,
            "layers": list(backbone.layers),
            "pretrained": False,
            "input_size": list(input_size),
            "n_channels": n_channels,
            "seed": seed,
            "blur_sigma": blur_sigma,
            "regularization": regularization,
            "upsample": upsample,
            "pool": pool,
        }
        self.upsample = upsample
        self.pool = pool
        self.blur_sigma = float(blur_sigma)
        self.backbone = backbone.fold_batchnorm()
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.regularization = float(regularization)
        total = sum(backbone.channels)
        n_channels = default_channels(backbone.name) if n_channels is None else int(n_channels)
        if not 1 <= n_channels <= total:
            raise ValueError(
                f"n_channels must be in 1..{total} for {backbone.name} "
                f"{backbone.layers}, got {n_channels}"
            )
        self.n_channels = n_channels
        # Seeded choice of channels over the concatenated layers, kept as one index per layer
        # so that only the chosen channels are upsampled.
        chosen = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n_channels]
        chosen = chosen.sort().values
        offsets = [0]
        for channels in backbone.channels:
            offsets.append(offsets[-1] + channels)
        for i in range(len(backbone.channels)):
            picked = chosen[(chosen >= offsets[i]) & (chosen < offsets[i + 1])] - offsets[i]
            self.register_buffer(f"channels_{i}", picked.long())
        with torch.inference_mode():
            probe = self.backbone(torch.zeros(1, 3, *self.input_size))
        # The layers meet on the first layer's grid, then pool x pool blocks of it are averaged
        # into the Gaussians' grid; both steps are folded into two small matrices per layer.
        embed_size = (int(probe[0].shape[-2]), int(probe[0].shape[-1]))
        if min(embed_size) < pool:
            raise ValueError(
                f"pool {pool} is larger than the {embed_size[0]}x{embed_size[1]} "
                f"feature grid of a {input_size[0]}x{input_size[1]} input; use a "
                "smaller pool or a larger input"
            )
        self.feature_size = (-(-embed_size[0] // pool), -(-embed_size[1] // pool))
        # (layer, resampled by matrices?): fixed here, in Python, so the traced graph has no
        # branches. A layer already on the first layer's grid is only pooled, by a pooling op:
        # the matrices would first need the feature map out of OpenVINO's blocked layout.
        self._layer_plan: list[tuple[int, bool]] = []
        for i, feature in enumerate(probe):
            if getattr(self, f"channels_{i}").numel() == 0:
                continue
            resampled = tuple(feature.shape[-2:]) != embed_size
            self._layer_plan.append((i, resampled))
            if not resampled:
                continue
            rows, cols = (
                pooling_matrix(embed, pool) @ interpolation_matrix(side, embed, self.upsample)
                for side, embed in zip(feature.shape[-2:], embed_size, strict=True)
            )
            self.register_buffer(f"to_grid_rows_{i}", rows.float(), persistent=False)
            self.register_buffer(f"to_grid_cols_t_{i}", cols.T.float(), persistent=False)
        # Gaussians' grid -> input size, blurred: again one matrix per axis.
        kernel = gaussian_kernel_1d(blur_sigma)
        rows, cols = (
            blur_matrix(side, kernel) @ interpolation_matrix(grid, side)
            for grid, side in zip(self.feature_size, self.input_size, strict=True)
        )
        self.register_buffer("to_input_rows", rows.float(), persistent=False)
        self.register_buffer("to_input_cols_t", cols.T.float(), persistent=False)
        positions = self.feature_size[0] * self.feature_size[1]
        # empty, not zeros: pages are only committed when fit writes them, chunk by chunk
        self.register_buffer("mean", torch.empty(positions, 1, n_channels))
        self.register_buffer("whiten_t", torch.empty(positions, n_channels, n_channels))
        self.fitted = False
        # torch leaves this registration unannotated
        self.register_load_state_dict_post_hook(_mark_fitted)  # type: ignore[no-untyped-call]
        self.eval()

    @staticmethod
    def upgrade_checkpoint(
        init_kwargs: dict[str, Any], state_dict: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read checkpoints written before the pooled grid: those have no ``pool`` (it was 1)
        and stored the blur kernel, which is now built into the resampling matrices."""
        init_kwargs = {"pool": 1, **init_kwargs}
        state_dict = {k: v for k, v in state_dict.items() if k != "blur_kernel"}
        return init_kwargs, state_dict

    def train(self, mode: bool = True) -> Padim:
        # PaDiM has no trainable state; the backbone must keep its frozen statistics.
        return super().train(False)

    # ---- features ----------------------------------------------------------------------------

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Selected channels of all layers on the Gaussians' grid: [N, d, h, w].

        Each layer is upsampled to the first layer's resolution (``upsample``), then
        ``pool`` x ``pool`` blocks are averaged (a partial block at the bottom or right edge
        averages what it has): both at once, as ``rows @ feature @ colsᵀ``, or by average
        pooling alone for a layer already at that resolution.
        """
        features = self.backbone(x)
        parts = []
        for i, resampled in self._layer_plan:
            feature, channels = features[i], getattr(self, f"channels_{i}")
            if resampled:
                feature = apply_separable(
                    feature.index_select(1, channels),
                    getattr(self, f"to_grid_rows_{i}"),
                    getattr(self, f"to_grid_cols_t_{i}"),
                )
            else:  # pool first: the channel gather then moves 1/pool² of the data
                if self.pool > 1:
                    feature = F.avg_pool2d(feature, self.pool, ceil_mode=True)
                feature = feature.index_select(1, channels)
            parts.append(feature)
        return torch.cat(parts, dim=1)

    # ---- fitting -----------------------------------------------------------------------------

    def fit(
        self,
        batches: Iterable[torch.Tensor | dict[str, Any]],
        progress: Callable[[int], None] | None = None,
        extract_batch: int = 4,
    ) -> Padim:
        """Fit the Gaussians in one streaming pass over batches of normal images.

        ``batches`` yields normalised [B,3,H,W] tensors (or dicts with an ``"image"`` key, as
        :func:`anomaly_edge.train.data.iter_batches` gives). ``progress(n)`` is called with
        the number of images after each batch. Memory stays flat in the number of images.
        The backbone sees at most ``extract_batch`` images at a time (its activations are the
        largest transient memory); statistics update once per incoming batch (their cost is per
        update), so feed batches of 16 or more.
        """
        h, w = self.feature_size
        stats = self.gather_statistics(
            batches, h * w, lambda embedding: embedding.flatten(2), progress, extract_batch
        )
        stats.whiten_into(self.mean, self.whiten_t, self.regularization)
        self.fitted = True
        return self

    def gather_statistics(
        self,
        batches: Iterable[torch.Tensor | dict[str, Any]],
        positions: int,
        arrange: Callable[[torch.Tensor], torch.Tensor],
        progress: Callable[[int], None] | None = None,
        extract_batch: int = 4,
        check: Callable[[torch.Tensor], None] | None = None,
    ) -> RunningGaussian:
        """PaDiM's one streaming pass: every batch is embedded and ``arrange`` turns its
        embedding ``[B, d, h, w]`` into samples ``[S, d, positions]`` of ``positions``
        Gaussians (a plain view: one sample per image; tiles: one per frame, see
        :class:`~anomaly_edge.train.models.padim.tiled.TilePositionPadim`). ``progress(S)``
        follows each batch. Returns the running statistics, ready to whiten."""
        stats = RunningGaussian(positions, self.n_channels)
        # channels_last roughly halves CPU time of the depthwise Lite convolutions
        self.backbone.to(memory_format=torch.channels_last)
        try:
            with torch.inference_mode():
                for batch in batches:
                    images = batch["image"] if isinstance(batch, dict) else batch
                    (check or self._check_input)(images)
                    images = images.contiguous(memory_format=torch.channels_last)
                    embedding = torch.cat(
                        [self.embed(part) for part in images.split(extract_batch)]
                    )  # [B,d,h,w]
                    samples = arrange(embedding)  # [S, d, positions]
                    stats.update(samples.transpose(1, 2))  # [S, positions, d]
                    if progress is not None:
                        progress(samples.shape[0])
        finally:
            self.backbone.to(memory_format=torch.contiguous_format)
        if stats.count == 0:
            raise ValueError("PaDiM fit got no images; train/good must hold at least one image")
        release_freed_memory()  # the backbone's activations are garbage from here on
        return stats

    def _check_input(self, images: torch.Tensor) -> None:
        check_images(images, self.input_size, "PaDiM")

    # ---- inference ---------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw anomaly map [N, 1, H, W]: the Mahalanobis distance on the Gaussians' grid,
        upsampled (bilinear) to the input size and blurred."""
        if not self.fitted:
            raise RuntimeError("Padim is not fitted: call fit() with normal images first")
        embedding = self.embed(x)
        n = embedding.shape[0]
        h, w = self.feature_size
        # [P, N, d]: one small matrix product per position, batched over positions
        delta = embedding.flatten(2).permute(2, 0, 1) - self.mean
        # Wᵀ is upper triangular, so output columns lo:hi need only inputs :hi. Reading the
        # factors is the cost of this step (memory-bound), and the column blocks skip most
        # of the zeros: 4 blocks read 62% of the square matrices.
        squares: torch.Tensor | None = None
        for lo, hi in triangle_blocks(self.n_channels):
            part = torch.matmul(delta[..., :hi], self.whiten_t[:, :hi, lo:hi])
            part = (part * part).sum(dim=-1)
            squares = part if squares is None else squares + part
        assert squares is not None  # triangle_blocks yields at least one block
        distance = squares.sqrt()  # [P, N]
        distance = distance.permute(1, 0).reshape(n, 1, h, w)
        return apply_separable(distance, self.to_input_rows, self.to_input_cols_t)

    def extra_repr(self) -> str:
        return (
            f"backbone={self.backbone.name}, layers={self.backbone.layers}, "
            f"channels={self.n_channels}, upsample={self.upsample}, "
            f"pool={self.pool}, blur_sigma={self.blur_sigma}, input_size={self.input_size}, "
            f"feature_size={self.feature_size}"
        )


def _mark_fitted(module: Padim, incompatible_keys: object) -> None:
    # A loaded state dict carries fitted statistics (checkpoints are written after fit).
    module.fitted = True
