"""MVTec-layout datasets: scanning a category folder, the validation split, torch datasets.

Layout (also the layout for users' own data)::

    CATEGORY/train/good/*.png                       normal images to learn from (required)
    CATEGORY/test/good/*.png                        normal test images        (optional)
    CATEGORY/test/<defect>/*.png                    anomalous test images     (optional)
    CATEGORY/ground_truth/<defect>/<name>_mask.png  pixel masks               (optional)

Images: whatever :mod:`anomaly_edge.media` reads (png, jpg, bmp, tif, webp, ...), any size,
grey/colour/RGBA, 8 or 16 bit; all become 8-bit RGB, decoded exactly as the runtime decodes.
Other files (and hidden ones) are ignored. A defect image without a mask is fine for
image-level metrics; :attr:`CategoryData.unmasked` lists them for pixel metrics.

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

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from anomaly_edge import media
from anomaly_edge.errors import AnomalyEdgeError, InvalidInputError
from anomaly_edge.images import resize_for_network
from anomaly_edge.media import IMAGE_SUFFIXES

GOOD = "good"
DEFAULT_VALIDATION_FRACTION = 0.3


class DatasetError(AnomalyEdgeError, ValueError):
    """A data folder or file that cannot be used; the message names the path."""


@dataclass(frozen=True)
class Sample:
    """One image: its path, its class (``"good"`` or the defect folder name) and its mask."""

    path: Path
    defect: str = GOOD
    mask_path: Path | None = None

    @property
    def label(self) -> int:
        """1 for anomalous, 0 for normal."""
        return int(self.defect != GOOD)


@dataclass(frozen=True)
class Split:
    """Images to fit on, to tune thresholds on (validation) and to report metrics on (test)."""

    train: tuple[Sample, ...]
    validation: tuple[Sample, ...]
    test: tuple[Sample, ...]
    note: str = ""  # how the validation split was made, for reports


@dataclass(frozen=True)
class CategoryData:
    """The images of one category folder."""

    root: Path
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]

    @property
    def has_anomalies(self) -> bool:
        return any(s.label for s in self.test)

    @property
    def unmasked(self) -> tuple[Sample, ...]:
        """Anomalous test images that have no ground-truth mask."""
        return tuple(s for s in self.test if s.label and s.mask_path is None)

    def split(
        self, validation_fraction: float = DEFAULT_VALIDATION_FRACTION, seed: int = 0
    ) -> Split:
        """Carve a validation split (see :func:`split_validation`)."""
        return split_validation(self, validation_fraction, seed)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (non-images and hidden files skipped)."""
    return media.list_images(folder)


def scan_category(root: str | Path) -> CategoryData:
    """Find the images and masks of an MVTec-layout category folder.

    Raises :class:`DatasetError` (naming the path) when ``root`` or ``root/train/good`` is
    missing or holds no image, or when a ``test`` subfolder is empty.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"data folder {root} does not exist or is not a folder; pass the "
            "category folder that holds train/good (MVTec layout)"
        )
    train_dir = root / "train" / GOOD
    if not train_dir.is_dir():
        found = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())) or "nothing"
        raise DatasetError(
            f"{train_dir} is missing: the data folder must hold train/good with "
            f"normal images (MVTec layout); {root} contains: {found}"
        )
    train = tuple(Sample(p) for p in list_images(train_dir))
    if not train:
        raise DatasetError(
            f"{train_dir} holds no images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}); add normal images there"
        )
    test: list[Sample] = []
    test_dir = root / "test"
    if test_dir.is_dir():
        for defect_dir in sorted(
            p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            images = list_images(defect_dir)
            if not images:
                raise DatasetError(
                    f"{defect_dir} holds no images; remove the folder or add images to it"
                )
            defect = defect_dir.name
            for path in images:
                mask = None if defect == GOOD else _find_mask(root, defect, path)
                test.append(Sample(path, defect, mask))
    return CategoryData(root, train, tuple(test))


def _find_mask(root: Path, defect: str, image: Path) -> Path | None:
    folder = root / "ground_truth" / defect
    if not folder.is_dir():
        return None
    for stem in (f"{image.stem}_mask", image.stem):
        for suffix in (".png", *sorted(IMAGE_SUFFIXES - {".png"})):
            for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def split_validation(
    data: CategoryData, fraction: float = DEFAULT_VALIDATION_FRACTION, seed: int = 0
) -> Split:
    """Split for threshold tuning, deterministic for a seed.

    * With test images: ``fraction`` of the normal and of the anomalous test images
      (stratified, at least one of each class that has two or more) go to validation, the rest
      stay in test. ``fraction=0`` tunes on the whole test set (validation = test).
    * Without test images: ``fraction`` of train/good is held out of fitting as an all-normal
      validation set (thresholds then fall back to the normal score distribution) and there
      is no test set to report metrics on.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    if not data.test:
        if fraction == 0 or len(data.train) < 2:
            return Split(data.train, (), (), "no test images: no validation, no metrics")
        held, kept = _take(list(data.train), fraction, rng)
        return Split(
            tuple(kept),
            tuple(held),
            (),
            f"no test images: {len(held)} train images held out as normal validation",
        )
    if fraction == 0:
        return Split(data.train, data.test, data.test, "validation = the whole test set")
    validation: list[Sample] = []
    test: list[Sample] = []
    for label in (0, 1):
        group = [s for s in data.test if s.label == label]
        held, kept = _take(group, fraction, rng)
        validation += held
        test += kept
    note = (
        f"validation: {sum(1 - s.label for s in validation)} normal + "
        f"{sum(s.label for s in validation)} anomalous test images ({fraction:g}, seed {seed})"
    )
    return Split(
        data.train, tuple(sorted(validation, key=_key)), tuple(sorted(test, key=_key)), note
    )


def _key(sample: Sample) -> str:
    return str(sample.path)


def _take(
    group: list[Sample], fraction: float, rng: np.random.Generator
) -> tuple[list[Sample], list[Sample]]:
    if not group:
        return [], []
    count = math.floor(fraction * len(group) + 0.5)
    # with two or more images, both sides keep at least one of the class
    count = min(max(count, 1), len(group) - 1) if len(group) >= 2 else 0
    order = rng.permutation(len(group))
    chosen = set(order[:count].tolist())
    held = [s for i, s in enumerate(group) if i in chosen]
    kept = [s for i, s in enumerate(group) if i not in chosen]
    return held, kept


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
