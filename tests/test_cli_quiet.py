"""Commands print what they did, not third-party noise (issue 24): `export --precision INT8`
without torch's CUDA message, `benchmark` without a warning about its own synthetic frame.
Each runs in a subprocess, as a user runs it, and its stderr is read."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import pytest

from tests.conftest import child_env
from tests.ir_factory import build_synthetic_ir

NOISE = ("Warning", "No CUDA runtime")


def _square_trained_ir(folder: Path) -> Path:
    """The synthetic IR, marked as trained on square images (so wide frames are warned of)."""
    xml = build_synthetic_ir(folder / "built" / "model.xml")
    model = ov.Core().read_model(str(xml))
    model.set_rt_info("1.0", ["anomaly_edge", "train_aspect"])
    out = folder / "model.xml"
    ov.save_model(model, str(out), compress_to_fp16=False)
    return out


def _run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_benchmark_on_its_synthetic_frame_prints_no_warning(tmp_path):
    xml = _square_trained_ir(tmp_path)
    done = _run(["-m", "anomaly_edge", "benchmark", str(xml), "--seconds", "0.2"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert not any(word in done.stderr for word in NOISE), done.stderr
    # a real image shaped unlike the training images is still worth the warning
    image = tmp_path / "wide.png"
    cv2.imwrite(str(image), np.full((100, 300, 3), 128, np.uint8))
    done = _run(
        ["-m", "anomaly_edge", "benchmark", str(xml), "--image", str(image), "--seconds", "0.2"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "shaped unlike the training images" in done.stderr


def test_int8_export_prints_no_torch_cuda_message(tmp_path):
    pytest.importorskip("nncf")
    pytest.importorskip("torch")
    # torch logs "No CUDA runtime is found" when it finds an nvcc but no GPU: give it one.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    nvcc = bin_dir / "nvcc"
    nvcc.write_text("#!/bin/sh\nexit 1\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    env = child_env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["CI"] = "true"  # no OpenVINO telemetry attempts
    env.pop("CUDA_HOME", None)
    env.pop("CUDA_PATH", None)
    script = tmp_path / "export_toy.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, sys
            from pathlib import Path
            import cv2
            from anomaly_edge.cli.main import main
            from anomaly_edge.train import checkpoint
            from tests.toy_models import fitted_toy, synthetic_images

            checkpoint.ALLOWED_PACKAGE = "tests."  # the toy model lives in tests/
            root = Path({str(tmp_path)!r})
            model, metadata = fitted_toy()
            checkpoint.save_checkpoint(model, metadata, root / "run" / "checkpoint.pt")
            for folder, images in [
                ("train/good", synthetic_images(8, seed=1)),
                ("test/good", synthetic_images(4, seed=2)),
                ("test/defect", synthetic_images(4, anomalous=True, seed=3)),
            ]:
                (root / "data" / folder).mkdir(parents=True)
                for i, rgb in enumerate(images):
                    cv2.imwrite(str(root / "data" / folder / f"{{i}}.png"), rgb[:, :, ::-1])
            (root / "run" / "metrics.json").write_text(json.dumps({{"data": str(root / "data")}}))
            sys.exit(main(["export", "--run", str(root / "run"), "--precision", "INT8",
                           "--max-accuracy-drop", "1"]))
            """
        )
    )
    done = _run([str(script)], tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "int8" / "model.xml").exists()
    assert not any(word in done.stderr + done.stdout for word in NOISE), done.stderr
