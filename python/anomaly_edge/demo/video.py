"""A short video of brushed metal sliding past a fixed camera, with defects at known frames.

The material is one long sheet (:func:`~anomaly_edge.demo.surface.metal_albedo`) with defects
painted along it; each frame is the camera's view of the sheet, moved on by ``speed`` pixels,
under the station's fixed light (a slight flicker, a pixel or two of vibration). The defects are
spaced so that normal stretches separate them, and :class:`VideoTruth` says in which frames each
one is in view.

MJPG in .avi is the default: every frame is coded on its own, so OpenCV reads back exactly as
many frames as were written, and at the quality used here the compression leaves the texture
as the model saw it in training. ``.mp4`` (mp4v) is available for smaller files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anomaly_edge.demo.defects import DEFECT_RADIUS, DEFECT_TYPES, paint_defect
from anomaly_edge.demo.surface import VIEW_SHAPE, Lighting, expose, metal_albedo
from anomaly_edge.errors import InvalidInputError

CODECS = {".avi": "MJPG", ".mp4": "mp4v"}
JPEG_QUALITY = 95
VIBRATION_PX = 2  # the camera shakes this many pixels up and down at most


@dataclass
class VideoTruth:
    """Where the defects are in a rendered video."""

    path: Path
    n_frames: int
    fps: float
    frame_size: tuple[int, int]  # (height, width)
    anomalous_frames: list[int]  # frames showing at least min_visible_px defect pixels
    # kind, first_frame, last_frame, area_px
    defects: list[dict[str, Any]] = field(default_factory=list)
    partial_frames: list[int] = field(default_factory=list)  # only a sliver of a defect in view

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["path"] = str(self.path)
        return json.dumps(data, indent=2) + "\n"


def _check(
    seconds: float,
    fps: float,
    speed: int,
    frame_size: tuple[int, int],
    defects: Sequence[str],
    suffix: str,
) -> int:
    if suffix not in CODECS:
        raise InvalidInputError(
            f"video file must end in {' or '.join(CODECS)} (got {suffix or 'no extension'!r})"
        )
    if not (0 < fps <= 120 and 0 < seconds <= 600):
        raise InvalidInputError(
            f"fps must be in (0, 120] and seconds in (0, 600]; got {fps}, {seconds}"
        )
    if speed < 1:
        raise InvalidInputError(f"speed must be at least 1 pixel per frame, got {speed}")
    if frame_size[0] < 64 or frame_size[1] < 64:
        raise InvalidInputError(f"frame_size must be at least 64x64, got {frame_size}")
    unknown = [d for d in defects if d not in DEFECT_TYPES]
    if unknown:
        raise InvalidInputError(f"unknown defect types {unknown}; choose from {DEFECT_TYPES}")
    n_frames = round(seconds * fps)
    if n_frames < 2:
        raise InvalidInputError("the video needs at least 2 frames; raise seconds or fps")
    return n_frames


def render_video(
    path: str | os.PathLike[str],
    *,
    seconds: float = 10.0,
    fps: float = 12.0,
    speed: int = 32,
    frame_size: tuple[int, int] = VIEW_SHAPE,
    defects: Sequence[str] = DEFECT_TYPES,
    seed: int = 0,
    min_visible_px: int | None = None,
    quality: int = JPEG_QUALITY,
    clean_start: float = 0.0,
) -> VideoTruth:
    """Render the demo video to ``path`` (.avi or .mp4, written atomically) and say where the
    defects are.

    ``frame_size`` is (height, width); keep the 4:3 shape of the dataset's views so that the
    model sees the material as it did in training. ``speed`` is how many pixels the material
    moves per frame; one defect of each kind in ``defects`` passes the camera, in that order,
    evenly spread over the video. A frame counts as anomalous when at least ``min_visible_px``
    pixels of a defect are in view (default: 40 at 480 lines, scaled with the frame area);
    frames with less of a defect in view are listed as ``partial_frames``. ``quality`` is the
    JPEG quality of .avi frames (MJPG): the default keeps the texture as training saw it; a
    low one (e.g. 20) imitates a camera behind a lossy codec. The first ``clean_start``
    seconds show no defect (normal production to calibrate on); the defects pass after them.
    """
    if not 1 <= quality <= 100:
        raise InvalidInputError(f"quality must be in 1-100, got {quality}")
    path = Path(path)
    n_frames = _check(seconds, fps, speed, frame_size, defects, path.suffix.lower())
    height, width = frame_size
    lead = round(clean_start * fps)
    if not 0 <= lead <= n_frames - 2:
        raise InvalidInputError(
            f"clean_start must be at least 0 and leave some of the "
            f"{seconds:g} s for the defects, got {clean_start}"
        )
    sheet_rng, light_rng, defect_rng, frame_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, 99]).spawn(4)
    )
    sheet_shape = (height + 2 * VIBRATION_PX, width + speed * (n_frames - 1))
    scale = height / VIEW_SHAPE[0]
    # The texture is made at the dataset's view scale and resized, so the model sees the same
    # material whatever the frame size.
    sheet = metal_albedo((round(sheet_shape[0] / scale), round(sheet_shape[1] / scale)), sheet_rng)
    if sheet.shape[:2] != sheet_shape:
        sheet = cv2.resize(sheet, sheet_shape[::-1], interpolation=cv2.INTER_AREA)
    labels = np.zeros(sheet_shape, np.uint8)  # 0 = normal, k + 1 = defect k
    if min_visible_px is None:
        min_visible_px = max(1, round(40 * scale**2))
    margin = min(round(DEFECT_RADIUS * 0.8 * scale), height // 2 - 1)
    for k, kind in enumerate(defects):
        # Defect k is in the middle of the view at frame lead + (k + 0.5) * span / len(defects).
        centre_frame = lead + (k + 0.5) * (n_frames - lead) / len(defects)
        centre_x = speed * centre_frame + width / 2
        centre_y = float(defect_rng.uniform(margin, sheet_shape[0] - margin))
        mask = paint_defect(kind, sheet, defect_rng, scale=scale, centre=(centre_x, centre_y))
        labels[mask] = k + 1

    lighting = Lighting.random(light_rng, variation=0.5)
    visible = np.zeros((n_frames, len(defects)), np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    writer = cv2.VideoWriter(
        str(staging),
        cv2.VideoWriter.fourcc(*CODECS[path.suffix.lower()]),
        float(fps),
        (width, height),
    )
    try:
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write {path.suffix} video here ({staging})")
        writer.set(cv2.VIDEOWRITER_PROP_QUALITY, JPEG_QUALITY)
        for i in range(n_frames):
            x = speed * i
            y = VIBRATION_PX + int(frame_rng.integers(-VIBRATION_PX, VIBRATION_PX + 1))
            view = np.s_[y : y + height, x : x + width]
            flicker = dataclasses.replace(
                lighting, gain=lighting.gain * (1.0 + float(frame_rng.uniform(-0.01, 0.01)))
            )
            frame = expose(sheet[view], flicker, frame_rng)
            if quality < JPEG_QUALITY:
                # OpenCV's writers ignore a quality setting for most codecs: code the frame
                # at the asked quality ourselves (what a camera's lossy encoder leaves).
                coded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
                decoded = cv2.imdecode(coded, cv2.IMREAD_COLOR)
                frame = frame if decoded is None else decoded
            writer.write(frame)
            counts = np.bincount(labels[view].ravel(), minlength=len(defects) + 1)
            visible[i] = counts[1:]
        writer.release()
        os.replace(staging, path)
    finally:
        writer.release()
        staging.unlink(missing_ok=True)

    windows = []
    for k, kind in enumerate(defects):
        frames = np.flatnonzero(visible[:, k] >= min_visible_px)
        windows.append(
            {
                "kind": kind,
                "first_frame": int(frames[0]) if frames.size else None,
                "last_frame": int(frames[-1]) if frames.size else None,
                "area_px": int((labels == k + 1).sum()),
            }
        )
    anomalous = (visible >= min_visible_px).any(axis=1)
    partial = (visible > 0).any(axis=1) & ~anomalous
    return VideoTruth(
        path,
        n_frames,
        float(fps),
        (height, width),
        [int(i) for i in np.flatnonzero(anomalous)],
        windows,
        [int(i) for i in np.flatnonzero(partial)],
    )
