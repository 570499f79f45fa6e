"""`anomaly-edge run`: anomaly detection on a video file, camera, network stream or image folder.

Exit codes (scripts can rely on them):

* 0   the source ended, or ``--max-frames`` frames were processed;
* 2   bad arguments (unknown output container, ``--show`` without a display or GUI, ...);
* 3   the source cannot be found or opened (missing file, unreadable video, unreachable URL,
      unopenable camera), a live source was lost after ``--reconnect-attempts``
      reconnections, or an output folder is missing; or a video file ended before its stated
      length (truncated: the outputs are complete, the missing frames counted);
* 4   the model cannot be loaded;
* 5   ``--web``, ``--mqtt`` or ``--metrics`` without its optional extra installed;
* 130 stopped by Ctrl-C or SIGTERM: frames in flight were finished and every output file
      is complete and playable;
* 1   anything else.

Several cameras (repeated ``--source``, ``--config``) and the web view, MQTT, webhook and
metrics run in ``cli/run_cameras.py``; a camera lost there gives 3 once the others finished.

The output video and snapshots appear complete or not at all; the events file is written
line by line (flushed), so it can be followed while the run goes on.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_edge.cli.common import (
    TASKS,
    CliError,
    ExitCode,
    add_device_argument,
    add_model_argument,
    add_threshold_arguments,
    check_device,
    check_output_file,
    check_output_folder,
    check_thresholds,
    is_remote_model,
    load_model,
    model_path,
)
from anomaly_edge.cli.common import non_negative_float as _non_negative_float
from anomaly_edge.cli.common import non_negative_int as _non_negative_int
from anomaly_edge.cli.common import positive_float as _positive_float
from anomaly_edge.cli.common import positive_int as _positive_int
from anomaly_edge.cli.common import unit_float as _unit_float

if TYPE_CHECKING:
    from anomaly_edge.model import AnomalyModel
    from anomaly_edge.stream import MultiStreamRunner, StreamRunner


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="detect anomalies in a video, camera, network stream or image folder",
        description="Run a model over a stream of frames: annotated video, JSON Lines events, "
        "snapshots of anomalous frames and a live status line. Ctrl-C stops cleanly.",
        epilog="exit codes: 0 done, 2 bad arguments, 3 source cannot be opened or was lost, "
        "4 model cannot be loaded, 5 optional extra missing (web, mqtt, metrics), "
        "130 interrupted (outputs complete), 1 other errors",
    )
    add_model_argument(parser, remote=True)
    parser.add_argument(
        "--source",
        action="append",
        help="video file, image folder, glob ('shots/*.png'), camera index (0), "
        "or rtsp:// / http:// URL; repeat for several cameras (NAME=SPEC)",
    )
    add_device_argument(parser)
    parser.add_argument("--task", choices=TASKS, help="override the model's task")
    add_threshold_arguments(parser)
    parser.add_argument(
        "--min-area",
        type=_positive_int,
        default=1,
        metavar="N",
        help="ignore anomalous regions smaller than this (anomaly-map pixels)",
    )
    parser.add_argument(
        "--num-requests",
        type=_positive_int,
        metavar="N",
        help="inference requests in flight (default: what the device prefers)",
    )
    out = parser.add_argument_group("outputs")
    out.add_argument(
        "--output",
        type=Path,
        metavar="VIDEO",
        help="annotated video (.mp4, .m4v, .mov, .mkv or .avi)",
    )
    out.add_argument("--events", type=Path, metavar="JSONL", help="JSON Lines events file")
    out.add_argument(
        "--all-frames",
        action="store_true",
        help="write an event for every frame, not only anomalous ones",
    )
    out.add_argument(
        "--snapshots", type=Path, metavar="DIR", help="folder for JPEG snapshots of anomalies"
    )
    out.add_argument(
        "--snapshot-interval",
        type=_non_negative_float,
        default=1.0,
        metavar="SECONDS",
        help="at most one snapshot per this many seconds (default 1; 0 = all)",
    )
    out.add_argument(
        "--snapshot-overlay",
        action="store_true",
        help="draw the prediction on snapshots (default: the raw frame)",
    )
    out.add_argument(
        "--overlay",
        choices=("heatmap", "mask"),
        default="heatmap",
        help="segmentation overlay: colour heatmap (default) or the mask only",
    )
    out.add_argument(
        "--alpha",
        type=_unit_float,
        default=0.4,
        metavar="A",
        help="overlay opacity, 0-1 (default 0.4)",
    )
    out.add_argument(
        "--show",
        action="store_true",
        help="show the annotated frames in a window (needs a display and an "
        "OpenCV build with GUI support)",
    )
    out.add_argument("--quiet", action="store_true", help="no live status line")
    stream = parser.add_argument_group("stream")
    stream.add_argument("--max-frames", type=_positive_int, metavar="N", help="stop after N frames")
    stream.add_argument(
        "--reconnect-attempts",
        type=_non_negative_int,
        default=10,
        metavar="N",
        help="live sources: reconnections to try in a row before giving up (default 10; 0 = none)",
    )
    stream.add_argument(
        "--reconnect-delay",
        type=_non_negative_float,
        default=0.5,
        metavar="SECONDS",
        help="first wait before reconnecting, doubled each time (default 0.5 s)",
    )
    stream.add_argument(
        "--reconnect-max-delay",
        type=_non_negative_float,
        default=8.0,
        metavar="SECONDS",
        help="longest wait between reconnections (default 8 s)",
    )
    stream.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="seconds to wait for a network stream to open or deliver a frame (default 10)",
    )
    from anomaly_edge.cli.run_cameras import add_arguments

    add_arguments(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    return execute(args)


def execute(args: argparse.Namespace, on_result: Callable[[Any], None] | None = None) -> int:
    """Run the command; ``on_result`` sees every FrameResult (used by tools/bench_stream.py)."""
    from anomaly_edge.stream import (
        EventsSink,
        ReconnectPolicy,
        SnapshotSink,
        SourceError,
        StatusLine,
        StreamRunner,
        VideoSink,
        WindowSink,
        open_source,
    )
    from anomaly_edge.stream.sinks import VIDEO_CODECS, gui_unavailable_reason

    _quiet_video_backends()
    _log_stream_messages()
    if not is_remote_model(args):  # all argument checks before a source opens
        args.model, args.model_path = str(model_path(args)), None
        check_device(args.device)
    check_thresholds(args)
    check_output_file(args.events, "--events")
    check_output_file(args.output, "--output")
    check_output_folder(args.snapshots, "--snapshots")
    from anomaly_edge.cli.run_cameras import execute_many, wants_many

    if wants_many(args):  # several cameras, a config file, the web view, MQTT, metrics
        if (
            args.image_threshold is not None or args.pixel_threshold is not None
        ) and not args.raw_thresholds:
            raise CliError(
                "with several cameras or --config, thresholds are raw score units "
                "(as in the config file): add --raw-thresholds",
                ExitCode.USAGE,
            )
        return execute_many(args)
    if isinstance(args.source, list):  # `--source` may be repeated
        args.source = args.source[0]
    if not args.source:
        raise CliError("give --source (one or more) or --config", ExitCode.USAGE)
    if args.output is not None and args.output.suffix.lower() not in VIDEO_CODECS:
        raise CliError(
            f"--output {args.output}: unknown video container; use one of "
            f"{', '.join(sorted(VIDEO_CODECS))}",
            ExitCode.USAGE,
        )
    if args.show and (reason := gui_unavailable_reason()) is not None:
        raise CliError(f"--show: cannot open a window: {reason}", ExitCode.USAGE)
    for path, what in (
        (args.output, "--output"),
        (args.events, "--events"),
        (args.snapshots, "--snapshots"),
    ):
        if path is not None and not path.resolve().parent.is_dir():
            raise CliError(
                f"{what} {path}: folder {path.resolve().parent} does not exist", ExitCode.INPUT
            )

    policy = ReconnectPolicy(
        args.reconnect_attempts, args.reconnect_delay, args.reconnect_max_delay
    )
    try:
        source = open_source(args.source, reconnect=policy, timeout=args.timeout)
    except SourceError as exc:
        raise CliError(str(exc), ExitCode.INPUT) from None
    try:
        model = _load_model(args)
    except BaseException:
        source.close()
        raise

    task = str(getattr(model.task, "value", model.task))
    visual = args.output is not None or args.show or (args.snapshots and args.snapshot_overlay)
    runner = StreamRunner(
        model,
        source,
        max_frames=args.max_frames,
        heatmap=bool(visual and task == "segmentation" and args.overlay == "heatmap"),
    )
    try:
        if args.output is not None:
            runner.sinks.append(VideoSink(args.output, source.fps, alpha=args.alpha))
        if args.events is not None:
            runner.sinks.append(EventsSink(args.events, all_frames=args.all_frames))
        if args.snapshots is not None:
            runner.sinks.append(
                SnapshotSink(
                    args.snapshots,
                    interval=args.snapshot_interval,
                    overlay=args.snapshot_overlay,
                    alpha=args.alpha,
                )
            )
        if args.show:
            runner.sinks.append(WindowSink(alpha=args.alpha, on_quit=runner.stop))
    except Exception as exc:
        for sink in runner.sinks:
            sink.close()
        source.close()
        raise CliError(str(exc), ExitCode.INPUT) from None
    if not args.quiet:
        total = source.frame_count
        if total is not None and args.max_frames is not None:
            total = min(total, args.max_frames)
        runner.sinks.append(StatusLine(runner.stats, total))

    print(f"running {Path(args.model).name} ({task}) on {source.description}", file=sys.stderr)
    interrupted = _StopOnSignals(runner)
    try:
        with interrupted:
            for result in runner:
                if on_result is not None:
                    on_result(result)
    except SourceError as exc:  # a live source that did not come back
        _print_summary(runner)
        raise CliError(str(exc), ExitCode.INPUT) from None
    except ConnectionError as exc:  # a model server that did not come back (--model URL)
        _print_summary(runner)
        raise CliError(str(exc), ExitCode.INPUT) from None
    except OSError as exc:  # a full disk, a folder removed under our feet, ...
        _print_summary(runner)
        raise CliError(f"writing the outputs failed: {exc}") from None
    except KeyboardInterrupt:
        _print_summary(runner)
        return int(ExitCode.INTERRUPTED)
    _print_summary(runner)
    if interrupted.signalled:
        return int(ExitCode.INTERRUPTED)
    if runner.summary is not None and runner.summary.missing:
        # Every output is complete, but the input was not read to its end: say so in the code.
        print(
            f"error: {source.description} ended {runner.summary.missing} frames before its "
            "stated length (truncated or damaged); the results cover the frames read",
            file=sys.stderr,
        )
        return int(ExitCode.INPUT)
    return int(ExitCode.OK)


def _load_model(args: argparse.Namespace) -> AnomalyModel:
    options: dict[str, Any] = {"num_requests": args.num_requests}
    if is_remote_model(args):  # the server's outages are retried as a live source's are
        from anomaly_edge.remote import RetryPolicy

        options.update(
            timeout=args.timeout,
            reconnect=RetryPolicy(
                args.reconnect_attempts, args.reconnect_delay, args.reconnect_max_delay
            ),
        )
    return load_model(args, **options)


def _print_summary(runner: StreamRunner) -> None:
    from anomaly_edge.stream import EventsSink, SnapshotSink, VideoSink, format_summary

    if runner.summary is None:
        return
    outputs = []
    for sink in runner.sinks:
        if isinstance(sink, VideoSink):
            outputs.append(
                f"video: {sink.path} ({sink.frames} frames, {sink.fps:g} fps)"
                if sink.frames
                else f"video: none written to {sink.path} (no frames)"
            )
        elif isinstance(sink, EventsSink):
            outputs.append(f"events: {sink.path} ({sink.events} lines)")
        elif isinstance(sink, SnapshotSink):
            outputs.append(f"snapshots: {sink.directory} ({sink.saved} images)")
    print(format_summary(runner.summary, outputs), flush=True)


class _StopOnSignals:
    """First Ctrl-C / SIGTERM: stop reading, finish frames in flight, close the outputs.
    A second one aborts at once (the outputs are still closed on the way out)."""

    def __init__(self, runner: StreamRunner | MultiStreamRunner) -> None:
        self.runner = runner
        self.signalled = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (embedded use): leave signals alone
                break
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signalled:
            raise KeyboardInterrupt
        self.signalled = True
        self.runner.stop()
        # os.write: print() is not safe inside a signal handler.
        os.write(2, b"\nstopping: finishing the frames in flight (press Ctrl-C again to abort)\n")


def _quiet_video_backends() -> None:
    """Keep FFmpeg's and OpenCV's own chatter (which repeats our messages) off the terminal."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # read when FFmpeg is first used
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _log_stream_messages() -> None:
    """Show the stream's warnings (reconnections, skipped images) on stderr."""
    logger = logging.getLogger("anomaly_edge.stream")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        # On a terminal, first clear the status line that is being redrawn in place.
        prefix = "\r\033[K" if sys.stderr.isatty() else ""
        handler.setFormatter(logging.Formatter(prefix + "%(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
