"""Exit codes scripts can rely on, the one mapping from errors to them, and the checks for
optional extras (a missing extra is an exit code too).

* 0 done; 1 any other failure; 2 bad arguments (argparse's code too); 3 an input cannot be
  found or read (batch commands: at least one input, after finishing the others); 4 the model
  cannot be loaded; 5 an optional extra (`train`, `serve`) is missing; 6 the run went on but
  an output lost data (disk full, permission, refused events: the summary says what);
  130 Ctrl-C or SIGTERM; 141 the reader of the output went away (``| head``).
"""

from __future__ import annotations

import errno
import importlib.util
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes scripts can rely on (documented in the README)."""

    OK = 0
    FAILURE = 1  # anything else that went wrong
    USAGE = 2  # bad command-line arguments (argparse uses 2 as well)
    INPUT = 3  # a data folder, image, video or stream that cannot be found or opened
    MODEL = 4  # a model that cannot be loaded
    MISSING_EXTRA = 5  # the command needs an optional extra, e.g. `pip install anomaly-edge[train]`
    OUTPUT = 6  # the work was done, but an output lost data (disk full, ...): see the summary
    INTERRUPTED = 130  # Ctrl-C / SIGTERM (outputs are still complete)
    READER_GONE = 141  # stdout's reader went away (`| head`): 128 + SIGPIPE, as Unix tools do


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
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:  # a path over the limits
        return ExitCode.INPUT
    if isinstance(exc, ConnectionError):  # a model server (MODEL is a URL) that stopped answering
        return ExitCode.INPUT
    if isinstance(exc, InvalidInputError):  # an image, a frame, a data folder, a source
        return ExitCode.INPUT
    if isinstance(exc, (AnomalyEdgeError, OSError)):  # e.g. the INT8 guard, a full disk
        return ExitCode.FAILURE
    return None


def require_extra(module: str, extra: str, what: str) -> None:
    """Fail clearly (exit code 5) when ``module`` of the optional ``extra`` is not installed."""
    if importlib.util.find_spec(module) is None:
        raise CliError(
            f"{what} needs the {extra} extra, which is not installed.\n"
            f"  install it with:  pip install 'anomaly-edge[{extra}]'",
            ExitCode.MISSING_EXTRA,
        )


def require_train_extra(what: str) -> None:
    """Fail clearly when torch (the `train` extra) is not installed."""
    require_extra("torch", "train", what)


def require_serve_extra(what: str) -> None:
    """Fail clearly when kserve (the `serve` extra) is not installed."""
    require_extra("kserve", "serve", what)
