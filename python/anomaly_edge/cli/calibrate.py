"""`anomaly-edge calibrate`: fit a model's thresholds to the camera on the line, no retraining.

Reads N frames (or T seconds) of normal production from any source `run` accepts, re-estimates
the thresholds, normalisation statistics and normal score range
(:mod:`anomaly_edge.calibration`), and writes a new IR with the same weights and a calibration
record in its rt_info. Nothing is written unless calibration succeeds.

Exit codes: 0 done; 2 bad arguments; 3 the source cannot be opened, delivers no or too few
frames, frames of mixed sizes, or only identical frames (a frozen camera); 4 the model
cannot be loaded; 1 anything else (e.g. the output cannot be written).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_edge.cli.common import (
    CliError,
    ExitCode,
    add_device_argument,
    add_model_argument,
    load_model,
    model_path,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:
    import numpy as np

    from anomaly_edge.stream.sources import Source

DEFAULT_FRAMES = 60

HELP = "fit a model's thresholds to a camera from frames of normal production"
DESCRIPTION = (
    "Run a model over frames of normal production from the deployment camera (video file, "
    "image folder, camera index or URL) and write a new IR with thresholds, normalisation "
    "statistics and the normal score range re-estimated for that camera. The weights stay "
    "as they are; no training data or torch is needed."
)
EPILOG = (
    "exit codes: 0 done, 2 bad arguments, 3 source cannot be opened or gives no, too few, "
    "mixed-size or only identical (frozen camera) frames, 4 model cannot be loaded, "
    "1 other errors (nothing is written unless it succeeds)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, the source of normal frames, how many, and where the new IR goes."""
    add_model_argument(parser)
    parser.add_argument(
        "--source",
        required=True,
        help="normal production: video file, image folder, glob, camera index "
        "or rtsp:// / http:// URL",
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--frames",
        type=positive_int,
        metavar="N",
        help=f"calibrate on the first N frames (default {DEFAULT_FRAMES})",
    )
    amount.add_argument(
        "--seconds",
        type=positive_float,
        metavar="SECONDS",
        help="calibrate on the first SECONDS of the source",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="XML|DIR",
        help="the calibrated IR to write (a .xml path, or a folder for model.xml); may be "
        "the input model itself",
    )
    parser.add_argument(
        "--policy",
        metavar="POLICY",
        help="the operating point to calibrate to, in the terms train uses: far:X (at most a "
        "share X of normal frames flagged, e.g. far:0.1); default: the model's own policy",
    )
    add_device_argument(parser)
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="network sources: seconds to wait for the stream (default 10)",
    )


def run(args: argparse.Namespace) -> int:
    """Calibrate on the source's first frames and write the calibrated IR."""
    from anomaly_edge.calibration import MIN_FRAMES, CalibrationError
    from anomaly_edge.cli.run import _quiet_video_backends
    from anomaly_edge.errors import AnomalyEdgeError
    from anomaly_edge.stream.sources import ReconnectPolicy, SourceError, open_source

    _quiet_video_backends()
    model_path(args, "calibration rewrites the IR")  # none, a URL, or missing: before any work

    if args.policy is not None:
        from anomaly_edge.operating_point import Policy

        try:
            Policy.parse(args.policy)
        except AnomalyEdgeError as exc:
            raise CliError(f"--policy: {exc}", ExitCode.USAGE) from None
    if args.frames is not None and args.frames < MIN_FRAMES:
        raise CliError(
            f"--frames {args.frames}: calibration needs at least {MIN_FRAMES} frames",
            ExitCode.USAGE,
        )
    out = args.out / "model.xml" if args.out.is_dir() or not args.out.suffix else args.out
    if out.suffix.lower() != ".xml":
        raise CliError(f"--out {args.out}: give a .xml path or a folder", ExitCode.USAGE)
    if not out.parent.is_dir():
        raise CliError(f"--out {args.out}: folder {out.parent} does not exist", ExitCode.INPUT)
    model = load_model(args)
    try:
        source = open_source(
            args.source, reconnect=ReconnectPolicy(attempts=0), timeout=args.timeout
        )
    except SourceError as exc:
        raise CliError(str(exc), ExitCode.INPUT) from None
    wanted = (
        f"{args.seconds:g} s"
        if args.seconds is not None
        else f"{args.frames or DEFAULT_FRAMES} frames"
    )
    print(f"calibrating {args.model} on {wanted} of {source.description}", file=sys.stderr)
    try:
        report = model.calibrate(
            _frames(source, args.frames, args.seconds),
            source=str(args.source),
            policy=args.policy,
        )
    except (CalibrationError, SourceError) as exc:
        corrupt = f" ({source.corrupt} frames could not be decoded)" if source.corrupt else ""
        raise CliError(f"{exc}{corrupt}", ExitCode.INPUT) from None
    finally:
        source.close()
    try:
        written = model.save(out)
    except (AnomalyEdgeError, OSError, RuntimeError) as exc:
        raise CliError(f"cannot write {out}: {_write_problem(exc, out)}") from None
    print(report)
    print(f"calibrated model: {written}")
    return int(ExitCode.OK)


def _frames(source: Source, count: int | None, seconds: float | None) -> Iterator[np.ndarray]:
    """The source's first ``count`` frames, or those within its first ``seconds``."""
    limit = count if count is not None or seconds is not None else DEFAULT_FRAMES
    taken = 0
    while (frame := source.read()) is not None:
        if seconds is not None and frame.timestamp >= seconds:
            break
        yield frame.image
        taken += 1
        if limit is not None and taken >= limit:
            break


def _write_problem(exc: BaseException, out: Path) -> str:
    """What went wrong writing ``out``, in words: OpenVINO's serializer only says
    "basic_ios::clear: iostream error" when the disk is full or the folder not writable."""
    if isinstance(exc, OSError) or "iostream" not in str(exc):
        return str(getattr(exc, "strerror", None) or exc)
    try:
        free = shutil.disk_usage(out.parent).free
    except OSError:
        free = None
    if free is not None and free < 64 << 20:
        return f"the disk is full ({free // 1024} KiB free in {out.parent}); free some space"
    if not os.access(out.parent, os.W_OK):
        return f"folder {out.parent} is not writable"
    return "the file system refused the write (disk full, quota or permissions?)"
