"""`anomaly-edge serve`: serve an exported model over KServe's Open Inference Protocol (v2).

REST on ``--http-port`` and gRPC on ``--grpc-port``: health (``/v2/health/live|ready``),
model metadata (``/v2/models/NAME``, with the IR's rt_info), and inference
(``/v2/models/NAME/infer``): the raw network call any v2 client can make, and a convenience
call that takes a frame or an encoded image and returns score, label, boxes and, on request,
the mask. ``--model`` is an IR (``model.xml``) or a model folder of a repository written by
``anomaly-edge export --repository`` (its highest version is served).

Exit codes: 0 stopped by SIGINT/SIGTERM, 2 bad arguments (e.g. a port in use), 4 the model
cannot be loaded, 5 the ``serve`` extra is not installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_edge.cli.common import CliError, ExitCode

if TYPE_CHECKING:
    from anomaly_edge.remote import RemoteAnomalyModel


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over KServe's v2 protocol (REST and gRPC)",
        description="Serve an exported model with KServe's model server: v2 REST and gRPC, "
        "health, metadata (with the model's rt_info), raw and convenience inference.",
        epilog="exit codes: 0 stopped by a signal, 2 bad arguments or port in use, 4 model "
        "cannot be loaded, 5 serve extra not installed",
    )
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        help="model.xml, or a repository model folder (NAME with version folders)",
    )
    parser.add_argument(
        "--name", help="model name in URLs (default: anomaly-edge, or the repository folder's name)"
    )
    parser.add_argument(
        "--host",
        default="0.0.0.0",
        help="address to listen on (default 0.0.0.0; 127.0.0.1 for this box only)",
    )
    parser.add_argument("--http-port", type=_port, default=8080, help="REST port (default 8080)")
    parser.add_argument(
        "--grpc-port", type=_port, default=8081, help="gRPC port (default 8081; 0 turns gRPC off)"
    )
    parser.add_argument("--device", default="AUTO", help="OpenVINO device: AUTO, CPU, GPU, NPU")
    parser.add_argument(
        "--num-requests",
        type=int,
        help="inference requests run at once (default: the device's optimum)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    require_serve_extra("anomaly-edge serve")
    from anomaly_edge.errors import InvalidInputError
    from anomaly_edge.repository import resolve_served_model
    from anomaly_edge.serve.wire import DEFAULT_MODEL_NAME

    xml, repository_name = resolve_served_model(args.model)
    name = args.name or repository_name or DEFAULT_MODEL_NAME
    for port in {args.http_port, args.grpc_port} - {0}:
        _check_port_free(args.host, port)
    # KServe's model_server module parses sys.argv when imported; ours are not its options.
    saved_argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        from anomaly_edge.serve.model import AnomalyServeModel
        from anomaly_edge.serve.server import AnomalyModelServer
    finally:
        sys.argv = saved_argv
    model = AnomalyServeModel(xml, name, device=args.device, num_requests=args.num_requests)
    try:
        model.load()
    except InvalidInputError as exc:  # an unknown device
        raise CliError(str(exc), ExitCode.USAGE) from None
    print(
        f"serving {xml} as {name!r}: REST http://{args.host}:{args.http_port}/v2/models/{name}"
        + (f", gRPC {args.host}:{args.grpc_port}" if args.grpc_port else ""),
        file=sys.stderr,
        flush=True,
    )
    server = AnomalyModelServer(
        args.host, args.http_port, args.grpc_port, enable_grpc=args.grpc_port > 0
    )
    server.start([model])
    return int(ExitCode.OK)


def require_serve_extra(what: str) -> None:
    """Fail clearly (exit code 5) when the ``serve`` extra (kserve) is not installed."""
    if importlib.util.find_spec("kserve") is None:
        raise CliError(
            f"{what} needs the serve extra, which is not installed.\n"
            "  install it with:  pip install 'anomaly-edge[serve]'",
            ExitCode.MISSING_EXTRA,
        )


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as the servers will: a port left in TIME_WAIT by a previous server is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CliError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc} (port in "
                "use? choose another with --http-port/--grpc-port)",
                ExitCode.USAGE,
            ) from None


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {value}")
    return value


# ---- the client side: `--model URL` / `--remote` in predict, run and benchmark -----------------


def add_remote_option(parser: argparse.ArgumentParser) -> None:
    """``--remote [NAME]``: ``--model`` is a model server URL (or a comma-separated list)."""
    parser.add_argument(
        "--remote",
        nargs="?",
        const="",
        metavar="NAME",
        help="--model is a v2 model server URL (http://host:8080, grpc://host:8081; several, "
        "comma-separated, are replicas); NAME is the model's name there (default: from the URL, "
        "else anomaly-edge). A URL in --model implies --remote.",
    )


def wants_remote(args: argparse.Namespace) -> bool:
    """True when ``args.model`` names a model server rather than an IR file."""
    from anomaly_edge.remote import is_remote, split_urls

    urls = split_urls(str(args.model))
    if getattr(args, "remote", None) is not None and not is_remote(urls):
        raise CliError(
            f"--remote needs --model to be a server URL (http://host:port or "
            f"grpc://host:port), got {args.model}",
            ExitCode.USAGE,
        )
    return is_remote(urls)


def open_remote_model(args: argparse.Namespace, **settings: Any) -> RemoteAnomalyModel:
    """Connect to the model server of ``args.model``; errors become the README's exit codes:
    3 no server reachable, 4 model missing there (or not an anomaly-edge model), 2 bad
    arguments, 5 the serve extra is missing."""
    require_serve_extra("a remote model (--model URL)")
    from anomaly_edge.errors import InvalidInputError
    from anomaly_edge.remote import RemoteAnomalyModel, ServerUnavailableError, split_urls

    try:
        name = getattr(args, "remote", None) or None
        return RemoteAnomalyModel(split_urls(str(args.model)), name, **settings)
    except ServerUnavailableError as exc:
        raise CliError(str(exc), ExitCode.INPUT) from None
    except InvalidInputError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from None
