"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Locally aware patch features: two backbone layers, each averaged over 3 x 3 neighbourhoods
(stride 1), the deeper one upsampled (bilinear) to the finer one's grid and concatenated. The
training patches are reduced to a memory bank by greedy coreset selection (:mod:`.coreset`);
a test patch's score is the distance to its nearest bank patch, and the image's most
anomalous patch is re-weighted as in the paper: ``w = 1 - softmax(d(x*, N_k(m*)))[m*]`` over
the ``k`` bank neighbours of its nearest bank patch ``m*``, so a patch near a sparse part of
the bank counts less. The runtime takes the image score as the map's maximum, so the whole
map is scaled by ``w``: the image score is the paper's, and boxes never out-score it. The map
is upsampled (bilinear) to the input size and blurred with sigma 4, as anomalib does.

Defaults: EfficientNet-Lite0's stages 3 and 5 (40 + 112 channels at strides 8 and 16, the
counterparts of the paper's WRN50 layer2 + layer3), coreset ratio 0.1 and 9 neighbours
(anomalib's defaults), and a bank of at most ``DISTANCE_BUDGET / patches a frame`` patches, so
that a frame's cost does not grow with the training set or the input's aspect (measured on
the four shared categories in docs/results.md, PatchCore).

``forward`` is a plain tensor graph, so the kNN runs inside the IR as OpenVINO operations:
squared distances as ``|x|^2 + min_m(|m|^2 - 2 x . m)``: one matrix product with the bank
stored as ``-2 m`` and its squared norms as the product's bias (a linear layer: OpenVINO's
CPU plugin fuses the two, so the ``[patches, bank]`` matrix is written once and read once, by
the minimum), the re-weighting by gathers and a softmax. The bank is one IR constant, used by
the product and the gathers alike (FP16 when the IR is; the factor -2 is exact in it), with
its squared norms and each bank patch's neighbours (int32).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_edge.train import efficientnet_lite
from anomaly_edge.train.backbones import FeatureExtractor, build_backbone
from anomaly_edge.train.memory import release_freed_memory
from anomaly_edge.train.models.common import check_images
from anomaly_edge.train.models.patchcore.coreset import (
    DEFAULT_POOL_LIMIT,
    DEFAULT_PROJECTION_DIM,
    StreamingCoreset,
)
from anomaly_edge.train.resample import (
    apply_separable,
    blur_matrix,
    gaussian_kernel_1d,
    interpolation_matrix,
)

LITE_LAYERS = ["stage3", "stage5"]
RESNET_LAYERS = ["layer2", "layer3"]
DEFAULT_CORESET_RATIO = 0.1
DEFAULT_NEIGHBOURS = 9
# A frame's kNN costs (patches a frame) x (bank patches) distances. Unless max_bank says
# otherwise, the bank holds at most as many patches as keep that product within this budget:
# 1024 x 5632, metal_plate's bank at ratio 0.1 and 256 x 256 (5,632 patches there, 2,310 at
# ball_screw's 256 x 624). Larger banks made ball_screw's frame 600 ms (27.7k patches).
DISTANCE_BUDGET = 1024 * 5632
BLUR_SIGMA = 4.0
NEIGHBOUR_ROWS = 2048  # bank rows per block when finding each bank patch's neighbours
# Eager (torch) scoring holds at most this many [patch, bank] distances at once: evaluation of
# ball_screw (2,496 patches an image, a 27.7k bank, batches of 8) peaked at 3.6 GB without it.
# The traced graph (the IR) is one product: OpenVINO runs one image at a time.
EAGER_DISTANCES = 1 << 24


def default_layers(backbone_name: str) -> list[str]:
    """The two backbone layers PatchCore reads by default (see the module docstring)."""
    if backbone_name in efficientnet_lite.VARIANTS:
        return list(LITE_LAYERS)
    return list(RESNET_LAYERS)


class Patchcore(nn.Module):
    """PatchCore anomaly module: ``forward(x [N,3,H,W] normalised) -> raw map [N,1,H,W]``.

    Call :meth:`fit` with batches of normal images before use. ``bank_size`` is what a
    checkpoint rebuilds the module with (the state dict then fills the bank).
    """

    bank_m2: torch.Tensor  # -2 x the (centred) bank: [M, D]
    centre: torch.Tensor
    bank_squares: torch.Tensor
    support: torch.Tensor
    to_input_rows: torch.Tensor
    to_input_cols_t: torch.Tensor

    def __init__(
        self,
        backbone: FeatureExtractor | str = "efficientnet_lite0",
        input_size: tuple[int, int] = (256, 256),
        *,
        layers: list[str] | None = None,
        pretrained: bool = True,
        weights: str | None = None,
        coreset_ratio: float = DEFAULT_CORESET_RATIO,
        neighbours: int = DEFAULT_NEIGHBOURS,
        projection_dim: int = DEFAULT_PROJECTION_DIM,
        pool_limit: int = DEFAULT_POOL_LIMIT,
        blur_sigma: float = BLUR_SIGMA,
        seed: int = 0,
        bank_size: int = 0,
        max_bank: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < float(coreset_ratio) <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}")
        if max_bank is not None and (isinstance(max_bank, bool) or int(max_bank) < 1):
            raise ValueError(f"max_bank must be 1 or more, got {max_bank!r}")
        if isinstance(neighbours, bool) or int(neighbours) < 1:
            raise ValueError(f"neighbours must be 1 or more, got {neighbours!r}")
        if isinstance(backbone, str):
            backbone = build_backbone(
                backbone,
                layers=layers or default_layers(backbone),
                pretrained=pretrained,
                weights=weights,
            )
        self.backbone = backbone.fold_batchnorm()
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.coreset_ratio = float(coreset_ratio)
        self.neighbours = int(neighbours)
        self.projection_dim = int(projection_dim)
        self.pool_limit = int(pool_limit)
        self.blur_sigma = float(blur_sigma)
        self.seed = int(seed)
        self.dims = sum(backbone.channels)
        with torch.inference_mode():
            probe = self.backbone(torch.zeros(1, 3, *self.input_size))
        grid = (int(probe[0].shape[-2]), int(probe[0].shape[-1]))
        self.feature_size = grid
        within_budget = max(1, DISTANCE_BUDGET // (grid[0] * grid[1]))
        self.max_bank = int(max_bank) if max_bank is not None else within_budget
        # deeper layers reach the first layer's grid by two small matrices each
        for i, feature in enumerate(probe[1:], start=1):
            rows, cols = (
                interpolation_matrix(side, target, "bilinear")
                for side, target in zip(feature.shape[-2:], grid, strict=True)
            )
            self.register_buffer(f"to_grid_rows_{i}", rows.float(), persistent=False)
            self.register_buffer(f"to_grid_cols_t_{i}", cols.T.float(), persistent=False)
        kernel = gaussian_kernel_1d(blur_sigma)
        rows, cols = (
            blur_matrix(side, kernel) @ interpolation_matrix(cells, side)
            for cells, side in zip(grid, self.input_size, strict=True)
        )
        self.register_buffer("to_input_rows", rows.float(), persistent=False)
        self.register_buffer("to_input_cols_t", cols.T.float(), persistent=False)
        self._set_bank(torch.zeros(int(bank_size), self.dims), fitted=False)
        self.fit_report: dict[str, Any] = {}
        self.register_load_state_dict_post_hook(_mark_fitted)  # type: ignore[no-untyped-call]
        self.eval()

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """What rebuilds this module offline (checkpoints): the state dict restores the rest."""
        return {
            "backbone": self.backbone.name,
            "layers": list(self.backbone.layers),
            "pretrained": False,
            "input_size": list(self.input_size),
            "coreset_ratio": self.coreset_ratio,
            "neighbours": self.neighbours,
            "projection_dim": self.projection_dim,
            "pool_limit": self.pool_limit,
            "blur_sigma": self.blur_sigma,
            "seed": self.seed,
            "bank_size": int(self.bank_m2.shape[0]),
            "max_bank": self.max_bank,
        }

    def train(self, mode: bool = True) -> Patchcore:
        return super().train(False)  # nothing trains; the backbone keeps its statistics

    # ---- features ----------------------------------------------------------------------------

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Locally aware patch features on the first layer's grid: [N, D, h, w]."""
        features = self.backbone(x)
        parts = []
        for i, feature in enumerate(features):
            feature = F.avg_pool2d(feature, 3, stride=1, padding=1)
            if i > 0:
                feature = apply_separable(
                    feature,
                    getattr(self, f"to_grid_rows_{i}"),
                    getattr(self, f"to_grid_cols_t_{i}"),
                )
            parts.append(feature)
        return torch.cat(parts, dim=1)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """[N * h * w, D]: every patch feature of a batch, image by image, row-major."""
        embedding = self.embed(x)
        return embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])

    def centred_patches(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`patches` about the bank's centre, as the stored bank is."""
        return self.patches(x) - self.centre

    # ---- fitting -----------------------------------------------------------------------------

    def fit(
        self,
        batches: Iterable[torch.Tensor | dict[str, Any]],
        progress: Callable[[int], None] | None = None,
        extract_batch: int = 1,
        images_per_step: int = 1,
    ) -> Patchcore:
        """Build the memory bank in one streaming pass over batches of normal images.

        ``batches`` yields normalised [B,3,H,W] tensors (or dicts with an ``"image"`` key).
        Patches go into a :class:`.coreset.StreamingCoreset` ``extract_batch`` images at a
        time (one: a 256 x 624 batch of four held 230 MB of activations), so memory is
        bounded by ``pool_limit`` patches. ``progress(n)`` gets
        ``B // images_per_step`` after each batch (tiles: the tiles of one frame per step).
        """
        started = time.perf_counter()
        pool = StreamingCoreset(
            self.coreset_ratio,
            self.projection_dim,
            self.pool_limit,
            seed=self.seed,
            max_count=self.max_bank,
        )
        self.backbone.to(memory_format=torch.channels_last)
        try:
            with torch.inference_mode():
                for batch in batches:
                    images = batch["image"] if isinstance(batch, dict) else batch
                    check_images(images, self.input_size, "PatchCore")
                    for part in images.split(extract_batch):
                        pool.add(self.patches(part.contiguous(memory_format=torch.channels_last)))
                    if progress is not None:
                        progress(images.shape[0] // images_per_step)
        finally:
            self.backbone.to(memory_format=torch.contiguous_format)
        extracted = time.perf_counter()
        release_freed_memory()
        bank = pool.finish()
        self._set_bank(bank, fitted=True)
        self.fit_report = {
            "patches_seen": pool.seen,
            "bank_size": int(bank.shape[0]),
            "max_bank": self.max_bank,
            "chunks_reduced": pool.chunks_reduced,
            "feature_seconds": round(extracted - started, 3),
            "coreset_seconds": round(time.perf_counter() - extracted, 3),
        }
        return self

    def _set_bank(self, bank: torch.Tensor, fitted: bool) -> None:
        """Store the bank with what inference needs of it: squared norms and, for the
        re-weighting, each bank patch's nearest bank patches (itself first). The bank is
        stored about its mean (``centre``), and patches are moved the same way: distances do
        not change, and the norms in ``|x|^2 - 2 x . m + |m|^2`` stay small, so float32 (and
        the FP16 constant) lose less to cancellation."""
        bank = bank.float()
        centre = bank.mean(dim=0) if bank.shape[0] else torch.zeros(bank.shape[1])
        bank = bank - centre
        self.register_buffer("bank_m2", (-2.0 * bank).contiguous())
        self.register_buffer("centre", centre)
        self.register_buffer("bank_squares", (bank * bank).sum(dim=1))
        self.register_buffer("support", self._bank_neighbours(bank))
        self.fitted = fitted

    @property
    def bank(self) -> torch.Tensor:
        """The memory bank ``[M, D]``, about its centre."""
        return -0.5 * self.bank_m2

    def _bank_neighbours(self, bank: torch.Tensor) -> torch.Tensor:
        count = min(self.neighbours, bank.shape[0])
        if bank.shape[0] == 0 or self.neighbours == 1:
            return torch.zeros(bank.shape[0], count, dtype=torch.int32)
        squares = (bank * bank).sum(dim=1)
        blocks = []
        for lo in range(0, bank.shape[0], NEIGHBOUR_ROWS):
            rows = bank[lo : lo + NEIGHBOUR_ROWS]
            distance = squares[lo : lo + NEIGHBOUR_ROWS, None] - 2.0 * rows @ bank.T + squares
            # itself first, whatever rounding does to its zero distance
            distance[torch.arange(rows.shape[0]), torch.arange(lo, lo + rows.shape[0])] = -1.0
            blocks.append(distance.topk(count, dim=1, largest=False).indices.int())
        return torch.cat(blocks)

    # ---- inference ---------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw anomaly map [N, 1, H, W]: nearest-bank distances on the patch grid, scaled
        by the re-weighting of each image's most anomalous patch, upsampled and blurred."""
        h, w = self.feature_size
        scores = self.patch_scores(x).reshape(x.shape[0], 1, h, w)
        return apply_separable(scores, self.to_input_rows, self.to_input_cols_t)

    def patch_scores(self, x: torch.Tensor) -> torch.Tensor:
        """[N, h * w]: each patch's distance to its nearest bank patch, times its image's
        re-weighting (before upsampling and blur)."""
        if not self.fitted:
            raise RuntimeError("Patchcore is not fitted: call fit() with normal images first")
        n = x.shape[0]
        h, w = self.feature_size
        patches = self.centred_patches(x)  # [P, D], P = n * h * w
        squares = (patches * patches).sum(dim=1)
        # |m|^2 - 2 x.m: the squared distance less |x|^2, which is the same along a row; a
        # plain minimum (no indices) over the bank: only the top patch needs its neighbour
        rows = max(1, EAGER_DISTANCES // max(1, self.bank_m2.shape[0]))
        # torch.jit re-exports is_tracing at run time without typing or listing it
        tracing = torch.jit.is_tracing()  # type: ignore[attr-defined,no-untyped-call]
        if tracing or patches.shape[0] <= rows:
            least = self._least_partial(patches)
        else:  # eager and large: in blocks of patches, so memory stays bounded
            least = torch.cat([self._least_partial(part) for part in torch.split(patches, rows)])
        scores = (least + squares).clamp_min(0.0).sqrt().reshape(n, h * w)
        if self.support.shape[1] > 1:
            scores = scores * self._reweighting(patches, scores)
        return scores

    def _least_partial(self, patches: torch.Tensor) -> torch.Tensor:
        """[P]: the smallest ``|m|^2 - 2 x . m`` over the bank, for each patch ``x``."""
        return F.linear(patches, self.bank_m2, self.bank_squares).amin(dim=1)

    def _reweighting(self, patches: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """[n, 1]: the paper's weight of each image's highest-scoring patch."""
        n, cells = scores.shape
        rows = scores.argmax(dim=1) + torch.arange(n) * cells  # [n]: top patch of each image
        feature = patches.index_select(0, rows)  # [n, D]
        partial = F.linear(feature, self.bank_m2, self.bank_squares)  # [n, M], small
        nearest = partial.argmin(dim=1)  # [n]: its nearest bank patch
        chosen = self.support.index_select(0, nearest).reshape(-1)  # [n * k]
        support = -0.5 * self.bank_m2.index_select(0, chosen)  # [n * k, D], exact
        support = support.reshape(n, -1, self.dims)  # [n, k, D]
        distance = (feature[:, None, :] - support).pow(2).sum(dim=-1).sqrt()  # [n, k]
        return 1.0 - torch.softmax(distance, dim=1)[:, :1]

    def extra_repr(self) -> str:
        return (
            f"backbone={self.backbone.name}, layers={self.backbone.layers}, dims={self.dims}, "
            f"bank={int(self.bank_m2.shape[0])}, neighbours={self.neighbours}, "
            f"input_size={self.input_size}, feature_size={self.feature_size}"
        )


def _mark_fitted(module: nn.Module, incompatible_keys: object) -> None:
    module.fitted = True  # type: ignore[assignment]
