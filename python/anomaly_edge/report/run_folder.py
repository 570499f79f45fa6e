"""A training run folder as the report reads it: metrics.json, the exported model, and the
benchmark result when one was saved beside them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomaly_edge.errors import AnomalyEdgeError

BENCHMARK_FILE = "benchmark.json"


class ReportError(AnomalyEdgeError, ValueError):
    """A run folder, dataset or output the report cannot use; the message says what to do."""


@dataclass(frozen=True)
class RunFolder:
    """What ``anomaly-edge train --out RUN`` left in RUN."""

    path: Path
    metrics: dict[str, Any]
    model_xml: Path
    data: Path
    benchmark: dict[str, Any] | None

    @property
    def name(self) -> str:
        """A short title: the architecture and the folder's name."""
        return f"{self.metrics.get('model', '?')} ({self.path.name})"

    @classmethod
    def open(cls, path: str | Path, data: str | Path | None = None) -> RunFolder:
        """Read RUN; ``data`` replaces the dataset path recorded in metrics.json (for a run
        moved to another machine). Raises :class:`ReportError` saying what is missing."""
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ReportError(
                f"{folder} is not a folder: give the folder `anomaly-edge train --out` wrote"
            )
        metrics_file = folder / "metrics.json"
        if not metrics_file.is_file():
            raise ReportError(
                f"{folder} is not a training run (no metrics.json): give the folder "
                "`anomaly-edge train --out RUN` wrote"
            )
        metrics = _read_json(metrics_file, "cannot be read ({}); train the run again")
        if not isinstance(metrics, dict) or "image_threshold" not in metrics:
            raise ReportError(
                f"{metrics_file} is not the metrics of an anomaly-edge run (no image_threshold)"
            )
        model_xml = folder / "model.xml"
        if not model_xml.is_file() or not model_xml.with_suffix(".bin").is_file():
            raise ReportError(
                f"{folder} holds no exported model (model.xml and model.bin): the report runs "
                f"the exported model; write it with `anomaly-edge export {folder}`"
            )
        recorded = metrics.get("data")
        if data is None and not recorded:
            raise ReportError(f"{metrics_file} names no dataset; pass --data DIR")
        dataset = Path(data if data is not None else str(recorded)).expanduser()
        if not dataset.is_dir():
            source = "--data" if data is not None else f"metrics.json of {folder}"
            raise ReportError(
                f"the dataset {dataset} (from {source}) is not there: the report needs its "
                "test images; pass --data DIR with the category folder the run was trained on"
            )
        return cls(folder, metrics, model_xml, dataset, _benchmark(folder / BENCHMARK_FILE))


def _benchmark(path: Path) -> dict[str, Any] | None:
    """The saved output of `anomaly-edge benchmark RUN --json`, or None (absent or not that)."""
    if not path.is_file():
        return None
    found = _read_json(
        path, "is not the JSON of `anomaly-edge benchmark --json` ({}); save it again or remove it"
    )
    if not isinstance(found, dict) or not isinstance(found.get("sync"), dict):
        raise ReportError(
            f"{path} is not the output of `anomaly-edge benchmark RUN --json`; save it again "
            "or remove it"
        )
    return found


def _read_json(path: Path, advice: str) -> Any:
    """The JSON in ``path``; a :class:`ReportError` "``path`` ``advice``" (``{}``: why) if
    it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path} {advice.format(exc)}") from None
