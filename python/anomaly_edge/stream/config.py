"""Cameras (named sources) of a run: what each one is, from the command line or a TOML file.

A config file names the cameras; ``[defaults]`` applies to each unless it says otherwise.
Relative paths are relative to the file's folder::

    [defaults]
    task = "detection"
    snapshot_interval = 2.0

    [[camera]]
    name = "line1"
    source = "rtsp://10.0.0.21/stream1"
    image_threshold = 0.7  # score units, 0-1 (0.5 = trained), as on the command line
    output = "line1.mp4"
    snapshots = "snaps/line1"

    [[camera]]
    name = "line2"
    source = "/dev/video0"
    task = "segmentation"
    raw_thresholds = true
    image_threshold = 14.5  # raw score units, as `anomaly-edge info` shows them
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_edge.errors import InvalidInputError
from anomaly_edge.prediction import Task

if TYPE_CHECKING:
    from anomaly_edge.metadata import ModelMetadata

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_NAMED_SOURCE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})=(.+)$")


class ConfigError(InvalidInputError):
    """A camera list that cannot be used (bad TOML, unknown key, wrong type, ...)."""


@dataclass(frozen=True)
class Camera:
    """One camera of :func:`~anomaly_edge.stream.run_many`.

    Attributes:
        name: short name: letters, digits, ``_``, ``.``, ``-``; names the camera's events,
            outputs, MQTT topic and metrics label.
        source: anything :func:`~anomaly_edge.stream.open_source` accepts.
        task, image_threshold, pixel_threshold, min_area: this camera's settings (None: the
            model's).
        raw_thresholds: whether the thresholds are raw score units (as
            ``model.image_threshold``, the default here) or the 0-1 score units of the
            command line (0.5 = the trained threshold; the default in config files).
        output: annotated video of this camera; snapshots: folder for its anomaly snapshots.
        snapshot_interval, snapshot_overlay: as ``--snapshot-interval`` / ``--snapshot-overlay``.
        all_frames: an event for every frame, not only anomalous ones.
        max_frames: stop this camera after this many frames.
    """

    name: str
    source: Any
    task: str | None = None
    image_threshold: float | None = None
    pixel_threshold: float | None = None
    min_area: int | None = None
    output: Path | None = None
    snapshots: Path | None = None
    snapshot_interval: float = 1.0
    snapshot_overlay: bool = False
    all_frames: bool = False
    max_frames: int | None = None
    raw_thresholds: bool = True

    def __post_init__(self) -> None:
        where = f"camera {self.name!r}"
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise ConfigError(
                f"camera name {self.name!r}: use 1-64 letters, digits, '_', '.' "
                "or '-', starting with a letter or digit"
            )
        if self.source is None or self.source == "":
            raise ConfigError(f"{where}: no source; give a video file, folder, camera index or URL")
        if isinstance(self.source, (bool, float, list, tuple, dict, set)):
            # e.g. source = ["x"] in a TOML file: one camera has one source
            raise ConfigError(
                f"{where}: source {self.source!r} is a {type(self.source).__name__}; give one "
                "video file, folder, camera index or URL as a string (a camera index as an "
                "integer); for several sources, give several [[camera]] tables"
            )
        if self.task is not None and self.task not in {t.value for t in Task}:
            raise ConfigError(
                f"{where}: task {self.task!r} is not one of {', '.join(t.value for t in Task)}"
            )
        for key in ("image_threshold", "pixel_threshold"):
            value = getattr(self, key)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}")
            if value is not None and not self.raw_thresholds and not 0.0 <= value <= 1.0:
                raise ConfigError(
                    f"{where}: {key} {value:g} is outside 0-1: thresholds are in score "
                    "units, as on the command line (0.5 = the trained threshold); for raw "
                    "score units add raw_thresholds = true (or --raw-thresholds)"
                )
        for key, low in (("min_area", 0), ("max_frames", 1)):
            value = getattr(self, key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < low
            ):
                raise ConfigError(f"{where}: {key} must be an integer >= {low}, got {value!r}")
        if (
            isinstance(self.snapshot_interval, bool)
            or not isinstance(self.snapshot_interval, (int, float))
            or not self.snapshot_interval >= 0
        ):
            raise ConfigError(
                f"{where}: snapshot_interval must be a number >= 0, got {self.snapshot_interval!r}"
            )
        for key in ("snapshot_overlay", "all_frames", "raw_thresholds"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{where}: {key} must be true or false")

    def resolved_thresholds(
        self, metadata: ModelMetadata | None
    ) -> tuple[float | None, float | None]:
        """(image, pixel) thresholds in raw score units (None: the model's)."""
        if self.raw_thresholds:
            return self.image_threshold, self.pixel_threshold
        if metadata is None:
            raise ConfigError(
                f"camera {self.name!r}: thresholds in 0-1 score units need the model's "
                "metadata; give raw thresholds (raw_thresholds = true)"
            )
        # Scores are (raw - trained) / scale + 0.5: 0.5 is the trained threshold itself.
        return (
            _raw(self.image_threshold, metadata.image_threshold, metadata.image_scale),
            _raw(self.pixel_threshold, metadata.pixel_threshold, metadata.pixel_scale),
        )


def _raw(score: float | None, trained: float, scale: float) -> float | None:
    return None if score is None else trained + (score - 0.5) * scale


CAMERA_KEYS = tuple(f.name for f in fields(Camera))
_PATH_KEYS = ("output", "snapshots")


def parse_source_arg(text: str, position: int) -> tuple[str, str]:
    """``NAME=SPEC`` or a bare ``SPEC`` (named ``cam<position>``) from ``--source``.

    A spec that exists as a file (``a=b.mp4``) or contains ``://`` before the ``=`` is taken
    whole, so URLs with query strings need no name.
    """
    match = _NAMED_SOURCE.match(text)
    if match and not os.path.exists(text):
        return match.group(1), match.group(2)
    return f"cam{position}", text


def cameras_from_sources(specs: list[str], **defaults: Any) -> list[Camera]:
    """Cameras for ``--source`` arguments; ``defaults`` are the shared settings."""
    cameras = [
        Camera(name, spec, **defaults)
        for name, spec in (parse_source_arg(text, i + 1) for i, text in enumerate(specs))
    ]
    check_unique(cameras, "--source")
    return cameras


def load_config(path: str | os.PathLike[str], **defaults: Any) -> list[Camera]:
    """The cameras of a TOML file; ``defaults`` (e.g. from the command line) come before the
    file's ``[defaults]``, which come before each camera's own keys. Thresholds are in the
    command line's 0-1 score units unless ``raw_thresholds = true``."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"defaults", "camera"}
    if unknown:
        raise ConfigError(
            f"config {path}: unknown section(s) {', '.join(sorted(unknown))}; "
            "use [defaults] and [[camera]]"
        )
    shared = data.get("defaults", {})
    entries = data.get("camera", [])
    if not isinstance(shared, dict):
        raise ConfigError(f"config {path}: 'defaults' must be a table ([defaults])")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            f"config {path}: no camera; add one [[camera]] table per camera "
            "with at least name and source"
        )
    _check_keys(shared, f"config {path}, [defaults]", allowed=set(CAMERA_KEYS) - {"name", "source"})
    cameras = []
    for number, entry in enumerate(entries, 1):
        where = f"config {path}, camera #{number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table ([[camera]])")
        _check_keys(entry, where, allowed=set(CAMERA_KEYS))
        if "name" not in entry or "source" not in entry:
            raise ConfigError(f"{where}: needs both 'name' and 'source'")
        settings = {"raw_thresholds": False, **defaults, **shared, **entry}
        for key in _PATH_KEYS:
            if settings.get(key) is not None:
                if not isinstance(settings[key], str):
                    raise ConfigError(f"{where}: {key} must be a path string")
                settings[key] = path.parent / Path(settings[key]).expanduser()
        source = settings["source"]
        if isinstance(source, str) and "://" not in source and not source.strip().isdigit():
            candidate = Path(source).expanduser()
            settings["source"] = str(
                candidate if candidate.is_absolute() else path.parent / candidate
            )
        try:
            cameras.append(Camera(**settings))
        except ConfigError as exc:
            raise ConfigError(f"config {path}: {exc}") from None
    check_unique(cameras, f"config {path}")
    return cameras


def per_camera_path(template: Path | None, name: str, many: bool) -> Path | None:
    """``--output out.mp4`` for several cameras: ``out_{source}.mp4`` names the camera where
    it says ``{source}``; otherwise the name goes before the suffix (``out-line1.mp4``)."""
    if template is None:
        return None
    text = str(template)
    if "{source}" in text:
        return Path(text.replace("{source}", name))
    if not many:
        return template
    return template.with_name(f"{template.stem}-{name}{template.suffix}")


def with_outputs(
    cameras: list[Camera], output: Path | None, snapshots: Path | None
) -> list[Camera]:
    """Give cameras without their own outputs the command line's, one file/folder each."""
    many = len(cameras) > 1
    return [
        replace(
            camera,
            output=camera.output or per_camera_path(output, camera.name, many),
            snapshots=camera.snapshots or per_camera_path(snapshots, camera.name, many),
        )
        for camera in cameras
    ]


def check_unique(cameras: list[Camera], where: str) -> None:
    seen: set[str] = set()
    for camera in cameras:
        if camera.name in seen:
            raise ConfigError(
                f"{where}: two cameras are named {camera.name!r}; names must be "
                "unique (they name events, outputs and metrics)"
            )
        seen.add(camera.name)
    for kind in ("output", "snapshots"):
        targets = [getattr(c, kind) for c in cameras if getattr(c, kind) is not None]
        resolved = [t.resolve() for t in targets]
        if len(set(resolved)) != len(resolved):
            raise ConfigError(
                f"{where}: two cameras write {kind} to the same place; give each "
                f"its own (or use {{source}} in the path)"
            )


def _check_keys(table: dict[str, Any], where: str, allowed: set[str]) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(k for k in CAMERA_KEYS if k in allowed)}"
        )
