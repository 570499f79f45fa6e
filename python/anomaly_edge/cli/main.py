"""Entry point of `anomaly-edge`: finds the subcommand modules in this package and runs one.

A subcommand module defines ``register(subparsers)``, which adds its parser and sets
``handler=function(args) -> int``. Modules import heavy libraries inside their handlers, so
``anomaly-edge --help`` stays instant and never loads torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys

import anomaly_edge
from anomaly_edge.cli.common import ExitCode, exit_code_for

# The order in `--help`; modules found but not listed come after, by name.
ORDER = ["demo", "train", "export", "predict", "run", "calibrate", "info", "benchmark", "serve"]
NOT_COMMANDS = {"main", "common", "run_cameras"}  # run_cameras: part of `run`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-edge",
        description="Visual anomaly detection for the edge: train on normal images, "
        "export to OpenVINO IR, run on images, videos and camera streams.",
    )
    parser.add_argument("--version", action="version", version=anomaly_edge.__version__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import anomaly_edge.cli as package

    names = [m.name for m in pkgutil.iter_modules(package.__path__) if m.name not in NOT_COMMANDS]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    for name in names:
        importlib.import_module(f"anomaly_edge.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (see the README's table)."""
    _interrupt_on_sigterm()  # first thing: a SIGTERM at any moment exits 130, like Ctrl-C
    # torch's OpenMP threads otherwise spin while they wait, which starves OpenVINO and the
    # decode thread on small edge CPUs; set before any subcommand imports torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "handler", None) is None:
            parser.print_help()
            return ExitCode.USAGE
        return int(args.handler(args) or 0)
    except BaseException as exc:
        code = exit_code_for(exc)
        if code is None:
            raise  # argparse's SystemExit (--help 0, bad arguments 2), or a bug: traceback
        message = "interrupted" if code == ExitCode.INTERRUPTED else f"error: {exc}"
        print(message, file=sys.stderr)
        return int(code)


def _interrupt_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt, so it stops a command exactly as Ctrl-C does."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, interrupt)
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # e.g. started with nohup
            return
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread (main() called from a worker): leave them be
        pass


if __name__ == "__main__":
    sys.exit(main())
