"""Benchmark the C++ post-processor against OpenVINO Model API and a plain NumPy + OpenCV pipeline.

    python tools/bench_postprocess.py            # all 24 cases (about a minute)
    python tools/bench_postprocess.py --quick    # fewer rounds, for a smoke test

Three methods on the same 256x256 raw anomaly maps (smooth blobs, fixed seed, about 1, 10 and
100 components) and the same thresholds, for frames 640x480 .. 3840x2160:

* anomaly_edge: ``anomaly_edge.postprocess`` (score, label, boxes; + mask for segmentation),
  with the fastest instruction set this CPU supports; anomaly_edge_baseline is the same call
  on the portable x86-64 baseline kernels (``speedup.isa`` = baseline / fastest);
* model_api: ``model_api.models.AnomalyDetection.postprocess`` on a model built from a tiny IR
  (its detection boxes come from contours of the frame-resolution mask; its segmentation
  returns the mask and no boxes);
* numpy_opencv: resize the map to the frame, threshold, ``connectedComponentsWithStats``,
  per-component maximum.

Before timing, each case checks that ours and the NumPy + OpenCV pipeline agree (same number of
components, box corners within one model pixel's footprint in the frame, masks equal except
where the upsampled value ties the threshold) and records Model API's box count beside ours.
Methods are timed in alternating bursts (five calls of each per round) so that load on a
shared machine hits all three alike; the figures are medians in microseconds. OpenCV runs
single-threaded unless --opencv-threads says otherwise (ours is single-threaded too).

A second table ("isa_cases" in the JSON) times ours alone with every instruction set the CPU
supports (baseline, avx2, avx512) on 1920x1080 and 3840x2160 frames, for the segmentation mask
and for the mask plus heatmap, and checks that all of them give bit-identical outputs.

The last stdout line is one JSON object (see ../shared/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
__import__("checkout").use_package()  # the built checkout, else the installed package

from anomaly_edge import _post  # noqa: E402
from anomaly_edge.metadata import ModelMetadata  # noqa: E402
from anomaly_edge.postprocess import PostprocessParams, postprocess  # noqa: E402

FRAMES = [(480, 640), (720, 1280), (1080, 1920), (2160, 3840)]  # (height, width)
COMPONENTS = [1, 10, 100]
TASKS = ["detection", "segmentation"]
MAP_SIZE = (256, 256)
THRESHOLD = 0.5  # raw units, image and pixel alike
SCALE = 2.0  # image_max - image_min = pixel_max - pixel_min (Model API has one scale for both)


# ---- inputs ----------------------------------------------------------------------------------


def blob_map(components: int, seed: int = 0) -> np.ndarray:
    """A smooth map with `components` well-separated Gaussian blobs peaking above THRESHOLD.

    Blobs sit on a jittered grid, far enough apart that no two merge at the threshold, so the
    number of components is the same at model and at frame resolution.
    """
    rng = np.random.default_rng(seed)
    h, w = MAP_SIZE
    cells = int(np.ceil(np.sqrt(components)))
    cell = h / cells
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = rng.uniform(0.0, 0.2, MAP_SIZE).astype(np.float32)  # background noise, below threshold
    out = cv2.GaussianBlur(out, (0, 0), 2.0)
    chosen = rng.choice(cells * cells, size=components, replace=False)
    for index in chosen:
        cy = (index // cells + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
        cx = (index % cells + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
        sigma = rng.uniform(0.12, 0.2) * cell
        peak = rng.uniform(0.8, 1.0)
        bump = peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        out = np.maximum(out, bump)
    return out.astype(np.float32)


def model_api_model(task: str, workdir: Path):
    """Model API's AnomalyDetection wrapper over a tiny IR carrying our metadata."""
    import openvino as ov
    import openvino.opset13 as ops
    from model_api.models import AnomalyDetection

    h, w = MAP_SIZE
    image = ops.parameter([1, 3, h, w], ov.Type.f32, name="image")
    anomaly_map = ops.reduce_mean(image, np.array([1], dtype=np.int64), keep_dims=True)
    anomaly_map.output(0).get_tensor().set_names({"anomaly_map"})
    model = ov.Model([anomaly_map], [image], "bench_postprocess")
    ModelMetadata(
        model="bench", backbone="none", input_size=MAP_SIZE, mean=(0, 0, 0), std=(1, 1, 1),
        image_threshold=THRESHOLD, pixel_threshold=THRESHOLD, image_min=0.0, image_max=SCALE,
        pixel_min=0.0, pixel_max=SCALE, task=task,
    ).write_to(model)  # fmt: skip
    path = workdir / f"{task}.xml"
    ov.save_model(model, str(path), compress_to_fp16=False)
    wrapper = AnomalyDetection.create_model(str(path), configuration={"task": task}, preload=False)
    assert wrapper.params.normalization_scale == SCALE and wrapper.params.task == task
    return wrapper


# ---- the three methods -----------------------------------------------------------------------

PARAMS = PostprocessParams(THRESHOLD, THRESHOLD, SCALE, SCALE, min_area=1)


def ours(anomaly_map: np.ndarray, frame: tuple[int, int], task: str, heatmap: bool = False):
    return postprocess(anomaly_map, frame, PARAMS, task, heatmap=heatmap)


def ours_with_isa(
    isa: str | None,
    anomaly_map: np.ndarray,
    frame: tuple[int, int],
    task: str,
    heatmap: bool = False,
):
    """``ours`` on the kernels of one instruction set (None: the default, the fastest)."""
    _post.set_isa(isa)
    return ours(anomaly_map, frame, task, heatmap)


def numpy_opencv(anomaly_map: np.ndarray, frame: tuple[int, int], task: str) -> dict:
    """What one would write without anomaly-edge: upsample, threshold, label, per-region max."""
    raw_score = float(anomaly_map.max())
    score = float(np.clip((raw_score - THRESHOLD) / SCALE + 0.5, 0, 1))
    up = cv2.resize(anomaly_map, (frame[1], frame[0]), interpolation=cv2.INTER_LINEAR)
    binary = (up >= np.float32(THRESHOLD)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    boxes = []
    for label in range(1, count):
        x, y, bw, bh, _area = stats[label]
        region = up[y : y + bh, x : x + bw][labels[y : y + bh, x : x + bw] == label]
        box_score = float(np.clip((region.max() - THRESHOLD) / SCALE + 0.5, 0, 1))
        boxes.append((int(x), int(y), int(x + bw), int(y + bh), box_score))
    boxes.sort(key=lambda b: -b[4])
    result = {"score": score, "label": raw_score >= THRESHOLD, "boxes": boxes}
    if task == "segmentation":
        result["mask"] = binary * np.uint8(255)
    return result


def model_api_call(wrapper) -> Callable:
    output_name = next(iter(wrapper.outputs))

    def call(anomaly_map: np.ndarray, frame: tuple[int, int], task: str):
        outputs = {output_name: anomaly_map[None, None]}
        return wrapper.postprocess(outputs, {"original_shape": (frame[0], frame[1], 3)})

    return call


# ---- agreement -------------------------------------------------------------------------------


def outputs_match(anomaly_map: np.ndarray, frame: tuple[int, int], task: str) -> tuple[bool, str]:
    """Ours vs NumPy + OpenCV: same components, corners within a model pixel, masks up to ties."""
    got = ours(anomaly_map, frame, task)
    want = numpy_opencv(anomaly_map, frame, task)
    if len(got.boxes) != len(want["boxes"]):
        return False, f"{len(got.boxes)} components vs {len(want['boxes'])}"
    tolerance_x = -(-frame[1] // MAP_SIZE[1])  # one model pixel's footprint in the frame
    tolerance_y = -(-frame[0] // MAP_SIZE[0])
    remaining = list(want["boxes"])
    for box in got.boxes:
        match = next((b for b in remaining
                      if abs(b[0] - box.x1) <= tolerance_x and abs(b[2] - box.x2) <= tolerance_x
                      and abs(b[1] - box.y1) <= tolerance_y and abs(b[3] - box.y2) <= tolerance_y),
                     None)  # fmt: skip
        if match is None:
            return False, f"no counterpart for box {box}"
        remaining.remove(match)
    if abs(got.score - want["score"]) > 1e-6 or got.label != want["label"]:
        return False, "image score or label differ"
    if task == "segmentation":
        up = cv2.resize(anomaly_map, (frame[1], frame[0]), interpolation=cv2.INTER_LINEAR)
        tie = np.abs(up - np.float32(THRESHOLD)) <= 4e-6 * max(1.0, float(np.abs(up).max()))
        differ = (got.mask != want["mask"]) & ~tie
        if differ.any():
            return False, f"masks differ at {int(differ.sum())} pixels away from ties"
    return True, ""


# ---- timing ----------------------------------------------------------------------------------


def time_round_robin(
    methods: dict[str, Callable[[], object]],
    seconds: float,
    min_rounds: int,
    max_rounds: int,
    burst: int = 5,
) -> dict[str, float]:
    """Median microseconds per method.

    Each round calls every method `burst` times in a row: the methods share the machine's
    noise (rounds alternate), and each still runs as it would in a loop over frames (its
    freed buffers get reused; switching methods on every call would charge each one the
    page faults of re-mapping memory another method just released). The order rotates from
    round to round, so that no method always follows the one that churns the most memory.
    """
    for call in methods.values():  # warm-up (allocations, lazy imports, OpenCV threads)
        call()
    samples: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - start < seconds):
        first = rounds % len(names)
        for name in names[first:] + names[:first]:
            call = methods[name]
            for _ in range(burst):
                t0 = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: statistics.median(values) * 1e6 for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke test)")
    parser.add_argument(
        "--seconds", type=float, default=1.5, help="time budget per case (default 1.5)"
    )
    parser.add_argument(
        "--opencv-threads",
        type=int,
        default=1,
        help="cv2.setNumThreads for the baselines (default 1: our code is "
        "single-threaded, and a busy machine makes OpenCV's thread pool "
        "erratic; 0 = OpenCV's default)",
    )
    args = parser.parse_args(argv)
    if args.opencv_threads > 0:
        cv2.setNumThreads(args.opencv_threads)
    seconds, min_rounds = (0.2, 1) if args.quick else (args.seconds, 4)

    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        wrappers = {task: model_api_call(model_api_model(task, Path(tmp))) for task in TASKS}
        maps = {n: blob_map(n, seed=n) for n in COMPONENTS}
        print(
            f"instruction sets: {', '.join(_post.supported_isas())}; ours uses {_post.active_isa()}"
        )
        header = (
            f"{'task':<13}{'frame':>10}{'comp':>6}{'ours us':>10}{'model_api':>11}"
            f"{'np+cv2':>10}{'x mapi':>8}{'x np':>7}{'x isa':>7}  boxes ours/mapi  match"
        )
        print(header)
        print("-" * len(header))
        for task in TASKS:
            for frame in FRAMES:
                for n in COMPONENTS:
                    anomaly_map = maps[n]
                    match, why = outputs_match(anomaly_map, frame, task)
                    mapi = wrappers[task]
                    mapi_result = mapi(anomaly_map, frame, task)
                    mapi_boxes = (
                        None if mapi_result.pred_boxes is None else len(mapi_result.pred_boxes)
                    )
                    our_boxes = len(ours(anomaly_map, frame, task).boxes)
                    us = time_round_robin(
                        {
                            "anomaly_edge": lambda m=anomaly_map, f=frame, t=task:
                                ours_with_isa(None, m, f, t),
                            "anomaly_edge_baseline": lambda m=anomaly_map, f=frame, t=task:
                                ours_with_isa("baseline", m, f, t),
                            "model_api": lambda m=anomaly_map, f=frame, t=task, c=mapi: c(m, f, t),
                            "numpy_opencv": lambda m=anomaly_map, f=frame, t=task:
                                numpy_opencv(m, f, t),
                        },
                        seconds, min_rounds, max_rounds=200,
                    )  # fmt: skip
                    _post.set_isa(None)
                    speedup = {k: us[k] / us["anomaly_edge"] for k in ("model_api", "numpy_opencv")}
                    speedup["isa"] = us["anomaly_edge_baseline"] / us["anomaly_edge"]
                    frame_text = f"{frame[1]}x{frame[0]}"
                    print(
                        f"{task:<13}{frame_text:>10}{n:>6}{us['anomaly_edge']:>10.1f}"
                        f"{us['model_api']:>11.1f}{us['numpy_opencv']:>10.1f}"
                        f"{speedup['model_api']:>8.1f}{speedup['numpy_opencv']:>7.1f}"
                        f"{speedup['isa']:>7.2f}"
                        f"  {our_boxes:>5}/{mapi_boxes!s:<5}       {match} {why}",
                        flush=True,
                    )
                    cases.append(
                        {
                            "task": task,
                            "frame": frame_text,
                            "map": f"{MAP_SIZE[1]}x{MAP_SIZE[0]}",
                            "components": n,
                            "us": {k: round(v, 1) for k, v in us.items()},
                            "speedup": {k: round(v, 2) for k, v in speedup.items()},
                            "outputs_match": match,
                            "our_boxes": our_boxes,
                            "model_api_boxes": mapi_boxes,
                        }
                    )
        isa_cases = bench_isas(maps[10], seconds, min_rounds)
    print(
        json.dumps(
            {
                "benchmark": "postprocess",
                "opencv_threads": cv2.getNumThreads(),
                "cases": cases,
                "isa": _post.active_isa(),
                "supported_isas": _post.supported_isas(),
                "isa_cases": isa_cases,
            }
        )
    )
    return 0


ISA_FRAMES = [(1080, 1920), (2160, 3840)]
ISA_OUTPUTS = {"mask": False, "mask+heatmap": True}  # segmentation, without / with heatmap


def bench_isas(anomaly_map: np.ndarray, seconds: float, min_rounds: int) -> list[dict]:
    """Ours with each supported instruction set; outputs must be identical across them."""
    isas = _post.supported_isas()
    print()
    print(f"{'output':<14}{'frame':>10}" + "".join(f"{isa + ' us':>14}" for isa in isas)
          + "".join(f"{'x ' + isa:>10}" for isa in isas[1:]) + "  identical")  # fmt: skip
    rows = []
    for output, heatmap in ISA_OUTPUTS.items():
        for frame in ISA_FRAMES:
            results = [ours_with_isa(isa, anomaly_map, frame, "segmentation", heatmap)
                       for isa in isas]  # fmt: skip
            identical = all(
                r.boxes == results[0].boxes and r.score == results[0].score
                and np.array_equal(r.mask, results[0].mask)
                and (not heatmap or np.array_equal(r.heatmap, results[0].heatmap))
                for r in results[1:]
            )  # fmt: skip
            us = time_round_robin(
                {isa: lambda i=isa, f=frame, h=heatmap:
                    ours_with_isa(i, anomaly_map, f, "segmentation", h) for isa in isas},
                seconds, min_rounds, max_rounds=200,
            )  # fmt: skip
            _post.set_isa(None)
            speedup = {isa: us["baseline"] / us[isa] for isa in isas[1:]}
            frame_text = f"{frame[1]}x{frame[0]}"
            print(f"{output:<14}{frame_text:>10}" + "".join(f"{us[i]:>14.1f}" for i in isas)
                  + "".join(f"{speedup[i]:>10.2f}" for i in isas[1:])
                  + f"  {identical}", flush=True)  # fmt: skip
            rows.append(
                {
                    "output": output,
                    "frame": frame_text,
                    "map": f"{MAP_SIZE[1]}x{MAP_SIZE[0]}",
                    "components": 10,
                    "us": {k: round(v, 1) for k, v in us.items()},
                    "speedup": {k: round(v, 2) for k, v in speedup.items()},
                    "outputs_identical": identical,
                }
            )
    return rows


if __name__ == "__main__":
    sys.exit(main())
