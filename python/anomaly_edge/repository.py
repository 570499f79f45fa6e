"""A model repository: the folder layout OpenVINO Model Server and KServe's model stores read.

::

    DIR/config.json          OpenVINO Model Server's configuration: one entry per model
    DIR/NAME/1/model.xml     version 1 of model NAME (+ model.bin)
    DIR/NAME/2/model.xml     version 2: OVMS serves the highest, keeps the others on disk

KServe's OpenVINO runtime reads the same ``NAME/<version>/model.xml`` layout under an
InferenceService's ``storageUri`` (see ``docs/``), and ``anomaly-edge serve --model DIR/NAME``
serves the highest version. A version appears whole or not at all (written in a temporary
folder, then renamed), and earlier versions are never touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from anomaly_edge.errors import InvalidInputError, ModelLoadError
from anomaly_edge.metadata import ModelMetadata
from anomaly_edge.model_loading import read_ir

CONFIG_NAME = "config.json"
# OVMS model names appear in URLs: keep them to letters, digits, '-', '_' and '.'.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def versions(model_dir: str | Path) -> list[int]:
    """The version numbers present under a repository's model folder, ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / "model.xml").is_file()
    )


def publish(ir: str | Path, repository: str | Path, name: str, version: int | None = None) -> Path:
    """Copy an exported IR into ``repository`` as version ``version`` of model ``name``.

    ``version`` defaults to the next integer after the highest present (1 for a new model).
    Updates (or creates) the OVMS ``config.json`` of the repository. Returns the new
    ``model.xml``.

    Raises:
        InvalidInputError: a bad name or version, or a version that already exists.
        ModelLoadError: ``ir`` is not an anomaly-edge IR.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInputError(
            f"model name {name!r} is not usable in a URL: use letters, digits, '-', '_' and "
            "'.', starting with a letter or digit (at most 128 characters)"
        )
    xml = Path(ir)
    xml = xml / "model.xml" if xml.is_dir() else xml
    ModelMetadata.read_from(read_ir(xml), source=str(xml))  # refuse anything else now
    repository = Path(repository)
    model_dir = repository / name
    present = versions(model_dir)
    if version is None:
        version = (present[-1] + 1) if present else 1
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidInputError(f"version must be a positive integer, got {version!r}")
    target = model_dir / str(version)
    if target.exists():
        raise InvalidInputError(
            f"{target} already exists: versions are never overwritten; omit --version to add "
            f"version {(present[-1] + 1) if present else 1}"
        )
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir))
    try:
        shutil.copyfile(xml, staging / "model.xml")
        shutil.copyfile(xml.with_suffix(".bin"), staging / "model.bin")
        staging.chmod(0o755)  # mkdtemp makes it 0700; a server may run as another user
        os.rename(staging, target)  # atomic; fails if another writer took the version
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_ovms_config(repository)
    return target / "model.xml"


def write_ovms_config(repository: str | Path) -> Path:
    """(Re)write ``config.json`` listing every model folder of ``repository`` for OVMS.

    Entries of models that are not in the folder any more are dropped; settings someone
    added to an existing entry (``nireq``, ``target_device``, ...) are kept.
    """
    repository = Path(repository)
    path = repository / CONFIG_NAME
    existing: dict[str, dict[str, Any]] = {}
    if path.is_file():
        try:
            for entry in json.loads(path.read_text(encoding="utf-8"))["model_config_list"]:
                existing[entry["config"]["name"]] = entry["config"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(
                f"{path} is not an OVMS configuration ({exc}); move it "
                "away and run the command again"
            ) from None
    entries = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and versions(p)):
        config = dict(existing.get(model_dir.name, {}))
        config["name"] = model_dir.name
        config["base_path"] = model_dir.name  # relative: OVMS resolves it beside config.json
        config.setdefault("model_version_policy", {"latest": {"num_versions": 1}})
        entries.append({"config": config})
    text = json.dumps({"model_config_list": entries}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{CONFIG_NAME}-", dir=repository)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def resolve_served_model(path: str | Path) -> tuple[Path, str | None]:
    """What ``anomaly-edge serve --model PATH`` serves: (model.xml, repository model name).

    ``PATH`` is a ``model.xml``, a folder holding one, or a repository's model folder (its
    highest version is served, under the folder's name).
    """
    path = Path(path)
    if path.is_dir() and not (path / "model.xml").is_file():
        found = versions(path)
        if not found:
            raise ModelLoadError(
                f"{path} holds neither model.xml nor version folders "
                "(1/model.xml, 2/model.xml, ...)"
            )
        return path / str(found[-1]) / "model.xml", path.name
    return (path / "model.xml" if path.is_dir() else path), None
