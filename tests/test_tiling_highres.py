"""The point of tiles: on 2448 x 2048 frames a tiled PaDiM finds holes 8-20 px across that a
single 256 x 256 view (an 8-10x shrink: a 2 px speck) misses. Generated brushed metal from
:mod:`anomaly_edge.demo`, trained and run end to end (train -> IR -> AnomalyModel)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from anomaly_edge import AnomalyModel
from anomaly_edge.demo.defects import paint_defect
from anomaly_edge.demo.surface import Lighting, expose, metal_albedo

FRAME = (2048, 2448)  # (height, width): a 5 MP industrial camera
HOLE_SCALE = 0.83  # the demo's holes are 10-24 px across at scale 1; here 8-20 px


def frame(seed: int, holes: int = 0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """A BGR frame of fresh brushed metal (a slightly different light each time) and the
    centres (x, y) of the ``holes`` small holes painted into it."""
    rng = np.random.default_rng(seed)
    albedo = metal_albedo(FRAME, rng)
    centres = []
    for _ in range(holes):
        centre = (float(rng.uniform(100, FRAME[1] - 100)), float(rng.uniform(100, FRAME[0] - 100)))
        paint_defect("hole", albedo, rng, scale=HOLE_SCALE, centre=centre)
        centres.append(centre)
    return expose(albedo, Lighting.random(rng, variation=0.3), rng), centres


def write_category(root: Path) -> Path:
    """An MVTec-layout folder: normal frames to fit on, a few test frames to calibrate on."""
    for sub in ("train/good", "test/good", "test/hole"):
        (root / sub).mkdir(parents=True)
    for i in range(10):
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), frame(1000 + i)[0])
    for i in range(3):
        cv2.imwrite(str(root / "test/good" / f"{i:03d}.png"), frame(2000 + i)[0])
        cv2.imwrite(str(root / "test/hole" / f"{i:03d}.png"), frame(3000 + i, holes=1)[0])
    return root


def strongest(model: AnomalyModel, image: np.ndarray) -> tuple[float, tuple[float, float]]:
    """The frame's raw score and where (frame pixels x, y) its map peaks."""
    prediction = model.predict(image)
    anomaly_map = prediction.anomaly_map
    y, x = np.unravel_index(int(anomaly_map.argmax()), anomaly_map.shape)
    scale_y, scale_x = (f / m for f, m in zip(image.shape[:2], anomaly_map.shape, strict=True))
    return prediction.raw_score, ((x + 0.5) * scale_x, (y + 0.5) * scale_y)


def hits(model: AnomalyModel, defective: list, clean: list[np.ndarray]) -> int:
    """Holes found: the frame scores above every clean frame and its map peaks on the hole.

    (Ranked against clean frames rather than labelled with the tuned threshold: with three
    defect images to tune on, F1-optimal picks the lowest defect score seen, which says more
    about those three images than about the model.)"""
    clean_max = max(strongest(model, image)[0] for image in clean)
    count = 0
    for image, centres in defective:
        score, (x, y) = strongest(model, image)
        cx, cy = centres[0]
        count += score > clean_max and np.hypot(x - cx, y - cy) <= 24
    return count


@pytest.mark.slow  # trains two PaDiMs on 5 MP frames: a few minutes on two cores
def test_tiles_find_small_holes_a_single_view_misses(tmp_path: Path) -> None:
    from anomaly_edge.train import train

    data = write_category(tmp_path / "metal")
    common = {
        "model": "padim",
        "backbone": "efficientnet_lite0",
        "validation_fraction": 0.0,
        "task": "detection",
    }
    tiled = train(data, out=tmp_path / "tiled", tile="auto", **common)
    single = train(data, out=tmp_path / "single", tile="off", image_size=256, **common)
    assert tiled.metadata.tiled and not single.metadata.tiled
    layout = tiled.metadata.tile_layout
    assert layout is not None and layout.frame_size[0] >= FRAME[0] / 2.2  # near native
    assert tiled.metrics["tiles"]["gaussians"] == "shared"  # 10 frames, 80 channels

    tiled_model = AnomalyModel(tiled.ir_path, "CPU", cache_dir=None)
    single_model = AnomalyModel(single.ir_path, "CPU", cache_dir=None)
    calls: list[int] = []
    request = tiled_model._request
    tiled_model._request = type(
        "Counting",
        (),
        {  # type: ignore[assignment]
            "infer": lambda self, inputs, **kw: (
                calls.append(inputs[0].shape[0]),
                request.infer(inputs, **kw),
            ),
            "get_output_tensor": lambda self, i: request.get_output_tensor(i),
        },
    )()

    unseen = [frame(4000 + i, holes=1) for i in range(4)]  # frames no model has seen
    clean = [frame(5000 + i)[0] for i in range(3)]
    tiled_hits = hits(tiled_model, unseen, clean)
    single_hits = hits(single_model, unseen, clean)
    assert tiled_hits == 4, f"the tiled model found {tiled_hits} of 4 holes"
    assert single_hits <= 1, f"the single view found {single_hits} of 4 holes"
    assert calls and all(batch == layout.count for batch in calls)  # every tile, one call
    assert len(calls) == len(unseen) + len(clean)  # one call per frame
