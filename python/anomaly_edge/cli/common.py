"""What every subcommand shares: exit codes, the one mapping from errors to them, shared
options (model, device, thresholds) and the argument checks that run before any work.

Exit codes (the README's table):

* 0 done; 1 any other failure; 2 bad arguments (argparse's code too); 3 an input cannot be
  found or read (batch commands: at least one input, after finishing the others); 4 the model
  cannot be loaded; 5 the `train` extra is missing; 130 Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import math
import sys
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_edge.prediction import Task

if TYPE_CHECKING:
    from anomaly_edge.model import AnomalyModel

# The choices of every --task option.
TASKS = tuple(task.value for task in Task)


class ExitCode(IntEnum):
    """Exit codes scripts can rely on (documented in the README)."""

    OK = 0
    FAILURE = 1  # anything else that went wrong
    USAGE = 2  # bad command-line arguments (argparse uses 2 as well)
    INPUT = 3  # a data folder, image, video or stream that cannot be found or opened
    MODEL = 4  # a model that cannot be loaded
    MISSING_EXTRA = 5  # the command needs an optional extra, e.g. `pip install anomaly-edge[train]`
    INTERRUPTED = 130  # Ctrl-C / SIGTERM (outputs are still complete)


class CliError(Exception):
    """Raised by a subcommand to stop with a message and an exit code (no traceback)."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILURE) -> None:
        super().__init__(message)
        self.code = code


def exit_code_for(exc: BaseException) -> ExitCode | None:
    """The exit code of an error a command let through; None for a bug (shown in full)."""
    from anomaly_edge.errors import AnomalyEdgeError, InvalidInputError, ModelLoadError

    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(exc, ModelLoadError):
        return ExitCode.MODEL
    if isinstance(exc, ConnectionError):  # a model server (--model URL) that stopped answering
        return ExitCode.INPUT
    if isinstance(exc, InvalidInputError):  # an image, a frame, a data folder, a source
        return ExitCode.INPUT
    if isinstance(exc, (AnomalyEdgeError, OSError)):  # e.g. the INT8 guard, a full disk
        return ExitCode.FAILURE
    return None


def require_train_extra(what: str) -> None:
    """Fail clearly when torch (the `train` extra) is not installed."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise CliError(
            f"{what} needs the training extra, which is not installed.\n"
            "  install it with:  pip install 'anomaly-edge[train]'",
            ExitCode.MISSING_EXTRA,
        )


# ---- argument types (argparse turns their errors into exit code 2) -------------------------


def _parse_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def finite_float(text: str) -> float:
    return _parse_float(text)


def positive_int(text: str) -> int:
    value = _parse_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _parse_int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _parse_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _parse_float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def unit_float(text: str) -> float:
    value = _parse_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


# ---- shared options -------------------------------------------------------------------------


def add_model_argument(
    parser: argparse.ArgumentParser, positional: bool = True, remote: bool = False
) -> None:
    """``--model PATH`` and, unless the command has positionals of its own, ``PATH`` alone;
    with ``remote``, a model server URL too (and ``--remote NAME``)."""
    help_text = "the exported IR (model.xml, or the folder holding it)"
    if remote:
        help_text += ", or a model server URL (see --remote)"
    if positional:
        parser.add_argument("model_path", nargs="?", metavar="MODEL", help=help_text)
    parser.add_argument("--model", metavar="MODEL", help=help_text)  # str: URLs stay intact
    if remote:
        from anomaly_edge.cli.serve import add_remote_option

        add_remote_option(parser)


def is_remote_model(args: argparse.Namespace) -> bool:
    """Whether the model named is a model server URL (``--model http://...``, ``--remote``)."""
    if getattr(args, "model", None) is None and getattr(args, "model_path", None) is not None:
        args.model, args.model_path = args.model_path, None
    if getattr(args, "model", None) is None:
        return False
    from anomaly_edge.cli.serve import wants_remote

    return wants_remote(args)


def model_path(args: argparse.Namespace) -> Path:
    """The model the user named (``--model`` or positionally); a folder means its model.xml.

    Missing files are exit code 4 (the model cannot be loaded), as in every command.
    """
    given = [
        p
        for p in (getattr(args, "model", None), getattr(args, "model_path", None))
        if p is not None
    ]
    if not given:
        raise CliError(
            "no model given: pass the exported model.xml (or its folder), as "
            "--model PATH or as the first argument",
            ExitCode.USAGE,
        )
    if len(given) == 2 and given[0] != given[1]:
        raise CliError(f"two models given ({given[0]} and {given[1]}); pass one", ExitCode.USAGE)
    path = Path(given[0]).expanduser()
    if path.is_dir():
        path = path / "model.xml"
    if not path.is_file():
        raise CliError(
            f"model {path} not found; give the model.xml that `anomaly-edge train` "
            "or `anomaly-edge export` wrote (or its folder)",
            ExitCode.MODEL,
        )
    return path


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="AUTO", help="OpenVINO device: AUTO (default), CPU, GPU, NPU"
    )


def check_device(device: str) -> str:
    """An unknown device is a bad argument (exit 2); the message lists the available ones."""
    from anomaly_edge.errors import InvalidInputError
    from anomaly_edge.model_loading import resolve_device

    try:
        return resolve_device(device)
    except InvalidInputError as exc:
        raise CliError(f"--device: {exc}", ExitCode.USAGE) from None


def add_threshold_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "thresholds",
        "in the units of the scores shown (0-1, 0.5 = the trained threshold): "
        "0.7 is stricter than trained, 0.3 more sensitive",
    )
    group.add_argument(
        "--image-threshold",
        type=finite_float,
        metavar="T",
        help="flag an image when its score reaches T (default 0.5, as trained)",
    )
    group.add_argument(
        "--pixel-threshold",
        type=finite_float,
        metavar="T",
        help="mark a pixel when its map value reaches T (default 0.5)",
    )
    group.add_argument(
        "--raw-thresholds",
        action="store_true",
        help="read --image-threshold/--pixel-threshold in raw score units (as "
        "`anomaly-edge info` shows them) instead",
    )


def check_thresholds(args: argparse.Namespace) -> None:
    """Normalised thresholds must lie in [0, 1]; raw ones only need to be finite."""
    if getattr(args, "raw_thresholds", False):
        return
    for name in ("image_threshold", "pixel_threshold"):
        value = getattr(args, name, None)
        if value is not None and not 0.0 <= value <= 1.0:
            flag = "--" + name.replace("_", "-")
            raise CliError(
                f"{flag} {value:g}: thresholds are in score units, 0-1 (0.5 = the "
                "trained threshold); for raw score units add --raw-thresholds",
                ExitCode.USAGE,
            )


def raw_threshold(normalised: float, trained: float, scale: float) -> float:
    """The raw threshold whose normalised score is ``normalised`` under the trained one:
    scores are ``(raw - trained) / scale + 0.5``, so 0.5 maps to ``trained`` itself."""
    return trained + (normalised - 0.5) * scale


def apply_thresholds(model: AnomalyModel, args: argparse.Namespace) -> None:
    """Set the thresholds the user gave (normalised or raw) on a loaded model."""
    md = model.metadata
    raw = getattr(args, "raw_thresholds", False)
    for name, trained, scale in (
        ("image_threshold", md.image_threshold, md.image_scale),
        ("pixel_threshold", md.pixel_threshold, md.pixel_scale),
    ):
        value = getattr(args, name, None)
        if value is not None:
            setattr(model, name, value if raw else raw_threshold(value, trained, scale))


def load_model(args: argparse.Namespace, **options: Any) -> AnomalyModel:
    """Load the model the arguments name, with their device, task, thresholds and min-area.

    Arguments are checked first (exit 2); whatever goes wrong while reading or compiling the
    model is exit 4.
    """
    if is_remote_model(args):  # --model URL: the network runs on a model server
        from anomaly_edge.cli.serve import open_remote_model

        check_thresholds(args)
        remote = open_remote_model(
            args, task=getattr(args, "task", None), min_area=getattr(args, "min_area", 1), **options
        )
        apply_thresholds(remote, args)  # type: ignore[arg-type]
        return remote  # type: ignore[return-value]
    path = model_path(args)
    device = check_device(args.device)
    check_thresholds(args)
    from anomaly_edge.errors import ModelLoadError
    from anomaly_edge.model import AnomalyModel

    try:
        model = AnomalyModel(
            path,
            device,
            task=getattr(args, "task", None),
            min_area=getattr(args, "min_area", 1),
            **options,
        )
    except (ModelLoadError, RuntimeError, OSError, ValueError) as exc:
        # whatever OpenVINO says while reading or compiling, the model is the problem
        raise CliError(f"cannot load model {path}: {exc}", ExitCode.MODEL) from None
    try:
        apply_thresholds(model, args)
    except ValueError as exc:
        model.close()
        raise CliError(str(exc), ExitCode.USAGE) from None
    return model


# ---- outputs ---------------------------------------------------------------------------------


def check_output_file(path: Path | None, flag: str) -> None:
    """An output file must not be a folder, and its folder must exist or be creatable."""
    if path is None:
        return
    if path.is_dir():
        raise CliError(f"{flag} {path} is a folder; give a file name", ExitCode.USAGE)
    parent = path.resolve().parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise CliError(f"{flag} {path}: {existing} is a file, not a folder", ExitCode.USAGE)


def check_output_folder(path: Path | None, flag: str) -> None:
    """An output folder must not be an existing file (nor lie under one)."""
    if path is None:
        return
    for candidate in (path, *path.resolve().parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise CliError(
                    f"{flag} {path}: {candidate} is a file, not a folder", ExitCode.USAGE
                )
            return


def report(message: str) -> None:
    """One line on stderr (progress and per-file problems; results go to stdout)."""
    print(message, file=sys.stderr, flush=True)
