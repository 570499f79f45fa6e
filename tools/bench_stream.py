"""Benchmark `anomaly-edge run` against a plain synchronous loop on a generated 1280x720 video.

* anomaly_edge_run: the `run` command itself (in this process, so its memory can be sampled):
  detection task, annotated video written; resident memory after 1,000 and 5,000 frames.
* plain_loop: what one would write by hand: read a frame, OpenVINO Model API
  ``AnomalyDetection`` predict, draw the boxes, write the frame; one after the other.

Both read the same video, use the same IR and device, and write an annotated .mp4.
Usage (from a checkout)::

    python tools/bench_stream.py [--model model.xml] [--frames 5000] [--plain-frames 300]
    python tools/bench_stream.py --sources 1,2,4,8 [--model model.xml] [--frames-per-source 600]

Without --model, a synthetic IR (tests/ir_factory.py, 256x256 input, no training needed) is
built and the output says so; give a real PaDiM IR for representative inference costs.
The last stdout line is one JSON object (see ../shared/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 1280, 720


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="IR to use (default: build a synthetic one)")
    parser.add_argument("--device", default="CPU")
    parser.add_argument(
        "--frames",
        type=int,
        default=5000,
        help="frames for `anomaly-edge run` (memory is sampled at 1,000 and at the end)",
    )
    parser.add_argument(
        "--plain-frames",
        type=int,
        default=300,
        help="frames for the plain loop (it is slow; its rate is steady)",
    )
    parser.add_argument("--work", type=Path, help="folder for the video files (default: temp)")
    many = parser.add_argument_group("several cameras (tools/bench_stream_sources.py)")
    many.add_argument(
        "--sources",
        metavar="N,N,...",
        help="instead: N file cameras through one model, e.g. 1,2,4,8, against "
        "the model's asynchronous throughput",
    )
    many.add_argument("--frames-per-source", type=int, default=600, metavar="N")
    many.add_argument(
        "--frame",
        default="640x480",
        metavar="WxH",
        help="frame size of the --sources video (default 640x480)",
    )
    many.add_argument(
        "--seconds",
        type=float,
        default=8.0,
        help="--sources: seconds for each measurement of the model's own "
        "asynchronous throughput (default 8)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tools"))
    __import__("checkout").use_package()  # the built checkout, else the installed package
    if args.sources:
        from bench_stream_sources import run

        return run(args)

    with tempfile.TemporaryDirectory(prefix="bench_stream_") as temp:
        work = args.work or Path(temp)
        work.mkdir(parents=True, exist_ok=True)
        model_path, model_note = _model(args.model, work)
        video = work / "input_1280x720.mp4"
        start = time.perf_counter()
        _make_video(video, max(args.frames, args.plain_frames))
        print(
            f"generated {video.name} ({max(args.frames, args.plain_frames)} frames) in "
            f"{time.perf_counter() - start:.1f} s; model: {model_note}",
            file=sys.stderr,
        )

        # The plain loop runs in two halves, before and after `anomaly-edge run`, so that a
        # change in the machine's load during the benchmark weighs on both alike.
        plain_loop = PlainLoop(model_path, video, args.device)
        first = plain_loop.measure(work / "plain_1.mp4", args.plain_frames // 2)
        ours = _bench_run(model_path, video, work / "run.mp4", args.device, args.frames)
        second = plain_loop.measure(work / "plain_2.mp4", args.plain_frames - first["frames"])
        plain = {
            "frames": first["frames"] + second["frames"],
            "seconds": first["seconds"] + second["seconds"],
        }
        plain["fps"] = plain["frames"] / plain["seconds"]

    speedup = ours["fps"] / plain["fps"] if plain["fps"] else None
    print(f"\n{'pipeline':<24}{'frames':>8}{'fps':>10}")
    print(f"{'anomaly-edge run':<24}{ours['frames']:>8}{ours['fps']:>10.1f}")
    print(f"{'plain loop (Model API)':<24}{plain['frames']:>8}{plain['fps']:>10.1f}")
    print(
        f"speedup: {speedup:.2f}x   RSS after 1000 frames: {ours['rss_1000']} MB, "
        f"after {ours['frames']}: {ours['rss_end']} MB   model: {model_note}"
    )
    result = {
        "benchmark": "stream",
        "frame": f"{WIDTH}x{HEIGHT}",
        "fps": {"anomaly_edge_run": round(ours["fps"], 1), "plain_loop": round(plain["fps"], 1)},
        "speedup": {"plain_loop": round(speedup, 2) if speedup else None},
        "rss_mb": {"after_1000": ours["rss_1000"], f"after_{ours['frames']}": ours["rss_end"]},
        "model": model_note,
        "device": args.device,
    }
    print(json.dumps(result))
    return 0


def _model(given: Path | None, work: Path) -> tuple[Path, str]:
    if given is not None:
        if not given.is_file():
            raise SystemExit(f"--model {given}: no such file")
        return given, str(given)
    from tests.ir_factory import build_synthetic_ir

    path = build_synthetic_ir(
        work / "synthetic" / "model.xml", input_size=(256, 256), task="detection"
    )
    return path, "synthetic IR (tests/ir_factory.py, 256x256), not a trained PaDiM"


def _make_video(path: Path, frames: int) -> None:
    """Textured grey frames with a bright 'defect' passing through now and then."""
    rng = np.random.default_rng(0)
    base = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    noise = rng.integers(-6, 7, (HEIGHT, WIDTH, 1), dtype=np.int16)
    base = np.clip(base + noise, 0, 255).astype(np.uint8)
    variants = []
    for k in range(50):  # a few distinct frames, cycled: generation stays quick
        frame = base.copy()
        if k % 5 == 0:
            cv2.circle(frame, (100 + 20 * k, 200 + 5 * k), 40, (255, 255, 255), -1)
        variants.append(frame)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (WIDTH, HEIGHT))
    for index in range(frames):
        writer.write(variants[index % len(variants)])
    writer.release()


def _rss_mb() -> int:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20)


def _bench_run(model: Path, video: Path, out: Path, device: str, frames: int) -> dict:
    from anomaly_edge.cli.main import build_parser
    from anomaly_edge.cli.run import execute

    args = build_parser().parse_args(
        [
            "run",
            "--model",
            str(model),
            "--source",
            str(video),
            "--device",
            device,
            "--task",
            "detection",
            "--output",
            str(out),
            "--max-frames",
            str(frames),
            "--quiet",
        ]
    )
    samples: dict[int, int] = {}

    def sample(result) -> None:
        done = result.index + 1
        if done in (1000, frames):
            samples[done] = _rss_mb()

    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # its summary is not our last line
        code = execute(args, on_result=sample)
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"anomaly-edge run failed with exit code {code}")
    # Wall time of the whole command: model compilation, decoding, writing, closing.
    return {
        "frames": frames,
        "fps": frames / elapsed,
        "rss_1000": samples.get(1000),
        "rss_end": samples.get(frames),
    }


class PlainLoop:
    """Read, Model API ``AnomalyDetection`` predict, draw, write: one frame after the other."""

    def __init__(self, model: Path, video: Path, device: str) -> None:
        from model_api.models import AnomalyDetection

        self.wrapper = AnomalyDetection.create_model(
            str(model), device=device, configuration={"task": "detection"}
        )
        self.video = video

    def measure(self, out: Path, frames: int) -> dict:
        from anomaly_edge.prediction import Box, Prediction, Task
        from anomaly_edge.visualize import draw_prediction

        start = time.perf_counter()
        capture = cv2.VideoCapture(str(self.video))
        writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (WIDTH, HEIGHT))
        done = 0
        while done < frames:
            ok, frame = capture.read()
            if not ok:
                break
            result = self.wrapper(frame)
            score = float(result.pred_score)
            boxes = [
                Box(int(x1), int(y1), int(x2), int(y2), score, score, 0)
                for x1, y1, x2, y2 in result.pred_boxes
            ]
            prediction = Prediction(
                score, result.pred_label == "Anomaly", score, Task.DETECTION, boxes=boxes
            )
            writer.write(draw_prediction(frame, prediction))
            done += 1
        writer.release()
        capture.release()
        return {"frames": done, "seconds": time.perf_counter() - start}


if __name__ == "__main__":
    sys.exit(main())
