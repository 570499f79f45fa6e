"""MVTec-layout scanning, decoding, the validation split and the torch dataset."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from anomaly_edge.category import MIN_TRAIN_IMAGES, CategoryData, Sample  # noqa: E402
from anomaly_edge.train.data import (  # noqa: E402
    DatasetError,
    ImageDataset,
    iter_batches,
    make_loader,
    read_rgb,
    scan_category,
)
from tests.test_data_factory import make_category  # noqa: E402


def test_scan_finds_images_masks_and_ignores_other_files(tmp_path):
    root = make_category(tmp_path / "cat", train=3, good=2, defects={"hole": 2, "cut": 1})
    (root / "train" / "good" / "notes.txt").write_text("not an image")
    (root / "train" / "good" / ".hidden.png").write_bytes(b"")
    (root / "train" / "good" / "Thumbs.db").write_bytes(b"\0")
    data = scan_category(root)
    assert len(data.train) == 3
    assert [s.defect for s in data.test] == ["cut", "good", "good", "hole", "hole"]
    hole = next(s for s in data.test if s.defect == "hole")
    assert hole.label == 1 and hole.mask_path.name == "000_mask.png"
    assert data.has_anomalies and data.unmasked == ()


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".PNG"])
def test_all_image_formats_are_found(tmp_path, suffix):
    folder = tmp_path / "cat" / "train" / "good"
    folder.mkdir(parents=True)
    assert cv2.imwrite(str(folder / f"a{suffix.lower()}"), np.full((40, 50, 3), 90, np.uint8))
    if suffix != suffix.lower():
        (folder / f"a{suffix.lower()}").rename(folder / f"a{suffix}")
    data = scan_category(tmp_path / "cat")
    assert len(data.train) == 1
    assert read_rgb(data.train[0].path).shape == (40, 50, 3)


def test_grey_rgba_and_16_bit_become_8_bit_rgb(tmp_path):
    grey = np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    deep = grey.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    bgra = np.zeros((48, 64, 4), np.uint8)
    bgra[..., 0] = 200  # blue
    bgra[..., 3] = 10
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    for name in ("grey.png", "deep.png"):
        image = read_rgb(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (48, 64, 3)
        assert np.array_equal(image[..., 0], grey) and np.array_equal(image[..., 2], grey)
    rgba = read_rgb(tmp_path / "rgba.png")
    assert rgba.shape == (48, 64, 3) and rgba[0, 0].tolist() == [0, 0, 200]  # RGB order


def test_missing_train_good_names_the_path(tmp_path):
    (tmp_path / "cat" / "test").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"cat/train/good is missing.*contains: test"):
        scan_category(tmp_path / "cat")
    with pytest.raises(DatasetError, match="does not exist"):
        scan_category(tmp_path / "nowhere")


def test_empty_splits_name_the_folder(tmp_path):
    (tmp_path / "cat" / "train" / "good").mkdir(parents=True)
    (tmp_path / "cat" / "train" / "good" / "readme.md").write_text("x")
    with pytest.raises(DatasetError, match=r"train/good holds no images"):
        scan_category(tmp_path / "cat")
    root = make_category(tmp_path / "cat2", train=2, good=1, defects={})
    (root / "test" / "crack").mkdir()
    with pytest.raises(DatasetError, match=r"test/crack holds no images"):
        scan_category(root)


def test_unreadable_image_names_the_path(tmp_path):
    root = make_category(tmp_path / "cat", train=2, good=0, defects={})
    broken = root / "train" / "good" / "001.png"
    broken.write_bytes(b"\x89PNG not really")
    dataset = ImageDataset(scan_category(root).train, 32)
    with pytest.raises(DatasetError, match=r"cannot read image .*001\.png"):
        dataset[1]


def test_mask_of_other_size_is_an_error(tmp_path):
    root = make_category(tmp_path / "cat", train=2, good=0, defects={"d": 1})
    cv2.imwrite(str(root / "ground_truth" / "d" / "000_mask.png"), np.zeros((10, 10), np.uint8))
    sample = next(s for s in scan_category(root).test if s.label)
    with pytest.raises(DatasetError, match=r"000_mask\.png is 10x10 but its image .* is 64x64"):
        ImageDataset([sample], 32)[0]


def test_defects_without_masks_are_allowed_and_listed(tmp_path):
    root = make_category(tmp_path / "cat", train=2, good=1, defects={"d": 2}, masks=False)
    data = scan_category(root)
    assert len(data.unmasked) == 2
    item = ImageDataset(data.unmasked, 32)[0]
    assert item["label"] == 1 and item["has_mask"] is False and item["mask"].sum() == 0


def test_validation_split_is_stratified_and_deterministic(tmp_path):
    root = make_category(tmp_path / "cat", train=2, good=10, defects={"a": 6, "b": 4})
    data = scan_category(root)
    split = data.split(0.3, seed=1)
    assert sum(s.label == 0 for s in split.validation) == 3
    assert sum(s.label == 1 for s in split.validation) == 3
    assert set(split.validation).isdisjoint(split.test)
    assert len(split.validation) + len(split.test) == len(data.test)
    assert split == data.split(0.3, seed=1)
    assert split.validation != data.split(0.3, seed=2).validation
    whole = data.split(0.0)
    assert whole.validation == whole.test == data.test
    with pytest.raises(ValueError, match="fraction"):
        data.split(1.0)


def test_split_without_anomalies_or_without_test(tmp_path):
    normal_only = scan_category(make_category(tmp_path / "a", train=3, good=4, defects={}))
    assert not normal_only.has_anomalies
    split = normal_only.split(0.5)
    assert len(split.validation) == 2 and all(s.label == 0 for s in split.validation)
    no_test = scan_category(make_category(tmp_path / "b", train=10, good=0, defects={}))
    split = no_test.split(0.3)
    assert len(split.train) == 7 and len(split.validation) == 3 and split.test == ()
    assert set(split.train).isdisjoint(split.validation)


def test_dataset_items_and_batches(tmp_path):
    root = make_category(tmp_path / "cat", train=5, good=1, defects={"d": 2}, size=64)
    data = scan_category(root)
    dataset = ImageDataset(data.test, (48, 32), mean=(128, 128, 128), std=(64, 64, 64))
    item = dataset[0]  # test order: d/000, d/001, good/000
    assert item["image"].shape == (3, 48, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 48, 32)
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}  # nearest: still binary
    assert item["mask"].sum() > 0 and item["label"] == 1
    batches = list(iter_batches(dataset, batch_size=2))
    assert [b["index"].tolist() for b in batches] == [[0, 1], [2]]
    torch.testing.assert_close(batches[0]["image"][0], item["image"])
    assert batches[1]["label"].tolist() == [0] and batches[1]["mask"].sum() == 0

    def order(seed):
        loader = make_loader(
            data.train, 32, (0, 0, 0), (1, 1, 1), batch_size=2, shuffle=True, seed=seed
        )
        return [b["index"].tolist() for b in loader]

    first = order(3)
    assert first == order(3)  # seeded shuffling repeats
    assert sorted(i for batch in first for i in batch) == list(range(5))


def _fake_category(train: int, good: int, defects: int) -> CategoryData:
    root = Path("/nowhere")
    return CategoryData(
        root,
        tuple(Sample(root / f"train/good/{i:03d}.png") for i in range(train)),
        tuple(Sample(root / f"test/good/{i:03d}.png") for i in range(good))
        + tuple(Sample(root / f"test/d/{i:03d}.png", "d") for i in range(defects)),
    )


def test_a_share_of_train_good_joins_validation_as_normal_parts():
    data = _fake_category(train=120, good=10, defects=10)
    split = data.split(0.3, seed=0, normal_holdout=0.2)
    held = set(data.train) - set(split.train)
    assert len(held) == 24 and held <= set(split.validation)
    assert sum(s.label == 0 for s in split.validation) == 3 + 24
    assert set(split.test) <= set(data.test)  # held-out train images are never reported on
    # the test split of a seed does not move with the holdout
    assert split.test == data.split(0.3, seed=0, normal_holdout=0.0).test
    assert "24 train images held out" in split.note
    whole = data.split(0.0, normal_holdout=0.2)
    assert whole.test == data.test and len(whole.validation) == len(data.test) + 24


def test_the_holdout_never_leaves_too_few_images_to_fit_on():
    data = _fake_category(train=12, good=4, defects=4)
    assert data_split_train(data, 0.5) == MIN_TRAIN_IMAGES  # 2 held out, not 6
    small = _fake_category(train=8, good=4, defects=4)
    assert data_split_train(small, 0.5) == 8  # nothing held out of a small set
    assert data_split_train(data, 0.0) == 12  # the default holds nothing out
    with pytest.raises(ValueError, match="holdout"):
        small.split(0.3, normal_holdout=1.0)


def data_split_train(data: CategoryData, holdout: float) -> int:
    return len(data.split(0.3, normal_holdout=holdout).train)
