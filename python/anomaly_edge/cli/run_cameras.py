"""The cameras and network outputs of `anomaly-edge run`: several sources, a config file, the
web view, MQTT, a webhook and metrics (their options, checks and consumers).

Part of the `run` command (`cli/run.py` uses these; this module does not import it), not a
command of its own. An optional extra (web, mqtt, metrics) that is missing is exit code 5.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import ipaddress
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_edge.cli.common import CliError, ExitCode

if TYPE_CHECKING:
    import importlib.machinery

    from anomaly_edge.stream.config import Camera
    from anomaly_edge.stream.engine import FrameObserver
    from anomaly_edge.stream.events import EventLog
    from anomaly_edge.stream.web import WebView

# extra -> modules it provides (checked before anything starts)
EXTRAS = {"web": ("fastapi", "uvicorn"), "mqtt": ("paho.mqtt",), "metrics": ("prometheus_client",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "cameras and network outputs",
        "several --source (NAME=SPEC names a camera), or --config; outputs "
        "then get the camera's name: out.mp4 -> out-NAME.mp4 (or write {source} in the path)",
    )
    group.add_argument(
        "--config",
        type=Path,
        metavar="TOML",
        help="cameras file: [[camera]] tables with name, source and their own "
        "thresholds (0-1 score units unless raw_thresholds = true), task and outputs",
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
        "--web-linger",
        type=float,
        metavar="SECONDS",
        help="how long the web view stays up after every source has ended, showing the "
        "final state (default: until Ctrl-C; 0 = it stops with the sources); the exit code "
        "is the run's",
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


@dataclass
class Network:
    """The addresses of the network outputs asked for (checked, extras present)."""

    web: tuple[str, int] | None = None
    metrics: tuple[str, int] | None = None


def check_network(args: argparse.Namespace) -> Network:
    """Check the network options before anything starts (exit 2, or 5 for a missing extra)."""
    network = Network()
    if args.web:
        require_extra("web", "--web")
        network.web = parse_address(args.web, "--web")
        if args.web_token is not None and not args.web_token.strip():
            raise CliError(
                "--web-token is empty: nobody could open the page; give a token, or leave "
                "--web-token out (one is generated for addresses beyond this machine)",
                ExitCode.USAGE,
            )
        if args.web_fps <= 0:
            raise CliError("--web-fps must be positive", ExitCode.USAGE)
        if args.web_linger is not None and not args.web_linger >= 0:
            raise CliError("--web-linger must be 0 or more seconds", ExitCode.USAGE)
    if args.mqtt:
        require_extra("mqtt", "--mqtt")
    if args.metrics:
        require_extra("metrics", "--metrics")
        network.metrics = parse_address(args.metrics, "--metrics")
    return network


def cameras(args: argparse.Namespace) -> list[Camera]:
    """The cameras the arguments name (``--config``, then each ``--source``), with the
    command line's outputs (one file/folder each when there are several)."""
    from anomaly_edge.stream.config import (
        ConfigError,
        cameras_from_sources,
        check_unique,
        load_config,
        with_outputs,
    )

    # Thresholds given on the command line are set on the model (every camera's default);
    # a config file's own are in the same units unless it says raw_thresholds = true.
    shared: dict[str, Any] = {
        "snapshot_interval": args.snapshot_interval,
        "snapshot_overlay": args.snapshot_overlay,
        "all_frames": args.all_frames,
        "min_area": args.min_area,
        "raw_thresholds": bool(args.raw_thresholds),
    }
    for key in ("task", "max_frames"):
        if getattr(args, key) is not None:
            shared[key] = getattr(args, key)
    found: list[Camera] = []
    try:
        if args.config is not None:
            found.extend(load_config(args.config, **shared))
        if args.source:
            found.extend(cameras_from_sources(args.source, **shared))
        found = with_outputs(found, args.output, args.snapshots)
        check_unique(found, "cameras")
    except ConfigError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from None
    return found


def open_network_outputs(
    args: argparse.Namespace, network: Network, events: EventLog, observers: list[FrameObserver]
) -> WebView | None:
    """Add the MQTT / webhook publishers to ``events`` and the metrics exporter and web view
    to ``observers``; returns the web view. The caller closes what was added on failure."""
    if args.mqtt:
        from anomaly_edge.stream.mqtt import MqttPublisher

        events.add(MqttPublisher(args.mqtt, spool_dir=args.spool_dir))
    if args.webhook:
        from anomaly_edge.stream.webhook import WebhookPublisher

        events.add(WebhookPublisher(args.webhook, spool_dir=args.spool_dir))
    if network.metrics is not None:
        from anomaly_edge.stream.metrics import MetricsExporter

        observers.append(MetricsExporter(*network.metrics))
    if network.web is None:
        return None
    from anomaly_edge.stream.web import WebView

    token = args.web_token
    if token is None and not is_loopback(network.web[0]):
        token = secrets.token_urlsafe(18)
    web = WebView(*network.web, token=token, max_fps=args.web_fps, alpha=args.alpha)
    web.linger = args.web_linger != 0
    observers.append(web)
    events.add(web)
    return web


def announce_network(web: WebView | None, observers: list[FrameObserver]) -> None:
    """Print where the web view and the metrics are served."""
    if web is not None:
        print(f"web view: {web.url}", file=sys.stderr, flush=True)
    for observer in observers:
        port = getattr(observer, "port", None)
        host = getattr(observer, "host", None)
        if port is not None and host is not None and observer is not web:
            print(f"metrics: http://{_host(host)}:{port}/metrics", file=sys.stderr, flush=True)


def linger(web: WebView | None, seconds: float | None) -> None:
    """Keep the web view up after the sources ended (``--web-linger``), then stop it."""
    if web is None:
        return
    try:
        if web.linger and seconds != 0:
            until = "until Ctrl-C" if seconds is None else f"for {seconds:g} s (or Ctrl-C)"
            print(
                f"every source has ended; the web view stays up at {web.url} {until}",
                file=sys.stderr,
                flush=True,
            )
            deadline = None if seconds is None else time.monotonic() + seconds
            with _ctrl_c_interrupts():
                while deadline is None or time.monotonic() < deadline:
                    time.sleep(0.2 if deadline is None else min(0.2, deadline - time.monotonic()))
    except KeyboardInterrupt:  # the end of lingering, not of the run: its exit code stands
        pass
    finally:
        web.shutdown()


@contextlib.contextmanager
def _ctrl_c_interrupts() -> Iterator[None]:
    """Ctrl-C ends the lingering even where SIGINT was ignored when the command started (a
    job started with ``&`` by a script, ``nohup``), as it stops the run itself: the page says
    "until Ctrl-C", and the run's own handler took Ctrl-C until a moment ago."""
    try:
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def close_all(events: EventLog, observers: list[FrameObserver]) -> None:
    events.close()
    for observer in observers:
        observer.close()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
