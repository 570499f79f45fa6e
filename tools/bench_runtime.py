"""Runtime benchmark: anomaly-edge vs OpenVINO Model API on the same IR and frames.

For each frame size (default 640x480, 1920x1080 and 512x512), task detection, CPU:

* ``anomaly_edge_sync``:  ``AnomalyModel.predict`` one frame at a time;
* ``anomaly_edge_async``: ``AnomalyModel.submit`` / ``ready`` (results in order);
* ``model_api_sync``:     ``model_api.models.AnomalyDetection`` called on each frame;
* ``model_api_async``:    Model API's ``AsyncPipeline`` (submit_data / get_result in order).

A PatchCore case gives its frame time beside PaDiM's on the same 640x480 frames
(``--patchcore PATH``, or by default a small one trained here with the train API).

A tiled case follows (``--tiled-frame``, default 2448x2048, a 5 MP camera): a PaDiM whose
tiles the ``auto`` rule lays over that frame (one batch per frame, maps stitched in C++)
against the single 256x256 view on the same frames, sync and async (Model API cannot run a
batch of tiles, so the tiled case compares with our single view only).

A last case measures the one core against OpenVINO alone (``--benchmark-app``, on by
default; ``--benchmark-app only`` runs just it): ``AnomalyModel.submit``/``ready`` on frames
of the network's size against OpenVINO's ``benchmark_app`` program on the same IR (THROUGHPUT
hint, its optimal number of requests, random inputs, no pre- or post-processing) and against
a plain async queue run the same way in this process. ``--interleaved-rounds`` rounds (5),
the order reversed every other round; the figure is the median of the per-round ratios, and
every round is in the JSON. It also reports the CPU time per frame on the calling thread
(the host work that, on a small CPU, comes out of inference).

Everything else is frame in, result with boxes out. Methods run in alternating rounds and the best
round counts, so a noisy neighbour on this shared machine hurts all of them alike. The model
is ``--model`` or, by default, a PaDiM (efficientnet_lite0, 256x256) fitted here on
mpdd/metal_plate and exported at ``--precision`` (FP16 by default; the output says which). The
last stdout line is one JSON object (../shared/BENCHMARKS.md).

    python tools/bench_runtime.py [--model model.xml | --precision INT8] [--seconds 2] [--rounds 2]
                                  [--tiled-frame 2448x2048 | --tiled-frame off]
                                  [--benchmark-app on | off | only]
                                  [--interleaved-rounds 5] [--no-benchmark-app-binary]
                                  [--patchcore train | PATH | off]
                                  [--cases frames,benchmark_app,patchcore,tiled,steps]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
__import__("checkout").use_package()  # the built checkout, else the installed package
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "mpdd" / "metal_plate"
FRAMES = ((640, 480), (1920, 1080), (512, 512))
TILED_FIT_FRAMES = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="IR to benchmark (default: fit a PaDiM)")
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="MVTec-layout category to fit the default PaDiM on",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="per method and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="CPU")
    parser.add_argument(
        "--precision",
        choices=("FP32", "FP16", "INT8"),
        default="FP16",
        help="precision of the default PaDiM's IR (INT8: NNCF on its training images)",
    )
    parser.add_argument(
        "--tiled-frame",
        default="2448x2048",
        help="WIDTHxHEIGHT of the tiled case's frames, or 'off' (default 2448x2048)",
    )
    parser.add_argument(
        "--benchmark-app",
        choices=("on", "off", "only"),
        default="on",
        help="the core's async path against benchmark_app and a plain OpenVINO queue "
        "(only: nothing else)",
    )
    parser.add_argument(
        "--patchcore",
        default="train",
        help="PatchCore IR for the frame-time case beside PaDiM; 'train' (default) fits a "
        "small one here (random backbone weights: speed does not depend on them), 'off' skips",
    )
    parser.add_argument(
        "--interleaved-rounds",
        type=int,
        default=5,
        help="rounds of the benchmark_app case (ours and the baselines, alternating order)",
    )
    parser.add_argument(
        "--cases",
        default="frames,benchmark_app,patchcore,tiled",
        help="comma-separated cases to run (default all; the options above can drop some; "
        "'steps' (never by default) times each host step of the async path)",
    )
    parser.add_argument(
        "--no-benchmark-app-binary",
        dest="benchmark_app_binary",
        action="store_false",
        help="compare with the in-process queue only, not the benchmark_app program",
    )
    args = parser.parse_args()

    if args.model is not None:
        xml, source = args.model, f"given: {args.model}"
    else:
        xml, source = build_padim(
            args.data, Path(tempfile.mkdtemp(prefix="bench_runtime_")), args.precision
        )
    print(f"model: {source}; code: {commit()}", flush=True)
    wanted = set(args.cases.split(","))
    if args.benchmark_app == "only":
        wanted = {"benchmark_app"}
    elif args.benchmark_app == "off":
        wanted.discard("benchmark_app")
    if args.patchcore == "off":
        wanted.discard("patchcore")
    if args.tiled_frame == "off":
        wanted.discard("tiled")
    cases = [bench_case(xml, size, args) for size in FRAMES] if "frames" in wanted else []
    if "benchmark_app" in wanted:
        cases.append(bench_vs_benchmark_app(xml, args))
    if "patchcore" in wanted:
        if args.patchcore == "train":
            patchcore_xml = build_patchcore(
                args.data, Path(tempfile.mkdtemp(prefix="bench_runtime_patchcore_"))
            )
        else:
            patchcore_xml = Path(args.patchcore)
        cases.append(bench_models_case(xml, patchcore_xml, args))
    if "steps" in wanted:
        cases.append(bench_steps(xml, args))
    if "tiled" in wanted:
        width, height = (int(v) for v in args.tiled_frame.lower().split("x"))
        tiled_xml, tiled_source = build_padim(
            args.data,
            Path(tempfile.mkdtemp(prefix="bench_runtime_tiled_")),
            "FP16",
            native=(height, width),
        )
        print(f"tiled model: {tiled_source}", flush=True)
        cases.append(bench_tiled_case(xml, tiled_xml, (width, height), args))
    print(
        json.dumps(
            {"benchmark": "runtime", "commit": commit(), "model_source": source, "cases": cases}
        )
    )


def commit() -> str | None:
    """The checkout's commit (with ``+changes`` when the tree differs from it), so every
    figure names the code that produced it; None outside a git checkout."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


def build_padim(
    data: Path, out: Path, precision: str = "FP16", native: tuple[int, int] | None = None
) -> tuple[Path, str]:
    """Fit PaDiM (efficientnet_lite0, 256x256) on ``data``/train/good and export it.

    With ``native`` (height, width), the model is tiled as ``train(tile="auto")`` would tile
    frames of that size (its training images are resized to the layout's frame size)."""
    os.environ.setdefault("CI", "true")  # no OpenVINO telemetry attempts while exporting
    import torch

    from anomaly_edge.metadata import ModelMetadata
    from anomaly_edge.train import data as datasets
    from anomaly_edge.train.backbones import build_backbone
    from anomaly_edge.train.export import export_ir
    from anomaly_edge.train.padim import Padim
    from anomaly_edge.train.tiling import (
        TileFrames,
        TilePositionPadim,
        choose_layout,
        frame_batches,
        predict_tiled,
        resolve_tile_gaussians,
    )

    if not (data / "train" / "good").is_dir():
        sys.exit(f"no dataset at {data}; pass --model or --data")
    started = time.perf_counter()
    category = datasets.scan_category(data)
    backbone = build_backbone("efficientnet_lite0", pretrained=True)
    model = Padim(backbone, (256, 256))
    layout = choose_layout("auto", (256, 256), native) if native else None
    gaussians = None
    if layout is None:
        train = datasets.ImageDataset(category.train, 256, backbone.mean, backbone.std)
        model.fit(datasets.iter_batches(train, batch_size=8))
        test = datasets.ImageDataset(category.test, 256, backbone.mean, backbone.std)
        with torch.no_grad():
            scores = [float(model(test[i]["image"][None]).max()) for i in range(len(test))]
    else:
        # Speed does not depend on how well the Gaussians are fitted: a few frames do (each
        # is ~30 tiles), and keep the build short on a shared machine.
        gaussians = resolve_tile_gaussians("auto", len(category.train), model.n_channels)
        if gaussians == "position":  # as train() would choose for this many images
            model = TilePositionPadim(model, layout.count)
        train_samples = category.train[:: max(1, len(category.train) // TILED_FIT_FRAMES)]
        train = TileFrames(train_samples, layout, backbone.mean, backbone.std)
        model.fit(frame_batches(train, batch_size=layout.count))
        test_samples = category.test[:: max(1, len(category.test) // 6)]  # enough for labels
        scores = predict_tiled(
            model, test_samples, layout, backbone.mean, backbone.std
        ).scores.tolist()
        category = dataclasses.replace(category, train=train_samples, test=test_samples)
    normal = [s for s, sample in zip(scores, category.test, strict=True) if not sample.label]
    threshold = float(np.percentile(normal, 95))  # thresholds only steer labels/boxes here
    metadata = ModelMetadata(
        model="padim",
        backbone="efficientnet_lite0",
        input_size=(256, 256),
        mean=backbone.mean,
        std=backbone.std,
        image_threshold=threshold,
        pixel_threshold=threshold,
        image_min=min(scores),
        image_max=max(scores),
        pixel_min=0.0,
        pixel_max=max(scores),
        task="detection",
        tile_grid=layout.grid if layout else (1, 1),
        tile_frame_size=layout.frame_size if layout else None,
    )
    xml = export_ir(
        model,
        metadata,
        out,
        precision=precision,
        calibration_images=train if precision == "INT8" else None,
    )
    took = time.perf_counter() - started
    shape = f"{layout.describe()}, {gaussians} Gaussians" if layout else "256x256"
    return xml, (
        f"PaDiM efficientnet_lite0 {shape} {precision}, fitted on {data.name} "
        f"({len(category.train)} images) and exported in {took:.0f} s"
    )


def build_patchcore(data: Path, out: Path, train_images: int = 12) -> Path:
    """A PatchCore fitted with the train API on a few of ``data``'s training images, backbone
    weights random (``pretrained=False``): its frame time is PatchCore's whatever it learned.
    The coreset keeps a larger share of the fewer patches, so the bank (what each frame
    searches) is as large as a fit on every training image would keep."""
    os.environ.setdefault("CI", "true")  # no OpenVINO telemetry attempts while exporting
    from anomaly_edge.train import PatchcoreOptions, train
    from anomaly_edge.train.models.patchcore.model import DEFAULT_CORESET_RATIO

    if not (data / "train" / "good").is_dir():
        sys.exit(f"no dataset at {data}; pass --patchcore PATH or --data")
    subset = out / "data"
    (subset / "train" / "good").mkdir(parents=True)
    good = sorted((data / "train" / "good").iterdir())
    chosen = good[:: max(1, len(good) // train_images)][:train_images]
    for path in chosen:
        (subset / "train" / "good" / path.name).symlink_to(path)
    ratio = min(1.0, DEFAULT_CORESET_RATIO * len(good) / len(chosen))
    for part in ("test", "ground_truth"):
        (subset / part).symlink_to(data / part)
    started = time.perf_counter()
    result = train(
        subset,
        model="patchcore",
        out=out / "model",
        image_size=256,
        tile="off",
        task="detection",
        options=PatchcoreOptions(pretrained=False, coreset_ratio=ratio),
        augment=False,
    )
    assert result.ir_path is not None
    print(
        f"patchcore: {len(chosen)} images of {data.name} (coreset {ratio:.2f}), random weights, "
        "trained and exported "
        f"in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return result.ir_path


def bench_models_case(padim_xml: Path, patchcore_xml: Path, args: argparse.Namespace) -> dict:
    """PatchCore's frame time beside PaDiM's: the same 640x480 frames, sync and async, in
    alternating rounds (the best round counts, as in the other cases)."""
    from anomaly_edge import AnomalyModel

    frames = frames_for((640, 480), args.data)
    models = {
        name: AnomalyModel(path, args.device, task="detection", cache_dir=None)
        for name, path in (("padim", padim_xml), ("patchcore", patchcore_xml))
    }
    methods = {}
    for name, model in models.items():
        methods[f"{name}_sync"] = lambda n, m=model: [
            m.predict(frames[i % len(frames)]) for i in range(n)
        ]
        methods[f"{name}_async"] = lambda n, m=model: run_ours_async(m, frames, n)
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, run in methods.items():
            best[name] = max(best.get(name, 0.0), frames_per_second(run, args.seconds))
    case = {
        "frame": "640x480",
        "model": "padim, patchcore",
        "device": args.device,
        "input_size": {
            k: "x".join(map(str, m.metadata.input_size[::-1])) for k, m in models.items()
        },
        "fps": {k: round(v, 2) for k, v in best.items()},
        # one frame's latency (predict) and the frame time at full throughput (async)
        "frame_ms": {k: round(1e3 / v, 2) for k, v in best.items()},
        "speedup": {
            "patchcore_vs_padim_sync": round(best["patchcore_sync"] / best["padim_sync"], 3),
            "patchcore_vs_padim_async": round(best["patchcore_async"] / best["padim_async"], 3),
        },
    }
    print(
        "   640x480 PaDiM vs PatchCore: "
        + "  ".join(f"{k} {v:6.2f} ms" for k, v in case["frame_ms"].items()),
        flush=True,
    )
    return case


def frames_for(size: tuple[int, int], data: Path, count: int = 8) -> list[np.ndarray]:
    """Real test images resized to ``size`` when the dataset is here, else textured noise."""
    import cv2

    width, height = size
    every = sorted((data / "test").rglob("*.png"))
    paths = every[:: max(1, len(every) // count)]
    frames = [cv2.resize(cv2.imread(str(p)), (width, height)) for p in paths[:count]]
    if len(frames) < count:  # say so: noise is never flagged, so no frame makes regions
        print(
            f"frames: {len(frames)} test images at {data}, the other {count - len(frames)} "
            "textured noise (pass --data for a category's real frames)",
            file=sys.stderr,
            flush=True,
        )
    rng = np.random.default_rng(0)
    while len(frames) < count:
        frames.append(rng.integers(90, 170, (height, width, 3), dtype=np.uint8))
    return frames


def bench_case(xml: Path, size: tuple[int, int], args: argparse.Namespace) -> dict:
    from model_api.models import AnomalyDetection
    from model_api.pipelines import AsyncPipeline

    from anomaly_edge import AnomalyModel

    frames = frames_for(size, args.data)
    ours = AnomalyModel(xml, args.device, task="detection", cache_dir=None)
    theirs = AnomalyDetection.create_model(
        str(xml), device=args.device, configuration={"task": "detection"}
    )
    theirs_async_model = AnomalyDetection.create_model(
        str(xml),
        device=args.device,
        configuration={"task": "detection"},
        max_num_requests=ours.num_requests,
    )
    pipeline = AsyncPipeline(theirs_async_model)

    methods = {
        "anomaly_edge_sync": lambda n: [ours.predict(frames[i % len(frames)]) for i in range(n)],
        "anomaly_edge_async": lambda n: run_ours_async(ours, frames, n),
        "model_api_sync": lambda n: [theirs(frames[i % len(frames)]) for i in range(n)],
        "model_api_async": lambda n: run_model_api_async(pipeline, frames, n),
    }
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, run in methods.items():
            best[name] = max(best.get(name, 0.0), frames_per_second(run, args.seconds))

    # Same decisions? Labels must agree (scores differ by Model API's "normal" convention).
    labels_ours = [ours.predict(f).label for f in frames]
    labels_theirs = [theirs(f).pred_label == "Anomaly" for f in frames]
    fps = {k: round(v, 2) for k, v in best.items()}

    def ratio(ours_name: str, theirs_name: str) -> float:
        return round(best[ours_name] / best[theirs_name], 2)

    case = {
        "frame": f"{size[0]}x{size[1]}",
        "model": ours.metadata.model,
        "device": args.device,
        "fps": fps,
        "speedup": {
            "async_vs_model_api_sync": ratio("anomaly_edge_async", "model_api_sync"),
            "sync_vs_model_api_sync": ratio("anomaly_edge_sync", "model_api_sync"),
            "async_vs_model_api_async": ratio("anomaly_edge_async", "model_api_async"),
        },
        "latency_ms": {
            "anomaly_edge_sync": round(1e3 / best["anomaly_edge_sync"], 2),
            "model_api_sync": round(1e3 / best["model_api_sync"], 2),
        },
        "labels_match": labels_ours == labels_theirs,
        "num_requests": ours.num_requests,
    }
    print(
        f"{case['frame']:>10}: "
        + "  ".join(f"{k} {v:7.1f} fps" for k, v in fps.items())
        + f"  labels match: {case['labels_match']}",
        flush=True,
    )
    return case


def bench_tiled_case(
    single_xml: Path, tiled_xml: Path, size: tuple[int, int], args: argparse.Namespace
) -> dict:
    """Frame time of a tiled model against the single view, on the same large frames."""
    from anomaly_edge import AnomalyModel

    frames = frames_for(size, args.data)
    tiled = AnomalyModel(tiled_xml, args.device, task="detection", cache_dir=None)
    single = AnomalyModel(single_xml, args.device, task="detection", cache_dir=None)
    methods = {
        "anomaly_edge_sync": lambda n: [tiled.predict(frames[i % len(frames)]) for i in range(n)],
        "anomaly_edge_async": lambda n: run_ours_async(tiled, frames, n),
        "single_view_sync": lambda n: [single.predict(frames[i % len(frames)]) for i in range(n)],
        "single_view_async": lambda n: run_ours_async(single, frames, n),
    }
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, run in methods.items():
            best[name] = max(best.get(name, 0.0), frames_per_second(run, args.seconds))
    layout = tiled.metadata.tile_layout
    assert layout is not None
    case = {
        "frame": f"{size[0]}x{size[1]}",
        "model": "padim",
        "device": args.device,
        "tiles": {
            "grid": f"{layout.grid[0]}x{layout.grid[1]}",
            "count": layout.count,
            "frame_size": f"{layout.frame_size[1]}x{layout.frame_size[0]}",
            "tile_size": f"{layout.tile_size[1]}x{layout.tile_size[0]}",
            # the compiled model's batch: every tile of a frame in one inference call
            "network_batch": int(tiled._compiled.inputs[0].get_shape()[0]),
        },
        "fps": {k: round(v, 2) for k, v in best.items()},
        # below 1: the tiled model is slower, by about its tile count (the price of resolution)
        "speedup": {
            "tiled_vs_single_sync": round(best["anomaly_edge_sync"] / best["single_view_sync"], 3),
            "tiled_vs_single_async": round(
                best["anomaly_edge_async"] / best["single_view_async"], 3
            ),
        },
        "latency_ms": {
            "anomaly_edge_sync": round(1e3 / best["anomaly_edge_sync"], 2),
            "single_view_sync": round(1e3 / best["single_view_sync"], 2),
        },
        "num_requests": tiled.num_requests,
    }
    print(
        f"{case['frame']:>10} tiled {case['tiles']['grid']}: "
        + "  ".join(f"{k} {v:7.2f} fps" for k, v in case["fps"].items()),
        flush=True,
    )
    return case


def bench_vs_benchmark_app(xml: Path, args: argparse.Namespace) -> dict:
    """The core's asynchronous path against OpenVINO alone on the same IR and device.

    Two baselines: OpenVINO's own ``benchmark_app`` (a child process, when it is on PATH)
    and a plain async queue in this process run the way ``benchmark_app`` runs one. Each
    round runs every method once, the order reversed every other round (ours first, then
    last), and gives one ratio per baseline from methods that ran seconds apart; the median
    of those ratios is the figure, every round is reported beside it. A neighbour's burst
    hits one round, not the median.
    """
    import openvino as ov

    from anomaly_edge import AnomalyModel

    ours = AnomalyModel(xml, args.device, task="detection", cache_dir=None)
    height, width = ours.metadata.input_size
    frames = frames_for((width, height), args.data)
    # What benchmark_app runs: the IR as exported, THROUGHPUT hint, the optimal number of
    # requests, inputs filled once, nothing done with the outputs.
    core = ov.Core()
    compiled = core.compile_model(str(xml), args.device, {"PERFORMANCE_HINT": "THROUGHPUT"})
    requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, requests)
    shape = list(compiled.inputs[0].get_shape())
    rng = np.random.default_rng(0)
    inputs = [
        ov.Tensor(rng.normal(0, 1, shape).astype(np.float32), shared_memory=True)
        for _ in range(requests)
    ]
    start_async = super(ov.AsyncInferQueue, queue).start_async  # as benchmark_app: C++ only

    def plain(count: int) -> None:
        for i in range(count):
            start_async(inputs[i % requests], None)
        queue.wait_all()

    app = shutil.which("benchmark_app") if args.benchmark_app_binary else None
    timed = {
        "anomaly_edge_async": lambda: frames_per_second(
            lambda n: run_ours_async(ours, frames, n), args.seconds, with_cpu=True
        ),
        "openvino_async_queue": lambda: frames_per_second(plain, args.seconds, with_cpu=True),
    }
    if app is not None:
        timed["benchmark_app"] = lambda: (run_benchmark_app(app, xml, args), None, None)
    baselines = [name for name in timed if name != "anomaly_edge_async"]
    rounds: list[dict] = []
    load_before = os.getloadavg()[0]
    for index in range(args.interleaved_rounds):
        order = list(timed) if index % 2 == 0 else list(reversed(timed))
        measured = {name: timed[name]() for name in order}
        fps = {name: round(value[0], 2) for name, value in measured.items()}
        ours_cpu, queue_cpu = measured["anomaly_edge_async"][2], measured["openvino_async_queue"][2]
        rounds.append(
            {
                "fps": fps,
                "share": {b: round(fps["anomaly_edge_async"] / fps[b], 3) for b in baselines},
                # the queue's CPU per frame over ours, from runs seconds apart (see below)
                "share_by_cpu": round(queue_cpu / ours_cpu, 3),
                "load_average": round(os.getloadavg()[0], 2),
                "process_cpu_ms_per_frame": {
                    k: round(v[2], 3) for k, v in measured.items() if v[2] is not None
                },
                "calling_thread_cpu_ms_per_frame": {
                    k: round(v[1], 3) for k, v in measured.items() if v[1] is not None
                },
            }
        )
        print(
            f"  round {index + 1}: "
            + "  ".join(f"{k} {v:7.1f} fps" for k, v in fps.items())
            + "  share "
            + ", ".join(f"of {b} {rounds[-1]['share'][b]:.1%}" for b in baselines)
            + f", by CPU {rounds[-1]['share_by_cpu']:.1%}  (load {rounds[-1]['load_average']})",
            flush=True,
        )

    def median(key: str, name: str) -> float:
        return float(np.median([r[key][name] for r in rounds]))

    share = {b: round(median("share", b), 3) for b in baselines}
    # CPU per frame, all threads: on a CPU-bound device the frame rate is cores / this, so
    # the ratio estimates the share on an idle machine even when this one is busy.
    cpu = {k: median("process_cpu_ms_per_frame", k) for k in timed if k != "benchmark_app"}
    case = {
        "frame": f"{width}x{height}",
        "model": ours.metadata.model,
        "device": args.device,
        "fps": {k: round(median("fps", k), 2) for k in timed},  # medians over rounds
        # the headline: median over rounds of ours / benchmark_app (the queue without it)
        "share_of_benchmark_app": share.get("benchmark_app", share["openvino_async_queue"]),
        "share_median": share,
        "share_of_benchmark_app_by_cpu": round(
            cpu["openvino_async_queue"] / cpu["anomaly_edge_async"], 3
        ),
        # the same, as the median of the per-round ratios (a neighbour's burst moves one round)
        "share_by_cpu_median": round(float(np.median([r["share_by_cpu"] for r in rounds])), 3),
        # 1-minute load average before the first round and after each (a 2-core machine
        # shared with others: what the figures were measured under)
        "load_average": {
            "before": round(load_before, 2),
            "rounds": [r["load_average"] for r in rounds],
        },
        "process_cpu_ms_per_frame": {k: round(v, 3) for k, v in cpu.items()},
        "calling_thread_cpu_ms_per_frame": {
            k: round(median("calling_thread_cpu_ms_per_frame", k), 3)
            for k in timed
            if k != "benchmark_app"
        },
        "rounds": rounds,
        "num_requests": {"anomaly_edge_async": ours.num_requests, "openvino_async_queue": requests},
    }
    print(
        f"{case['frame']:>10} vs benchmark_app, median of {len(rounds)} interleaved rounds: "
        + ", ".join(f"share of {b} {v:.1%}" for b, v in share.items())
        + f" (by CPU per frame {case['share_of_benchmark_app_by_cpu']:.1%}, median of rounds "
        + f"{case['share_by_cpu_median']:.1%});  calling thread "
        + ", ".join(f"{k} {v:.2f}" for k, v in case["calling_thread_cpu_ms_per_frame"].items())
        + " ms/frame",
        flush=True,
    )
    return case


def bench_steps(xml: Path, args: argparse.Namespace, count: int = 600) -> dict:
    """CPU time of the calling thread per frame in the ``submit``/``ready`` loop, by step.

    Each step is wrapped in a thread-CPU timer (a few microseconds of its own, so the loop
    runs once without the timers too). The steps are what this version of the code calls;
    the C++ post-processor is timed inside the Python wrapper around it.
    """
    from unittest import mock

    import openvino as ov

    from anomaly_edge import AnomalyModel, core
    from anomaly_edge import postprocess as postprocessing

    model = AnomalyModel(xml, args.device, task="detection", cache_dir=None)
    height, width = model.metadata.input_size
    frames = frames_for((width, height), args.data)
    run_ours_async(model, frames, 30)  # compiles, fills the pool
    pool = model._pool
    clock = time.thread_time_ns
    spent: dict[str, int] = {}

    def timed(function, name: str):
        def call(*a, **k):
            start = clock()
            try:
                return function(*a, **k)
            finally:
                spent[name] = spent.get(name, 0) + clock() - start

        return call

    start = clock()
    run_ours_async(model, frames, count)
    bare = (clock() - start) / count
    steps = [
        (model, "_input", "frame: checks, resize or copy"),
        (pool, "_get_idle", "wait for a free request (get_idle_request_id)"),
        (np, "copyto", "copy into the request's input buffer"),
        (ov, "Tensor", "ov.Tensor over an array"),
        (pool, "_start_async", "start_async"),
        (core, "postprocess", "post-processing (Python wrapper and C++)"),
        (postprocessing._post, "postprocess", "post-processing, C++ alone"),
        (model, "submit", "submit(), all"),
        (model, "ready", "ready(), all"),
    ]
    # Steps of earlier versions of the pool (tensors bound per frame), to compare with them.
    if not hasattr(pool, "_get_idle"):
        steps.append((pool._queue, "get_idle_request_id", steps[1][2]))
    steps += [(r, "set_output_tensor", "set_output_tensor") for r in pool._requests]
    with contextlib.ExitStack() as patches:
        for owner, attribute, name in steps:
            if hasattr(owner, attribute):  # the code measured may not have this step
                function = getattr(owner, attribute)
                patches.enter_context(mock.patch.object(owner, attribute, timed(function, name)))
        start = clock()
        run_ours_async(model, frames, count)
        wrapped = (clock() - start) / count
    case = {
        "frame": f"{width}x{height}",
        "model": model.metadata.model,
        "device": args.device,
        "frames": count,
        "calling_thread_us_per_frame": {
            **{name: round(ns / count / 1e3, 1) for name, ns in spent.items()},
            "loop, with the timers": round(wrapped / 1e3, 1),
            "loop, without them": round(bare / 1e3, 1),
        },
        "load_average": round(os.getloadavg()[0], 2),
    }
    for name, us in case["calling_thread_us_per_frame"].items():
        print(f"  {name:48s} {us:7.1f} us", flush=True)
    return case


def run_benchmark_app(app: str, xml: Path, args: argparse.Namespace) -> float:
    """Frames per second that OpenVINO's ``benchmark_app`` reports for ``xml`` (throughput
    hint, its optimal number of requests, random inputs, about ``args.seconds``)."""
    seconds = max(1, round(args.seconds))
    command = [app, "-m", str(xml), "-d", args.device, "-hint", "throughput", "-t", str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120 + 4 * seconds)
    found = re.search(r"Throughput:\s*([0-9.]+)\s*FPS", done.stdout)
    if done.returncode != 0 or found is None:
        sys.exit(f"benchmark_app failed ({done.returncode}): {done.stdout[-500:]}{done.stderr}")
    return float(found.group(1))


def frames_per_second(run, seconds: float, with_cpu: bool = False):
    """Frames per second of one uninterrupted run of about ``seconds``; with ``with_cpu``,
    also the CPU milliseconds per frame of this thread and of the whole process.

    One long run, not many short ones: the asynchronous methods drain their queue at the end
    of a run, and draining every few frames would measure the pipeline filling up.
    """
    run(4)  # warm-up (first asynchronous use compiles, pipelines start)
    start = time.perf_counter()
    run(8)
    count = max(16, int(8 / (time.perf_counter() - start) * seconds))
    thread_start, process_start = time.thread_time(), time.process_time()
    start = time.perf_counter()
    run(count)
    fps = count / (time.perf_counter() - start)
    if with_cpu:
        thread_ms = (time.thread_time() - thread_start) * 1e3 / count
        process_ms = (time.process_time() - process_start) * 1e3 / count
        return fps, thread_ms, process_ms
    return fps


def run_ours_async(model, frames, count: int) -> None:
    for i in range(count):
        model.submit(frames[i % len(frames)], i)
        model.ready()
    model.drain()


def run_model_api_async(pipeline, frames, count: int) -> None:
    next_id = 0
    for i in range(count):
        pipeline.submit_data(frames[i % len(frames)], i)  # blocks while all requests are busy
        while pipeline.get_result(next_id) is not None:  # collect finished, in order
            next_id += 1
    pipeline.await_all()
    while next_id < count:
        if pipeline.get_result(next_id) is not None:
            next_id += 1


if __name__ == "__main__":
    main()
