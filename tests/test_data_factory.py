"""Tiny MVTec-layout categories generated on the fly (textured background + drawn defects).

``make_category(root, ...)`` writes train/good, test/good, test/<defect> and ground_truth
masks; other training tests import it. The tests here check the generator itself.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def textured(rng: np.random.Generator, size: int) -> np.ndarray:
    """A grey-ish BGR texture: smooth noise plus faint diagonal stripes."""
    noise = rng.normal(128, 30, (size // 4, size // 4)).astype(np.float32)
    base = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:size, 0:size]
    base += 12 * np.sin((xx + yy) / 3.0)
    base += rng.normal(0, 4, (size, size))
    image = np.clip(base, 0, 255).astype(np.uint8)
    return cv2.merge([image, (image * 0.9).astype(np.uint8), image])


def draw_defect(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Draw a bright or dark blob/scratch in place; returns its uint8 0/255 mask."""
    size = image.shape[0]
    mask = np.zeros(image.shape[:2], np.uint8)
    cx, cy = (int(v) for v in rng.integers(size // 5, size - size // 5, 2))
    if rng.random() < 0.5:
        axes = (int(rng.integers(size // 12, size // 6)), int(rng.integers(size // 14, size // 8)))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.integers(0, 180)), 0, 360, 255, -1)
    else:
        dx, dy = (int(v) for v in rng.integers(-size // 4, size // 4, 2))
        cv2.line(mask, (cx - dx, cy - dy), (cx + dx, cy + dy), 255, max(2, size // 20))
    colour = 250 if rng.random() < 0.5 else 5
    image[mask > 0] = colour
    return mask


def make_category(
    root: Path,
    *,
    train: int = 12,
    good: int = 4,
    defects: dict[str, int] | None = None,
    size: int = 64,
    seed: int = 0,
    masks: bool = True,
) -> Path:
    """Write a category folder; ``defects`` maps defect name -> image count."""
    rng = np.random.default_rng(seed)
    defects = {"scratch": 4} if defects is None else defects
    for i in range(train):
        _write(root / "train" / "good" / f"{i:03d}.png", textured(rng, size))
    for i in range(good):
        _write(root / "test" / "good" / f"{i:03d}.png", textured(rng, size))
    for name, count in defects.items():
        for i in range(count):
            image = textured(rng, size)
            mask = draw_defect(rng, image)
            _write(root / "test" / name / f"{i:03d}.png", image)
            if masks:
                _write(root / "ground_truth" / name / f"{i:03d}_mask.png", mask)
    return root


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def test_make_category_layout(tmp_path):
    root = make_category(tmp_path / "cat", train=3, good=2, defects={"a": 2, "b": 1})
    assert len(list((root / "train" / "good").glob("*.png"))) == 3
    assert len(list((root / "test" / "good").glob("*.png"))) == 2
    assert len(list((root / "ground_truth" / "a").glob("*_mask.png"))) == 2
    mask = cv2.imread(str(root / "ground_truth" / "b" / "000_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255} and mask.max() == 255


def test_make_category_is_deterministic(tmp_path):
    a = make_category(tmp_path / "a", train=1, good=0, defects={"d": 1}, seed=3)
    b = make_category(tmp_path / "b", train=1, good=0, defects={"d": 1}, seed=3)
    for rel in ("train/good/000.png", "test/d/000.png"):
        assert np.array_equal(cv2.imread(str(a / rel)), cv2.imread(str(b / rel)))
