"""Training images as the deployment camera will deliver them: compressed, lit a little
differently.

A line camera's frames reach the model through a video codec (block-DCT quantisation, as in
JPEG and the intra frames of H.264) and under exposure that drifts by a few percent. A model
fitted only on pristine stills scores such frames as anomalous. :class:`Augmentation` adds,
for every training image, ``copies`` extra versions that went through that path: JPEG at a
random quality in ``quality`` (at the image's own resolution, before the network resize, as on
the line) and a brightness/contrast jitter of at most ``brightness``/``contrast``. The
original stays in the set, so the model still learns the clean texture.

For PaDiM the copies are also more samples per Gaussian, which tightens the normal model when
there are fewer training images than feature channels.

``train(..., augment="on")`` / ``--augment on`` uses :data:`DEFAULT`;
``"jpeg=40-90,jitter=0.05,copies=1"`` sets the knobs; ``"off"`` disables it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from anomaly_edge.train.data import ImageDataset, read_rgb, resize_image


@dataclass(frozen=True)
class Augmentation:
    """How to turn a still into a plausible camera frame (see the module docstring)."""

    quality: tuple[int, int] = (40, 90)  # JPEG quality range, drawn uniformly
    brightness: float = 0.05  # at most +-5 % of full scale
    contrast: float = 0.05  # at most +-5 % around the image mean
    copies: int = 1  # augmented versions per training image, besides the original

    def __post_init__(self) -> None:
        low, high = (int(q) for q in self.quality)
        if not 1 <= low <= high <= 100:
            raise ValueError(
                f"JPEG quality range must lie in 1-100 with low <= high, got {self.quality}"
            )
        if not (0 <= self.brightness < 1 and 0 <= self.contrast < 1):
            raise ValueError(
                "brightness and contrast jitter must be in [0, 1), got "
                f"{self.brightness}, {self.contrast}"
            )
        if self.copies < 1:
            raise ValueError(f"copies must be at least 1, got {self.copies}")
        object.__setattr__(self, "quality", (low, high))

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One augmented version of a uint8 RGB image (same shape)."""
        pixels = image.astype(np.float32)
        gain = 1.0 + rng.uniform(-self.contrast, self.contrast)
        offset = 255.0 * rng.uniform(-self.brightness, self.brightness)
        mean = pixels.mean()
        pixels = (pixels - mean) * gain + mean + offset
        jittered: np.ndarray = np.clip(pixels + 0.5, 0, 255).astype(np.uint8)
        quality = int(rng.integers(self.quality[0], self.quality[1] + 1))
        ok, encoded = cv2.imencode(
            ".jpg", jittered[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality]
        )
        decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR) if ok else None
        if decoded is None:  # pragma: no cover - OpenCV codes any uint8 image
            return jittered
        return np.ascontiguousarray(decoded[:, :, ::-1])


DEFAULT = Augmentation()


def parse_augment(spec: str | bool | Augmentation | None) -> Augmentation | None:
    """``None``/``False``/``"off"`` -> None; ``True``/``"on"`` -> :data:`DEFAULT`;
    ``"jpeg=40-90,jitter=0.05,copies=2"`` -> those settings (unnamed ones as in DEFAULT)."""
    if spec is None or spec is False:
        return None
    if spec is True or isinstance(spec, Augmentation):
        return DEFAULT if spec is True else spec
    text = str(spec).strip().lower()
    if text in ("off", "none", "no", "false", "0"):
        return None
    if text in ("on", "default", "yes", "true", "1"):
        return DEFAULT
    settings: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        try:
            if key == "jpeg":
                low, _, high = value.partition("-")
                settings["quality"] = (int(low), int(high or low))
            elif key == "jitter":
                settings["brightness"] = settings["contrast"] = float(value)
            elif key in ("brightness", "contrast"):
                settings[key] = float(value)
            elif key == "copies":
                settings["copies"] = int(value)
            else:
                raise ValueError(f"unknown setting {key!r}")
        except ValueError as exc:
            raise ValueError(
                f"augment {spec!r}: {exc}; write 'on', 'off' or e.g. "
                "'jpeg=40-90,jitter=0.05,copies=1' (keys: jpeg, jitter, brightness, contrast, "
                "copies)"
            ) from None
    return Augmentation(**settings)


class AugmentedDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """``base`` followed by ``copies`` augmented passes over it (deterministic per seed)."""

    def __init__(self, base: ImageDataset, augmentation: Augmentation, seed: int = 0) -> None:
        self.base = base
        self.augmentation = augmentation
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.base) * (1 + self.augmentation.copies)

    def __getitem__(self, index: int) -> dict[str, Any]:
        count = len(self.base)
        original, copy = index % count, index // count
        item = self.base[original]
        if copy:
            # Compress at the image's own resolution, then resize as training does: on the
            # line the codec works on the full frame and the network sees it shrunk.
            rng = np.random.default_rng([self.seed, original, copy])
            image = self.augmentation.apply(read_rgb(self.base.samples[original].path), rng)
            image = resize_image(image, self.base.image_size)
            tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
            item["image"] = (tensor - self.base.mean) / self.base.std
        item["index"] = index
        return item


def augmented(
    dataset: ImageDataset, augmentation: Augmentation | None, seed: int = 0
) -> ImageDataset | AugmentedDataset:
    """``dataset`` itself without augmentation, else its augmented version."""
    return dataset if augmentation is None else AugmentedDataset(dataset, augmentation, seed)
