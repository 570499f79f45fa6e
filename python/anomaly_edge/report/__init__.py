"""``anomaly-edge report``: one self-contained HTML page about one trained run, or two side by
side.

    from anomaly_edge.report import write_report
    write_report(["runs/padim", "runs/stfpm"], "compare.html")

The page shows the model, data, settings and metrics; ROC and PR curves with the operating
point marked; the score histogram with the image threshold; a gallery of the worst false
alarms, the misses and the best and worst localisations (heatmap, regions, boxes and the ground
truth); the operating-point metrics; and latency. Everything is computed from the exported
model (``model.xml``) over the test images of the dataset the run was trained on, with the
runtime only: no torch.
"""

from __future__ import annotations

from anomaly_edge.report.page import write_report
from anomaly_edge.report.run_folder import ReportError, RunFolder

__all__ = ["ReportError", "RunFolder", "write_report"]
