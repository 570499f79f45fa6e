"""Options that several commands share, defined once so they are spelled, typed and explained
the same everywhere (tests/test_cli_vocabulary.py checks it), and the checks they need."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from anomaly_edge.cli.arg_types import positive_int
from anomaly_edge.cli.exit_codes import CliError, ExitCode
from anomaly_edge.prediction import Task

# The choices of every --task option.
TASKS = tuple(task.value for task in Task)


def add_hidden_alias(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, alias: str, dest: str, **kwargs: Any
) -> None:
    """An old spelling that still works for existing scripts, but is not shown in ``--help``."""
    parser.add_argument(
        alias, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs
    )


class DeprecatedAlias(argparse.Action):
    """Stores like the option it stands for, and says once on stderr what to write instead."""

    def __init__(self, option_strings: list[str], dest: str, *, use: str, **kwargs: Any) -> None:
        self.use = use
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"warning: {option_string} is deprecated here; use {self.use}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_device_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str = "OpenVINO device"
) -> None:
    """``--device NAME``: AUTO (default), CPU, GPU, NPU."""
    parser.add_argument(
        "--device", default="AUTO", metavar="DEVICE", help=f"{what}: AUTO (default), CPU, GPU, NPU"
    )


def check_device(device: str) -> str:
    """An unknown device is a bad argument (exit 2); the message lists the available ones."""
    from anomaly_edge.errors import InvalidInputError
    from anomaly_edge.model_loading import resolve_device

    try:
        return resolve_device(device)
    except InvalidInputError as exc:
        raise CliError(f"--device: {exc}", ExitCode.USAGE) from None


def add_task_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    default: str | None = None,
    help_text: str = "override the model's task",
) -> None:
    """``--task classification|detection|segmentation``."""
    parser.add_argument("--task", choices=TASKS, default=default, help=help_text)


def add_num_requests_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--num-requests N``: inference requests in flight."""
    parser.add_argument(
        "--num-requests",
        type=positive_int,
        metavar="N",
        help="inference requests in flight (default: what the device prefers)",
    )


def add_min_area_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--min-area N``: the smallest region that counts, in anomaly-map pixels."""
    parser.add_argument(
        "--min-area",
        type=positive_int,
        default=1,
        metavar="N",
        help="ignore anomalous regions smaller than this (anomaly-map pixels)",
    )


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
