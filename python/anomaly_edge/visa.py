"""The VisA layout: one CSV names every image of every category, with its split and label.

::

    ROOT/split_csv/1cls.csv     columns object, split, label, image, mask
    ROOT/<object>/Data/...      the images and masks the CSV names (paths relative to ROOT)

``split`` is ``train`` or ``test``, ``label`` is ``normal`` or ``anomaly``; ``mask`` is empty
for normal images. Training fits on the ``train`` rows, evaluates on the ``test`` rows, as
on the same images in MVTec layout. Masks may be 0/1 or 0/255: any non-zero pixel is a
defect (:func:`anomaly_edge.media.read_mask`). VisA names no defect types, so every
anomalous image is of the class ``"anomaly"``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from anomaly_edge.category import GOOD, CategoryData, DatasetError, Sample

SPLIT_CSV = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
ANOMALY = "anomaly"
_LABELS = {"normal": GOOD, "anomaly": ANOMALY}
_SPLITS = ("train", "test")
_SHOWN = 5  # missing files named in an error, before "and N more"


def scan_visa(root: Path, category: str | None) -> CategoryData:
    """The ``category`` rows of ``root/split_csv/1cls.csv`` as a :class:`CategoryData`.

    ``category=None`` (the VisA root itself was given) raises an error that lists the
    categories to choose from, as does a category the CSV does not name.
    """
    table = root / SPLIT_CSV
    rows = _read_rows(table)
    objects = sorted({row["object"] for _, row in rows})
    if category is None or category not in objects:
        what = (
            f"{root} is a VisA folder: pass one category folder in it"
            if category is None
            else f"{table} has no rows for the category {category!r}"
        )
        raise DatasetError(
            f"{what}; the categories it names are: {', '.join(objects) or 'none'} "
            f"(e.g. --data {root / (objects[0] if objects else 'CATEGORY')})"
        )
    train: list[Sample] = []
    test: list[Sample] = []
    missing: list[Path] = []
    for line, row in rows:
        if row["object"] != category:
            continue
        split = row["split"].strip().lower()
        label = row["label"].strip().lower()
        if split not in _SPLITS:
            raise DatasetError(
                f"{table}, line {line}: split {row['split']!r} is neither 'train' nor 'test'"
            )
        if label not in _LABELS:
            raise DatasetError(
                f"{table}, line {line}: label {row['label']!r} is neither 'normal' nor 'anomaly'"
            )
        if not row["image"].strip():
            raise DatasetError(f"{table}, line {line}: the image column is empty")
        image = root / row["image"].strip()
        mask = root / row["mask"].strip() if row["mask"].strip() and label == ANOMALY else None
        missing += [path for path in (image, mask) if path is not None and not path.is_file()]
        if split == "train":
            if label == ANOMALY:
                raise DatasetError(
                    f"{table}, line {line}: an anomalous image in the train split "
                    f"({row['image']}); training learns from normal images only: move it to "
                    "the test split"
                )
            train.append(Sample(image))
        else:
            test.append(Sample(image, _LABELS[label], mask))
    if missing:
        shown = ", ".join(str(p) for p in missing[:_SHOWN])
        more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        raise DatasetError(
            f"{table} names files that are not there: {shown}{more}; restore them or "
            "remove their rows"
        )
    if not train:
        raise DatasetError(
            f"{table} has no normal train rows for {category!r}; training needs normal images"
        )
    # Sorted by path, whatever the CSV's row order: the validation split depends on the order.
    return CategoryData(
        root / category,
        tuple(sorted(train, key=lambda s: str(s.path))),
        tuple(sorted(test, key=lambda s: (s.label, str(s.path)))),
    )


def _read_rows(table: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row; errors for an unreadable file or missing columns."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            absent = [name for name in COLUMNS if name not in header]
            if absent:
                raise DatasetError(
                    f"{table} lacks the column(s) {', '.join(absent)}: a VisA split CSV has "
                    f"the columns {', '.join(COLUMNS)}; its header is "
                    f"{', '.join(header) or 'empty'}"
                )
            reader.fieldnames = header
            rows = []
            for row in reader:
                values = [v for v in row.values() if isinstance(v, str)]
                if not any(v.strip() for v in values):
                    continue  # blank line
                rows.append((reader.line_num, {k: (row.get(k) or "") for k in COLUMNS}))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {table}: {exc}; fix or replace the file") from None
    return rows
