"""An explicit tile grid never makes tiles as large as the training images (issue 24:
`--tile 1x3` on ball_screw made 256 x 626 tiles from 230 x 565 images, 2.7x the training
time at the same metrics)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from anomaly_edge.train.tiling import choose_layout


def test_tiles_as_wide_as_the_images_are_refused_with_an_input_that_fits() -> None:
    with pytest.raises(ValueError, match=r"as large as the training images") as refused:
        choose_layout("1x3", (256, 626), (230, 565))  # ball_screw at its own aspect
    suggested = refused.value.args[0].split("image size ")[1].split(" ")[0]
    height, width = (int(v) for v in suggested.split("x"))
    layout = choose_layout("1x3", (height, width), (230, 565))
    assert layout is not None and layout.count == 3
    fh, fw = layout.frame_size
    assert fh <= 230 and fw <= 565  # no upscaling: tiles within the native frame
    assert width < 565 and height <= 230


def test_a_grid_of_smaller_tiles_is_kept() -> None:
    layout = choose_layout("1x3", (256, 256), (230, 565))  # one row: the height is one tile
    assert layout is not None and layout.frame_size == (256, 565)
    with pytest.raises(ValueError, match="along the height and width"):
        choose_layout("2x2", (512, 512), (400, 300))
