"""MODEL on the command line: how every command names its model, and the one place the CLI
loads one.

MODEL is a run folder (holding ``model.xml``), a ``model.xml``, or, where the command can
use a model on a server, the URL of a v2 model server (``http://host:8080``,
``grpc://host:8081``; several, comma-separated, are replicas). It is given positionally or as
``--model MODEL``; both at once, differently, is a usage error.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_edge.cli.exit_codes import CliError, ExitCode, require_serve_extra
from anomaly_edge.cli.options import check_device
from anomaly_edge.cli.thresholds import apply_thresholds, check_thresholds

if TYPE_CHECKING:
    from anomaly_edge.model import AnomalyModel
    from anomaly_edge.remote import RemoteAnomalyModel

LOCAL_HELP = "the model: a run folder (holding model.xml) or a model.xml"
REMOTE_HELP = ", or a v2 model server URL (http://host:8080, grpc://host:8081)"


def add_model_argument(
    parser: argparse.ArgumentParser,
    positional: bool = True,
    remote: bool = False,
    help_text: str | None = None,
) -> None:
    """``MODEL`` (unless the command reads it from its own positionals) and ``--model MODEL``;
    with ``remote``, a model server URL too, and ``--remote NAME``."""
    text = help_text or LOCAL_HELP + (REMOTE_HELP if remote else "")
    if positional:
        parser.add_argument("model_path", nargs="?", metavar="MODEL", help=text)
    parser.add_argument("--model", metavar="MODEL", help=text)  # str: URLs stay intact
    if remote:
        add_remote_option(parser)


def add_remote_option(parser: argparse.ArgumentParser) -> None:
    """``--remote [NAME]``: MODEL is a model server URL (or a comma-separated list)."""
    parser.add_argument(
        "--remote",
        nargs="?",
        const="",
        metavar="NAME",
        help="MODEL is a v2 model server URL (several, comma-separated, are replicas); NAME "
        "is the model's name there (default: from the URL, else anomaly-edge). A URL as "
        "MODEL implies --remote.",
    )


def given_model(args: argparse.Namespace) -> str | None:
    """The model the user named, positionally or with ``--model`` (None: neither); stored
    in ``args.model`` so later steps read one field. Two different models are exit 2."""
    named: str | None = getattr(args, "model", None)
    positional: str | None = getattr(args, "model_path", None)
    if named is not None and positional is not None and str(named) != str(positional):
        raise CliError(
            f"two models given: {positional} and --model {named}; name the model once",
            ExitCode.USAGE,
        )
    chosen = named if named is not None else positional
    model = None if chosen is None else str(chosen)
    args.model = model
    if positional is not None:
        args.model_path = None
    return model


def is_url(text: str) -> bool:
    """Whether MODEL names a model server (every part of a comma-separated list a URL)."""
    from anomaly_edge.remote import is_remote, split_urls

    return is_remote(split_urls(text))


def is_remote_model(args: argparse.Namespace) -> bool:
    """Whether the model named is a model server URL (a URL as MODEL, or ``--remote``)."""
    model = given_model(args)
    if model is None:
        return False
    remote = is_url(model)
    if getattr(args, "remote", None) is not None and not remote:
        raise CliError(
            f"--remote needs MODEL to be a server URL (http://host:port or "
            f"grpc://host:port), got {model}",
            ExitCode.USAGE,
        )
    return remote


def model_path(args: argparse.Namespace, purpose: str = "") -> Path:
    """The local model file the user named; a folder means its model.xml.

    No model is exit 2, a URL here (a command that needs the file itself) exit 2 with
    ``purpose`` as the reason, a missing file exit 4 (the model cannot be loaded).
    """
    model = given_model(args)
    if model is None:
        raise CliError(
            "no model given: pass the run folder or model.xml as the first argument "
            "or as --model MODEL",
            ExitCode.USAGE,
        )
    if is_url(model):
        raise CliError(
            f"{model} is a model server URL, but this command needs the model files"
            + (f" ({purpose})" if purpose else "")
            + ": give the run folder or model.xml",
            ExitCode.USAGE,
        )
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "model.xml"
    if not path.is_file():
        raise CliError(
            f"model {path} not found; give the model.xml that `anomaly-edge train` "
            "or `anomaly-edge export` wrote (or its folder)",
            ExitCode.MODEL,
        )
    return path


def open_remote_model(args: argparse.Namespace, **settings: Any) -> RemoteAnomalyModel:
    """Connect to the model server MODEL names; errors become the README's exit codes:
    3 no server reachable, 4 model missing there (or not an anomaly-edge model), 2 bad
    arguments, 5 the serve extra is missing."""
    require_serve_extra("a remote model (MODEL is a URL)")
    from anomaly_edge.errors import InvalidInputError
    from anomaly_edge.remote import RemoteAnomalyModel, ServerUnavailableError, split_urls

    try:
        name = getattr(args, "remote", None) or None
        return RemoteAnomalyModel(split_urls(str(args.model)), name, **settings)
    except ServerUnavailableError as exc:
        raise CliError(str(exc), ExitCode.INPUT) from None
    except InvalidInputError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from None


def load_model(args: argparse.Namespace, **options: Any) -> AnomalyModel:
    """Load the model the arguments name, with their device, task, thresholds and min-area.

    Arguments are checked first (exit 2); whatever goes wrong while reading or compiling the
    model is exit 4.
    """
    settings: dict[str, Any] = {
        "task": getattr(args, "task", None),
        "min_area": getattr(args, "min_area", 1),
    }
    if is_remote_model(args):  # the network runs on a model server
        check_thresholds(args)
        remote = open_remote_model(args, **settings, **options)
        apply_thresholds(remote, args)  # type: ignore[arg-type]
        return remote  # type: ignore[return-value]
    path = model_path(args)
    device = check_device(getattr(args, "device", "AUTO"))
    check_thresholds(args)
    from anomaly_edge.errors import ModelLoadError
    from anomaly_edge.model import AnomalyModel

    try:
        model = AnomalyModel(path, device, **settings, **options)
    except (ModelLoadError, RuntimeError, OSError, ValueError) as exc:
        # whatever OpenVINO says while reading or compiling, the model is the problem
        raise CliError(f"cannot load model {path}: {exc}", ExitCode.MODEL) from None
    try:
        apply_thresholds(model, args)
    except ValueError as exc:
        model.close()
        raise CliError(str(exc), ExitCode.USAGE) from None
    return model
