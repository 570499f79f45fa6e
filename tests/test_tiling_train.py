"""Training on tiles: the layout rule, PaDiM per tile position, export at the tile batch, API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_edge import AnomalyModel
from anomaly_edge.cli.main import main as cli_main
from anomaly_edge.demo import make_dataset
from anomaly_edge.metadata import ModelMetadata
from anomaly_edge.model_loading import read_ir
from anomaly_edge.tiles import TileLayout
from anomaly_edge.train.models.padim.model import Padim
from anomaly_edge.train.models.padim.tiled import TilePositionPadim, resolve_tile_gaussians
from anomaly_edge.train.options import PadimOptions, StfpmOptions
from anomaly_edge.train.tiling import AUTO_MAX_TILES, choose_layout, predict_tiled

# ---- the layout rule -------------------------------------------------------------------------


def test_auto_leaves_images_near_the_input_size_alone() -> None:
    # The four shared categories: a single view (metal_plate is 2x the input, the rest less).
    for native in ((512, 512), (230, 565), (400, 300), (300, 450)):
        assert choose_layout("auto", (256, 256), native) is None


def test_auto_tiles_large_frames_near_native_resolution() -> None:
    layout = choose_layout("auto", (256, 256), (2048, 2448))
    assert layout is not None and layout.count <= AUTO_MAX_TILES
    fh, fw = layout.frame_size
    assert fw / fh == pytest.approx(2448 / 2048, rel=0.01)  # aspect kept
    assert fh >= 2048 / 2.2  # far finer than the 8x shrink of a single 256 px view
    small = choose_layout("auto", (256, 256), (800, 800))  # native fits in a few tiles
    assert small is not None and small.frame_size == (800, 800) and small.count <= 16


def test_explicit_grid_covers_no_more_than_native() -> None:
    layout = choose_layout("1x3", (256, 256), (230, 565))  # ball_screw: native width, one row
    assert layout == TileLayout((256, 565), (256, 256), (1, 3))
    big = choose_layout("2x2", (256, 256), (2048, 2448))  # shrunk to what 2x2 tiles cover
    assert big is not None and big.frame_size[0] <= 2 * 256 and min(big.overlap) >= 32
    assert choose_layout("off", (256, 256), (2048, 2448)) is None
    with pytest.raises(ValueError, match="auto, off, or a grid"):
        choose_layout("lots", (256, 256), (512, 512))


# ---- PaDiM per tile position -------------------------------------------------------------------


def halves(swapped: bool = False, noise_seed: int = 0) -> torch.Tensor:
    """A frame as 1x2 tiles [2, 3, 64, 64]: a bright left tile and a dark right tile."""
    rng = torch.Generator().manual_seed(noise_seed)
    bright = 1.0 + 0.1 * torch.randn(3, 64, 64, generator=rng)
    dark = -1.0 + 0.1 * torch.randn(3, 64, 64, generator=rng)
    return torch.stack([dark, bright] if swapped else [bright, dark])


def small_padim() -> Padim:
    torch.manual_seed(0)
    return Padim("resnet18", (64, 64), n_channels=20, pretrained=False, pool=2)


def test_position_gaussians_know_which_tile_is_where_shared_ones_do_not() -> None:
    frames = [halves(noise_seed=i) for i in range(8)]
    positional = TilePositionPadim(small_padim(), tiles=2).fit(frames)
    shared = small_padim().fit(frames)  # every tile is an image: one set of Gaussians
    normal, swapped = halves(noise_seed=99), halves(swapped=True, noise_seed=99)
    with torch.no_grad():
        pos_normal, pos_swapped = positional(normal).max(), positional(swapped).max()
        shared_normal, shared_swapped = shared(normal).max(), shared(swapped).max()
    assert positional(normal).shape == (2, 1, 64, 64)
    assert pos_swapped > 3 * pos_normal  # the bright tile on the wrong side is an anomaly
    assert shared_swapped < 1.5 * shared_normal  # for shared Gaussians both tiles are normal


def test_auto_gaussians_per_position_only_with_more_images_than_channels() -> None:
    assert resolve_tile_gaussians("auto", 111, 80) == "position"  # ball_screw
    assert resolve_tile_gaussians("auto", 54, 80) == "shared"  # metal_plate
    assert resolve_tile_gaussians("shared", 500, 80) == "shared"
    with pytest.raises(ValueError, match="tile_gaussians must be one of"):
        resolve_tile_gaussians("each", 10, 10)


def test_tile_position_padim_takes_whole_frames_only() -> None:
    model = TilePositionPadim(small_padim(), tiles=2)
    with pytest.raises(RuntimeError, match="not fitted"):
        model(halves())
    with pytest.raises(ValueError, match="whole frames of 2 tiles"):
        model.fit([torch.zeros(3, 3, 64, 64)])


# ---- train(), export, runtime ------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return make_dataset(
        tmp_path_factory.mktemp("tiles") / "data",
        n_train=8,
        n_test_good=3,
        n_test_per_defect=2,
        size=96,
        defects=("hole", "stain"),
    )


@pytest.fixture(scope="module")
def tiled_run(small_dataset: Path, tmp_path_factory):
    from anomaly_edge.train import train

    out = tmp_path_factory.mktemp("tiled_run")
    result = train(
        small_dataset,
        model="padim",
        backbone="resnet18",
        options=PadimOptions(n_channels=20, pool=2, pretrained=False, tile_gaussians="position"),
        image_size=64,
        tile="2x2",
        out=out,
    )
    return result, out


def test_train_records_the_layout_in_metrics_and_rt_info(tiled_run) -> None:
    result, out = tiled_run
    layout = TileLayout((90, 120), (64, 64), (2, 2))  # 96x128 images, shrunk to what 2x2 covers
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tiles"]["grid"] == [2, 2]
    assert metrics["tiles"]["frame_size"] == list(layout.frame_size)
    assert metrics["tiles"]["gaussians"] == "position"
    assert metrics["tiles"]["native_size"] == [96, 128]
    assert metrics["image_auroc"] is not None
    graph = read_ir(out / "model.xml")
    assert list(graph.inputs[0].get_shape()) == [4, 3, 64, 64]  # the tiles are the batch
    assert ModelMetadata.read_from(graph).tile_layout == layout
    assert isinstance(result.model, TilePositionPadim)


def test_exported_tiled_model_reproduces_the_torch_maps(tiled_run, small_dataset: Path) -> None:
    from anomaly_edge.train.data import scan_category

    result, out = tiled_run
    layout = result.metadata.tile_layout
    samples = scan_category(small_dataset).test[:3]
    expected = predict_tiled(
        result.model, samples, layout, result.metadata.mean, result.metadata.std
    )
    model = AnomalyModel(out / "model.xml", "CPU", cache_dir=None)
    for sample, want in zip(samples, expected.maps, strict=True):
        got = model.predict(sample.path).anomaly_map
        assert got.shape == want.shape
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_checkpoint_rebuilds_the_tile_position_model(tiled_run) -> None:
    from anomaly_edge.train.checkpoint import load_checkpoint

    result, out = tiled_run
    model, metadata = load_checkpoint(out)
    assert isinstance(model, TilePositionPadim) and metadata.tile_grid == (2, 2)
    frame = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(frame), result.model(frame))


@pytest.mark.slow  # one STFPM epoch with a pretrained teacher: about 10 s on a free core
def test_stfpm_trains_on_tiles(small_dataset: Path, tmp_path: Path) -> None:
    from anomaly_edge.train import train

    result = train(
        small_dataset,
        model="stfpm",
        backbone="efficientnet_lite0",
        image_size=64,
        tile="1x2",
        out=tmp_path,
        options=StfpmOptions(max_epochs=1),
    )
    assert result.metrics["tiles"]["grid"] == [1, 2]
    assert result.metrics["tiles"]["gaussians"] is None
    assert list(read_ir(tmp_path / "model.xml").inputs[0].get_shape()) == [2, 3, 64, 64]


def test_cli_refuses_a_bad_tile_option(small_dataset: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--data", str(small_dataset), "--out", str(tmp_path), "--tile", "many"])
    assert exit_info.value.code == 2
    assert "auto, off, or a grid" in capsys.readouterr().err


def test_int8_of_a_tiled_model_is_refused_up_front(small_dataset: Path, tmp_path: Path) -> None:
    from anomaly_edge.train import train

    with pytest.raises(ValueError, match="INT8 export of tiled models"):
        train(
            small_dataset,
            model="padim",
            backbone="resnet18",
            options=PadimOptions(pretrained=False),
            image_size=64,
            tile="2x2",
            out=tmp_path,
            precision="INT8",
        )
