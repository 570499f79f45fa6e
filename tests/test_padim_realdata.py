"""PaDiM with the defaults a new user meets reaches anomalib 2.7's figures on every category.

``anomaly-edge train --data CAT --model padim --backbone efficientnet_lite0
--validation-fraction 0`` with no geometry flags, on the four shared categories; anomalib
2.7's PaDiM (same ImageNet weights, timm ``blocks.1/2/4``, 100 channels, 256x256) from
``../shared/BENCHMARKS.md``. AUROC and AUPRO cover the whole test set either way. The runs are
deterministic (seed 0); the margin absorbs float differences between machines (measured
figures in ``train/models/padim/model.py``).
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from anomaly_edge.train import train

MARGIN = 0.001  # anomalib's figures are rounded to 3 decimals; ours are deterministic
# category folder -> (anomalib image AUROC, pixel AUROC, AUPRO), the input chosen from the data
CATEGORIES = {
    "mpdd/metal_plate": ((0.848, 0.967, 0.884), (256, 256)),  # 512 x 512
    "magnetic_tile/magnetic_tile": ((0.952, 0.745, 0.747), (256, 256)),  # varied: square
    "bsdata/ball_screw": ((0.940, 0.984, 0.748), (256, 624)),  # 565 x 230
    "mvtec3d/tire": ((0.762, 0.582, 0.146), (336, 256)),  # 300 x 400
}


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("category", list(CATEGORIES))
def test_default_padim_is_at_least_as_good_as_anomalib(datasets_root, category):
    root = datasets_root / category
    if not (root / "train" / "good").is_dir():
        pytest.skip(f"{root} not found")
    (image_bar, pixel_bar, pro_bar), size = CATEGORIES[category]
    metrics = train(root, model="padim", validation_fraction=0.0, export=False).metrics
    assert metrics["backbone"] == "efficientnet_lite0"
    assert tuple(metrics["image_size"]) == size
    assert metrics["input_geometry"]["source"] == "data"
    assert metrics["image_auroc"] >= image_bar - MARGIN, metrics
    assert metrics["pixel_auroc"] >= pixel_bar - MARGIN, metrics
    assert metrics["aupro"] >= pro_bar - MARGIN, metrics
