"""`anomaly-edge benchmark`: latency and throughput of a model on this machine.

Measures what an application sees: a uint8 frame in, a :class:`~anomaly_edge.Prediction` out
(pre-processing, inference and post-processing included), one frame at a time (latency
percentiles) and through the asynchronous interface (throughput).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_edge.cli.common import (
    CliError,
    ExitCode,
    add_device_argument,
    add_hidden_alias,
    add_model_argument,
    add_num_requests_argument,
    add_task_argument,
    load_model,
    positive_float,
)

if TYPE_CHECKING:
    import numpy as np

    from anomaly_edge.model import AnomalyModel

HELP = "measure latency and throughput of a model (post-processing included)"
DESCRIPTION = (
    "Latency percentiles (one frame at a time) and throughput (asynchronous, several "
    "requests in flight) of an exported model, frame in to prediction out."
)
EPILOG = "exit codes: 0 done, 2 bad arguments, 3 image cannot be read, 4 model cannot be loaded"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, the frame to measure on, and how long."""
    add_model_argument(parser, remote=True)
    add_device_argument(parser)
    add_task_argument(
        parser, default="detection", help_text="post-processing to include (default: detection)"
    )
    parser.add_argument(
        "--frame-size",
        default="1920x1080",
        type=_frame_size,
        metavar="WxH",
        help="synthetic frame size WIDTHxHEIGHT (default 1920x1080)",
    )
    add_hidden_alias(parser, "--frame", "frame_size", type=_frame_size)  # the old spelling
    parser.add_argument(
        "--image", type=Path, metavar="FILE", help="benchmark on this image instead"
    )
    parser.add_argument(
        "--seconds",
        type=positive_float,
        default=5.0,
        help="time spent on each of sync and async (default 5)",
    )
    add_num_requests_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Measure sync latency and async throughput; print them (or one JSON object)."""
    from anomaly_edge.errors import InvalidInputError
    from anomaly_edge.media import read_image

    if args.image is not None and not args.image.is_file():
        raise CliError(f"--image {args.image}: no such file", ExitCode.INPUT)
    model = load_model(args, num_requests=args.num_requests)
    if args.image is not None:
        try:
            frame = read_image(args.image)
        except InvalidInputError as exc:
            raise CliError(str(exc), ExitCode.INPUT) from None
    else:
        frame = synthetic_frame(*args.frame_size)
    with warnings.catch_warnings():
        if args.image is None:
            # The model warns when frames are shaped unlike its training images (the parts
            # would be stretched). A synthetic frame's shape is this command's choice and
            # its content noise: the warning would be about nothing.
            warnings.filterwarnings("ignore", message=r".*shaped unlike the training images")
        sync = measure_sync(model, frame, args.seconds)
        asynchronous = measure_async(model, frame, args.seconds)
    result = {
        "model": model.metadata.model,
        "backbone": model.metadata.backbone,
        "precision": model.metadata.precision,
        "device": model.device,
        "task": model.task.value,
        "frame": f"{frame.shape[1]}x{frame.shape[0]}",
        "sync": sync,
        "async": asynchronous,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['model']} ({result['backbone']}, {result['precision']}) on {model.device}, "
        f"task {result['task']}, frame {result['frame']}"
    )
    lat = sync["latency_ms"]
    print(
        f"  sync : {sync['fps']:8.1f} fps   latency ms  mean {lat['mean']:.2f}  "
        f"p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
        f"({sync['frames']} frames)"
    )
    print(
        f"  async: {asynchronous['fps']:8.1f} fps   {asynchronous['num_requests']} requests "
        f"in flight ({asynchronous['frames']} frames)"
    )
    return 0


def synthetic_frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A textured BGR frame (noise on grey) with one bright blob, so boxes get computed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    frame = rng.integers(96, 160, size=(height, width, 3), dtype=np.uint8)
    frame[height // 3 : height // 3 + height // 8, width // 2 : width // 2 + width // 10] = 250
    return frame


def measure_sync(
    model: AnomalyModel, frame: np.ndarray, seconds: float, warmup: int = 3
) -> dict[str, Any]:
    """Frames one at a time through ``predict``: latency percentiles and frames per second."""
    import numpy as np

    for _ in range(warmup):
        model.predict(frame)
    latencies = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        model.predict(frame)
        latencies.append(time.perf_counter() - t0)
        if t0 + latencies[-1] - start >= seconds and len(latencies) >= 5:
            break
    total = time.perf_counter() - start
    ms = np.asarray(latencies) * 1e3
    return {
        "fps": round(len(latencies) / total, 2),
        "frames": len(latencies),
        "latency_ms": {
            "mean": round(float(ms.mean()), 3),
            "p50": round(float(np.percentile(ms, 50)), 3),
            "p90": round(float(np.percentile(ms, 90)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3),
            "max": round(float(ms.max()), 3),
        },
    }


def measure_async(
    model: AnomalyModel, frame: np.ndarray, seconds: float, warmup: int = 3
) -> dict[str, Any]:
    """Frames through ``submit``/``ready``: sustained frames per second."""
    for i in range(warmup):
        model.submit(frame, i)
    model.drain()
    done = 0
    frames = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or frames < 5:
        model.submit(frame, frames)
        frames += 1
        done += len(model.ready())
    done += len(model.drain())
    total = time.perf_counter() - start
    return {"fps": round(done / total, 2), "frames": done, "num_requests": model.num_requests}


def _frame_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT such as 1920x1080, got {text!r}"
        ) from None
    if not (0 < width <= 16384 and 0 < height <= 16384):
        raise argparse.ArgumentTypeError(f"frame size out of range: {text}")
    return width, height
