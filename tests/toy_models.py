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
