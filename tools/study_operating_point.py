"""How the `far:X` threshold rule behaves on new good parts: train each category once, keep the
scores of every test image (and of the train images held out), then resplit the test images
many times (stratified 30/70, as `train` does), place the threshold on the validation part and
measure it on the rest. With ``--holdout F`` a share of train/good is kept out of fitting and
joins the normal validation scores in the ``+held`` rules (``train --normal-holdout F``).

    python tools/study_operating_point.py --datasets ../shared/datasets --splits 300

Prints one JSON object per category and rule, and a summary line: mean false-alarm rate on the
held-out good images, recall, the gap to the best recall at that false-alarm rate, and the share
of splits meeting issue 23's bars (false alarms <= 10%, gap <= 0.05). Rules: ``max`` (above the
highest normal validation score, the old rule), ``default`` (operating_point.far_threshold, then
the best F1 at or above it, what `train` does now), each with and without the held-out train
images among the normal validation scores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from anomaly_edge.operating_point import (
    Policy,
    best_f1_at_or_above,
    best_recall_at,
    choose_image_threshold,
    just_above,
)

CATEGORIES = {
    "metal_plate": "mpdd/metal_plate",
    "magnetic_tile": "magnetic_tile/magnetic_tile",
    "ball_screw": "bsdata/ball_screw",
    "tire": "mvtec3d/tire",
}


def scored(root: Path, holdout: float) -> dict[str, np.ndarray]:
    """Train PaDiM with every default (and the holdout) and return the scores `train` saw:
    every test image ("scores", also "final": the model users get scores them the same) and
    the held-out train images ("held")."""
    import anomaly_edge.train.api as api
    from anomaly_edge.train import train

    seen: dict[str, np.ndarray] = {}
    evaluate = api._evaluate

    def keep(*args, **kwargs):  # type: ignore[no-untyped-def]
        validation, test, everything = evaluate(*args, **kwargs)
        if "scores" not in seen:  # the first fit: it places the thresholds
            held = np.array(["/train/" in str(s.path) for s in validation.samples])
            seen["held"] = validation.scores[held]
            seen["scores"], seen["labels"] = everything.scores, everything.labels
        seen["final"] = everything.scores
        return validation, test, everything

    api._evaluate = keep
    try:
        train(root, normal_holdout=holdout, export=False)
    finally:
        api._evaluate = evaluate
    return seen


def old_rule(normal: np.ndarray, defect: np.ndarray, far: float) -> float:
    scores = np.r_[normal, defect]
    labels = np.r_[np.zeros(normal.size), np.ones(defect.size)]
    return best_f1_at_or_above(scores, labels, just_above(float(normal.max())))


def new_rule(normal: np.ndarray, defect: np.ndarray, far: float) -> float:
    scores = np.r_[normal, defect]
    labels = np.r_[np.zeros(normal.size), np.ones(defect.size)]
    return choose_image_threshold(Policy("far", far), scores, labels)


def study(seen: dict[str, np.ndarray], splits: int, far: float) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    scores, labels, final = seen["scores"], seen["labels"].astype(bool), seen["final"]
    rules = {"max": old_rule, "default": new_rule}
    rows: dict[str, list[tuple[float, float, float, bool]]] = {}
    for _ in range(splits):
        val, test = [], []
        for label in (False, True):
            group = rng.permutation(np.flatnonzero(labels == label))
            count = min(max(int(np.floor(0.3 * group.size + 0.5)), 1), group.size - 1)
            val += group[:count].tolist()
            test += group[count:].tolist()
        normal, defect = scores[val][~labels[val]], scores[val][labels[val]]
        for name, rule in rules.items():
            for with_held in (False, True):
                pool = np.r_[normal, seen["held"]] if with_held else normal
                threshold = np.float32(rule(pool, defect, far))
                flagged = final[test] >= threshold
                good, bad = ~labels[test], labels[test]
                false_alarm, recall = float(flagged[good].mean()), float(flagged[bad].mean())
                best = best_recall_at(final[test], labels[test], int(flagged[good].sum()))
                gap = float(best or 0.0) - recall
                key = f"{name}{'+held' if with_held else ''}"
                rows.setdefault(key, []).append(
                    (false_alarm, recall, gap, false_alarm <= 0.1 and gap <= 0.05)
                )
    return {k: [round(float(v), 3) for v in np.mean(r, axis=0)] for k, r in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--categories", default=",".join(CATEGORIES))
    parser.add_argument("--splits", type=int, default=300)
    parser.add_argument("--far", type=float, default=0.05)
    parser.add_argument("--holdout", type=float, default=0.0)
    args = parser.parse_args()
    means: dict[str, list[list[float]]] = {}
    for name in args.categories.split(","):
        seen = scored(args.datasets / CATEGORIES[name], args.holdout)
        for rule, (fa, rec, gap, ok) in study(seen, args.splits, args.far).items():
            row = {
                "category": name,
                "rule": rule,
                "held_out_train_images": int(seen["held"].size),
                "false_alarm_rate": fa,
                "recall": rec,
                "recall_gap": gap,
                "splits_meeting_bars": ok,
            }
            print(json.dumps(row), flush=True)
            means.setdefault(rule, []).append([fa, rec, gap, ok])
    for rule, values in means.items():
        fa, rec, gap, ok = np.mean(values, axis=0)
        print(
            json.dumps(
                {
                    "summary": rule,
                    "false_alarm_rate": round(fa, 3),
                    "recall": round(rec, 3),
                    "recall_gap": round(gap, 3),
                    "splits_meeting_bars": round(ok, 3),
                }
            )
        )


if __name__ == "__main__":
    main()
