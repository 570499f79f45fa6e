"""`anomaly-edge predict`: score image files and folders, write JSON Lines and overlays.

One JSON object per image: ``{"file", "score", "label", "anomalous", "raw_score", "boxes"}``
(boxes in image pixels, x2/y2 exclusive). Without ``--jsonl`` the lines go to stdout, so
the command pipes into ``jq``; the summary goes to stderr.

Exit codes: 0 done, 3 an input cannot be found or read, 4 the model cannot be loaded,
1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from anomaly_edge.cli.common import TASKS, CliError, ExitCode
from anomaly_edge.cli.serve import add_remote_option, open_remote_model, wants_remote

if TYPE_CHECKING:
    import numpy as np

    from anomaly_edge.prediction import Prediction


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="score images (files or folders) with an exported model",
        description="Score images with an exported model: one JSON line per image (file, "
        "score, label, boxes), optionally overlay images.",
        epilog="exit codes: 0 done, 3 an input cannot be found or read, 4 model cannot be "
        "loaded, 1 other errors",
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE|DIR",
                        help="image files and/or folders of images")
    parser.add_argument("--model", required=True,
                        help="the exported IR (model.xml), or a model server URL (see --remote)")
    add_remote_option(parser)
    parser.add_argument("--device", default="AUTO", help="OpenVINO device: AUTO, CPU, GPU, NPU")
    parser.add_argument("--task", choices=TASKS, help="override the model's task")
    parser.add_argument("--image-threshold", type=float,
                        help="image threshold in raw score units (default: the model's)")
    parser.add_argument("--pixel-threshold", type=float,
                        help="pixel threshold in raw score units (default: the model's)")
    parser.add_argument("--min-area", type=int, default=1,
                        help="ignore anomalous regions smaller than this (anomaly-map pixels)")
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument("--jsonl", type=Path,
                        help="write the JSON Lines here (written atomically) instead of stdout")
    parser.add_argument("--overlays", type=Path,
                        help="folder for overlay images (prediction drawn on the image)")
    parser.add_argument("--alpha", type=float, default=0.4, help="overlay opacity, 0-1")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from anomaly_edge.errors import InvalidInputError
    from anomaly_edge.images import read_image
    from anomaly_edge.model import AnomalyModel

    files = collect_images(args.inputs, args.recursive)
    if args.overlays is not None:
        args.overlays.mkdir(parents=True, exist_ok=True)
    try:
        settings = {"task": args.task, "image_threshold": args.image_threshold,
                    "pixel_threshold": args.pixel_threshold, "min_area": args.min_area}
        if wants_remote(args):
            model = open_remote_model(args, **settings)
        else:
            model = AnomalyModel(args.model, args.device, **settings)
    except InvalidInputError as exc:  # a bad device, task or threshold: the user's arguments
        raise CliError(str(exc), ExitCode.USAGE) from None

    anomalous = 0
    overlay_names: set[str] = set()
    with _jsonl_output(args.jsonl) as out:
        for path in files:
            try:
                frame = read_image(path)
                prediction = model.predict(frame, heatmap=args.overlays is not None)
            except InvalidInputError as exc:
                raise CliError(str(exc), ExitCode.INPUT) from None
            anomalous += prediction.label
            out.write(json.dumps({"file": str(path), **prediction.to_dict()}) + "\n")
            if args.overlays is not None:
                _write_overlay(frame, path, prediction, args.overlays, overlay_names, args.alpha)
    print(f"{len(files)} images, {anomalous} anomalous"
          + (f"; results in {args.jsonl}" if args.jsonl else ""), file=sys.stderr)
    return ExitCode.OK


def collect_images(inputs: list[Path], recursive: bool) -> list[Path]:
    """Expand folders into their image files (sorted); explicit files are kept as given."""
    from anomaly_edge.images import IMAGE_SUFFIXES

    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = item.rglob("*") if recursive else item.iterdir()
            images = sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise CliError(f"no images in {item}" + ("" if recursive else
                               " (use --recursive for sub-folders)"), ExitCode.INPUT)
            files.extend(images)
        elif item.is_file():
            files.append(item)
        else:
            raise CliError(f"{item} does not exist", ExitCode.INPUT)
    return files


@contextlib.contextmanager
def _jsonl_output(path: Path | None) -> Iterator[IO[str]]:
    """stdout, or a file that appears complete (atomic rename) only when the run succeeds."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_overlay(frame: np.ndarray, path: Path, prediction: Prediction, folder: Path,
                   used: set[str], alpha: float) -> None:
    import cv2

    from anomaly_edge.visualize import draw_prediction

    name = f"{path.stem}.png"
    counter = 1
    while name in used:  # same file name from two folders: keep both
        name = f"{path.stem}-{counter}.png"
        counter += 1
    used.add(name)
    canvas = draw_prediction(frame, prediction, alpha=alpha)
    ok, encoded = cv2.imencode(".png", canvas)
    if not ok:
        raise CliError(f"could not encode the overlay of {path}")
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=folder)
    with os.fdopen(fd, "wb") as handle:
        handle.write(encoded.tobytes())
    os.replace(tmp, folder / name)
