"""Exit the interpreter again and again with frames in flight; count the aborts.

An exit with frames in flight used to abort now and then ("terminate called without an active
exception", rc 134): an OpenVINO thread took the GIL while the interpreter was shutting down.
Each run here is a fresh Python process that loads the model, puts frames in flight in one of
several ways (the scenarios below) and exits without cleaning up. A run fails when it does not
exit with status 0, prints a traceback or "terminate", or (stream scenarios) leaves an output
file incomplete. Busy loops load every core meanwhile, as on a shared edge box.

Usage (from a checkout)::

    nice -n 10 python tools/stress_exit.py --runs 1000 [--load 2] [--scenarios a,b]

``--python-path`` runs another checkout's package (e.g. the code before a fix) against the same
scenarios. The last stdout line is one JSON object (see ../shared/BENCHMARKS.md):
``{"benchmark": "exit_stress", "runs": N, "aborts": 0, "failures": 0, ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_PRELUDE = """
import sys, threading, time
from pathlib import Path
import numpy as np
from anomaly_edge import AnomalyModel
model_path, video, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
model = AnomalyModel(model_path, "CPU", cache_dir=None)
frame = np.full((480, 640, 3), 128, np.uint8)
"""

# name -> (what it does, script run after the prelude)
SCENARIOS: dict[str, tuple[str, str]] = {
    "submit_unread": (
        "README loop, then num_requests frames submitted and never read",
        """
for i in range(20):
    model.submit(frame, i)
    model.ready()
model.predict(frame)
for i in range(model.num_requests):
    model.submit(frame, i)
""",
    ),
    "submit_no_ready": (
        "frames submitted, ready() never called",
        """
for i in range(2 * model.num_requests + 1):
    model.submit(frame, i)
""",
    ),
    "predict_iter_left": (
        "predict_iter() generator left half-way",
        """
results = model.predict_iter(frame for _ in range(100))
next(results)
next(results)
""",
    ),
    "stream_left": (
        "stream iterator left after 5 frames, never closed (video + JSONL)",
        """
from anomaly_edge.stream import EventsSink, StreamRunner, VideoSink
runner = StreamRunner(model, video, sinks=[VideoSink(out / "a.mp4"),
                                           EventsSink(out / "e.jsonl", all_frames=True)])
results = iter(runner)
for _ in range(5):
    next(results)
""",
    ),
    "stream_sys_exit": (
        "sys.exit() from a stream callback",
        """
from anomaly_edge.stream import EventsSink, StreamRunner, VideoSink
runner = StreamRunner(model, video, sinks=[VideoSink(out / "a.mp4"),
                                           EventsSink(out / "e.jsonl", all_frames=True)])
def on_result(result):
    if result.index == 5:
        sys.exit(0)
runner.run(on_result)
""",
    ),
    "stream_daemon_consumer": (
        "stream consumed by a daemon thread when main exits",
        """
from anomaly_edge.stream import EventsSink, StreamRunner, VideoSink
runner = StreamRunner(model, video, sinks=[VideoSink(out / "a.mp4"),
                                           EventsSink(out / "e.jsonl", all_frames=True)])
threading.Thread(target=runner.run, daemon=True).start()
while runner.stats.frames < 5:
    time.sleep(0.01)
""",
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs",
        type=int,
        default=60,
        help="exits in all (shared out round-robin over the scenarios)",
    )
    parser.add_argument("--load", type=int, default=2, help="busy-loop processes meanwhile")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--python-path",
        type=Path,
        default=None,
        help="folder holding the anomaly_edge package to test (default: the "
        "checkout's python/ when its extension is built, else the installed one)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per run")
    parser.add_argument(
        "--jobs", type=int, default=1, help="exits running at once (they add to the load)"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names or args.runs < 1 or args.load < 0 or args.jobs < 1:
        parser.error(f"bad --scenarios/--runs/--load/--jobs (unknown: {unknown})")
    if args.python_path is None:
        sys.path.insert(0, str(REPO / "tools"))
        args.python_path = __import__("checkout").package_path()
    sys.path[:0] = [str(REPO), str(args.python_path)]

    from tests.ir_factory import build_synthetic_ir
    from tests.stream_media import make_video

    env = dict(os.environ, PYTHONPATH=str(args.python_path))
    tally = {n: {"runs": 0, "aborts": 0, "failures": 0, "seconds": 0.0} for n in names}
    first_failure: str | None = None
    with tempfile.TemporaryDirectory(prefix="stress_exit_") as temp:
        work = Path(temp)
        model = build_synthetic_ir(work / "ir" / "model.xml")
        video = make_video(work / "input.avi", 150, defects=range(10, 150, 7), size=(320, 240))
        started = time.perf_counter()

        def one(run: int) -> tuple[int, str, float, str, str]:
            name = names[run % len(names)]
            out = work / f"out_{run}"
            out.mkdir()
            t0 = time.perf_counter()
            verdict, detail = _one_exit(name, model, video, out, env, args.timeout)
            shutil.rmtree(out, ignore_errors=True)
            return run, name, time.perf_counter() - t0, verdict, detail

        interrupted = False  # Ctrl-C: report the exits done so far
        with _busy_loops(args.load), ThreadPoolExecutor(args.jobs) as pool:
            try:
                for run, name, seconds, verdict, detail in pool.map(one, range(args.runs)):
                    entry = tally[name]
                    entry["runs"] += 1
                    entry["seconds"] += seconds
                    if verdict != "ok":
                        entry["aborts" if verdict == "abort" else "failures"] += 1
                        first_failure = first_failure or f"{name}: {detail}"
                        print(f"run {run} ({name}): {verdict}: {detail}", file=sys.stderr)
                    if (run + 1) % 50 == 0:
                        print(
                            f"{run + 1}/{args.runs} exits, "
                            f"{sum(t['aborts'] for t in tally.values())} aborts",
                            file=sys.stderr,
                        )
            except KeyboardInterrupt:
                interrupted = True
                pool.shutdown(wait=True, cancel_futures=True)
        total_s = time.perf_counter() - started

    print(f"{'scenario':<24} {'runs':>5} {'aborts':>6} {'failures':>8} {'s/run':>6}  what")
    for name in names:
        t = tally[name]
        mean = t["seconds"] / t["runs"] if t["runs"] else 0.0
        print(
            f"{name:<24} {t['runs']:>5} {t['aborts']:>6} {t['failures']:>8} {mean:>6.2f}  "
            f"{SCENARIOS[name][0]}"
        )
    summary = {
        "benchmark": "exit_stress",
        "runs": sum(t["runs"] for t in tally.values()),
        "aborts": sum(t["aborts"] for t in tally.values()),
        "failures": sum(t["failures"] for t in tally.values()),
        "load_processes": args.load,
        "jobs": args.jobs,
        "cpus": os.cpu_count(),
        "seconds": round(total_s, 1),
        "python_path": str(args.python_path),
        "scenarios": [
            {
                "name": n,
                "runs": tally[n]["runs"],
                "aborts": tally[n]["aborts"],
                "failures": tally[n]["failures"],
            }
            for n in names
        ],
        "first_failure": first_failure,
        "interrupted": interrupted,
    }
    print(json.dumps(summary))
    return 0 if summary["aborts"] == 0 and summary["failures"] == 0 else 1


def _one_exit(
    name: str, model: Path, video: Path, out: Path, env: dict[str, str], timeout: float
) -> tuple[str, str]:
    """("ok" | "abort" | "failure", detail) of one process exiting with frames in flight."""
    script = _PRELUDE + SCENARIOS[name][1]
    try:
        result = subprocess.run(
            [sys.executable, "-c", script, str(model), str(video), str(out)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=out,
        )
    except subprocess.TimeoutExpired:
        return "failure", f"hung for more than {timeout:.0f} s"
    tail = result.stderr.strip()[-400:]
    if result.returncode in (134, -6) or "terminate called" in result.stderr:
        return "abort", f"rc {result.returncode}: {tail}"
    if result.returncode != 0 or "Traceback" in result.stderr:
        return "failure", f"rc {result.returncode}: {tail}"
    if name.startswith("stream"):
        problem = _incomplete_outputs(out)
        if problem:
            return "failure", problem
    return "ok", ""


def _incomplete_outputs(out: Path) -> str | None:
    """Why the stream's outputs are not complete files (None when they are)."""
    import cv2

    events = out / "e.jsonl"
    if not events.is_file():
        return "no events file"
    text = events.read_text()
    if text and not text.endswith("\n"):
        return "events file ends in a partial line"
    try:
        lines = [json.loads(line) for line in text.splitlines()]
    except ValueError:
        return "events file holds a broken line"
    video = out / "a.mp4"
    if not video.is_file():
        return "no video (its writer was never closed)"
    capture = cv2.VideoCapture(str(video))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    if frames < len(lines):
        return f"video holds {frames} frames for {len(lines)} events"
    return None


@contextlib.contextmanager
def _busy_loops(count: int) -> Iterator[None]:
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


if __name__ == "__main__":
    sys.exit(main())
