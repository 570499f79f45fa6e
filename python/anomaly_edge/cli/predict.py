"""`anomaly-edge predict`: score image files and folders, write JSON Lines and overlays.

One JSON object per image: ``{"file", "score", "label", "anomalous", "raw_score", "boxes"}``
(boxes in image pixels, x2/y2 exclusive); an image that cannot be read gets
``{"file", "error"}`` instead, and a line on stderr, and the others are still scored.
Without ``--jsonl`` the lines go to stdout, so the command pipes into ``jq``; the summary
goes to stderr.

Overlays keep the inputs' folder tree (``--recursive``): ``in/a/x.png`` and ``in/b/x.png``
become ``OVERLAYS/a/x.png`` and ``OVERLAYS/b/x.png``; a name too long for the file system is
shortened. An overlay that cannot be written (disk full, permission) is reported and
counted; the other images are still scored and the JSON Lines still written.

Exit codes: 0 done, 2 bad arguments, 3 at least one input could not be found or read (the
results of the others are written), 4 the model cannot be loaded, 6 every image was scored
but overlays (or the ``--jsonl`` file, then absent) could not be written, 1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from anomaly_edge.cli.common import (
    CliError,
    ExitCode,
    add_device_argument,
    add_min_area_argument,
    add_model_argument,
    add_task_argument,
    add_threshold_arguments,
    check_output_file,
    check_output_folder,
    load_model,
    report,
    unit_float,
)

if TYPE_CHECKING:
    import numpy as np

    from anomaly_edge.prediction import Prediction

HELP = "score images (files or folders) with an exported model"
DESCRIPTION = (
    "Score images with an exported model: one JSON line per image (file, score, label, "
    "boxes), optionally overlay images. MODEL comes first (or as --model MODEL), then the "
    "images; options may go anywhere."
)
EPILOG = (
    "exit codes: 0 done, 2 bad arguments, 3 some inputs could not be read (the others' "
    "results are written; the bad ones are listed), 4 model cannot be loaded, 6 every image "
    "scored but overlays or the --jsonl file could not be written (disk full), 1 other errors"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, the images, and the options of a batch of predictions."""
    add_model_argument(parser, remote=True)
    parser.add_argument(
        "inputs", nargs="*", type=Path, metavar="IMAGE|DIR", help="image files and/or folders"
    )
    add_device_argument(parser)
    add_task_argument(parser)
    add_threshold_arguments(parser)
    add_min_area_argument(parser)
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument(
        "--jsonl",
        type=Path,
        metavar="FILE",
        help="write the JSON Lines here (written atomically) instead of stdout",
    )
    parser.add_argument(
        "--overlays",
        type=Path,
        metavar="DIR",
        help="folder for overlay images (prediction drawn on the image)",
    )
    parser.add_argument(
        "--alpha", type=unit_float, default=0.4, metavar="A", help="overlay opacity, 0-1"
    )


def run(args: argparse.Namespace) -> int:
    """Score every image; one JSON line each, the bad ones listed (exit 3) after the rest."""
    from anomaly_edge.errors import InvalidInputError
    from anomaly_edge.media import read_image

    _split_model_and_images(args)
    check_output_file(args.jsonl, "--jsonl")
    check_output_folder(args.overlays, "--overlays")
    model = load_model(args)
    files, failures = collect_inputs(args.inputs, args.recursive)
    if args.overlays is not None:
        args.overlays.mkdir(parents=True, exist_ok=True)

    scored = anomalous = 0
    overlays = _OverlayNames(args.inputs) if args.overlays is not None else None
    lost_overlays: list[str] = []
    try:
        with _jsonl_output(args.jsonl) as out:
            for path, problem in failures:
                _report_failure(out, path, problem)
            for path in files:
                try:
                    frame = read_image(path)
                    prediction = model.predict(frame, heatmap=args.overlays is not None)
                except InvalidInputError as exc:
                    failures.append((path, str(exc)))
                    _report_failure(out, path, str(exc))
                    continue
                scored += 1
                anomalous += prediction.label
                out.write(json.dumps({"file": str(path), **prediction.to_dict()}) + "\n")
                if overlays is not None and args.overlays is not None:
                    target = args.overlays / overlays.name(path)
                    try:
                        _write_overlay(frame, prediction, target, args.alpha)
                    except OSError as exc:  # disk full, permission: the others still go on
                        lost_overlays.append(str(path))
                        report(f"error: overlay of {path} not written: {exc.strerror or exc}")
    except OSError as exc:  # the --jsonl file could not be written: it is absent
        raise CliError(
            f"--jsonl {args.jsonl}: could not be written ({exc.strerror or exc}); it is absent, "
            f"nothing half-written; {scored} images were scored",
            ExitCode.OUTPUT,
        ) from None
    model.close()
    print(
        f"{scored} images, {anomalous} anomalous"
        + (f", {len(failures)} could not be read" if failures else "")
        + (f", {len(lost_overlays)} overlays LOST" if lost_overlays else "")
        + (f"; results in {args.jsonl}" if args.jsonl else ""),
        file=sys.stderr,
    )
    if failures:
        return int(ExitCode.INPUT)
    return int(ExitCode.OUTPUT if lost_overlays else ExitCode.OK)


def _split_model_and_images(args: argparse.Namespace) -> None:
    """The first positional is MODEL unless ``--model`` names it; then it is an image, or
    (a model.xml, a run folder) a second model, which is a usage error."""
    if args.model is not None and args.model_path is not None:
        first = Path(args.model_path)
        is_model = (first.suffix.lower() == ".xml" and first.is_file()) or (
            first / "model.xml"
        ).is_file()
        if is_model and str(first) != str(args.model):
            raise CliError(
                f"two models given: {first} and --model {args.model}; name the model once",
                ExitCode.USAGE,
            )
        args.inputs, args.model_path = [first, *args.inputs], None
    if args.model is None and args.model_path is None:
        raise CliError(
            "give the model (first, or --model MODEL) and at least one image", ExitCode.USAGE
        )
    if not args.inputs:
        raise CliError(
            "give at least one image or folder after the model (predict MODEL IMAGE|DIR ...)",
            ExitCode.USAGE,
        )


def collect_images(inputs: list[Path], recursive: bool) -> list[Path]:
    """Expand folders into their image files (sorted); explicit files are kept as given."""
    files, failures = collect_inputs(inputs, recursive)
    if failures:
        raise CliError(failures[0][1], ExitCode.INPUT)
    return files


def collect_inputs(
    inputs: list[Path], recursive: bool
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image files to score, [(input, why it gives nothing)]): folders expand into their
    images (sorted, :mod:`anomaly_edge.media`); explicit files are kept as given."""
    from anomaly_edge.media import list_images

    files: list[Path] = []
    failures: list[tuple[Path, str]] = []
    for item in inputs:
        try:
            item.stat()
        except OSError as exc:
            # A path over PATH_MAX or a name over NAME_MAX is an input that cannot be read.
            if exc.errno == errno.ENAMETOOLONG:
                failures.append((item, f"{str(item)[:80]}...: {exc.strerror}"))
                continue
        if item.is_dir():
            images = list_images(item, recursive=recursive)
            if not images:
                failures.append(
                    (
                        item,
                        f"no images in {item}"
                        + ("" if recursive else " (use --recursive for sub-folders)"),
                    )
                )
            files.extend(images)
        elif item.is_file():
            files.append(item)
        else:
            failures.append((item, f"{item} does not exist"))
    return files, failures


def _report_failure(out: IO[str], path: Path, problem: str) -> None:
    out.write(json.dumps({"file": str(path), "error": problem}) + "\n")
    report(f"error: {problem}")


@contextlib.contextmanager
def _jsonl_output(path: Path | None) -> Iterator[IO[str]]:
    """stdout, or a file that appears complete (atomic rename) when the run ends."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    from anomaly_edge.atomic import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        yield handle


class _OverlayNames:
    """Where each image's overlay goes: its path under the input folder it came from (the
    tree kept), ``.png``, each part shortened to fit the file system; unique."""

    def __init__(self, inputs: list[Path]) -> None:
        self.roots = [item for item in inputs if item.is_dir()]
        self.used: set[Path] = set()

    def name(self, path: Path) -> Path:
        from anomaly_edge.stream.sinks import fit_file_name

        relative = Path(path.name)
        for root in self.roots:
            with contextlib.suppress(ValueError):
                relative = path.relative_to(root)
                break
        parts = [fit_file_name(part, "") for part in relative.parent.parts]
        stem = fit_file_name(relative.stem, "")
        candidate = Path(*parts, f"{stem}.png") if parts else Path(f"{stem}.png")
        counter = 1
        while candidate in self.used:  # same name from two inputs: keep both
            candidate = candidate.with_name(f"{stem}-{counter}.png")
            counter += 1
        self.used.add(candidate)
        return candidate


def _write_overlay(frame: np.ndarray, prediction: Prediction, target: Path, alpha: float) -> None:
    import cv2

    from anomaly_edge.atomic import atomic_write
    from anomaly_edge.visualize import draw_prediction

    canvas = draw_prediction(frame, prediction, alpha=alpha)
    ok, encoded = cv2.imencode(".png", canvas)
    if not ok:
        raise OSError(f"could not encode the overlay of {target.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target, "wb") as handle:
        handle.write(encoded.tobytes())
