"""One media module: training, runtime and streams decode and list image files the same way."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from anomaly_edge import media
from anomaly_edge.errors import InvalidInputError
from anomaly_edge.images import check_frame
from anomaly_edge.media import read_image
from anomaly_edge.model import AnomalyModel


def _files(folder):
    """Image files that decoders disagree on: 16-bit (grey and colour), RGBA, grey, webp."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    grey16 = np.full((40, 50), 32768, np.uint16)  # the value training and runtime disagreed on
    grey16[10:20, 10:30] = rng.integers(0, 65536, (10, 20), dtype=np.uint16)
    colour16 = rng.integers(0, 65536, (48, 40, 3), dtype=np.uint16)
    rgba = rng.integers(0, 256, (30, 30, 4), dtype=np.uint8)
    grey8 = rng.integers(0, 256, (70, 90), dtype=np.uint8)
    webp = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "grey16.png"), grey16)
    cv2.imwrite(str(folder / "colour16.tif"), colour16)
    cv2.imwrite(str(folder / "rgba.png"), rgba)
    cv2.imwrite(str(folder / "grey8.bmp"), grey8)
    cv2.imwrite(str(folder / "lossless.webp"), webp, [cv2.IMWRITE_WEBP_QUALITY, 101])
    return sorted(folder.iterdir())


def test_sixteen_bit_scales_with_rounding(tmp_path):
    path = tmp_path / "v.png"
    cv2.imwrite(str(path), np.array([[0, 257, 32768, 65535]], np.uint16))
    assert read_image(path, "GRAY").tolist() == [[0, 1, 128, 255]]


def test_training_and_runtime_give_the_network_the_same_tensor(tmp_path, synthetic_ir):
    from anomaly_edge.train.data import ImageDataset, Sample

    model = AnomalyModel(synthetic_ir, "CPU")
    md = model.metadata
    mean = np.float32(md.mean).reshape(3, 1, 1)
    std = np.float32(md.std).reshape(3, 1, 1)
    paths = _files(tmp_path / "imgs")
    dataset = ImageDataset([Sample(p) for p in paths], md.input_size, md.mean, md.std)
    for index, path in enumerate(paths):
        trained = dataset[index]["image"].numpy()
        _, bgr = model._network_input(path)  # what the compiled graph receives (uint8 BGR)
        rgb = bgr[0][:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
        np.testing.assert_array_equal((rgb - mean) / std, trained, err_msg=path.name)
    model.close()


def test_every_reader_lists_the_same_images(tmp_path):
    from anomaly_edge.cli.predict import collect_images
    from anomaly_edge.stream.sources import ImageFolderSource
    from anomaly_edge.train.data import list_images as training_list

    folder = tmp_path / "imgs"
    _files(folder)
    (folder / "notes.txt").write_text("x")
    (folder / ".hidden.png").write_bytes(b"")
    expected = sorted(
        p.name for p in folder.glob("*") if p.suffix != ".txt" and not p.name.startswith(".")
    )
    assert "lossless.webp" in expected  # webp can be trained on, not only scored
    assert [p.name for p in training_list(folder)] == expected
    assert [p.name for p in collect_images([folder], recursive=False)] == expected
    source = ImageFolderSource.from_folder(folder)
    assert sorted(source._paths) == sorted(folder / name for name in expected)
    source.close()


def test_stream_folder_decodes_like_the_runtime(tmp_path):
    from anomaly_edge.stream.sources import ImageFolderSource

    paths = _files(tmp_path / "imgs")
    source = ImageFolderSource(paths, "test")
    for path in paths:
        frame = source._read()
        np.testing.assert_array_equal(frame.image, read_image(path), err_msg=path.name)
    source.close()


def test_huge_images_are_refused_clearly(tmp_path):
    wide = tmp_path / "wide.png"
    cv2.imwrite(str(wide), np.zeros((2, media.MAX_IMAGE_SIDE + 1), np.uint8))
    with pytest.raises(InvalidInputError, match="longest side"):
        read_image(wide)
    with pytest.raises(InvalidInputError, match="longest side"):
        check_frame(np.zeros((2, media.MAX_IMAGE_SIDE + 1, 3), np.uint8))


def test_huge_image_in_a_prediction_is_an_input_error(tmp_path, synthetic_ir):
    model = AnomalyModel(synthetic_ir, "CPU")
    with pytest.raises(InvalidInputError, match="longest side"):
        model.predict(np.zeros((4, 40000, 3), np.uint8))
    model.close()


def test_float_and_odd_pixel_types(tmp_path):
    assert media.to_uint8(np.array([[0.0, 0.5, 1.0, np.nan]], np.float32)).tolist() == [
        [0, 128, 255, 0]
    ]
    with pytest.raises(InvalidInputError, match="pixel type"):
        media.to_uint8(np.zeros((2, 2), np.int32))
    with pytest.raises(InvalidInputError, match="not a folder"):
        media.list_images(tmp_path / "missing")
