"""The test images of a run's category folder (MVTec or VisA layout), with their masks, read
by the same torch-free reader as training (:mod:`anomaly_edge.layout`)."""

from __future__ import annotations

from pathlib import Path

from anomaly_edge.layout import GOOD, DatasetError, Sample, scan_test
from anomaly_edge.report.run_folder import ReportError

__all__ = ["GOOD", "Sample", "list_test_images"]


def list_test_images(root: Path) -> list[Sample]:
    """The category's test images (sorted as training sorts them), masks included."""
    try:
        return list(scan_test(root))
    except DatasetError as exc:
        raise ReportError(f"the run's dataset cannot be read: {exc}") from None
