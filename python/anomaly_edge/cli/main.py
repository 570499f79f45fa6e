"""Entry point of `anomaly-edge`: finds the subcommand modules in this package and runs one.

A subcommand is a module with one shape: ``HELP`` (its line in ``anomaly-edge --help``),
``DESCRIPTION``, optionally ``EPILOG`` (its exit codes), ``add_arguments(parser)`` and
``run(args) -> int``. (A module with ``register(subparsers)`` instead is still accepted, for
commands not yet moved to that shape.) Modules import heavy libraries inside ``run``, so
``anomaly-edge --help`` stays instant and never loads torch.

Options and positionals may come in any order (``predict MODEL --task segmentation DIR``):
each command's arguments are parsed intermixed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import signal
import sys
from collections.abc import Iterable
from types import ModuleType

import anomaly_edge
from anomaly_edge.cli.exit_codes import ExitCode, exit_code_for

# The order in `--help`; commands found but not listed come after, by name.
ORDER = ["demo", "train", "export", "predict", "run", "calibrate", "info", "benchmark", "serve"]


def build_parser() -> argparse.ArgumentParser:
    """The `anomaly-edge` parser, with one sub-parser per command module found."""
    parser = argparse.ArgumentParser(
        prog="anomaly-edge",
        description="Visual anomaly detection for the edge: train on normal images, "
        "export to OpenVINO IR, run on images, videos and camera streams.",
    )
    parser.add_argument("--version", action="version", version=anomaly_edge.__version__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import anomaly_edge.cli as package

    commands = command_modules(package.__path__)
    for name in sorted(commands, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        module = commands[name]
        if hasattr(module, "register"):
            module.register(subparsers)
            continue
        sub = subparsers.add_parser(
            name,
            help=module.HELP,
            description=module.DESCRIPTION,
            epilog=getattr(module, "EPILOG", None),
        )
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def command_modules(path: Iterable[str]) -> dict[str, ModuleType]:
    """The modules of this package that are commands (by their shape), by name."""
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(path):
        if info.name == "main":
            continue
        module = importlib.import_module(f"anomaly_edge.cli.{info.name}")
        if hasattr(module, "register") or (
            hasattr(module, "add_arguments") and hasattr(module, "run")
        ):
            found[info.name] = module
    return found


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The top-level options, or one command's arguments parsed intermixed (options and
    positionals in any order)."""
    commands = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if commands is None or not argv or argv[0] not in commands.choices:
        return parser.parse_args(argv)  # --help, --version, an unknown command: argparse says
    command = commands.choices[argv[0]]
    try:
        args: argparse.Namespace = command.parse_intermixed_args(argv[1:])
    except TypeError:  # a parser intermixing cannot handle (e.g. a positional in a group)
        args = command.parse_args(argv[1:])
    args.command = argv[0]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (see the README's table)."""
    _interrupt_on_sigterm()  # first thing: a SIGTERM at any moment exits 130, like Ctrl-C
    # torch's OpenMP threads otherwise spin while they wait, which starves OpenVINO and the
    # decode thread on small edge CPUs; set before any subcommand imports torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        parser = build_parser()
        args = parse_arguments(parser, sys.argv[1:] if argv is None else list(argv))
        if getattr(args, "handler", None) is None:
            parser.print_help()
            return ExitCode.USAGE
        done = int(args.handler(args) or 0)
        sys.stdout.flush()  # here, so that a reader gone away is caught below
        return done
    except BrokenPipeError:
        return _reader_gone()
    except BaseException as exc:
        code = exit_code_for(exc)
        if code is None:
            raise  # argparse's SystemExit (--help 0, bad arguments 2), or a bug: traceback
        message = "interrupted" if code == ExitCode.INTERRUPTED else f"error: {exc}"
        print(message, file=sys.stderr)
        return int(code)


def _reader_gone() -> int:
    """The reader of stdout went away (``info model | head``): stop quietly, as other Unix
    tools do, with their exit code (128 + SIGPIPE)."""
    with contextlib.suppress(OSError, ValueError):
        # Python flushes stdout again at exit: point it at /dev/null so that says nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return int(ExitCode.READER_GONE)


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
