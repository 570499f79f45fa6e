"""STFPM on real data (mpdd/metal_plate): a short training already separates defects, on any CPU.

Run under every instruction-set level the CPU has (``isa_level``, see conftest.py): users train
on many kinds of CPU, and a short run at a constant learning rate of 0.4 amplified the rounding
differences between SSE4.1, AVX2 and AVX-512 kernels into image AUROCs from 0.33 to 0.86.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from anomaly_edge.train import data, metrics, stfpm, train  # noqa: E402

SIZE = 128  # a quarter of the pixels of the benchmark's 256: the same idea, 4x cheaper
EPOCHS = 3


@pytest.mark.realdata
@pytest.mark.slow
def test_short_training_on_metal_plate_beats_chance_by_far(datasets_root, isa_level):
    folder = datasets_root / "mpdd" / "metal_plate"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    torch.manual_seed(0)
    category = data.scan_category(folder)
    lite_mean = lite_std = (127.5, 127.5, 127.5)
    train = data.make_loader(category.train, SIZE, lite_mean, lite_std, batch_size=8)
    # The short schedule warms up for one epoch, decays the rate to 0 by the last and clips
    # gradients at norm 1 (the first steps reach 16.6): no step is large enough to amplify
    # rounding. Image AUROC at SSE4.1 / AVX2 / AVX-512: 0.849 / 0.872 / 0.837.
    model = stfpm.fit_stfpm(
        "efficientnet_lite0",
        train,
        None,
        max_epochs=EPOCHS,
        warmup_epochs=1,
        cosine=True,
        max_grad_norm=1.0,
        progress=False,
    )
    assert model.history is not None and model.history.epochs == EPOCHS
    assert model.history.val_loss[-1] < model.history.val_loss[0]

    scores, labels = [], []
    test = data.ImageDataset(category.test, SIZE, model.mean, model.std)
    with torch.no_grad():
        for batch in data.iter_batches(test, batch_size=16):
            scores.append(model(batch["image"]).amax(dim=(1, 2, 3)).numpy())
            labels.append(batch["label"].numpy())
    image_auroc = metrics.auroc(np.concatenate(scores), np.concatenate(labels))
    # chance is 0.5, the 30-epoch 256 px bar 0.92; see the module docstring for the spread
    assert image_auroc is not None and image_auroc > 0.7, (isa_level, image_auroc)


# anomalib 2.7's STFPM with the same teacher weights (timm tf_efficientnet_lite0, blocks.1/2/3,
# 256x256, its default schedule: SGD at lr 0.4 for up to 100 epochs), measured beside this
# project over the whole test sets: image AUROC, pixel AUROC, AUPRO.
ANOMALIB_STFPM = {
    "mpdd/metal_plate": (0.992, 0.985, 0.926),  # 94 epochs (time-capped), 1,727 s
    "magnetic_tile/magnetic_tile": (0.564, 0.463, 0.041),  # 19 epochs (time-capped), 3,905 s
    "bsdata/ball_screw": (0.809, 0.915, 0.656),  # 100 epochs, 2,444 s
    "mvtec3d/tire": (0.506, 0.946, 0.811),  # 100 epochs, 3,141 s
}
# How far STFPM's 30-epoch result moved between SSE4.1, AVX2 and AVX-512 on metal_plate, the
# larger of two measurements (README, "Other CPUs": the cosine default at 256 px moved image
# AUROC 0.007, the constant rate at 128 px AUPRO 0.012): CI machines differ from the one that
# measured the figures.
ISA_SPREAD = {"image_auroc": 0.007, "pixel_auroc": 0.001, "aupro": 0.012}


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("category", list(ANOMALIB_STFPM))
def test_default_stfpm_is_at_least_as_good_as_anomalib(datasets_root, category):
    """``anomaly-edge train --model stfpm --validation-fraction 0`` with every default.

    Measured with the defaults (whole test set, seed 0): metal_plate 0.994 / 0.990 / 0.951,
    magnetic_tile 0.662 / 0.604 / 0.675, ball_screw 0.881 / 0.992 / 0.928, tire 0.740 / 0.991 /
    0.961 (fit 63 / 256 / 443 / 196 s on a 2-core machine); the runs are deterministic on one
    CPU.
    """
    root = datasets_root / category
    if not (root / "train" / "good").is_dir():
        pytest.skip(f"{root} not found")
    report = train(
        root, model="stfpm", validation_fraction=0.0, export=False, progress=False
    ).metrics
    assert report["backbone"] == "efficientnet_lite0"
    keys = ("image_auroc", "pixel_auroc", "aupro")
    for key, bar in zip(keys, ANOMALIB_STFPM[category], strict=True):
        assert report[key] >= bar - ISA_SPREAD[key], (key, report)
