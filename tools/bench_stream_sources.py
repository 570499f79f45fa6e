"""`tools/bench_stream.py --sources 1,2,4,8`: N file cameras through one model at once.

For each N, N cameras read the same generated video (every frame is processed: files are not
live) through the one stream engine (:class:`anomaly_edge.stream.StreamRunner`, as `run` uses
it), one compiled model and one request pool.
The baseline is the model's own asynchronous throughput on a frame of the same video, measured
as `anomaly-edge benchmark` measures it (``measure_async``), before, between and after the
cases; each case is compared with the two measurements beside it.

Reported per case: aggregate fps, each camera's fps, the aggregate's share of the model's
asynchronous throughput, each camera's deviation from its fair share (aggregate / N), and the
resident memory after 1,000 frames of the first camera and at its end.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from bench_stream import _model  # the same model choice as the single-stream benchmark


def run(args) -> int:
    import psutil

    from anomaly_edge.cli.benchmark import measure_async
    from anomaly_edge.model import AnomalyModel
    from anomaly_edge.stream import Camera, StreamRunner

    counts = [int(n) for n in args.sources.split(",")]
    if not counts or min(counts) < 1:
        raise SystemExit("--sources: give camera counts such as 1,2,4,8")
    width, height = (int(v) for v in args.frame.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="bench_sources_") as temp:
        work = Path(temp)
        model_path, note = _model(args.model, work)
        video = work / f"input_{width}x{height}.avi"
        _make_video(video, args.frames_per_source, width, height)
        model = AnomalyModel(model_path, device=args.device, task="detection")
        capture = cv2.VideoCapture(str(video))
        ok, frame = capture.read()
        capture.release()
        assert ok, "cannot read the generated video"

        # The baseline is measured before the first case, between cases and after the last;
        # each case is compared with the mean of the two measurements beside it, so a change
        # of the machine's load between cases weighs on both sides alike.
        baselines = [measure_async(model, frame, args.seconds)["fps"]]
        cases = []
        for n in counts:
            rss: dict[str, int] = {}

            def sample(result, _rss=rss) -> None:
                if result.source == "cam1" and result.index + 1 in (1000, args.frames_per_source):
                    _rss[f"after_{result.index + 1}"] = round(
                        psutil.Process().memory_info().rss / 2**20
                    )

            runner = StreamRunner(
                model,
                [
                    Camera(f"cam{i + 1}", str(video), max_frames=args.frames_per_source)
                    for i in range(n)
                ],
                on_result=sample,
            )
            start = time.perf_counter()
            summary = runner.run()
            elapsed = time.perf_counter() - start
            total = summary.frames / elapsed
            per_source = [round(s.frames / s.seconds, 1) for s in summary.sources.values()]
            fair = total / n
            cases.append(
                {
                    "sources": n,
                    "frames_per_source": args.frames_per_source,
                    "fps_total": round(total, 1),
                    "fps_per_source": per_source,
                    "max_deviation_from_fair_share": round(
                        max(abs(f / fair - 1) for f in per_source), 3
                    ),
                    "rss_mb": rss,
                }
            )
            print(
                f"{n} source(s): {total:.1f} fps in total, per source {per_source}",
                file=sys.stderr,
                flush=True,
            )
            baselines.append(measure_async(model, frame, args.seconds)["fps"])

    model_async = sum(baselines) / len(baselines)
    for i, case in enumerate(cases):
        beside = (baselines[i] + baselines[i + 1]) / 2
        case["model_async_fps"] = round(beside, 1)
        case["share_of_model_async"] = round(case["fps_total"] / beside, 3)
    print(
        f"\nmodel asynchronous throughput: {model_async:.1f} fps (measured "
        f"{', '.join(f'{b:.1f}' for b in baselines)}); frame {width}x{height}; model: {note}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'sources':>8}{'fps total':>11}{'share':>8}{'max dev.':>10}  fps per source / RSS MB")
    for case in cases:
        print(
            f"{case['sources']:>8}{case['fps_total']:>11.1f}{case['share_of_model_async']:>8.2f}"
            f"{case['max_deviation_from_fair_share']:>10.2f}  {case['fps_per_source']} "
            f"{case['rss_mb']}"
        )
    print(
        json.dumps(
            {
                "benchmark": "stream_sources",
                "model_async_fps": round(model_async, 1),
                "frame": f"{width}x{height}",
                "model": note,
                "device": args.device,
                "load_average": round(os.getloadavg()[0], 1),
                "cases": cases,
            }
        )
    )
    return 0


def _make_video(path: Path, frames: int, width: int, height: int) -> None:
    """Textured grey frames, a bright defect now and then; MJPG, so decoding is cheap and
    every frame is a real decode."""
    rng = np.random.default_rng(0)
    base = np.clip(128 + rng.integers(-6, 7, (height, width, 1)), 0, 255).astype(np.uint8)
    base = np.repeat(base, 3, axis=2)
    variants = []
    for k in range(25):
        image = base.copy()
        if k % 5 == 0:
            cv2.circle(image, (40 + 20 * k, height // 2), max(8, height // 16), (255, 255, 255), -1)
        variants.append(image)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (width, height))
    for index in range(frames):
        writer.write(variants[index % len(variants)])
    writer.release()
