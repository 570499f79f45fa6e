"""The test images of an MVTec-layout category folder, with their ground-truth masks, read
without torch (the training reader imports torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from anomaly_edge.media import IMAGE_SUFFIXES, list_images

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One test image: its path, its class (``good`` or the defect) and its mask, if any."""

    path: Path
    defect: str
    mask_path: Path | None

    @property
    def is_defect(self) -> bool:
        return self.defect != GOOD


def list_test_images(root: Path) -> list[Sample]:
    """``root/test/<class>/*`` sorted by class and name; masks from ``root/ground_truth``."""
    test_dir = root / "test"
    if not test_dir.is_dir():
        return []
    found: list[Sample] = []
    for folder in sorted(p for p in test_dir.iterdir() if p.is_dir() and p.name[0] != "."):
        for path in list_images(folder):
            mask = None if folder.name == GOOD else _mask_of(root, folder.name, path)
            found.append(Sample(path, folder.name, mask))
    return found


def _mask_of(root: Path, defect: str, image: Path) -> Path | None:
    folder = root / "ground_truth" / defect
    if not folder.is_dir():
        return None
    for stem in (f"{image.stem}_mask", image.stem):
        for suffix in (".png", *sorted(IMAGE_SUFFIXES - {".png"})):
            for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
                if candidate.is_file():
                    return candidate
    return None
