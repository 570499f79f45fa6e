"""What every subcommand shares: exit codes and the error that carries one."""

from __future__ import annotations

from enum import IntEnum

from anomaly_edge.prediction import Task

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


def require_train_extra(what: str) -> None:
    """Fail clearly when torch (the `train` extra) is not installed."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise CliError(
            f"{what} needs the training extra, which is not installed.\n"
            "  install it with:  pip install 'anomaly-edge[train]'",
            ExitCode.MISSING_EXTRA,
        )
