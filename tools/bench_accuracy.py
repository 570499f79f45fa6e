#!/usr/bin/env python
"""Accuracy and cost of each model on every real category: AUROCs, AUPRO, time, memory.

Finds every category (a folder holding ``train/good``) below each dataset folder of the
datasets root (``../shared/datasets`` beside the checkout, or ``$ANOMALY_EDGE_DATASETS``, or
``--root``), trains each model on it with :func:`anomaly_edge.train.train` and prints a table,
then, as the last stdout line, one JSON object (keys in ../shared/BENCHMARKS.md):

    {"benchmark": "accuracy", "runs": [{"dataset": ..., "category": ..., "model": ...,
      "backbone": ..., "image_auroc": ..., "pixel_auroc": ..., "aupro": ..., "fit_s": ...,
      "peak_rss_mb": ..., "ir_mb": ..., "frame_ms": ..., "test_images": ...,
      "input_size": [h, w], "operating_point": {"policy": ..., "far": ..., "far_seen": ...,
      "recall": ..., "best_recall_at_far": ..., "box_precision": ..., "region_recall": ...,
      "disagreements": ...}}, ...]}

``operating_point`` is what a user sees at the exported model's own thresholds
(``metrics.json``; :mod:`anomaly_edge.operating_point`). The bench trains with
``validation_fraction=0`` so that AUROC and AUPRO cover the whole test set, as anomalib reports
them; its thresholds are then tuned on the same images they are counted on (in-sample, which
flatters them). docs/operating-point.md gives the held-out figures at train's defaults.

Every run is a fresh child process, so its peak RSS (``wait4``'s ``ru_maxrss``) is that run's
alone (training, evaluation and export together). ``fit_s`` is the model fitting time as the
train API reports it (``fit_seconds``; the whole ``train()`` call when it reports none). The
children run with ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it. Timing on a
shared machine is noisy: compare runs made together.

Every run uses the defaults a user meets (backbone ``efficientnet_lite0``, input geometry from
the training images) unless ``--image-size``/``--backbone`` say otherwise, and the whole test
set (``validation_fraction=0``): AUROC and AUPRO are threshold-free, over all test images, as
anomalib reports them. ``frame_ms`` is the median time of ``AnomalyModel.predict`` on test
images at their own size (FP16 IR, CPU, resize and post-processing included).
``test_images`` counts the images the metrics cover. Rows print anomalib 2.7's figures for the
same model and category beside ours where they were measured (PaDiM: ``../shared/BENCHMARKS.md``;
STFPM: measured beside this project).

    python tools/bench_accuracy.py --all                 # every category, padim + stfpm
    python tools/bench_accuracy.py --all --models padim  # every category, PaDiM only
    python tools/bench_accuracy.py --datasets mpdd --models stfpm --max-epochs 30
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("padim", "stfpm", "patchcore")
CHILD_FLAG = "--child-run"
RESULT_PREFIX = "BENCH_ACCURACY_RESULT "
FRAMES_TIMED = 20
# anomalib 2.7, timm tf_efficientnet_lite0 with the same ImageNet weights, 256x256: image AUROC,
# pixel AUROC, AUPRO, fit seconds, over the whole test set. PaDiM from BENCHMARKS.md; STFPM (its
# default schedule, up to 100 epochs) measured beside this project, where a time limit stopped
# it early on metal_plate (epoch 94) and magnetic_tile (epoch 19, about 65 min).
ANOMALIB = {
    ("padim", "metal_plate"): (0.848, 0.967, 0.884, 12),
    ("padim", "magnetic_tile"): (0.952, 0.745, 0.747, 401),
    ("padim", "ball_screw"): (0.940, 0.984, 0.748, 115),
    ("padim", "tire"): (0.762, 0.582, 0.146, 75),
    ("stfpm", "metal_plate"): (0.992, 0.985, 0.926, 1727),
    ("stfpm", "magnetic_tile"): (0.564, 0.463, 0.041, 3905),
    ("stfpm", "ball_screw"): (0.809, 0.915, 0.656, 2444),
    ("stfpm", "tire"): (0.506, 0.946, 0.811, 3141),
    # PatchCore (blocks.2/4, coreset 0.1, 9 neighbours; issue 27): metal_plate's fit time
    # was not recorded there
    ("patchcore", "metal_plate"): (1.000, 0.993, 0.957, None),
    ("patchcore", "ball_screw"): (0.962, 0.979, 0.683, 1462),
    ("patchcore", "tire"): (0.722, 0.988, 0.944, 1470),
}


def datasets_root(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("ANOMALY_EDGE_DATASETS")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


def find_categories(root: Path, datasets: list[str] | None) -> list[tuple[str, str, Path]]:
    """(dataset, category, folder) for every folder holding train/good below each dataset."""
    if not root.is_dir():
        raise SystemExit(
            f"datasets root {root} does not exist; pass --root or set ANOMALY_EDGE_DATASETS"
        )
    found = []
    for dataset_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if datasets and dataset_dir.name not in datasets:
            continue
        candidates = [dataset_dir, *sorted(dataset_dir.rglob("*"))]
        for folder in candidates:
            if folder.is_dir() and (folder / "train" / "good").is_dir():
                category = folder.relative_to(dataset_dir).as_posix()
                found.append(
                    (dataset_dir.name, category if category != "." else dataset_dir.name, folder)
                )
    if datasets:
        missing = set(datasets) - {dataset for dataset, _, _ in found}
        if missing:
            raise SystemExit(
                f"no category (a folder with train/good) found for dataset(s) "
                f"{', '.join(sorted(missing))} under {root}"
            )
    if not found:
        raise SystemExit(f"no category (a folder with train/good) found under {root}")
    return found


# ---- child: one training run ---------------------------------------------------------------


def child_main(args: argparse.Namespace) -> int:
    """Train one model on one category; print its numbers as one prefixed JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from anomaly_edge.train import train

    accepted = inspect.signature(train).parameters
    options = {
        "model": args.model,
        "backbone": args.backbone,
        "image_size": args.image_size,
        "seed": args.seed,
        "export": True,
        "progress": False,
        "threads": args.threads,
        "validation_fraction": 0.0,
    }
    if (args.max_epochs, args.max_steps) != (None, None) and args.model == "stfpm":
        from anomaly_edge.train.options import StfpmOptions

        options["options"] = StfpmOptions(max_epochs=args.max_epochs, max_steps=args.max_steps)
    if args.model == "patchcore" and (args.coreset_ratio, args.neighbours) != (None, None):
        from anomaly_edge.train.options import PatchcoreOptions

        options["options"] = PatchcoreOptions(
            coreset_ratio=args.coreset_ratio, neighbours=args.neighbours
        )
    options = {k: v for k, v in options.items() if k in accepted}
    if args.max_epochs is not None and args.model == "stfpm" and "options" not in options:
        print(
            "warning: train() takes no model options; STFPM uses its default max_epochs",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory(prefix="bench_accuracy_") as out:
        started = time.perf_counter()
        try:
            result = train(args.data, out=out, **options)
        except TypeError as exc:  # an export-less API: train without export
            if "export" not in str(exc):
                raise
            options.pop("export", None)
            result = train(args.data, out=out, **options)
        total = time.perf_counter() - started
        metrics = dict(getattr(result, "metrics", {}) or {})
        ir_path = getattr(result, "ir_path", None)
        ir_mb = None
        if ir_path is not None and Path(ir_path).is_file():
            xml = Path(ir_path)
            ir_mb = (xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 1e6
        history = getattr(getattr(result, "model", None), "history", None)
        fit_s = _first_number(metrics, ("fit_s", "fit_seconds", "fit_time_s"))
        if fit_s is None and history is not None:
            fit_s = getattr(history, "seconds", None)
        epochs = _first_number(metrics, ("epochs",))
        if epochs is None and history is not None:
            epochs = getattr(history, "epochs", None)
        record = {
            "image_auroc": _first_number(metrics, ("image_auroc",)),
            "pixel_auroc": _first_number(metrics, ("pixel_auroc",)),
            "aupro": _first_number(metrics, ("aupro",)),
            "fit_s": fit_s if fit_s is not None else total,
            "train_s": total,
            "ir_mb": ir_mb,
            "epochs": epochs,
            "frame_ms": frame_ms(ir_path, args.data) if ir_mb is not None else None,
            "test_images": metrics.get("test_images"),
            "input_size": metrics.get("image_size"),
            "operating_point": _operating_point(metrics.get("operating_point")),
            "fit_peak_rss_mb": metrics.get("fit_peak_rss_mb"),
            "settings": _settings(metrics.get("model_settings")),
        }
    print(RESULT_PREFIX + json.dumps(record), flush=True)
    return 0


# What a user sees at the exported thresholds (BENCHMARKS.md), from metrics.json.
OPERATING_POINT_KEYS = (
    "policy",
    "far",
    "far_seen",
    "recall",
    "best_recall_at_far",
    "box_precision",
    "region_recall",
    "disagreements",
)


# The model settings a row is told apart by (PatchCore's bank; absent keys are left out).
SETTING_KEYS = ("coreset_ratio", "neighbours", "bank_size", "coreset_seconds")


def _settings(settings: dict | None) -> dict | None:
    chosen = {key: settings[key] for key in SETTING_KEYS if key in (settings or {})}
    return chosen or None


def _operating_point(measured: dict | None) -> dict | None:
    if not measured:
        return None
    return {key: measured.get(key) for key in OPERATING_POINT_KEYS}


def frame_ms(ir_path: str | Path, data: str) -> float:
    """Median ms of ``AnomalyModel.predict`` (CPU) over test images at their own size."""
    from anomaly_edge import AnomalyModel
    from anomaly_edge.media import list_images, read_image

    paths = sorted(
        p
        for folder in sorted((Path(data) / "test").iterdir())
        if folder.is_dir()
        for p in list_images(folder)
    )[:FRAMES_TIMED]
    frames = [read_image(p) for p in paths]
    model = AnomalyModel(ir_path, device="CPU", cache_dir=None)
    try:
        for frame in frames[:3]:  # warm-up
            model.predict(frame)
        times = []
        for frame in frames:
            started = time.perf_counter()
            model.predict(frame)
            times.append((time.perf_counter() - started) * 1000.0)
    finally:
        model.close()
    return float(sorted(times)[len(times) // 2])


def _first_number(metrics: dict, keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, (int, float)):
            return float(value)
    return None


# ---- parent: every category x model, one child each ----------------------------------------


def run_child(folder: Path, model: str, args: argparse.Namespace) -> tuple[dict | None, float, str]:
    """Run one child; returns (its record or None, its peak RSS in MB, an error text)."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        CHILD_FLAG,
        "--data",
        str(folder),
        "--model-name",
        model,
        "--backbone",
        args.backbone,
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ]
    if args.image_size is not None:
        command += ["--image-size", "x".join(str(v) for v in args.image_size)]
    if args.max_epochs is not None:
        command += ["--max-epochs", str(args.max_epochs)]
    if args.max_steps is not None:
        command += ["--max-steps", str(args.max_steps)]
    if args.coreset_ratio is not None:
        command += ["--coreset-ratio", str(args.coreset_ratio)]
    if args.neighbours is not None:
        command += ["--neighbours", str(args.neighbours)]
    env = dict(os.environ)
    # On a shared machine, OpenMP threads that spin while waiting steal the cores their
    # siblings need (a 2-thread fit ran 20x slower than with this); set before torch loads.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    package = str(__import__("checkout").package_path())  # the built checkout, else installed
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package, env.get("PYTHONPATH")]))
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        peak_mb = usage.ru_maxrss / 1024  # Linux reports KiB
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :]), peak_mb, ""
    tail = "\n".join(err.strip().splitlines()[-5:]) or f"exit code {process.returncode}"
    return None, peak_mb, tail


def format_table(runs: list[dict]) -> str:
    header = (
        "dataset",
        "category",
        "model",
        "input",
        "img AUROC",
        "pix AUROC",
        "AUPRO",
        "fit s",
        "peak MB",
        "IR MB",
        "frame ms",
        "test imgs",
        "epochs",
        "false alarms / seen",
        "recall (best)",
        "box prec",
        "disagree",
        "anomalib 2.7 (img/pix/PRO, fit s)",
    )
    rows = [header]
    for run in runs:
        size = run.get("input_size")
        reference = ANOMALIB.get((run["model"], run["category"]))
        rows.append(
            (
                run["dataset"],
                run["category"],
                run["model"],
                "x".join(str(v) for v in size) if size else "-",
                *(_fmt(run[k], 3) for k in ("image_auroc", "pixel_auroc", "aupro")),
                _fmt(run["fit_s"], 1),
                _fmt(run["peak_rss_mb"], 0),
                _fmt(run["ir_mb"], 1),
                _fmt(run.get("frame_ms"), 1),
                _fmt(run.get("test_images"), 0),
                _fmt(run.get("epochs"), 0),
                *_operating_point_cells(run.get("operating_point")),
                (
                    " / ".join(f"{v:.3f}" for v in reference[:3])
                    + (f", {reference[3]} s" if reference[3] is not None else "")
                    if reference
                    else "-"
                ),
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _operating_point_cells(seen: dict | None) -> tuple[str, str, str, str]:
    if not seen:
        return ("-", "-", "-", "-")
    return (
        f"{_fmt(seen['far'], 2)} / {_fmt(seen['far_seen'], 2)}",
        f"{_fmt(seen['recall'], 2)} ({_fmt(seen['best_recall_at_far'], 2)})",
        _fmt(seen["box_precision"], 2),
        _fmt(seen["disagreements"], 0),
    )


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--all",
        action="store_true",
        help="every category under the root (refuses --datasets); the table the README shows",
    )
    parser.add_argument(
        "--root", help="datasets root (default ../shared/datasets or $ANOMALY_EDGE_DATASETS)"
    )
    parser.add_argument("--datasets", nargs="+", help="dataset folder names (default: all)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument(
        "--max-epochs", type=int, default=None, help="STFPM epoch cap (default: the train API's)"
    )
    parser.add_argument(
        "--max-steps", type=int, default=None, help="STFPM step cap (default: the train API's)"
    )
    parser.add_argument(
        "--coreset-ratio",
        type=float,
        default=None,
        help="PatchCore: share of the training patches in the bank (default: the train API's)",
    )
    parser.add_argument(
        "--neighbours",
        type=int,
        default=None,
        help="PatchCore: neighbours in the score's re-weighting (default: the train API's)",
    )
    parser.add_argument(
        "--image-size",
        type=_image_size,
        default=None,
        metavar="N|HxW",
        help="network input (default: chosen from each category's images)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    # the child's private arguments
    parser.add_argument(CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model-name", dest="model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.max_epochs is not None and args.max_epochs < 1:
        parser.error("--max-epochs must be at least 1")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error("--max-steps must be at least 1")
    if args.coreset_ratio is not None and not 0.0 < args.coreset_ratio <= 1.0:
        parser.error("--coreset-ratio must be in (0, 1]")
    if args.neighbours is not None and args.neighbours < 1:
        parser.error("--neighbours must be at least 1")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.all and args.datasets:
        parser.error("--all runs every dataset; drop --datasets (or --all)")
    return args


def _image_size(text: str) -> tuple[int, int]:
    try:
        values = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or HxW") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 32:
        raise argparse.ArgumentTypeError(f"image size {text!r}: give N or HxW, each >= 32")
    return values[0], values[1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_run:
        return child_main(args)
    categories = find_categories(datasets_root(args.root), args.datasets)
    runs, failures = [], 0
    for dataset, category, folder in categories:
        for model in args.models:
            print(
                f"training {model} ({args.backbone}) on {dataset}/{category} ...",
                file=sys.stderr,
                flush=True,
            )
            record, peak_mb, error = run_child(folder, model, args)
            if record is None:
                failures += 1
                print(f"  FAILED: {error}", file=sys.stderr, flush=True)
                record = {
                    "image_auroc": None,
                    "pixel_auroc": None,
                    "aupro": None,
                    "fit_s": None,
                    "ir_mb": None,
                    "error": error,
                }
            runs.append(
                {
                    "dataset": dataset,
                    "category": category,
                    "model": model,
                    "backbone": args.backbone,
                    "image_auroc": _rounded(record["image_auroc"], 4),
                    "pixel_auroc": _rounded(record["pixel_auroc"], 4),
                    "aupro": _rounded(record["aupro"], 4),
                    "fit_s": _rounded(record["fit_s"], 2),
                    "peak_rss_mb": round(peak_mb),
                    "ir_mb": _rounded(record["ir_mb"], 2),
                    "frame_ms": _rounded(record.get("frame_ms"), 2),
                    "test_images": record.get("test_images"),
                    "input_size": record.get("input_size"),
                    "operating_point": record.get("operating_point"),
                    **({"epochs": record["epochs"]} if record.get("epochs") else {}),
                    **(
                        {"fit_peak_rss_mb": record["fit_peak_rss_mb"]}
                        if record.get("fit_peak_rss_mb")
                        else {}
                    ),
                    **({"settings": record["settings"]} if record.get("settings") else {}),
                    **({"error": record["error"]} if "error" in record else {}),
                }
            )
    print(format_table(runs))
    print(
        "(fit_s and peak_rss_mb: one fresh process per run; the machine may be shared, so "
        "times are noisy)"
    )
    print(json.dumps({"benchmark": "accuracy", "runs": runs}))
    return 1 if failures else 0


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


if __name__ == "__main__":
    sys.exit(main())
