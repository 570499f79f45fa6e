"""Style never drifts: ruff (configured in pyproject.toml) runs with the test suite."""

import shutil
import subprocess
import sys

from tests.conftest import REPO


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(REPO / ".venv" / "bin"))
    cmd = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    result = subprocess.run([*cmd, "check", "python", "tests", "tools"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
