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
* 6   every source ran, but an output lost data: a full disk, a permission, a name too
      long, events a broker or webhook refused or that were not delivered by the end. Each
      output is still complete or absent (a video cut short is finalised up to its last
      good frame, or removed); the summary's "LOST" lines say what is missing;
* 130 stopped by Ctrl-C or SIGTERM: frames in flight were finished and every output file
      is complete and playable;
* 1   anything else.

One source or several (repeated ``--source``, ``--config``) run through the one stream engine
(:class:`~anomaly_edge.stream.StreamRunner`); the options of several cameras and of the web
view, MQTT, webhook and metrics live in ``cli/run_cameras.py``. A source lost while others
go on gives 3 once they have finished. Thresholds are in the 0-1 score units (0.5 = trained)
whatever the number of cameras, raw with ``--raw-thresholds``.

The output video and snapshots appear complete or not at all; the events file is written
line by line (flushed), so it can be followed while the run goes on.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time
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
    from anomaly_edge.stream import FrameObserver, FrameResult, StreamRunner, StreamSummary


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="detect anomalies in a video, camera, network stream or image folder",
        description="Run a model over a stream of frames: annotated video, JSON Lines events, "
        "snapshots of anomalous frames and a live status line. Ctrl-C stops cleanly.",
        epilog="exit codes: 0 done, 2 bad arguments, 3 source cannot be opened or was lost, "
        "4 model cannot be loaded, 5 optional extra missing (web, mqtt, metrics), "
        "6 an output lost data (disk full, refused events; the summary says what), "
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
        "--start-attempts",
        type=_non_negative_int,
        default=10,
        metavar="N",
        help="live sources (camera index, URL) down at the start: tries to open them, with "
        "the reconnection's backoff capped at --reconnect-max-delay, before giving up "
        "(default 10; 0 = fail at once)",
    )
    stream.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="seconds to wait for a network stream to open or deliver a frame (default 10)",
    )
    from anomaly_edge.cli.run_cameras import add_arguments

    add_arguments(parser)  # several cameras, a config file, the network outputs
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    return execute(args)


def execute(
    args: argparse.Namespace, on_result: Callable[[FrameResult], None] | None = None
) -> int:
    """Run the command; ``on_result`` sees every FrameResult (used by tools/bench_stream.py).

    One source or many go through the same engine and give the same outputs: every event
    names its source, each source has its drift monitor, thresholds are in one unit.
    """
    from anomaly_edge.cli import run_cameras
    from anomaly_edge.stream import EventLog, ReconnectPolicy, SourceError, StreamRunner
    from anomaly_edge.stream.events import JsonLinesWriter
    from anomaly_edge.stream.sinks import VIDEO_CODECS, WindowSink, gui_unavailable_reason

    _quiet_video_backends()
    _log_stream_messages()
    if not is_remote_model(args):  # all argument checks before a source opens
        args.model, args.model_path = str(model_path(args)), None
        check_device(args.device)
    check_thresholds(args)
    check_output_file(args.events, "--events")
    check_output_file(args.output, "--output")
    check_output_folder(args.snapshots, "--snapshots")
    _check_distinct_outputs(args)
    network = run_cameras.check_network(args)
    cameras = run_cameras.cameras(args)
    if not cameras:
        raise CliError("give --source (one or more) or --config", ExitCode.USAGE)
    if args.show:
        if len(cameras) > 1:
            raise CliError(
                "--show shows one camera; with several cameras use --web", ExitCode.USAGE
            )
        if (reason := gui_unavailable_reason()) is not None:
            raise CliError(f"--show: cannot open a window: {reason}", ExitCode.USAGE)
    for camera in cameras:
        where = f"camera {camera.name}: " if len(cameras) > 1 else ""
        if camera.output is not None and camera.output.suffix.lower() not in VIDEO_CODECS:
            raise CliError(
                f"{where}--output {camera.output}: unknown video container; use one of "
                f"{', '.join(sorted(VIDEO_CODECS))}",
                ExitCode.USAGE,
            )
        # Snapshot folders are created with their parents ('snaps/{source}' works as is).
        for path, what in ((camera.output, "--output"),):
            if path is not None and not path.resolve().parent.is_dir():
                raise CliError(
                    f"{where}{what} {path}: folder {path.resolve().parent} does not exist",
                    ExitCode.INPUT,
                )
    if args.events is not None and not args.events.resolve().parent.is_dir():
        raise CliError(
            f"--events {args.events}: folder {args.events.resolve().parent} does not exist",
            ExitCode.INPUT,
        )

    model = _load_model(args)
    task = str(getattr(model.task, "value", model.task))
    events = EventLog()
    observers: list[FrameObserver] = []
    try:
        if args.events is not None:
            events.add(JsonLinesWriter(args.events))
        web = run_cameras.open_network_outputs(args, network, events, observers)
        # Not for the web view: heatmaps cost every frame, watched or not; it shows the mask.
        visual = args.output is not None or args.show or (args.snapshots and args.snapshot_overlay)
        runner = StreamRunner(
            model,
            cameras,
            events=events,
            observers=observers,
            heatmap=bool(visual and args.overlay == "heatmap"),
            alpha=args.alpha,
            reconnect=ReconnectPolicy(
                args.reconnect_attempts, args.reconnect_delay, args.reconnect_max_delay
            ),
            timeout=args.timeout,
            on_result=on_result,
            wait_for_live=args.start_attempts > 0,
            start_attempts=args.start_attempts,
        )
        if args.show:
            runner.sinks.append(WindowSink(alpha=args.alpha, on_quit=runner.stop))
    except BaseException as exc:
        run_cameras.close_all(events, observers)
        if isinstance(exc, SourceError):
            raise CliError(str(exc), ExitCode.INPUT) from None
        if isinstance(exc, (OSError, ValueError)) and not isinstance(exc, CliError):
            # a port in use, an unwritable folder, a bad URL
            code = ExitCode.USAGE if isinstance(exc, ValueError) else ExitCode.INPUT
            raise CliError(str(exc), code) from None
        raise

    print(
        f"running {Path(args.model).name} ({task}) on "
        + ", ".join(f"{lane.name} = {lane.source.description}" for lane in runner.lanes),
        file=sys.stderr,
    )
    run_cameras.announce_network(web, observers)
    interrupted = _StopOnSignals(runner)
    status = _Status(runner, quiet=args.quiet)
    try:
        with interrupted:
            summary = _iterate(runner, status) if args.show else _wait(runner, status)
    except KeyboardInterrupt:  # a second Ctrl-C while the outputs were being closed
        _print_summary(runner)
        run_cameras.linger(web, 0)
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:
        if runner.summary is None or not any(exc is e for e in runner.errors.values()):
            run_cameras.linger(web, 0)
            _print_summary(runner)  # the model failed: every source stopped
            if isinstance(exc, ConnectionError):  # a model server that did not come back
                raise CliError(str(exc), ExitCode.INPUT) from None
            raise
        summary = runner.summary  # every source failed: each says why, in the exit code too
    _print_summary(runner)
    if interrupted.signalled:
        run_cameras.linger(web, 0)
        return int(ExitCode.INTERRUPTED)
    code = _exit_code(runner, summary)
    # The page stays up (a file source ends while someone is watching it) until Ctrl-C.
    run_cameras.linger(web, args.web_linger)
    return int(code)


def _iterate(runner: StreamRunner, status: _Status) -> StreamSummary:
    """The caller's thread delivers (a window must be drawn from the main thread)."""
    for _ in runner:
        status.tick()
    status.close()
    assert runner.summary is not None
    return runner.summary


def _wait(runner: StreamRunner, status: _Status) -> StreamSummary:
    """Each source delivers on its own thread; this one shows the status until the end."""
    runner.start()
    try:
        while not runner.wait(status.interval):
            status.show()
        return runner.join()
    except KeyboardInterrupt:  # a second Ctrl-C: stop waiting for the sources' ends
        runner.stop()
        runner.join()
        raise
    finally:
        status.close()


def _check_distinct_outputs(args: argparse.Namespace) -> None:
    """Two outputs on one path would overwrite each other (and the summary count both)."""
    seen: dict[Path, str] = {}
    for path, option in ((args.events, "--events"), (args.output, "--output")):
        if path is None:
            continue
        key = Path(os.path.abspath(path))
        if key in seen:
            raise CliError(
                f"{option} {path}: the same file as {seen[key]}; give each output its own path",
                ExitCode.USAGE,
            )
        seen[key] = option
    if args.snapshots is not None:
        folder = Path(os.path.abspath(args.snapshots))
        for key, option in seen.items():
            if key == folder:
                raise CliError(
                    f"--snapshots {args.snapshots}: the same path as {option}; give each "
                    "output its own path",
                    ExitCode.USAGE,
                )


def _exit_code(runner: StreamRunner, summary: StreamSummary) -> ExitCode:
    """0 when every source ended well; 3 when one was lost, unreadable or truncated; 1 when
    its outputs could not be written so it stopped; 6 when it went on but an output lost
    data (said on stderr either way)."""
    codes = {ExitCode.OK}
    losses = runner.losses()
    if losses:
        print(
            "error: some outputs are incomplete (the run went on):\n"
            + "\n".join(f"  {line}" for line in losses),
            file=sys.stderr,
        )
        codes.add(ExitCode.OUTPUT)
    for name, error in runner.errors.items():
        if isinstance(error, OSError) and not isinstance(error, ConnectionError):
            print(f"error: {name}: writing the outputs failed: {error}", file=sys.stderr)
            codes.add(ExitCode.FAILURE)
        else:
            codes.add(ExitCode.INPUT)
    for name, lane in summary.sources.items():
        if lane.missing and name not in runner.errors:
            # Every output is complete, but the input was not read to its end: say so.
            print(
                f"error: {runner.lane(name).source.description} ended {lane.missing} frames "
                "before its stated length (truncated or damaged); the results cover the "
                "frames read",
                file=sys.stderr,
            )
            codes.add(ExitCode.INPUT)
    # A lost or damaged input says more than a failed output; either is worse than none.
    for code in (ExitCode.INPUT, ExitCode.FAILURE, ExitCode.OUTPUT):
        if code in codes:
            return code
    return ExitCode.OK


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
    """Each source's summary and outputs, then the totals: the same for one source or many."""
    from anomaly_edge.stream import EventsSink, SnapshotSink, VideoSink, format_summary
    from anomaly_edge.stream.events import JsonLinesWriter

    summary = runner.summary
    if summary is None:
        return
    lines = []
    for lane in runner.lanes:
        own = summary.sources.get(lane.name)
        if own is None:
            continue
        outputs = []
        for sink in lane.sinks:
            if isinstance(sink, VideoSink):
                outputs.append(
                    f"video: {sink.path} ({sink.frames} frames, {sink.fps:g} fps"
                    + (", measured)" if sink.measured else ")")
                    if sink.frames
                    else f"video: none written to {sink.path} (no frames)"
                )
            elif isinstance(sink, EventsSink):
                outputs.append(f"events: {sink.path} ({sink.events} lines)")
            elif isinstance(sink, SnapshotSink):
                outputs.append(f"snapshots: {sink.directory} ({sink.saved} images)")
        lines.append(f"[{lane.name}] {lane.source.description}")
        lines.extend("  " + line for line in format_summary(own, outputs).splitlines())
        if lane.name in summary.errors:
            lines.append(f"  stopped early: {summary.errors[lane.name]}")
    lines.append(
        f"all sources: {summary.frames} frames in {summary.seconds:.1f} s "
        f"({summary.fps:.1f} fps), anomalous frames: {summary.anomalies}"
    )
    for consumer in runner.events.consumers:
        if isinstance(consumer, JsonLinesWriter):
            lines.append(f"events: {consumer.path} ({consumer.lines} lines)")
        report = getattr(consumer, "report", None)
        if report is not None:
            lines.append(report())
    lines.extend(f"LOST: {line}" for line in runner.losses())
    print("\n".join(lines), flush=True)


class _Status:
    """The live status line on stderr: one source's progress (a bar when its length is
    known), or each source's rate; redrawn in place on a terminal, every 5 s otherwise."""

    def __init__(self, runner: StreamRunner, quiet: bool) -> None:
        from anomaly_edge.stream import StatusLine

        self.runner = runner
        self.quiet = quiet
        self.interactive = sys.stderr.isatty()
        self.interval = 0.25 if self.interactive else 5.0
        self._line: StatusLine | None = None
        if len(runner.lanes) == 1:
            lane = runner.lanes[0]
            total = lane.source.frame_count
            if total is not None and lane.camera.max_frames is not None:
                total = min(total, lane.camera.max_frames)
            self._line = StatusLine(runner.stats, total, interval=self.interval)
        self._width = 0
        self._last = -math.inf

    def render(self) -> str:
        return self._line.render() if self._line is not None else self.runner.render_status()

    def tick(self) -> None:
        """Show the line if ``interval`` has passed since it was last shown."""
        now = time.monotonic()
        if now - self._last >= self.interval:
            self.show()

    def show(self) -> None:
        self._last = time.monotonic()
        if self.quiet or not self.runner.stats.frames:
            return
        line = self.render()
        if self.interactive:
            sys.stderr.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self._last == math.inf:
            return  # closed already
        self.show()  # the final state
        self._last = math.inf
        if not self.quiet and self.interactive and self._width:
            sys.stderr.write("\n")
            sys.stderr.flush()


class _StopOnSignals:
    """First Ctrl-C / SIGTERM: stop reading, finish frames in flight, close the outputs.
    A second one aborts at once (the outputs are still closed on the way out)."""

    def __init__(self, runner: StreamRunner) -> None:
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
