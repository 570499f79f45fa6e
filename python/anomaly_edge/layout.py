"""The images of one category, in MVTec or VisA layout, read without torch.

One dataset type for every layout (:mod:`anomaly_edge.category`: train and test samples),
used by training (``anomaly_edge.train.data`` adds the torch side) and by the report.
:func:`scan_category` tells the layouts apart.

MVTec layout (also the layout for users' own data)::

    CATEGORY/train/good/*.png                       normal images to learn from (required)
    CATEGORY/test/good/*.png                        normal test images        (optional)
    CATEGORY/test/<defect>/*.png                    anomalous test images     (optional)
    CATEGORY/ground_truth/<defect>/<name>_mask.png  pixel masks               (optional)

VisA layout (``ROOT/CATEGORY`` is the folder given; see :mod:`anomaly_edge.visa`)::

    ROOT/split_csv/1cls.csv          object,split,label,image,mask (paths relative to ROOT)
    ROOT/CATEGORY/Data/Images/...    the images; ROOT/CATEGORY/Data/Masks/... the masks

Images: whatever :mod:`anomaly_edge.media` reads (png, jpg, bmp, tif, webp, ...), any size,
grey/colour/RGBA, 8 or 16 bit. A defect image without a mask is fine for image-level
metrics; :attr:`CategoryData.unmasked` lists them for pixel metrics.
"""

from __future__ import annotations

from pathlib import Path

from anomaly_edge import media
from anomaly_edge.category import (
    DEFAULT_VALIDATION_FRACTION,
    GOOD,
    CategoryData,
    DatasetError,
    Sample,
    Split,
    split_validation,
)
from anomaly_edge.media import IMAGE_SUFFIXES
from anomaly_edge.visa import SPLIT_CSV, scan_visa

__all__ = [
    "DEFAULT_VALIDATION_FRACTION",
    "GOOD",
    "CategoryData",
    "DatasetError",
    "Sample",
    "Split",
    "list_images",
    "scan_category",
    "scan_test",
    "split_validation",
]


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (non-images and hidden files skipped)."""
    return media.list_images(folder)


def scan_category(root: str | Path) -> CategoryData:
    """Find the images and masks of a category folder, in MVTec or VisA layout.

    MVTec when ``root/train/good`` exists; VisA when ``root``'s parent holds
    ``split_csv/1cls.csv`` (``root`` is then ``<VisA root>/<category>``). Raises
    :class:`DatasetError` (naming the path) when ``root`` is missing, is neither layout, or
    holds no training image, when a ``test`` subfolder is empty, or when the VisA CSV is
    malformed or names files that are not there.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"data folder {root} does not exist or is not a folder; pass the "
            "category folder that holds train/good (MVTec layout) or <VisA root>/<category>"
        )
    train_dir = root / "train" / GOOD
    if not train_dir.is_dir():
        if (root.parent / SPLIT_CSV).is_file():
            return scan_visa(root.parent, root.name)
        if (root / SPLIT_CSV).is_file():
            return scan_visa(root, None)  # names the categories to choose from
        found = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())) or "nothing"
        raise DatasetError(
            f"{train_dir} is missing: the data folder must hold train/good with "
            f"normal images (MVTec layout), or be <root>/<category> of a VisA folder whose "
            f"root holds {SPLIT_CSV}; {root} contains: {found}"
        )
    train = tuple(Sample(p) for p in list_images(train_dir))
    if not train:
        raise DatasetError(
            f"{train_dir} holds no images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}); add normal images there"
        )
    return CategoryData(root, train, mvtec_test(root))


def scan_test(root: str | Path) -> tuple[Sample, ...]:
    """The test images of a category folder (MVTec or VisA), for readers that need no
    training images (the report): an MVTec folder without train/good is fine here."""
    root = Path(root).expanduser()
    mvtec = (root / "train" / GOOD).is_dir() or (root / "test").is_dir()
    if not mvtec and any((folder / SPLIT_CSV).is_file() for folder in (root.parent, root)):
        return scan_category(root).test
    return mvtec_test(root)


def mvtec_test(root: Path) -> tuple[Sample, ...]:
    """``root/test/<class>/*`` sorted by class and name, masks from ``root/ground_truth``."""
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
    return tuple(test)


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
