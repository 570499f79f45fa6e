"""Which anomaly_edge a tool in tools/ imports when run from a checkout.

The checkout's ``python/`` when its C++ extension has been built there (``tools/dev_build.sh``),
else the installed package (``pip install .``): a source tree without ``_post`` would shadow a
working installation.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKOUT_PYTHON = REPO / "python"


def package_path() -> Path:
    """The folder holding the anomaly_edge package the tools should use."""
    if any((CHECKOUT_PYTHON / "anomaly_edge").glob("_post*.so")):
        return CHECKOUT_PYTHON
    spec = importlib.util.find_spec("anomaly_edge")
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).resolve().parents[1]
    return CHECKOUT_PYTHON  # nothing built or installed: imports will say what is missing


def use_package() -> None:
    """Put :func:`package_path` first on ``sys.path`` (and the repository, for ``tests.*``)."""
    for path in (str(REPO), str(package_path())):
        if path not in sys.path:
            sys.path.insert(0, path)
