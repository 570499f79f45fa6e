"""The C++ stitch of tile maps (cpp/stitch.cpp through anomaly_edge.postprocess.stitch_tiles)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from anomaly_edge import _post
from anomaly_edge.errors import InvalidInputError
from anomaly_edge.postprocess import stitch_tiles
from anomaly_edge.tiles import TileLayout


def crops(frame: np.ndarray, layout: TileLayout) -> np.ndarray:
    """The tiles of a float frame map, as a model that is exact at every position would see."""
    h, w = layout.tile_size
    return np.stack([frame[y : y + h, x : x + w] for y in layout.ys for x in layout.xs])


LAYOUTS = [
    TileLayout((100, 130), (40, 50), (3, 3)),
    TileLayout((64, 200), (64, 64), (1, 4)),  # one row: no blending across rows
    TileLayout((90, 90), (50, 50), (2, 2)),  # large overlap
    TileLayout((57, 61), (20, 21), (5, 4)),  # odd sizes, uneven starts
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.describe())
@pytest.mark.parametrize("blend", ["cosine", "average"])
def test_tiles_cut_from_a_map_stitch_back_to_it(layout: TileLayout, blend: str) -> None:
    # Weights sum to one wherever tiles overlap, so crops of any map give that map back.
    rng = np.random.default_rng(0)
    frame = rng.normal(size=layout.frame_size).astype(np.float32)
    stitched = stitch_tiles(crops(frame, layout), layout.ys, layout.xs, layout.frame_size, blend)
    assert stitched.shape == layout.frame_size and stitched.dtype == np.float32
    np.testing.assert_allclose(stitched, frame, atol=1e-5)


def test_cosine_blend_has_no_seams_where_average_has_them() -> None:
    # Two tiles that disagree (0 and 1): the cosine blend crosses over smoothly inside the
    # overlap; a plain average jumps by half the disagreement at each tile edge.
    layout = TileLayout((32, 96), (32, 64), (1, 2))
    tiles = np.stack([np.zeros((32, 64)), np.ones((32, 64))]).astype(np.float32)
    smooth = stitch_tiles(tiles, layout.ys, layout.xs, layout.frame_size, "cosine")
    plain = stitch_tiles(tiles, layout.ys, layout.xs, layout.frame_size, "average")
    overlap = layout.overlap[1]
    assert overlap == 32
    assert np.abs(np.diff(smooth, axis=1)).max() < 2.0 / overlap  # ~pi/2 / overlap
    assert np.abs(np.diff(plain, axis=1)).max() == pytest.approx(0.5)
    # monotone from the left tile's value to the right tile's across the overlap
    assert smooth[0, 0] == 0.0 and smooth[0, -1] == 1.0
    assert (np.diff(smooth[0]) >= 0).all()


def test_model_output_shape_is_accepted() -> None:
    layout = TileLayout((40, 70), (40, 40), (1, 2))
    maps = np.ones((2, 1, 40, 40), np.float32)  # (N, 1, h, w) as a model returns it
    assert layout.stitch(maps).shape == (40, 70)


def test_bad_input_is_refused_with_a_clear_message() -> None:
    layout = TileLayout((40, 70), (40, 40), (1, 2))
    good = np.zeros((2, 40, 40), np.float32)
    ys, xs, size = layout.ys, layout.xs, layout.frame_size
    with pytest.raises(InvalidInputError, match="2 maps for a 1 x 3 grid"):
        stitch_tiles(good, ys, [0, 10, 30], size)
    with pytest.raises(InvalidInputError, match="first tile must start at 0"):
        stitch_tiles(good, ys, [5, 30], size)
    with pytest.raises(InvalidInputError, match="no gaps"):
        stitch_tiles(good, [0], [0, 50], (40, 90))
    with pytest.raises(InvalidInputError, match="end on the frame's edge"):
        stitch_tiles(good, ys, xs, (40, 80))
    with pytest.raises(InvalidInputError, match="ascend"):
        stitch_tiles(np.zeros((3, 40, 40), np.float32), ys, [0, 30, 30], size)
    with pytest.raises(InvalidInputError, match="unknown blend"):
        stitch_tiles(good, ys, xs, size, "max")
    with pytest.raises(TypeError, match="float32"):
        stitch_tiles(good.astype(np.float64), ys, xs, size)
    with pytest.raises(TypeError, match="list of ints"):
        stitch_tiles(good, ys, [0.0, 30.0], size)
    with pytest.raises(InvalidInputError, match="3-D"):
        stitch_tiles(good[0], ys, xs, size)
    bad = good.copy()
    bad[1, 5, 39] = np.nan
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        stitch_tiles(bad, ys, xs, size)
    bad[1, 5, 39] = np.inf
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        stitch_tiles(bad, ys, xs, size)


def test_strided_input_is_copied_not_misread() -> None:
    layout = TileLayout((40, 70), (40, 40), (1, 2))
    frame = np.arange(40 * 70, dtype=np.float32).reshape(40, 70)
    tiles = np.asfortranarray(crops(frame, layout))
    np.testing.assert_allclose(layout.stitch(tiles), frame, rtol=1e-6)


def test_threads_stitch_at_once() -> None:
    # The GIL is released during the C++ work: results must stay exact under concurrency.
    layout = TileLayout((300, 400), (128, 128), (3, 4))
    rng = np.random.default_rng(1)
    frames = [rng.random(layout.frame_size, dtype=np.float32) for _ in range(4)]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = layout.stitch(crops(frames[i], layout))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, frame in enumerate(frames):
        np.testing.assert_allclose(results[i], frame, atol=1e-5)


def test_binding_is_listed_in_the_stub() -> None:
    assert callable(_post.stitch)
    from pathlib import Path

    import anomaly_edge

    stub = Path(anomaly_edge.__file__).with_name("_post.pyi").read_text()
    assert "def stitch(" in stub
