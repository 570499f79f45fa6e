"""Style never drifts: ruff lint and ruff format (configured in pyproject.toml) run with the
test suite; mypy runs in CI (.ci/run) and pre-commit, where its minute is better spent."""

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

RUFF = shutil.which("ruff") or shutil.which("ruff", path=str(REPO / ".venv" / "bin"))


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(command):
    cmd = [RUFF] if RUFF else [sys.executable, "-m", "ruff"]
    result = subprocess.run(
        [*cmd, *command, "python", "tests", "tools"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
