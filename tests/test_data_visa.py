"""The VisA layout: the same images read as VisA and as MVTec give the same data, split and
metrics; a malformed CSV, missing files and unknown categories give clear errors."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from anomaly_edge.layout import GOOD, DatasetError, scan_category
from anomaly_edge.visa import ANOMALY, COLUMNS
from tests.test_data_factory import make_category

HEADER = list(COLUMNS)


def to_visa(mvtec: Path, root: Path, category: str, *, binary_masks: bool = False) -> Path:
    """Lay out an MVTec category as ``root/category`` in VisA layout (images symlinked; masks
    written as 0/1 when ``binary_masks``). Names keep MVTec's order (split, class, file)."""
    rows = []
    data = root / category / "Data"

    def link(source: Path, target: Path) -> str:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source.resolve(), target)
        return target.relative_to(root).as_posix()

    for path in sorted((mvtec / "train" / GOOD).iterdir()):
        image = link(path, data / "Images" / "Normal" / f"train_{path.name}")
        rows.append([category, "train", "normal", image, ""])
    test = mvtec / "test"
    for folder in sorted(test.iterdir()) if test.is_dir() else []:
        for path in sorted(folder.iterdir()):
            if folder.name == GOOD:
                image = link(path, data / "Images" / "Normal" / f"test_{path.name}")
                rows.append([category, "test", "normal", image, ""])
                continue
            name = f"{folder.name}_{path.stem}"
            image = link(path, data / "Images" / "Anomaly" / f"{name}{path.suffix}")
            mask_source = mvtec / "ground_truth" / folder.name / f"{path.stem}_mask.png"
            mask = ""
            if mask_source.is_file():
                target = data / "Masks" / "Anomaly" / f"{name}.png"
                if binary_masks:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    values = cv2.imread(str(mask_source), cv2.IMREAD_GRAYSCALE)
                    cv2.imwrite(str(target), (values > 0).astype(np.uint8))
                    mask = target.relative_to(root).as_posix()
                else:
                    mask = link(mask_source, target)
            rows.append([category, "test", "anomaly", image, mask])
    write_csv(root, rows)
    return root / category


def write_csv(root: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    table = root / "split_csv" / "1cls.csv"
    table.parent.mkdir(parents=True, exist_ok=True)
    existing = []
    if table.is_file():  # a second category joins the same CSV
        with open(table, newline="") as handle:
            existing = list(csv.reader(handle))[1:]
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(existing + rows)
    return table


@pytest.fixture
def both(tmp_path):
    mvtec = make_category(tmp_path / "mvtec" / "cat", train=6, good=3, defects={"a": 3, "b": 2})
    visa = to_visa(mvtec, tmp_path / "visa", "cat")
    return mvtec, visa


def test_visa_reads_the_same_images_as_mvtec(both):
    mvtec, visa = (scan_category(p) for p in both)
    assert visa.root == both[1]
    assert [s.path.resolve() for s in visa.train] == [s.path.resolve() for s in mvtec.train]
    assert [s.label for s in visa.test] == sorted(s.label for s in mvtec.test)
    by_image = {s.path.resolve(): s for s in mvtec.test}
    for sample in visa.test:
        twin = by_image[sample.path.resolve()]
        assert sample.label == twin.label
        assert sample.defect == (ANOMALY if twin.label else GOOD)
        assert (sample.mask_path is None) == (twin.mask_path is None)
        if sample.mask_path is not None:
            assert sample.mask_path.resolve() == twin.mask_path.resolve()


def test_the_validation_split_is_the_same_images(both):
    mvtec, visa = (scan_category(p).split(0.3, seed=1) for p in both)
    for part in ("train", "validation", "test"):
        names = {s.path.resolve() for s in getattr(mvtec, part)}
        assert {s.path.resolve() for s in getattr(visa, part)} == names, part


def test_binary_masks_mark_the_defect(tmp_path):
    from anomaly_edge.train.data import read_mask

    mvtec = make_category(tmp_path / "mvtec" / "cat", train=3, good=1, defects={"a": 2})
    visa = scan_category(to_visa(mvtec, tmp_path / "visa", "cat", binary_masks=True))
    sample = next(s for s in visa.test if s.label)
    assert sample.mask_path is not None
    assert cv2.imread(str(sample.mask_path), cv2.IMREAD_GRAYSCALE).max() == 1
    twin = mvtec / "ground_truth" / "a" / f"{sample.path.stem.removeprefix('a_')}_mask.png"
    assert np.array_equal(read_mask(sample.mask_path), read_mask(twin))


def test_row_order_of_the_csv_does_not_matter(both):
    table = both[1].parent / "split_csv" / "1cls.csv"
    first = scan_category(both[1])
    with open(table, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    table.unlink()
    write_csv(both[1].parent, rows[::-1])
    again = scan_category(both[1])
    assert again == first


def test_a_category_not_in_the_csv_lists_those_that_are(both, tmp_path):
    other = make_category(tmp_path / "mvtec" / "pcb", train=2, good=0, defects={})
    to_visa(other, both[1].parent, "pcb")
    (both[1].parent / "candle").mkdir()
    with pytest.raises(DatasetError, match=r"'candle'.*cat, pcb"):
        scan_category(both[1].parent / "candle")
    with pytest.raises(DatasetError, match=r"VisA folder.*cat, pcb"):
        scan_category(both[1].parent)
    assert len(scan_category(both[1].parent / "pcb").train) == 2


def test_missing_columns_are_named(tmp_path):
    root = tmp_path / "visa"
    (root / "cat").mkdir(parents=True)
    write_csv(root, [["cat", "train", "a.png"]], header=["object", "split", "image"])
    with pytest.raises(DatasetError, match=r"lacks the column\(s\) label, mask"):
        scan_category(root / "cat")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["cat", "train", "broken", "x.png", ""], r"line 3: label 'broken' is neither"),
        (["cat", "val", "normal", "x.png", ""], r"line 3: split 'val' is neither"),
        (["cat", "train", "anomaly", "x.png", ""], r"line 3: an anomalous image in the train"),
        (["cat", "test", "normal", "", ""], r"line 3: the image column is empty"),
    ],
)
def test_bad_rows_name_their_line(tmp_path, row, message):
    root = tmp_path / "visa"
    image = root / "cat" / "Data" / "x.png"
    image.parent.mkdir(parents=True)
    cv2.imwrite(str(image), np.zeros((8, 8), np.uint8))
    write_csv(root, [["cat", "train", "normal", "cat/Data/x.png", ""], row])
    with pytest.raises(DatasetError, match=message):
        scan_category(root / "cat")


def test_missing_files_are_named(both):
    visa = scan_category(both[1])
    gone = [visa.train[0].path, next(s for s in visa.test if s.mask_path).mask_path]
    for path in gone:
        path.unlink()
    with pytest.raises(DatasetError, match="not there") as caught:
        scan_category(both[1])
    for path in gone:
        assert str(path) in str(caught.value)


def test_no_normal_train_rows_is_clear(tmp_path):
    mvtec = make_category(tmp_path / "mvtec" / "cat", train=2, good=1, defects={})
    root = tmp_path / "visa"
    to_visa(mvtec, root, "cat")
    table = root / "split_csv" / "1cls.csv"
    lines = [line for line in table.read_text().splitlines() if ",train," not in line]
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="no normal train rows"):
        scan_category(root / "cat")


def test_neither_layout_mentions_both(tmp_path):
    (tmp_path / "cat").mkdir()
    with pytest.raises(DatasetError, match=r"MVTec layout.*VisA"):
        scan_category(tmp_path / "cat")


def test_the_report_reads_visa_test_images(both):
    from anomaly_edge.report.dataset import list_test_images

    samples = list_test_images(both[1])
    assert len(samples) == 8 and sum(s.is_defect for s in samples) == 5


def test_training_on_visa_gives_the_metrics_of_mvtec(both):
    pytest.importorskip("torch")
    from anomaly_edge.train import train

    fast = {"backbone": "efficientnet_lite0", "image_size": 64, "export": False}
    mvtec, visa = (train(p, **fast).metrics for p in both)
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_threshold", "pixel_threshold"):
        assert visa[key] == pytest.approx(mvtec[key], abs=1e-6), key


@pytest.mark.realdata
@pytest.mark.slow
def test_metal_plate_in_visa_layout_trains_to_the_same_metrics(datasets_root, tmp_path):
    pytest.importorskip("torch")
    from anomaly_edge.train import train

    mvtec = datasets_root / "mpdd" / "metal_plate"
    if not (mvtec / "train" / GOOD).is_dir():
        pytest.skip(f"{mvtec} not found")
    visa = to_visa(mvtec, tmp_path / "visa", "metal_plate")
    settings = {"model": "padim", "validation_fraction": 0.0, "export": False}
    expected, got = train(mvtec, **settings).metrics, train(visa, **settings).metrics
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1"):
        assert got[key] == pytest.approx(expected[key], abs=0.005), (key, got, expected)
