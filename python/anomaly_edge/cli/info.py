"""`anomaly-edge info`: what an exported model is (metadata, size, I/O), without compiling it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from anomaly_edge.cli.common import add_model_argument, model_path, raw_threshold

HELP = "show an exported model's metadata, size and inputs/outputs"
DESCRIPTION = (
    "Show what an exported IR holds: model, backbone, input size, precision, thresholds, "
    "normalisation, metrics at export time, file size."
)
EPILOG = "exit codes: 0 done, 2 bad arguments, 4 model cannot be loaded"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL and ``--json``."""
    add_model_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Print the model's facts, as a table or one JSON object."""
    info = describe(model_path(args, "info reads the IR file"))
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=False))
        return 0
    metrics = info.pop("metrics")
    width = max(len(key) for key in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    if metrics:
        print("metrics at export:")
        for key, value in sorted(metrics.items()):
            print(f"  {key}: {json.dumps(value)}")
    return 0


def describe(path: Path) -> dict[str, Any]:
    """The facts about an IR, from its rt_info and files (no device needed)."""
    from anomaly_edge.metadata import ModelMetadata
    from anomaly_edge.model_loading import read_ir

    xml = path / "model.xml" if path.is_dir() else path
    graph = read_ir(xml)
    md = ModelMetadata.read_from(graph, source=str(xml))
    weights = xml.with_suffix(".bin")  # an ONNX file holds its weights itself
    size_mb = (xml.stat().st_size + (weights.stat().st_size if xml.suffix == ".xml" else 0)) / 1e6
    return {
        "path": str(xml),
        "model": md.model,
        "backbone": md.backbone,
        "input_size": f"{md.input_size[0]}x{md.input_size[1]}",
        "tiles": md.tile_layout.describe() if md.tile_layout else None,
        "precision": md.precision,
        "task": md.task,
        "size_mb": round(size_mb, 2),
        "image_threshold": md.image_threshold,
        "pixel_threshold": md.pixel_threshold,
        # The same thresholds as --image-threshold/--pixel-threshold take them: normalised
        # 0.5 is the raw value above; e.g. 0.7 and 0.3 map to these raw values.
        "image_threshold_normalised": {
            str(t): round(raw_threshold(t, md.image_threshold, md.image_scale), 6)
            for t in (0.3, 0.5, 0.7)
        },
        "pixel_threshold_normalised": {
            str(t): round(raw_threshold(t, md.pixel_threshold, md.pixel_scale), 6)
            for t in (0.3, 0.5, 0.7)
        },
        # share of normal validation images flagged at the exported threshold
        "expected_false_alarm_rate": md.metrics.get("false_alarm_rate"),
        # the policy that placed the image threshold, what it expected on the validation
        # images (with their counts) and what the test images showed at it
        "operating_point": md.operating_point or "not recorded (older IR)",
        "normal_score_range": (
            list(md.normal_score_range)
            if md.normal_score_range
            else "not recorded (older IR): drift watch uses thresholds"
        ),
        "calibrated": (
            f"{md.calibration.get('date')} on {md.calibration.get('frames')} frames "
            f"of {md.calibration.get('source')}"
            if md.calibration
            else "no"
        ),
        "image_range": [md.image_min, md.image_max],
        "pixel_range": [md.pixel_min, md.pixel_max],
        "mean": list(md.mean),
        "std": list(md.std),
        "input": f"{graph.inputs[0].get_any_name()} {graph.inputs[0].get_partial_shape()}",
        "output": f"{graph.outputs[0].get_any_name()} {graph.outputs[0].get_partial_shape()}",
        "format_version": md.format_version,
        "metrics": md.metrics,
    }
