"""Shared fixtures: the real datasets (when present) and a tiny torch-free IR."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_datasets() -> Path | None:
    """../shared/datasets beside the checkout, or $ANOMALY_EDGE_DATASETS; None when absent."""
    env = os.environ.get("ANOMALY_EDGE_DATASETS")
    root = Path(env) if env else REPO.parent / "shared" / "datasets"
    return root if root.is_dir() else None


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    root = shared_datasets()
    if root is None:
        pytest.skip("real datasets not found (../shared/datasets or $ANOMALY_EDGE_DATASETS)")
    return root


@pytest.fixture(scope="session")
def synthetic_ir(tmp_path_factory) -> Path:
    """A small anomaly-edge IR built without torch (see tests/ir_factory.py)."""
    from tests.ir_factory import build_synthetic_ir

    return build_synthetic_ir(tmp_path_factory.mktemp("synthetic_ir") / "model.xml")

# Whether the caller (a CI job) set CI, before the line below sets it for everyone: tests that
# need system tools (mosquitto, chromium) fail instead of skipping when they are missing in CI.
CI_REQUESTED = bool(os.environ.get("CI"))
# openvino.convert_model sends telemetry unless CI is set; offline that costs seconds per export.
os.environ.setdefault("CI", "true")
# OpenMP threads that spin while waiting cost dearly on shared 2-core machines (a tiny fit took
# 71 s instead of 1.2 s); must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
