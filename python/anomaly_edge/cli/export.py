"""`anomaly-edge export`: export a trained model again, e.g. at another precision.

`anomaly-edge train` already exports ``model.xml`` (FP16 by default) and keeps the torch
checkpoint ``checkpoint.pt`` beside it; this command rebuilds the model from that checkpoint
(an IR cannot be re-quantised: INT8 needs the float graph and calibration images).

INT8 calibrates on the training images of the run's data (remembered in its metrics.json, or
``--data``) and measures the image AUROC change against FP32 on the test images there; it
refuses the export (exit 1, nothing written) when the drop exceeds ``--max-accuracy-drop``
(default 0.01).

``--format onnx`` writes ``<run>/model.onnx`` instead (float32, the same metadata as ONNX
metadata_props), for fleets that also run ONNX Runtime; ``AnomalyModel("model.onnx")`` and
every command that takes a model load it too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_edge.cli.common import (
    CliError,
    ExitCode,
    add_hidden_alias,
    add_model_argument,
    given_model,
    is_url,
    non_negative_float,
    positive_int,
    require_train_extra,
)
from anomaly_edge.metadata import PRECISIONS

if TYPE_CHECKING:
    import numpy as np

    from anomaly_edge.metadata import ModelMetadata

DEFAULT_MAX_ACCURACY_DROP = 0.01
CHECKPOINT = "checkpoint.pt"  # what `train --out DIR` keeps beside model.xml

HELP = "export a trained model (from its run folder) to OpenVINO IR or ONNX, or publish an IR"
FORMATS = ("ir", "onnx")
DESCRIPTION = (
    "Rebuild a trained model from its checkpoint (written by `anomaly-edge train --out DIR` "
    "as DIR/checkpoint.pt) and export it to OpenVINO IR at FP32, FP16 or INT8, or to ONNX "
    "(FP32); or, given a "
    "model.xml and --repository, publish that IR as it is."
)
EPILOG = (
    "exit codes: 0 done, 1 INT8 accuracy drop above --max-accuracy-drop (nothing written), "
    "2 bad arguments, 3 data folder missing, 4 checkpoint or model cannot be loaded, "
    "5 training extra not installed"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL (a trained run, or an IR to publish), the precision and where it goes."""
    add_model_argument(
        parser,
        help_text="a run folder (holding checkpoint.pt) or its checkpoint: exported again; "
        "or, with --repository, a model.xml (or a folder holding only it): published as it is",
    )
    add_hidden_alias(parser, "--run", "run")  # the old spellings of a trained run
    add_hidden_alias(parser, "--checkpoint", "run")
    parser.add_argument(
        "--precision",
        type=str.upper,
        choices=PRECISIONS,
        default=None,
        help="weights precision (default FP16; ONNX is always FP32)",
    )
    parser.add_argument(
        "--format",
        type=str.lower,
        choices=FORMATS,
        default="ir",
        help="ir: OpenVINO IR model.xml/.bin (default); onnx: one model.onnx (FP32)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output folder (default: <run>/<precision>, e.g. run/int8; ONNX: <run>, "
        "or a file name ending in .onnx)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="INT8: the dataset folder (MVTec or VisA layout) to calibrate and check "
        "on (default: the one the run was trained on)",
    )
    parser.add_argument(
        "--max-accuracy-drop",
        type=non_negative_float,
        metavar="D",
        help="INT8: refuse when image AUROC drops by more than this against "
        f"FP32 (default {DEFAULT_MAX_ACCURACY_DROP})",
    )
    parser.add_argument(
        "--calibration-images",
        type=positive_int,
        metavar="N",
        default=300,
        help="INT8: at most this many training images (default 300)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show NNCF's log lines and progress bars"
    )
    repository = parser.add_argument_group(
        "model repository (OpenVINO Model Server, KServe, anomaly-edge serve)"
    )
    repository.add_argument(
        "--repository",
        type=Path,
        metavar="DIR",
        help="also publish the IR as DIR/NAME/VERSION/model.xml|bin and "
        "update DIR/config.json (OVMS); earlier versions are kept",
    )
    repository.add_argument("--name", help="--repository: the model's name (in server URLs)")
    repository.add_argument(
        "--version",
        type=positive_int,
        metavar="N",
        help="--repository: version number (default: the next one)",
    )


def run(args: argparse.Namespace) -> int:
    """Export the run again (and publish it), or publish an IR as it is."""
    given = _given_model(args)
    if args.format == "onnx":
        return _export_onnx(given, args)
    if args.precision is None:
        args.precision = "FP16"
    if is_ir(given):  # an exported IR as it is: no torch needed
        _check_repository_args(args, given)
        _publish(given, args)
        return 0
    if args.repository is not None or args.name is not None:
        _check_repository_args(args, given)
    checkpoint = given
    require_train_extra("anomaly-edge export")
    from anomaly_edge.train.checkpoint import load_checkpoint
    from anomaly_edge.train.export import ValidationSet, export_ir, ir_size_mb

    if args.precision != "INT8" and (args.data or args.max_accuracy_drop is not None):
        raise CliError(
            "--data and --max-accuracy-drop apply to --precision INT8 only", ExitCode.USAGE
        )
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    data = args.data
    if args.precision == "INT8" and data is None:
        data = remembered_data(run_dir)
    model, metadata = load_checkpoint(checkpoint)
    out = args.out or run_dir / args.precision.lower()

    calibration = validation = None
    max_drop = args.max_accuracy_drop
    if args.precision == "INT8":
        max_drop = DEFAULT_MAX_ACCURACY_DROP if max_drop is None else max_drop
        calibration, images, labels = mvtec_inputs(data, metadata, args.calibration_images)
        if not images:
            raise CliError(
                f"{data}/test has no images to check the INT8 accuracy on; add "
                "test images (test/good and test/<defect>)",
                ExitCode.INPUT,
            )
        validation = ValidationSet(images, labels)
    xml = export_ir(
        model,
        metadata,
        out,
        args.precision,
        calibration_images=calibration,
        max_accuracy_drop=max_drop,
        validation=validation,
        verbose=args.verbose,
    )
    print(f"exported {xml} ({args.precision}, {ir_size_mb(xml):.1f} MB)")
    if args.repository is not None:
        _publish(xml, args)
    if args.precision == "INT8" and validation is not None:
        from anomaly_edge.metadata import ModelMetadata
        from anomaly_edge.model_loading import read_ir

        report = ModelMetadata.read_from(read_ir(xml)).metrics.get("int8")
        print(f"INT8 accuracy change: {json.dumps(report)}")
    return 0


def _export_onnx(given: Path, args: argparse.Namespace) -> int:
    """``--format onnx``: the run's checkpoint as one float32 ONNX file."""
    if is_ir(given):
        raise CliError(
            f"{given} is an exported IR: ONNX is exported from the trained run (the folder "
            "holding checkpoint.pt), not converted from an IR",
            ExitCode.USAGE,
        )
    unusable = [
        flag
        for flag, value in (
            ("--precision " + str(args.precision), args.precision not in (None, "FP32")),
            ("--data", args.data is not None),
            ("--max-accuracy-drop", args.max_accuracy_drop is not None),
            ("--repository", args.repository is not None),
            ("--name", args.name is not None),
        )
        if value
    ]
    if unusable:
        raise CliError(
            f"{', '.join(unusable)} do(es) not apply to --format onnx (one FP32 file; "
            "model repositories take the IR)",
            ExitCode.USAGE,
        )
    require_train_extra("anomaly-edge export --format onnx")
    from anomaly_edge.train.checkpoint import load_checkpoint
    from anomaly_edge.train.export import export_onnx

    run_dir = given if given.is_dir() else given.parent
    out = args.out or run_dir
    target = out if out.suffix.lower() == ".onnx" else out / "model.onnx"
    model, metadata = load_checkpoint(given)
    try:
        path = export_onnx(model, metadata, target)
    except ModuleNotFoundError as exc:
        raise CliError(str(exc), ExitCode.MISSING_EXTRA) from None
    print(f"exported {path} (ONNX, FP32, {path.stat().st_size / 1e6:.1f} MB)")
    return 0


def remembered_data(run_dir: Path) -> Path:
    """The data folder a run was trained on, from its metrics.json (``train`` writes it)."""
    metrics = run_dir / "metrics.json"
    try:
        data = json.loads(metrics.read_text()).get("data")
    except (OSError, ValueError):
        data = None
    if not data:
        raise CliError(
            f"--precision INT8 needs the training images: {metrics} does not say "
            "which data the run was trained on, so pass --data DIR",
            ExitCode.USAGE,
        )
    if not Path(data).is_dir():
        raise CliError(
            f"the run was trained on {data}, which is not there any more; pass --data DIR",
            ExitCode.INPUT,
        )
    return Path(data)


def _given_model(args: argparse.Namespace) -> Path:
    """MODEL, positionally, as --model or as the old --run/--checkpoint: one of them."""
    old = getattr(args, "run", None)
    model = given_model(args)
    if old is not None and model is not None and str(old) != model:
        raise CliError(
            f"two models given: {model} and --run {old}; name the model once", ExitCode.USAGE
        )
    chosen = model if model is not None else old
    if chosen is None:
        raise CliError(
            "give the trained run (export RUN_DIR), or a model.xml with --repository DIR "
            "--name NAME to publish it",
            ExitCode.USAGE,
        )
    if is_url(str(chosen)):
        raise CliError(
            f"{chosen} is a model server URL; export needs a run folder or a model.xml",
            ExitCode.USAGE,
        )
    return Path(chosen).expanduser()


def is_ir(path: Path) -> bool:
    """An exported IR (published as it is) rather than a trained run (exported again)."""
    if path.is_dir():
        return not (path / CHECKPOINT).exists() and (path / "model.xml").is_file()
    return path.suffix.lower() == ".xml"


def _check_repository_args(args: argparse.Namespace, model: Path) -> None:
    if args.repository is None or not args.name:
        what = (
            f"{model} is an exported IR: export publishes it as it is, which"
            if is_ir(model)
            else "publishing to a model repository"
        )
        raise CliError(f"{what} needs --repository DIR and --name NAME", ExitCode.USAGE)


def _publish(xml: Path, args: argparse.Namespace) -> None:
    from anomaly_edge.errors import InvalidInputError
    from anomaly_edge.repository import publish

    try:
        published = publish(xml, args.repository, args.name, args.version)
    except InvalidInputError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from None
    print(
        f"published {published} (model {args.name!r}, version {published.parent.name}; "
        f"OVMS config {Path(args.repository) / 'config.json'})"
    )


def mvtec_inputs(
    root: Path, metadata: ModelMetadata, max_calibration: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Network inputs from a category folder (MVTec or VisA layout): training images
    (calibration) and the test split with labels (normal = 0, anomalous = 1)."""
    from anomaly_edge.layout import DatasetError, scan_category
    from anomaly_edge.media import read_image

    try:
        data = scan_category(root)
    except DatasetError as exc:
        raise CliError(f"--data: {exc}", ExitCode.INPUT) from None
    train = [sample.path for sample in data.train]
    step = max(1, len(train) // max_calibration)
    calibration = [network_input(read_image(p, "RGB"), metadata) for p in train[::step]]
    images = [network_input(read_image(s.path, "RGB"), metadata) for s in data.test]
    labels = [s.label for s in data.test]
    return calibration[:max_calibration], images, labels


def network_input(rgb: np.ndarray, metadata: ModelMetadata) -> np.ndarray:
    """uint8 RGB frame -> normalised float32 [3, H, W] at the model's input size."""
    import numpy as np

    from anomaly_edge.images import resize_for_network

    resized = resize_for_network(rgb, metadata.input_size).astype(np.float32)
    normalised = (resized - np.asarray(metadata.mean, dtype=np.float32)) / np.asarray(
        metadata.std, dtype=np.float32
    )
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))
