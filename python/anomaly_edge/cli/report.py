"""`anomaly-edge report`: one self-contained HTML page about a trained run, or runs compared."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anomaly_edge.cli.common import CliError, ExitCode, add_device_argument, check_device

HELP = "write an HTML report of a trained run (curves, operating point, gallery, latency)"
DESCRIPTION = (
    "Run a trained run's exported model over its dataset's test images and write one HTML "
    "file (pictures inlined, nothing fetched): model, data, settings and metrics; ROC and PR "
    "curves with the operating point; the score histogram with the image threshold; the "
    "operating-point metrics; latency (RUN/benchmark.json when saved from `anomaly-edge "
    "benchmark RUN --json`, else a short measurement); a gallery of the worst false alarms, "
    "the misses and the best and worst localisations. Two or more runs are compared side by "
    "side."
)
EPILOG = (
    "exit codes: 0 done, 2 bad arguments, 3 a run folder, its dataset or the output cannot "
    "be used, 4 the model cannot be loaded"
)
DEFAULT_NAME = "report.html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """RUN [RUN ...], where the page goes, and where the data is."""
    parser.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN",
        help="folder `anomaly-edge train --out` wrote; give two to compare them side by side",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help=f"the HTML file to write (default: RUN/{DEFAULT_NAME} for one run, "
        f"./{DEFAULT_NAME} for several)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="the category folder the runs were trained on, when it moved since "
        "(default: the one metrics.json names)",
    )
    add_device_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    """Write the report; print its path."""
    from anomaly_edge.report import ReportError, write_report

    device = check_device(args.device)  # an unknown device is a bad argument, before any work
    out = args.out or (args.runs[0] / DEFAULT_NAME if len(args.runs) == 1 else Path(DEFAULT_NAME))
    try:
        path = write_report(
            args.runs,
            out,
            data=args.data,
            device=device,
            progress=None if args.quiet else _progress,
        )
    except ReportError as exc:
        raise CliError(str(exc), ExitCode.INPUT) from None
    print(f"report: {path}")
    return int(ExitCode.OK)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def after_training(out: Path | None, ir_path: Path | None) -> str:
    """The line `train` prints last: the report written into the run folder, or why not (a
    run without an exported model or without test images still trains fine)."""
    if out is None or ir_path is None:
        return "report: not written (no exported model; `anomaly-edge export` then `report`)"
    from anomaly_edge.errors import AnomalyEdgeError
    from anomaly_edge.report import write_report

    try:
        return f"report: {write_report([out], out / DEFAULT_NAME)}"
    except (AnomalyEdgeError, OSError) as exc:  # the run itself is complete: say, don't fail
        return f"report: not written ({exc})"
