"""The deployment world never imports torch: predict (API and CLI) in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np

from tests.conftest import REPO

SCRIPT = """
import sys, json
import numpy as np
from anomaly_edge import AnomalyModel
model = AnomalyModel(sys.argv[1], "CPU", cache_dir=None)
frame = np.full((120, 160, 3), 128, np.uint8)
frame[40:60, 50:80] = 255
prediction = model.predict(frame)
model.submit(frame, 0)
model.drain()
from anomaly_edge.cli.main import main
code = main(["predict", "--model", sys.argv[1], sys.argv[2], "--jsonl", sys.argv[3]])
torch = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print(json.dumps({"label": bool(prediction.label), "cli": code, "torch": torch}))
"""


def test_runtime_and_cli_predict_do_not_import_torch(synthetic_ir, tmp_path):
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((60, 80, 3), 128, np.uint8))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(synthetic_ir), str(image), str(tmp_path / "out.jsonl")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"label": True, "cli": 0, "torch": []}
