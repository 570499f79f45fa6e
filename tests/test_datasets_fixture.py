"""The real-data tests skip where ../shared/datasets is missing, but fail under CI=true: CI
always has the data, so a CI run cannot pass by skipping them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import child_env, require_datasets


def test_a_present_root_is_returned(tmp_path: Path) -> None:
    assert require_datasets(tmp_path, ci=True) == tmp_path
    assert require_datasets(tmp_path, ci=False) == tmp_path


def test_a_missing_root_skips_outside_ci() -> None:
    with pytest.raises(pytest.skip.Exception, match="real datasets not found"):
        require_datasets(None, ci=False)


def test_a_missing_root_fails_in_ci() -> None:
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_datasets(None, ci=True)


def _run_a_realdata_test(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    """A child pytest with this repository's conftest, a test that takes ``datasets_root``,
    and a datasets folder that does not exist."""
    (tmp_path / "test_needs_data.py").write_text(
        "def test_reads(datasets_root):\n    assert datasets_root.is_dir()\n"
    )
    env = child_env({k: v for k, v in os.environ.items() if k != "CI"})
    env["ANOMALY_EDGE_DATASETS"] = str(tmp_path / "no-such-datasets")
    if ci is not None:
        env["CI"] = ci
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"]
    command += ["-q", "-rs", "--rootdir", str(tmp_path), str(tmp_path / "test_needs_data.py")]
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_fixture_fails_a_run_with_ci_set(tmp_path: Path) -> None:
    done = _run_a_realdata_test(tmp_path, ci="true")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 error" in done.stdout
    assert "CI is set, so the real-data tests may not be skipped" in done.stdout


def test_the_fixture_skips_on_a_developer_machine(tmp_path: Path) -> None:
    done = _run_a_realdata_test(tmp_path, ci=None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout
    assert "real datasets not found" in done.stdout
