"""Shared fixtures: the real datasets (when present) and a tiny torch-free IR."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# Whether the caller (a CI job) set CI, before the line below sets it for everyone: tests that
# need system tools (mosquitto, chromium) or the real datasets fail instead of skipping when
# those are missing in CI.
CI_REQUESTED = bool(os.environ.get("CI"))
# openvino.convert_model sends telemetry unless CI is set; offline that costs seconds per export.
os.environ.setdefault("CI", "true")
# OpenMP threads that spin while waiting cost dearly on shared 2-core machines (a tiny fit took
# 71 s instead of 1.2 s); must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child Python that must import the same anomaly_edge as this
    process (the checkout's python/ in development, site-packages after `pip install .`, as in
    CI) and the repository's `tests` package."""
    import anomaly_edge

    package_root = str(Path(anomaly_edge.__file__).resolve().parents[1])
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [package_root, str(REPO), env.get("PYTHONPATH")])
    )
    return env


def shared_datasets() -> Path | None:
    """../shared/datasets beside the checkout, or $ANOMALY_EDGE_DATASETS; None when absent."""
    env = os.environ.get("ANOMALY_EDGE_DATASETS")
    root = Path(env) if env else REPO.parent / "shared" / "datasets"
    return root if root.is_dir() else None


def require_datasets(root: Path | None, ci: bool) -> Path:
    """The datasets root; where it is missing, skip on a developer's machine but fail in CI
    (CI always has the data, so a CI run cannot pass by skipping the real-data tests)."""
    if root is not None:
        return root
    message = "real datasets not found (../shared/datasets or $ANOMALY_EDGE_DATASETS)"
    if ci:
        pytest.fail(f"{message}; CI is set, so the real-data tests may not be skipped")
    pytest.skip(message)


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    """The real datasets (../shared/datasets): skips where absent, fails under CI=true."""
    return require_datasets(shared_datasets(), CI_REQUESTED)


@pytest.fixture(scope="session")
def synthetic_ir(tmp_path_factory) -> Path:
    """A small anomaly-edge IR built without torch (see tests/ir_factory.py)."""
    from tests.ir_factory import build_synthetic_ir

    return build_synthetic_ir(tmp_path_factory.mktemp("synthetic_ir") / "model.xml")


# ---- instruction-set matrix ----------------------------------------------------------------
# Float results of training depend on the CPU's instruction set (oneDNN and ATen choose other
# kernels for SSE4.1, AVX2 and AVX-512), so a test that trains must hold under each. A test that
# takes an ``isa_level`` argument runs once per level this CPU has (anomaly_edge.train.isa). The
# level this process runs at runs in-process; every other level re-runs the same test in a child
# pytest whose libraries are capped at that level, and the child's verdict is the test's. Those
# child runs are marked slow: the fast set checks the machine's own level only. A run that is
# itself capped at a level (CI's matrix legs) checks that level only.

# A oneDNN cap alone (ONEDNN_MAX_CPU_ISA=AVX2 pytest) leaves OpenVINO's own kernels and its
# bf16 default at the real CPU's level, and OpenVINO then fails to compile models (pooling
# without a kernel). Cap both alike, as on a real CPU of that level; before openvino loads.
if "ONEDNN_MAX_CPU_ISA" in os.environ:
    os.environ.setdefault("OV_CPU_MAX_ISA", os.environ["ONEDNN_MAX_CPU_ISA"])


def _isa_level_is_active(name: str) -> bool:
    from anomaly_edge.train import isa

    return isa.active_caps() == dict(isa.level(name).env)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "isa_level" in metafunc.fixturenames:
        from anomaly_edge.train import isa

        levels = [level.name for level in isa.supported_levels()]
        metafunc.parametrize(
            "isa_level",
            [
                name if _isa_level_is_active(name) else pytest.param(name, marks=pytest.mark.slow)
                for name in levels
            ],
        )


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    callspec = getattr(pyfuncitem, "callspec", None)
    name = callspec.params.get("isa_level") if callspec is not None else None
    if name is None or _isa_level_is_active(name):
        return None  # run the test here, as usual
    from anomaly_edge.train import isa

    capped = [
        level.name
        for level in isa.LEVELS.values()
        if level.env and _isa_level_is_active(level.name)
    ]
    if capped:  # e.g. one leg of CI's matrix: the other legs run the other levels
        pytest.skip(
            f"this run is capped at {capped[0]}; run pytest without "
            f"{'/'.join(isa.CAP_VARIABLES)} to test every level"
        )
    _run_at_level(pyfuncitem.nodeid, name)
    return True


def _run_at_level(nodeid: str, name: str) -> None:
    import subprocess
    import sys

    from anomaly_edge.train import isa

    base = {k: v for k, v in os.environ.items() if k not in isa.CAP_VARIABLES}
    env = child_env(isa.level(name).environment(base))
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-x",
        "-o",
        "addopts=",
        nodeid,
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode == 0 and " passed" in done.stdout:
        return
    if done.returncode == 0 and " skipped" in done.stdout:
        pytest.skip(f"skipped at {name}: {done.stdout.strip().splitlines()[-1]}")
    if done.returncode == 1:
        pytest.fail(
            f"fails at instruction-set level {name} ({dict(isa.level(name).env)}):\n"
            f"{done.stdout[-6000:]}",
            pytrace=False,
        )
    pytest.fail(
        f"the child run at {name} did not run the test (exit code {done.returncode}):"
        f"\n{done.stdout[-3000:]}{done.stderr[-2000:]}",
        pytrace=False,
    )
