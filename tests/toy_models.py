"""A tiny anomaly module (PaDiM in miniature) and synthetic images, for export tests.

The module satisfies the anomaly-module contract (normalised [1, 3, H, W] in, raw map
[1, 1, H, W] out): conv features, a per-position diagonal Gaussian fitted on normal images,
the distance upsampled to the input size. Fitting takes milliseconds, so export, parity and
INT8 tests need neither a backbone nor a dataset.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomaly_edge.metadata import ModelMetadata

MEAN = (128.0, 128.0, 128.0)
STD = (64.0, 64.0, 64.0)


class ToyAnomalyModule(nn.Module):
    def __init__(self, input_size: tuple[int, int] = (64, 64), channels: int = 8, seed: int = 0):
        super().__init__()
        self.init_kwargs = {"input_size": list(input_size), "channels": channels, "seed": seed}
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        h, w = input_size[0] // 2, input_size[1] // 2
        self.register_buffer("mean", torch.zeros(1, channels, h, w))
        self.register_buffer("inv_var", torch.ones(1, channels, h, w))

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> ToyAnomalyModule:
        features = self.features(images)
        self.mean.copy_(features.mean(0, keepdim=True))
        self.inv_var.copy_(1.0 / (features.var(0, keepdim=True) + 1e-3))
        return self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distance = ((self.features(x) - self.mean) ** 2 * self.inv_var).sum(1, keepdim=True)
        return F.interpolate(
            distance.sqrt(), size=x.shape[-2:], mode="bilinear", align_corners=False
        )


def synthetic_images(count: int, size=(64, 64), anomalous=False, seed=0) -> np.ndarray:
    """uint8 RGB textures (smooth noise on grey); anomalous ones carry a bright square."""
    rng = np.random.default_rng(seed)
    h, w = size
    noise = rng.normal(0, 12, size=(count, h // 4, w // 4, 3))
    images = np.clip(128 + np.kron(noise, np.ones((1, 4, 4, 1))), 0, 255)
    if anomalous:
        for image in images:
            y, x = rng.integers(4, h - 16), rng.integers(4, w - 16)
            image[y : y + 10, x : x + 10] = rng.integers(200, 255)
    return images.astype(np.uint8)


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 RGB N x H x W x 3 -> normalised float32 N x 3 x H x W."""
    x = (images.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def fitted_toy(size=(64, 64)) -> tuple[ToyAnomalyModule, ModelMetadata]:
    """A fitted toy model and metadata whose thresholds split normal from anomalous images."""
    model = ToyAnomalyModule(size).fit(to_input(synthetic_images(32, size, seed=1)))
    with torch.no_grad():
        normal = model(to_input(synthetic_images(8, size, seed=2))).amax(dim=(1, 2, 3))
        defect = model(to_input(synthetic_images(8, size, anomalous=True, seed=3)))
    threshold = float((normal.max() + defect.amax(dim=(1, 2, 3)).min()) / 2)
    metadata = ModelMetadata(
        model="toy",
        backbone="conv2",
        input_size=size,
        mean=MEAN,
        std=STD,
        image_threshold=threshold,
        pixel_threshold=threshold,
        image_min=float(normal.min()),
        image_max=float(defect.max()),
        pixel_min=0.0,
        pixel_max=float(defect.max()),
        task="segmentation",
    )
    return model, metadata


# ---- PatchCore ---------------------------------------------------------------------------------

GREY = 128  # the normal pixel value of the test frames (tests/ir_factory.py, stream_media.py)


def _grey_frames(count: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """Normalised flat-grey frames with a grey level of sensor noise: PatchCore's normal data."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, *size, generator=generator) * (1.5 / 64.0)


def _blob_frames(size: tuple[int, int]) -> torch.Tensor:
    """Normalised grey frames with one white and one black square: what must score high."""
    h, w = size
    frames = torch.zeros(2, 3, h, w)
    side = max(4, min(h, w) // 6)
    frames[0, :, h // 4 : h // 4 + side, w // 4 : w // 4 + side] = (255 - GREY) / 64.0
    frames[1, :, h // 2 : h // 2 + side, w // 2 : w // 2 + side] = -GREY / 64.0
    return frames


def patchcore_ir(
    path,
    input_size: tuple[int, int] = (64, 64),
    task: str = "segmentation",
    layout=None,
):
    """A PatchCore IR (FP16, random ResNet-18, bank from noisy grey frames) that reads like
    tests/ir_factory.py's synthetic model: grey frames are normal, white or black blobs are
    anomalies. With ``layout`` (a :class:`anomaly_edge.tiles.TileLayout`) it is a tiled IR of
    ``layout.count`` tiles of ``input_size``. Built in about a second, without a dataset."""
    from pathlib import Path

    from anomaly_edge.train.export import export_ir
    from anomaly_edge.train.models.patchcore.model import Patchcore

    torch.manual_seed(0)  # the random backbone
    model = Patchcore(
        "resnet18", input_size, pretrained=False, coreset_ratio=0.5, neighbours=3, blur_sigma=1.0
    )
    model.fit([_grey_frames(4, input_size, seed=1)])
    with torch.no_grad():
        normal = float(model(_grey_frames(2, input_size, seed=2)).max())
        blob = model(_blob_frames(input_size)).amax(dim=(1, 2, 3))
    # a quarter of the way from the normal frames' highest score to the lower blob score: grey
    # stays normal after the runtime's resize, blobs shrunk by it still count
    threshold = normal + 0.25 * (float(blob.min()) - normal)
    assert float(blob.min()) > 2.0 * normal, "the toy PatchCore must tell blobs from grey"
    tiles = {}
    if layout is not None:
        tiles = {
            "tile_grid": layout.grid,
            "tile_frame_size": layout.frame_size,
            "tile_blend": layout.blend,
        }
    metadata = ModelMetadata(
        model="patchcore",
        backbone="resnet18",
        input_size=input_size,
        mean=(GREY, GREY, GREY),
        std=(64.0, 64.0, 64.0),
        image_threshold=threshold,
        pixel_threshold=threshold,
        image_min=0.0,
        image_max=float(blob.max()),
        pixel_min=0.0,
        pixel_max=float(blob.max()),
        task=task,
        **tiles,
    )
    return export_ir(model, metadata, Path(path).parent, precision="FP16", name=Path(path).stem)
