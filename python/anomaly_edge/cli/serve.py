"""`anomaly-edge serve`: serve an exported model over KServe's Open Inference Protocol (v2).

REST on ``--http-port`` and gRPC on ``--grpc-port``: health (``/v2/health/live|ready``),
model metadata (``/v2/models/NAME``, with the IR's rt_info), and inference
(``/v2/models/NAME/infer``): the raw network call any v2 client can make, and a convenience
call that takes a frame or an encoded image and returns score, label, boxes and, on request,
the mask. MODEL (first, or ``--model MODEL``) is a run folder, an IR (``model.xml``) or a
model folder of a repository written by ``anomaly-edge export --repository`` (its highest
version is served).

It listens on 127.0.0.1 (this box only) unless ``--host`` says otherwise. With a token
(``--token``, or the environment variable ``ANOMALY_EDGE_TOKEN``, which keeps it out of the
process list) every request but the health probes needs ``Authorization: Bearer <token>``;
listening beyond this box without one, a token is generated and printed, as ``run --web``
does. Bodies over ``--max-body-mb`` get HTTP 413 before they are read.

Exit codes: 0 stopped by SIGINT/SIGTERM, 2 bad arguments (e.g. a port in use), 4 the model
cannot be loaded, 5 the ``serve`` extra is not installed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys

from anomaly_edge.cli.common import (
    CliError,
    ExitCode,
    add_device_argument,
    add_model_argument,
    add_num_requests_argument,
    given_model,
    is_url,
    port,
    positive_float,
    require_serve_extra,
)
from anomaly_edge.cli.run_cameras import is_loopback
from anomaly_edge.v2_protocol import TOKEN_ENV

HELP = "serve a model over KServe's v2 protocol (REST and gRPC)"
DESCRIPTION = (
    "Serve an exported model with KServe's model server: v2 REST and gRPC, health, metadata "
    "(with the model's rt_info), raw and convenience inference."
)
EPILOG = (
    "exit codes: 0 stopped by a signal, 2 bad arguments or port in use, 4 model cannot be "
    "loaded, 5 serve extra not installed"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, where to listen, and how to run the model."""
    add_model_argument(
        parser,
        help_text="the model: a run folder (holding model.xml), a model.xml, or a repository "
        "model folder (NAME with version folders; the highest is served)",
    )
    parser.add_argument(
        "--name", help="model name in URLs (default: anomaly-edge, or the repository folder's name)"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this box only; 0.0.0.0 for every "
        "interface, which needs a token)",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        help="token every request must send as 'Authorization: Bearer TOKEN' (default: "
        "$ANOMALY_EDGE_TOKEN; generated and printed when listening beyond this box)",
    )
    parser.add_argument(
        "--max-body-mb",
        type=positive_float,
        default=64.0,
        metavar="MB",
        help="largest request body, in megabytes; larger ones get HTTP 413 (default 64)",
    )
    parser.add_argument(
        "--http-port", type=port, default=8080, metavar="PORT", help="REST port (default 8080)"
    )
    parser.add_argument(
        "--grpc-port",
        type=port,
        default=8081,
        metavar="PORT",
        help="gRPC port (default 8081; 0 turns gRPC off)",
    )
    add_device_argument(parser)
    add_num_requests_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Load the model and serve it until SIGINT/SIGTERM."""
    model_arg = given_model(args)
    if model_arg is None:
        raise CliError(
            "no model given: pass the run folder or model.xml as the first argument "
            "or as --model MODEL",
            ExitCode.USAGE,
        )
    if is_url(model_arg):
        raise CliError(
            f"{model_arg} is a model server URL; serve needs the model files (a run folder "
            "or model.xml) to serve them itself",
            ExitCode.USAGE,
        )
    require_serve_extra("anomaly-edge serve")
    from anomaly_edge.errors import InvalidInputError
    from anomaly_edge.repository import resolve_served_model
    from anomaly_edge.serve.wire import DEFAULT_MODEL_NAME

    token = _token(args)
    xml, repository_name = resolve_served_model(model_arg)
    name = args.name or repository_name or DEFAULT_MODEL_NAME
    for number in {args.http_port, args.grpc_port} - {0}:
        _check_port_free(args.host, number)
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
    if token is not None and args.token is None and TOKEN_ENV not in os.environ:
        print(
            f"token (generated): {token}\n  clients send 'Authorization: Bearer {token}'; "
            f"anomaly-edge clients read it from {TOKEN_ENV}",
            file=sys.stderr,
            flush=True,
        )
    server = AnomalyModelServer(
        args.host,
        args.http_port,
        args.grpc_port,
        enable_grpc=args.grpc_port > 0,
        max_body=int(args.max_body_mb * 1e6),
        token=token,
    )
    server.start([model])
    return int(ExitCode.OK)


def _token(args: argparse.Namespace) -> str | None:
    """The token requests need: --token, else $ANOMALY_EDGE_TOKEN, else none on this box and
    a generated one beyond it. An empty one would lock every client out: exit 2."""
    given: str | None = args.token
    where = "--token"
    if given is None and TOKEN_ENV in os.environ:
        given, where = os.environ[TOKEN_ENV], TOKEN_ENV
    if given is not None and not given.strip():
        raise CliError(
            f"{where} is empty: no client could send it; give a token, or none "
            "(one is generated when listening beyond this box)",
            ExitCode.USAGE,
        )
    if given is None and not is_loopback(args.host):
        return secrets.token_urlsafe(18)
    return given


def _check_port_free(host: str, number: int) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as the servers will: a port left in TIME_WAIT by a previous server is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, number))
        except OSError as exc:
            raise CliError(
                f"cannot listen on {host}:{number}: {exc.strerror or exc} (port in "
                "use? choose another with --http-port/--grpc-port)",
                ExitCode.USAGE,
            ) from None
