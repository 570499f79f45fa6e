"""Datasets for training: the category's images (MVTec or VisA layout, read by the torch-free
:mod:`anomaly_edge.layout`, re-exported here), decoding and torch datasets.

Images all become 8-bit RGB, decoded exactly as the runtime decodes.

API for model code (PaDiM here, STFPM in ``stfpm.py``)::

    data = scan_category(root)  # CategoryData; DatasetError when malformed
    split = data.split(validation_fraction=0.3, seed=0)
    # split.train / split.validation / split.test: tuples of Sample
    dataset = ImageDataset(split.train, image_size=(256, 256), mean=fe.mean, std=fe.std)
    item = dataset[0]  # {"image": float32 [3,H,W] normalised, "mask": float32 [1,H,W] 0/1,
    #  "label": 0|1, "has_mask": bool, "index": int}
    loader = make_loader(
        split.train, (256, 256), fe.mean, fe.std, batch_size=16, shuffle=True, seed=0
    )  # torch DataLoader, same dicts batched
    for batch in iter_batches(dataset, batch_size=16):
        ...  # ordered, decoding in threads

``cache=True`` keeps decoded, resized uint8 images in memory (for multi-epoch training);
leave it off for one-pass work so memory does not grow with the number of images.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from anomaly_edge import media
from anomaly_edge.errors import InvalidInputError
from anomaly_edge.images import resize_for_network

# The dataset types and the scanners are torch-free (the report reads them too).
from anomaly_edge.layout import (
    DEFAULT_VALIDATION_FRACTION,
    GOOD,
    CategoryData,
    DatasetError,
    Sample,
    Split,
    list_images,
    scan_category,
    split_validation,
)

__all__ = [
    "DEFAULT_VALIDATION_FRACTION",
    "GOOD",
    "CategoryData",
    "DatasetError",
    "ImageDataset",
    "Sample",
    "Split",
    "iter_batches",
    "list_images",
    "make_loader",
    "read_mask",
    "read_rgb",
    "resize_image",
    "scan_category",
    "split_validation",
]


# ---- decoding ------------------------------------------------------------------------------


def read_rgb(path: str | Path) -> np.ndarray:
    """Any supported image as uint8 HxWx3 RGB, decoded as the runtime decodes it
    (:func:`anomaly_edge.media.read_image`: grey replicated, alpha dropped, 16 bit scaled)."""
    try:
        return media.read_image(path, "RGB")
    except InvalidInputError as exc:
        raise DatasetError(f"cannot read image {path}: {exc}; fix or remove it") from None


def read_mask(path: str | Path) -> np.ndarray:
    """A ground-truth mask as bool HxW (any non-zero pixel is anomalous)."""
    try:
        return media.read_mask(path)
    except InvalidInputError as exc:
        raise DatasetError(f"cannot read mask: {exc}; fix or remove it") from None


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (height, width) exactly as the runtime does, so training and deployment
    see the same pixels (see :func:`anomaly_edge.images.resize_for_network`)."""
    return resize_for_network(image, size)


# ---- torch ---------------------------------------------------------------------------------


class ImageDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """Samples as normalised tensors at ``image_size`` (masks resized nearest-neighbour)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: tuple[int, int] | int = 256,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        *,
        cache: bool = False,
    ) -> None:
        self.samples = tuple(samples)
        self.image_size = _size_pair(image_size)
        self.mean = torch.tensor([float(v) for v in mean]).reshape(3, 1, 1)
        self.std = torch.tensor([float(v) for v in std]).reshape(3, 1, 1)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Resized uint8 RGB image and resized bool mask (None when the sample has no mask)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = self.samples[index]
        image = read_rgb(sample.path)
        mask = None
        if sample.mask_path is not None:
            mask = read_mask(sample.mask_path)
            if mask.shape != image.shape[:2]:
                raise DatasetError(
                    f"mask {sample.mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image "
                    f"{sample.path} is {image.shape[1]}x{image.shape[0]}; masks must match "
                    "their image's size"
                )
            height, width = self.image_size
            mask = cv2.resize(
                mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST
            ).astype(bool)
        result = (resize_image(image, self.image_size), mask)
        if self._cache is not None:
            self._cache[index] = result
        return result

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # What Python's fallback iteration over __getitem__ does, spelled out for type checkers.
        return (self[index] for index in range(len(self)))

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.load(index)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        tensor = (tensor - self.mean) / self.std
        sample = self.samples[index]
        if mask is None:
            mask_tensor = torch.zeros((1, *self.image_size), dtype=torch.float32)
        else:
            mask_tensor = torch.from_numpy(mask).float()[None]
        return {
            "image": tensor,
            "mask": mask_tensor,
            "label": sample.label,
            "has_mask": sample.label == 0 or mask is not None,
            "index": index,
        }


def _size_pair(size: tuple[int, int] | int) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(int(v) < 32 for v in pair):
        raise ValueError(f"image size must be one int or (height, width), each >= 32; got {size}")
    return int(pair[0]), int(pair[1])


def make_loader(
    samples: Sequence[Sample],
    image_size: tuple[int, int] | int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 16,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    cache: bool = False,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader[dict[str, Any]]:
    """A torch DataLoader over :class:`ImageDataset` items; shuffling is seeded."""
    dataset = ImageDataset(samples, image_size, mean, std, cache=cache)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        drop_last=drop_last,
    )


def iter_batches(
    dataset: ImageDataset, batch_size: int = 16, threads: int = 2
) -> Iterator[dict[str, Any]]:
    """Batches in dataset order; images decode in threads while the caller computes.

    Only about two batches are decoded ahead, so memory stays flat however long the dataset.
    """
    indices = list(range(len(dataset)))
    chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending = None
        for chunk in [*chunks, None]:
            upcoming = pool.map(dataset.__getitem__, chunk) if chunk is not None else None
            if pending is not None:
                yield _collate(list(pending))
            pending = upcoming


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([item["image"] for item in items]),
        "mask": torch.stack([item["mask"] for item in items]),
        "label": torch.tensor([item["label"] for item in items]),
        "has_mask": torch.tensor([item["has_mask"] for item in items]),
        "index": torch.tensor([item["index"] for item in items]),
    }
