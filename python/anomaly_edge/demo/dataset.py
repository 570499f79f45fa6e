"""A small procedural dataset in the MVTec AD layout, made from nothing but a seed.

::

    root/train/good/000.png ...
    root/test/good/000.png ...
    root/test/<defect>/000.png ...            (defect: scratch, hole, stain, missing)
    root/ground_truth/<defect>/000_mask.png   (0 / 255, same size as the image)

Each image is one camera view (:data:`~anomaly_edge.demo.surface.VIEW_SHAPE`) of a fresh piece
of brushed metal, turned by a few degrees, under a slightly different light, scaled to
``size`` pixels high (keeping the view's 4:3 shape). Images depend only on (seed, split,
index), so asking for more images never changes the ones already made.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anomaly_edge.demo.defects import DEFECT_TYPES, paint_defect
from anomaly_edge.demo.surface import VIEW_SHAPE, Lighting, expose, rotated_albedo
from anomaly_edge.errors import InvalidInputError

MARKER = "demo_dataset.json"  # records how a folder was made, so it can be reused safely
GENERATOR_VERSION = 1  # bump whenever the images change, so stale demo datasets are remade
MAX_ROTATION_DEG = 3.0
_SPLIT_IDS = {"train": 0, "good": 1, **{kind: 10 + i for i, kind in enumerate(DEFECT_TYPES)}}


def image_shape(size: int) -> tuple[int, int]:
    """(height, width) of a dataset image ``size`` pixels high."""
    return size, round(size * VIEW_SHAPE[1] / VIEW_SHAPE[0])


def render_sample(
    seed: int, split: str, index: int, size: int = 256, defect: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """One dataset image (uint8 HxWx3 BGR) and its defect mask (bool HxW, or None if good).

    ``split`` names the stream of randomness ("train", "good" or a defect type); the same
    (seed, split, index) always gives the same image. The defect, when asked for, uses its own
    random stream, so the same sample with and without it differs exactly inside the mask.
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}")
    texture_rng, light_rng, noise_rng, defect_rng = (
        np.random.default_rng(s)
        for s in np.random.SeedSequence([seed, _SPLIT_IDS[split], index]).spawn(4)
    )
    height, width = image_shape(size)
    view = rotated_albedo(VIEW_SHAPE, texture_rng, MAX_ROTATION_DEG)
    albedo = cv2.resize(view, (width, height), interpolation=cv2.INTER_AREA)
    mask = None
    if defect is not None:
        mask = paint_defect(defect, albedo, defect_rng, scale=height / VIEW_SHAPE[0])
    return expose(albedo, Lighting.random(light_rng), noise_rng), mask


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def _settings(
    n_train: int,
    n_test_good: int,
    n_test_per_defect: int,
    size: int,
    seed: int,
    defects: Sequence[str],
) -> dict[str, Any]:
    return {
        "generator_version": GENERATOR_VERSION,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_per_defect": n_test_per_defect,
        "size": size,
        "seed": seed,
        "defects": list(defects),
    }


def _check_arguments(
    n_train: int, n_test_good: int, n_test_per_defect: int, size: int, defects: Sequence[str]
) -> None:
    if n_train < 1:
        raise InvalidInputError(f"n_train must be at least 1, got {n_train}")
    if n_test_good < 0 or n_test_per_defect < 0:
        raise InvalidInputError("n_test_good and n_test_per_defect must not be negative")
    if not 32 <= size <= 2048:
        raise InvalidInputError(f"size must be between 32 and 2048 pixels, got {size}")
    unknown = [d for d in defects if d not in DEFECT_TYPES]
    if unknown or len(set(defects)) != len(defects):
        raise InvalidInputError(
            f"defects must be distinct names from {', '.join(DEFECT_TYPES)}, got {list(defects)}"
        )


def make_dataset(
    root: str | os.PathLike[str],
    *,
    n_train: int = 60,
    n_test_good: int = 15,
    n_test_per_defect: int = 8,
    size: int = 256,
    seed: int = 0,
    defects: Sequence[str] = DEFECT_TYPES,
    overwrite: bool = False,
) -> Path:
    """Generate the demo dataset at ``root`` (MVTec AD layout) and return its path.

    The tree is built in a temporary folder beside ``root`` and renamed into place, so
    ``root`` is either absent or complete. If ``root`` already holds a dataset made with the
    same settings it is reused as it is. Any other existing ``root`` is an error unless
    ``overwrite`` is true.
    """
    _check_arguments(n_train, n_test_good, n_test_per_defect, size, defects)
    root = Path(root)
    settings = _settings(n_train, n_test_good, n_test_per_defect, size, seed, defects)
    if root.exists():
        if _made_with(root, settings):
            return root
        if not overwrite:
            raise InvalidInputError(
                f"{root} already exists and is not a demo dataset made with these settings; "
                "choose another folder or pass overwrite=True to replace it"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the dataset is ordinary data
    try:
        _fill(staging, settings)
        _replace_dir(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _made_with(root: Path, settings: dict[str, Any]) -> bool:
    try:
        return bool(json.loads((root / MARKER).read_text()) == settings)
    except (OSError, ValueError):
        return False


def _fill(folder: Path, settings: dict[str, Any]) -> None:
    seed, size = settings["seed"], settings["size"]
    jobs: list[tuple[str, Path, int, str | None]] = [
        ("train", folder / "train" / "good", i, None) for i in range(settings["n_train"])
    ]
    jobs += [("good", folder / "test" / "good", i, None) for i in range(settings["n_test_good"])]
    for kind in settings["defects"]:
        jobs += [
            (kind, folder / "test" / kind, i, kind) for i in range(settings["n_test_per_defect"])
        ]
    for split, directory, index, defect in jobs:
        directory.mkdir(parents=True, exist_ok=True)
        image, mask = render_sample(seed, split, index, size, defect)
        _write_png(directory / f"{index:03d}.png", image)
        if mask is not None:
            truth = folder / "ground_truth" / split
            truth.mkdir(parents=True, exist_ok=True)
            _write_png(truth / f"{index:03d}_mask.png", mask.astype(np.uint8) * 255)
    (folder / MARKER).write_text(json.dumps(settings, indent=2) + "\n")


def _replace_dir(staging: Path, root: Path) -> None:
    """Move ``staging`` to ``root``; an old ``root`` is moved aside first and then deleted."""
    old = None
    if root.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old.", dir=root.parent))
        os.replace(root, old / root.name)
    os.replace(staging, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
