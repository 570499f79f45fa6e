"""The procedural demo dataset and video: deterministic, exact masks, valid MVTec layout."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from anomaly_edge.demo import DEFECT_TYPES, make_dataset, render_sample, render_video
from anomaly_edge.demo.dataset import MARKER, image_shape
from anomaly_edge.errors import InvalidInputError

SMALL = {"n_train": 3, "n_test_good": 2, "n_test_per_defect": 2, "size": 64}


def test_samples_are_deterministic_and_vary():
    first, _ = render_sample(3, "train", 0, size=64)
    again, _ = render_sample(3, "train", 0, size=64)
    other, _ = render_sample(3, "train", 1, size=64)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (*image_shape(64), 3) and first.dtype == np.uint8
    assert np.abs(first.astype(int) - other.astype(int)).mean() > 3  # a different piece of metal


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_mask_is_exactly_the_changed_pixels(kind):
    clean, none = render_sample(1, kind, 4, size=128)
    broken, mask = render_sample(1, kind, 4, size=128, defect=kind)
    assert none is None and mask is not None and mask.dtype == bool
    changed = (clean != broken).any(axis=2)
    assert not changed[~mask].any(), "pixels outside the mask changed"
    assert changed[mask].mean() > 0.95, "the mask covers pixels the defect did not touch"
    assert 5 <= mask.sum() <= 0.2 * mask.size  # there, and not the whole image


def test_defects_are_visible_but_not_glaring():
    for kind in DEFECT_TYPES:
        clean, _ = render_sample(2, kind, 0, size=256)
        broken, mask = render_sample(2, kind, 0, size=256, defect=kind)
        diff = np.abs(clean.astype(float) - broken.astype(float)).max(axis=2)[mask]
        assert diff.mean() > 8, kind  # several grey levels: a person can see it


def test_dataset_layout(tmp_path):
    root = make_dataset(tmp_path / "metal", seed=5, **SMALL)
    assert sorted(p.name for p in (root / "test").iterdir()) == sorted([*DEFECT_TYPES, "good"])
    assert len(list((root / "train" / "good").glob("*.png"))) == 3
    assert len(list((root / "test" / "good").glob("*.png"))) == 2
    for kind in DEFECT_TYPES:
        images = sorted((root / "test" / kind).glob("*.png"))
        assert [p.name for p in images] == ["000.png", "001.png"]
        for image_path in images:
            mask = cv2.imread(
                str(root / "ground_truth" / kind / f"{image_path.stem}_mask.png"),
                cv2.IMREAD_UNCHANGED,
            )
            image = cv2.imread(str(image_path))
            assert mask.shape == image.shape[:2] and set(np.unique(mask)) == {0, 255}
    assert not (root / "ground_truth" / "good").exists()
    assert json.loads((root / MARKER).read_text())["seed"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["metal"]  # no staging folder left behind


def test_dataset_matches_render_sample(tmp_path):
    root = make_dataset(tmp_path / "metal", seed=7, **SMALL)
    expected, mask = render_sample(7, "hole", 1, size=64, defect="hole")
    np.testing.assert_array_equal(cv2.imread(str(root / "test" / "hole" / "001.png")), expected)
    written = cv2.imread(str(root / "ground_truth" / "hole" / "001_mask.png"), 0)
    np.testing.assert_array_equal(written > 0, mask)


def test_existing_folder_is_reused_or_refused(tmp_path):
    root = make_dataset(tmp_path / "metal", **SMALL)
    stamp = (root / "train" / "good" / "000.png").stat().st_mtime_ns
    make_dataset(root, **SMALL)  # same settings: reused untouched
    assert (root / "train" / "good" / "000.png").stat().st_mtime_ns == stamp
    with pytest.raises(InvalidInputError, match="overwrite"):
        make_dataset(root, **{**SMALL, "seed": 1})
    make_dataset(root, overwrite=True, **{**SMALL, "n_train": 1})
    assert len(list((root / "train" / "good").glob("*.png"))) == 1
    foreign = tmp_path / "photos"
    foreign.mkdir()
    with pytest.raises(InvalidInputError, match="already exists"):
        make_dataset(foreign, **SMALL)


@pytest.mark.parametrize(
    "bad", [{"n_train": 0}, {"size": 8}, {"defects": ["dent"]}, {"n_test_good": -1}]
)
def test_bad_dataset_arguments(tmp_path, bad):
    with pytest.raises(InvalidInputError):
        make_dataset(tmp_path / "x", **{**SMALL, **bad})
    assert not (tmp_path / "x").exists()


def test_video_frames_and_truth(tmp_path):
    truth = render_video(
        tmp_path / "line.avi",
        seconds=2,
        fps=12,
        speed=48,
        frame_size=(120, 160),
        defects=["hole", "scratch"],
        seed=3,
    )
    capture = cv2.VideoCapture(str(truth.path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == truth.n_frames == 24 and frames[0].shape == (120, 160, 3)
    assert [d["kind"] for d in truth.defects] == ["hole", "scratch"]
    first = truth.defects[0]
    assert 0 < first["first_frame"] <= first["last_frame"] < truth.defects[1]["first_frame"]
    assert set(range(first["first_frame"], first["last_frame"] + 1)) <= set(truth.anomalous_frames)
    assert 0 < len(truth.anomalous_frames) < truth.n_frames  # normal stretches in between
    assert json.loads(truth.to_json())["n_frames"] == 24
    assert [p.name for p in tmp_path.iterdir()] == ["line.avi"]


def test_video_is_deterministic(tmp_path):
    kwargs = {"seconds": 1, "fps": 6, "frame_size": (96, 128), "seed": 2}
    a = render_video(tmp_path / "a.avi", **kwargs)
    b = render_video(tmp_path / "b.avi", **kwargs)
    assert a.anomalous_frames == b.anomalous_frames and a.defects == b.defects
    assert (tmp_path / "a.avi").read_bytes() == (tmp_path / "b.avi").read_bytes()


@pytest.mark.parametrize(
    "name, kwargs",
    [("v.mkv", {}), ("v.avi", {"fps": 0}), ("v.avi", {"speed": 0}), ("v.avi", {"defects": ["x"]})],
)
def test_bad_video_arguments(tmp_path, name, kwargs):
    with pytest.raises(InvalidInputError):
        render_video(tmp_path / name, **kwargs)
    assert list(tmp_path.iterdir()) == []
