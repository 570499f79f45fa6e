"""The dataset type every layout reader returns: a category's train and test samples, and the
validation split carved from them (torch-free)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaly_edge.errors import AnomalyEdgeError

GOOD = "good"
DEFAULT_VALIDATION_FRACTION = 0.3
# A normal holdout (train(normal_holdout=...)) never leaves fewer training images than this.
MIN_TRAIN_IMAGES = 10


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

    @property
    def is_defect(self) -> bool:
        """True for an anomalous image."""
        return self.defect != GOOD


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
        self,
        validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
        seed: int = 0,
        normal_holdout: float = 0.0,
    ) -> Split:
        """Carve a validation split (see :func:`split_validation`)."""
        return split_validation(self, validation_fraction, seed, normal_holdout)


def split_validation(
    data: CategoryData,
    fraction: float = DEFAULT_VALIDATION_FRACTION,
    seed: int = 0,
    normal_holdout: float = 0.0,
) -> Split:
    """Split for threshold tuning, deterministic for a seed.

    * With test images: ``fraction`` of the normal and of the anomalous test images
      (stratified, at least one of each class that has two or more) go to validation, the rest
      stay in test. ``fraction=0`` tunes on the whole test set (validation = test).
      In addition ``normal_holdout`` of train/good (never leaving fewer than
      ``MIN_TRAIN_IMAGES``) is kept out of fitting and joins validation as normal images, so
      the false-alarm threshold stands on more normal parts than the test folder offers.
    * Without test images: ``fraction`` of train/good is held out of fitting as an all-normal
      validation set (thresholds then fall back to the normal score distribution) and there
      is no test set to report metrics on.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    if not 0.0 <= normal_holdout < 1.0:
        raise ValueError(f"normal holdout must be in [0, 1), got {normal_holdout}")
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
    train, held_normals = _hold_out_normals(list(data.train), normal_holdout, seed)
    extra = (
        f"; {len(held_normals)} train images held out as normal validation ({normal_holdout:g})"
        if held_normals
        else ""
    )
    if fraction == 0:
        validation_all = tuple(sorted((*data.test, *held_normals), key=_key))
        return Split(train, validation_all, data.test, "validation = the whole test set" + extra)
    validation: list[Sample] = list(held_normals)
    test: list[Sample] = []
    for label in (0, 1):
        group = [s for s in data.test if s.label == label]
        held, kept = _take(group, fraction, rng)
        validation += held
        test += kept
    tested = validation[len(held_normals) :]  # the test images among them
    note = (
        f"validation: {sum(1 - s.label for s in tested)} normal + "
        f"{sum(s.label for s in tested)} anomalous test images ({fraction:g}, seed {seed})" + extra
    )
    return Split(train, tuple(sorted(validation, key=_key)), tuple(sorted(test, key=_key)), note)


def _hold_out_normals(
    train: list[Sample], share: float, seed: int
) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """(kept for fitting, held out as normal validation), never under MIN_TRAIN_IMAGES kept."""
    count = min(math.floor(share * len(train) + 0.5), len(train) - MIN_TRAIN_IMAGES)
    if count <= 0:
        return tuple(train), ()
    # a generator of its own, so the test split stays what it was for a seed
    order = np.random.default_rng([seed, 1]).permutation(len(train))
    chosen = set(order[:count].tolist())
    held = tuple(s for i, s in enumerate(train) if i in chosen)
    kept = tuple(s for i, s in enumerate(train) if i not in chosen)
    return kept, held


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
