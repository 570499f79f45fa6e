"""`anomaly-edge train`: train, evaluate and export a model from an MVTec-layout folder."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anomaly_edge.category import MIN_TRAIN_IMAGES
from anomaly_edge.cli.common import (
    CliError,
    DeprecatedAlias,
    ExitCode,
    add_task_argument,
    add_threshold_arguments,
    check_thresholds,
    non_negative_float,
    positive_float,
    positive_int,
    require_train_extra,
)
from anomaly_edge.cli.report import after_training
from anomaly_edge.metadata import BACKBONES, PRECISIONS
from anomaly_edge.operating_point import DEFAULT_POLICY
from anomaly_edge.train.models.registry import get_model, model_names, plugins

HELP = "train a model on normal images, evaluate it and export it to OpenVINO IR"
DESCRIPTION = (
    "Fit a model (see --arch) on DATA/train/good, tune thresholds on part of DATA/test, report "
    "image/pixel AUROC, AUPRO and F1, and write metrics.json, ROC/PR curves, checkpoint.pt "
    "and model.xml/.bin into --out."
)
EPILOG = (
    "exit codes: 0 done, 1 failure, 2 bad arguments, 3 data folder unusable, 5 training "
    "extra not installed"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The data, the architecture and its options, and what the run writes."""
    parser.add_argument(
        "--data",
        required=True,
        type=Path,
        metavar="DIR",
        help="category folder in MVTec layout (holds train/good)",
    )
    parser.add_argument(
        "--arch",
        choices=model_names(),
        default="padim",
        help="the model architecture to train (default padim)",
    )
    # `--model` names a trained model in every other command; here it once named the
    # architecture, so it still does, with a warning, for existing scripts.
    parser.add_argument(
        "--model",
        dest="arch",
        choices=model_names(),
        action=DeprecatedAlias,
        use="--arch",
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--backbone",
        choices=BACKBONES,
        default="efficientnet_lite0",
        help="feature extractor (default efficientnet_lite0: its weights ship "
        "with pip, so it works offline; the ResNets need torchvision's weights)",
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="output folder of the run"
    )
    parser.add_argument(
        "--image-size",
        type=_image_size,
        default=None,
        metavar="N|HxW",
        help="network input size (default: from the training "
        "images: their median aspect ratio, short side 256)",
    )
    parser.add_argument(
        "--layers",
        type=lambda s: [p for p in s.split(",") if p],
        metavar="A,B,C",
        help="comma-separated backbone layers (default: the backbone's 3)",
    )
    parser.add_argument(
        "--weights", type=Path, metavar="FILE", help="backbone weights file (state dict)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--validation-fraction",
        type=float,
        metavar="F",
        default=0.3,
        help="share of test images used to tune thresholds (default 0.3; 0 = "
        "tune on the whole test set)",
    )
    parser.add_argument(
        "--normal-holdout",
        type=float,
        metavar="F",
        default=0.0,
        help=f"share of train/good kept out of fitting and added to the normal validation "
        f"images, so the false-alarm threshold stands on more of them (default 0; at least "
        f"{MIN_TRAIN_IMAGES} images are always fitted on): for a large train/good and few "
        f"good test images",
    )
    parser.add_argument(
        "--tile",
        type=_tile_option,
        default="auto",
        metavar="auto|off|RxC",
        help="cut frames into overlapping tiles of the input size at (near) "
        "native resolution, all tiles one batch: auto (default) tiles when "
        "training images are at least 3x the input on both sides; off; or a "
        "grid such as 3x4",
    )
    parser.add_argument(
        "--policy",
        default=DEFAULT_POLICY,
        metavar="POLICY",
        help="the operating point, in your terms: far:X (at most a share X of normal parts "
        f"flagged on the validation images, e.g. far:0.01) or f1 (default {DEFAULT_POLICY})",
    )
    add_threshold_arguments(parser, raw_only=True)
    add_task_argument(
        parser,
        default="segmentation",
        help_text="what the exported model reports by default (default segmentation)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        metavar="N",
        help="images per batch (default 16)",
    )
    parser.add_argument(
        "--threads", type=positive_int, metavar="N", help="torch threads (default: all cores)"
    )
    parser.add_argument(
        "--precision",
        type=str.upper,
        choices=PRECISIONS,
        default="FP16",
        help="IR weights precision (default FP16)",
    )
    parser.add_argument(
        "--no-export", dest="export", action="store_false", help="skip writing the model file"
    )
    parser.add_argument(
        "--export-format",
        choices=("ir", "onnx", "both"),
        default="ir",
        help="the model file: OpenVINO IR (model.xml/.bin, default), ONNX (model.onnx, FP32, "
        "the same metadata, for ONNX Runtime fleets; anomaly-edge loads it too) or both",
    )
    parser.add_argument(
        "--augment",
        default="off",
        metavar="off|on|SPEC",
        help="add compressed, re-lit copies of the training images, as a line "
        "camera delivers them: on, off (default), or e.g. "
        "jpeg=40-90,jitter=0.05,copies=1",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_model_flags(parser)


# how each kind of model flag is parsed (the plug-ins declare kinds, so train/ needs no CLI code)
_FLAG_TYPES: dict[str, Callable[[str], Any]] = {
    "positive_int": positive_int,
    "non_negative_float": non_negative_float,
    "positive_float": positive_float,
    "choice": str,
}


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Every model plug-in's own flags; a flag two models declare is added once."""
    seen: set[str] = set()
    for plugin in plugins():
        for flag in plugin.cli_flags:
            if flag.flag in seen:
                continue
            seen.add(flag.flag)
            parser.add_argument(
                flag.flag,
                dest=flag.dest,
                type=_FLAG_TYPES[flag.kind],
                choices=flag.choices or None,
                metavar=None if flag.choices else ("N" if flag.kind.endswith("int") else "X"),
                help=flag.help,
            )


def _model_options(args: argparse.Namespace) -> Any:
    """The chosen model's options from its flags; a flag of another model is refused."""
    chosen = get_model(args.arch)
    values: dict[str, Any] = {}
    for plugin in plugins():
        for flag in plugin.cli_flags:
            given = getattr(args, flag.dest, None)
            if given is None or any(f.flag == flag.flag for f in chosen.cli_flags):
                continue
            owners = [p.name for p in plugins() if any(f.flag == flag.flag for f in p.cli_flags)]
            raise CliError(
                f"{flag.flag} applies to --arch {' or '.join(owners)} only", ExitCode.USAGE
            )
    for flag in chosen.cli_flags:
        given = getattr(args, flag.dest, None)
        if given is not None:
            values[flag.field] = flag.to_option(given) if flag.to_option else given
    return chosen.options_from_flags(values)


def _image_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or HxW") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 32:
        raise argparse.ArgumentTypeError(f"image size {text!r}: give N or HxW, each >= 32")
    return values[0], values[1]


def _tile_option(text: str) -> str:
    from anomaly_edge.tiles import parse_tile_option

    try:
        parse_tile_option(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def run(args: argparse.Namespace) -> int:
    """Train, evaluate and export; print the results table."""
    require_train_extra("anomaly-edge train")
    from anomaly_edge.train.api import train
    from anomaly_edge.train.backbones import WeightsUnavailableError
    from anomaly_edge.train.data import DatasetError

    check_thresholds(
        args,
        raw_only="training fixes raw score units (no threshold is trained yet to be relative to)",
    )
    if not 0.0 <= args.validation_fraction < 1.0:
        raise CliError("--validation-fraction must be in [0, 1)", ExitCode.USAGE)
    if not 0.0 <= args.normal_holdout < 1.0:
        raise CliError("--normal-holdout must be in [0, 1)", ExitCode.USAGE)
    if args.weights is not None and not args.weights.is_file():
        raise CliError(f"--weights {args.weights}: no such file", ExitCode.INPUT)
    options = _model_options(args)
    try:
        result = train(
            args.data,
            model=args.arch,
            backbone=args.backbone,
            out=args.out,
            image_size=args.image_size,
            seed=args.seed,
            layers=args.layers,
            weights=args.weights,
            options=options,
            validation_fraction=args.validation_fraction,
            normal_holdout=args.normal_holdout,
            image_threshold=args.image_threshold,
            pixel_threshold=args.pixel_threshold,
            policy=args.policy,
            task=args.task,
            batch_size=args.batch_size,
            threads=args.threads,
            export=args.export_format if args.export else False,
            precision=args.precision,
            progress=not args.quiet,
            augment=args.augment,
            tile=args.tile,
        )
    except DatasetError as exc:
        raise CliError(str(exc), ExitCode.INPUT) from exc
    except WeightsUnavailableError as exc:
        raise CliError(str(exc), ExitCode.INPUT) from exc
    except ValueError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from exc
    print(summary_table(result.metrics, result.out, result.ir_path))
    print(after_training(result.out, result.ir_path))
    return int(ExitCode.OK)


def _tiles_text(tiles: dict[str, Any] | None) -> str:
    if not tiles:
        return "off (one view)"
    (rows, cols), (fh, fw), (th, tw) = tiles["grid"], tiles["frame_size"], tiles["tile_size"]
    return f"{rows}x{cols} of {tw}x{th} over {fw}x{fh} frames"


def summary_table(metrics: dict[str, Any], out: Path | None, ir_path: Path | None) -> str:
    """A plain two-column table of the run's results."""

    def fmt(value: object) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
        return str(value)

    rows = [
        ("model", f"{metrics.get('model')} / {metrics.get('backbone')}"),
        ("network input", _input_text(metrics)),
        (
            "images (train/val/test)",
            f"{metrics.get('train_images')} / "
            f"{metrics.get('validation_images')} / {metrics.get('test_images')}",
        ),
        ("image AUROC", fmt(metrics.get("image_auroc"))),
        ("pixel AUROC", fmt(metrics.get("pixel_auroc"))),
        ("AUPRO (FPR<=0.3)", fmt(metrics.get("aupro"))),
        ("image F1", fmt(metrics.get("image_f1"))),
        ("pixel F1", fmt(metrics.get("pixel_f1"))),
        (
            "image threshold",
            f"{fmt(metrics.get('image_threshold'))} ({metrics.get('image_threshold_method')})",
        ),
        (
            "pixel threshold",
            f"{fmt(metrics.get('pixel_threshold'))} ({metrics.get('pixel_threshold_method')})",
        ),
        ("false alarms (normal val.)", fmt(metrics.get("false_alarm_rate"))),
        ("at the operating point", _operating_point_text(metrics)),
        ("fit time", f"{metrics.get('fit_seconds', 0):.1f} s"),
        ("tiles", _tiles_text(metrics.get("tiles"))),
        ("output", str(out) if out else "n/a"),
        ("model file", str(ir_path) if ir_path else "not exported"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    lines += [f"note: {note}" for note in metrics.get("notes", [])]
    return "\n".join(lines)


def _input_text(metrics: dict[str, Any]) -> str:
    """``HxW`` (width x height as people say it) and where it came from."""
    size = metrics.get("image_size")
    if not size:
        return "n/a"
    geometry = metrics.get("input_geometry") or {}
    origin = {"data": "from the training images", "user": "--image-size"}.get(
        geometry.get("source", ""), ""
    )
    text = f"{size[1]} x {size[0]} (w x h)"
    return f"{text}, {origin}" if origin else text


def _operating_point_text(metrics: dict[str, Any]) -> str:
    """What a user sees on the test images at the exported thresholds, in one line."""
    seen = metrics.get("operating_point") or {}
    if seen.get("good_images") is None:
        return f"policy {metrics.get('policy')} (no test images to measure on)"

    def share(key: str) -> str:
        value = seen.get(key)
        return "n/a" if value is None else f"{100 * value:.0f}%"

    return (
        f"policy {seen.get('policy')}: {share('far_seen')} of {seen['good_images']} good test "
        f"images flagged, {share('recall')} of {seen['defect_images']} defects caught (best "
        f"reachable {share('best_recall_at_far')}), {share('box_precision')} of boxes on a "
        f"defect, {seen.get('disagreements')} disagreements"
    )
