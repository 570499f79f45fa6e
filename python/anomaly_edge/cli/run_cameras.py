"""`anomaly-edge run` with several cameras, a config file, the web view, MQTT, a webhook or
metrics: the options, and the run itself on :class:`~anomaly_edge.stream.MultiStreamRunner`.

Part of the `run` command (`cli/run.py` hands over to :func:`execute_many`), not a command of
its own. Exit codes are those of `run`, plus 5 when an optional extra (web, mqtt, metrics) is
missing; a camera lost during the run makes the exit code 3 once the others have finished.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_edge.cli.common import CliError, ExitCode

if TYPE_CHECKING:
    import importlib.machinery

    from anomaly_edge.stream.config import Camera
    from anomaly_edge.stream.events import EventLog
    from anomaly_edge.stream.multi import MultiStreamRunner, MultiSummary

# extra -> modules it provides (checked before anything starts)
EXTRAS = {"web": ("fastapi", "uvicorn"), "mqtt": ("paho.mqtt",), "metrics": ("prometheus_client",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "many cameras",
        "several --source (NAME=SPEC names a camera), or --config; outputs "
        "then get the camera's name: out.mp4 -> out-NAME.mp4 (or write {source} in the path)",
    )
    group.add_argument(
        "--config",
        type=Path,
        metavar="TOML",
        help="cameras file: [[camera]] tables with name, source and their own "
        "thresholds, task and outputs (see the README)",
    )
    group.add_argument(
        "--web",
        metavar="HOST:PORT",
        help="serve a live page (streams, counters, events, thresholds) at this "
        "address, e.g. 127.0.0.1:8080 (needs the 'web' extra)",
    )
    group.add_argument(
        "--web-token",
        metavar="TOKEN",
        help="token the page asks for; required for addresses other than "
        "localhost (generated and printed when not given)",
    )
    group.add_argument(
        "--web-fps",
        type=float,
        default=5.0,
        metavar="FPS",
        help="highest frame rate of each camera's stream on the page (default 5)",
    )
    group.add_argument(
        "--mqtt",
        metavar="URL",
        help="publish events to an MQTT broker: mqtt://[user:pass@]host[:1883]"
        "[/topic-prefix] (QoS 1; retained online/offline status; needs 'mqtt')",
    )
    group.add_argument("--webhook", metavar="URL", help="POST each event as JSON to this URL")
    group.add_argument(
        "--spool-dir",
        type=Path,
        metavar="DIR",
        help="where events wait while the broker or endpoint is down (default: a "
        "temporary folder; give one to keep them across restarts)",
    )
    group.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="Prometheus metrics at http://HOST:PORT/metrics (needs 'metrics')",
    )


def wants_many(args: argparse.Namespace) -> bool:
    """True when the run needs the multi-camera path (the single-source one stays lean)."""
    sources = args.source if isinstance(args.source, list) else [args.source] * bool(args.source)
    return (
        len(sources) > 1
        or getattr(args, "config", None) is not None
        or any(getattr(args, name, None) for name in ("web", "mqtt", "webhook", "metrics"))
    )


def require_extra(extra: str, option: str) -> None:
    missing = [m for m in EXTRAS[extra] if _find_spec(m) is None]
    if missing:
        raise CliError(
            f"{option} needs the '{extra}' extra ({', '.join(missing)} not "
            f"installed).\n  install it with:  pip install 'anomaly-edge[{extra}]'",
            ExitCode.MISSING_EXTRA,
        )


def _find_spec(module: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:  # the parent package is missing
        return None


def parse_address(text: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise CliError(f"{option} {text!r}: give HOST:PORT, e.g. 127.0.0.1:8080", ExitCode.USAGE)
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def execute_many(args: argparse.Namespace) -> int:
    from anomaly_edge.cli.run import _load_model, _StopOnSignals
    from anomaly_edge.stream import MultiStreamRunner, ReconnectPolicy, SourceError
    from anomaly_edge.stream.config import ConfigError, check_unique, with_outputs
    from anomaly_edge.stream.events import EventLog
    from anomaly_edge.stream.sinks import VIDEO_CODECS

    if args.show:
        raise CliError("--show shows one camera; with several cameras use --web", ExitCode.USAGE)
    web_address = metrics_address = None
    if args.web:
        require_extra("web", "--web")
        web_address = parse_address(args.web, "--web")
        if args.web_fps <= 0:
            raise CliError("--web-fps must be positive", ExitCode.USAGE)
    if args.mqtt:
        require_extra("mqtt", "--mqtt")
    if args.metrics:
        require_extra("metrics", "--metrics")
        metrics_address = parse_address(args.metrics, "--metrics")
    try:
        cameras = _cameras(args)
        cameras = with_outputs(cameras, args.output, args.snapshots)
        check_unique(cameras, "cameras")
    except ConfigError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from None
    if not cameras:
        raise CliError("give --source (one or more) or --config", ExitCode.USAGE)
    for camera in cameras:
        if camera.output is not None and camera.output.suffix.lower() not in VIDEO_CODECS:
            raise CliError(
                f"camera {camera.name}: output {camera.output}: unknown video "
                f"container; use one of {', '.join(sorted(VIDEO_CODECS))}",
                ExitCode.USAGE,
            )
        for path, what in ((camera.output, "output"), (camera.snapshots, "snapshots")):
            if path is not None and not path.resolve().parent.is_dir():
                raise CliError(
                    f"camera {camera.name}: {what} {path}: folder "
                    f"{path.resolve().parent} does not exist",
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
    observers: list[Any] = []
    web = None
    try:
        if args.events is not None:
            from anomaly_edge.stream.events import JsonLinesWriter

            events.add(JsonLinesWriter(args.events))
        if args.mqtt:
            from anomaly_edge.stream.mqtt import MqttPublisher

            events.add(MqttPublisher(args.mqtt, spool_dir=args.spool_dir))
        if args.webhook:
            from anomaly_edge.stream.webhook import WebhookPublisher

            events.add(WebhookPublisher(args.webhook, spool_dir=args.spool_dir))
        if metrics_address is not None:
            from anomaly_edge.stream.metrics import MetricsExporter

            observers.append(MetricsExporter(*metrics_address))
        if web_address is not None:
            from anomaly_edge.stream.web import WebView

            token = args.web_token
            if token is None and not is_loopback(web_address[0]):
                token = secrets.token_urlsafe(18)
            web = WebView(*web_address, token=token, max_fps=args.web_fps, alpha=args.alpha)
            observers.append(web)
            events.add(web)
        # Not for the web view: heatmaps cost every frame, watched or not; it shows the mask.
        visual = args.output is not None or (args.snapshots and args.snapshot_overlay)
        runner = MultiStreamRunner(
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
        )
    except SourceError as exc:
        _close_all(events, observers)
        raise CliError(str(exc), ExitCode.INPUT) from None
    except CliError:
        _close_all(events, observers)
        raise
    except (OSError, ValueError) as exc:  # a port in use, an unwritable folder, a bad URL
        _close_all(events, observers)
        raise CliError(
            str(exc), ExitCode.USAGE if isinstance(exc, ValueError) else ExitCode.INPUT
        ) from None

    print(
        f"running {Path(args.model).name} ({task}) on {len(cameras)} camera(s): "
        + ", ".join(f"{lane.name} = {lane.source.description}" for lane in runner.lanes),
        file=sys.stderr,
    )
    if web is not None:
        print(f"web view: {web.url}", file=sys.stderr, flush=True)
    if metrics_address is not None:
        print(
            f"metrics: http://{_host(metrics_address[0])}:{observers[0].port}/metrics",
            file=sys.stderr,
            flush=True,
        )
    interrupted = _StopOnSignals(runner)
    status = _Status(runner, quiet=args.quiet)
    with interrupted:
        runner.start()
        try:
            while not runner.wait(status.interval):
                status.show()
            summary = runner.join()
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting (files are closed by now)
            runner.stop()
            summary = runner.join()
            interrupted.signalled = True
        finally:
            status.close()
    print(_format(summary, runner), flush=True)
    if interrupted.signalled:
        return int(ExitCode.INTERRUPTED)
    return int(ExitCode.INPUT if summary.errors else ExitCode.OK)


def _cameras(args: argparse.Namespace) -> list[Camera]:
    from anomaly_edge.stream.config import cameras_from_sources, load_config

    shared: dict[str, Any] = {
        "snapshot_interval": args.snapshot_interval,
        "snapshot_overlay": args.snapshot_overlay,
        "all_frames": args.all_frames,
        "min_area": args.min_area,
    }
    for key in ("task", "image_threshold", "pixel_threshold", "max_frames"):
        if getattr(args, key) is not None:
            shared[key] = getattr(args, key)
    cameras = []
    if args.config is not None:
        cameras.extend(load_config(args.config, **shared))
    if args.source:
        cameras.extend(cameras_from_sources(args.source, **shared))
    return cameras


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _close_all(events: EventLog, observers: list[Any]) -> None:
    events.close()
    for observer in observers:
        observer.close()


class _Status:
    """The per-camera status line on stderr (in place on a terminal, every 5 s otherwise)."""

    def __init__(self, runner: MultiStreamRunner, quiet: bool) -> None:
        self.runner = runner
        self.quiet = quiet
        self.interactive = sys.stderr.isatty()
        self.interval = 0.5 if self.interactive else 5.0
        self._width = 0

    def show(self) -> None:
        if self.quiet:
            return
        line = self.runner.render_status()
        if self.interactive:
            sys.stderr.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if not self.quiet:
            self.show()
            if self.interactive:
                sys.stderr.write("\n")


def _format(summary: MultiSummary, runner: MultiStreamRunner) -> str:
    from anomaly_edge.stream import format_summary

    lines = []
    for lane in runner.lanes:
        camera = summary.cameras.get(lane.name)
        if camera is None:
            continue
        outputs = []
        for sink in lane.sinks:
            path = getattr(sink, "path", None) or getattr(sink, "directory", None)
            if path is not None:
                outputs.append(f"output: {path}")
        lines.append(f"[{lane.name}] {lane.source.description}")
        lines.extend("  " + line for line in format_summary(camera, outputs).splitlines())
        if lane.name in summary.errors:
            lines.append(f"  stopped early: {summary.errors[lane.name]}")
    lines.append(
        f"all cameras: {summary.frames} frames in {summary.seconds:.1f} s ({summary.fps:.1f} fps)"
    )
    for consumer in runner.events.consumers:
        report = getattr(consumer, "report", None)
        if report is not None:
            lines.append(report())
    return "\n".join(lines)
