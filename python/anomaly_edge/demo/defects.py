"""Defects painted into metal albedo, each with its exact mask.

Every painter builds its mask first and then changes the albedo only inside it, so the mask is
exactly the set of pixels the defect touched. Sizes are given in view pixels (the field of view
of :data:`~anomaly_edge.demo.surface.VIEW_SHAPE`) and multiplied by ``scale`` when painting into
a smaller image, so a defect looks the same in the dataset and in the video.

The strengths are chosen to be visible to a person looking for them but not glaring: a scratch
is a thin line a little darker or brighter than the streaks around it, a stain is a faint tint.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

DEFECT_TYPES = ("scratch", "hole", "stain", "missing")

# What shows through where a piece of the plate is missing: a dark conveyor belt (BGR).
BACKGROUND_ALBEDO = np.array([0.12, 0.11, 0.10], dtype=np.float32)

# How far (in view pixels, before scaling) a defect may reach from its centre; used to keep
# defects inside an image and to space them out along the video.
DEFECT_RADIUS = 90


def _radius(value: float, scale: float) -> int:
    return max(1, round(value * scale))


def _random_centre(
    shape: tuple[int, int], rng: np.random.Generator, margin: int
) -> tuple[float, float]:
    h, w = shape
    margin = min(margin, h // 2 - 1, w // 2 - 1)
    return float(rng.uniform(margin, w - margin)), float(rng.uniform(margin, h - margin))


def scratch(
    albedo: np.ndarray, rng: np.random.Generator, centre: tuple[float, float], scale: float
) -> np.ndarray:
    """A thin, slightly curved line across the brushing direction, darker or brighter."""
    length = rng.uniform(40, 140) * scale
    # Never parallel to the brushing: a scratch along the grain would be a normal streak.
    angle = np.radians(rng.uniform(25, 155))
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    bend = rng.uniform(-0.15, 0.15) * length
    t = np.linspace(-0.5, 0.5, 24)
    points = (
        np.asarray(centre)[None, :]
        + np.outer(t * length, direction)
        + np.outer((1 - 4 * t**2) * bend, normal)
    )
    mask = np.zeros(albedo.shape[:2], np.uint8)
    thickness = _radius(rng.uniform(1.5, 3.0), scale)
    cv2.polylines(mask, [np.round(points).astype(np.int32)], False, 1, thickness, cv2.LINE_8)
    # A groove darkens; a scratch through the coating shows bare, brighter metal.
    factor = rng.uniform(0.68, 0.85) if rng.random() < 0.6 else rng.uniform(1.15, 1.3)
    inside = mask.astype(bool)
    albedo[inside] *= np.float32(factor)
    return inside


def hole(
    albedo: np.ndarray, rng: np.random.Generator, centre: tuple[float, float], scale: float
) -> np.ndarray:
    """A small round hole: dark inside, with a bright burr around the rim."""
    radius_x = rng.uniform(5, 12) * scale
    radius_y = radius_x * rng.uniform(0.8, 1.2)
    h, w = albedo.shape[:2]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    distance = np.sqrt(((x - centre[0]) / radius_x) ** 2 + ((y - centre[1]) / radius_y) ** 2)
    inside: np.ndarray = distance <= 1.0
    rim = inside & (distance > 0.7)
    # The belt seen through the hole, in the hole's own shadow: darkest at the centre.
    shade = np.float32(rng.uniform(0.35, 0.8))
    bore = inside & ~rim
    albedo[bore] = BACKGROUND_ALBEDO * shade * (1.0 + distance[bore, None])
    albedo[rim] *= np.float32(1.3)
    return inside


def stain(
    albedo: np.ndarray, rng: np.random.Generator, centre: tuple[float, float], scale: float
) -> np.ndarray:
    """An irregular brownish stain (oil, rust) that fades towards its edge."""
    h, w = albedo.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    size = rng.uniform(18, 42) * scale
    for _ in range(int(rng.integers(3, 7))):
        offset = rng.normal(0, 0.45 * size, 2)
        axes = (
            _radius(rng.uniform(0.4, 0.8) * size, 1.0),
            _radius(rng.uniform(0.25, 0.6) * size, 1.0),
        )
        cv2.ellipse(
            mask,
            (round(centre[0] + offset[0]), round(centre[1] + offset[1])),
            axes,
            float(rng.uniform(0, 180)),
            0,
            360,
            1,
            -1,
        )
    inside = mask.astype(bool)
    # Soft inside, but never zero at the edge, so every masked pixel really changes.
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(size / 4, 1.0))
    strength = rng.uniform(0.15, 0.4)
    alpha = strength * (0.35 + 0.65 * np.clip(soft / max(float(soft.max()), 1e-6), 0, 1))
    tint = np.array([0.55, 0.75, 0.95], dtype=np.float32)  # rust/oil: less blue, keeps red
    albedo[inside] *= 1.0 - alpha[inside, None] * (1.0 - tint)
    return inside


def missing(
    albedo: np.ndarray, rng: np.random.Generator, centre: tuple[float, float], scale: float
) -> np.ndarray:
    """A broken-out chunk with jagged edges, showing the belt underneath."""
    radius = rng.uniform(12, 32) * scale
    corners = int(rng.integers(6, 11))
    angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
    radii = radius * rng.uniform(0.55, 1.0, corners)
    points = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1)
    mask = np.zeros(albedo.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1, cv2.LINE_8)
    inside = mask.astype(bool)
    albedo[inside] = BACKGROUND_ALBEDO * np.float32(rng.uniform(0.9, 1.1))
    return inside


PAINTERS: dict[str, Callable[..., np.ndarray]] = {
    "scratch": scratch,
    "hole": hole,
    "stain": stain,
    "missing": missing,
}


def paint_defect(
    kind: str,
    albedo: np.ndarray,
    rng: np.random.Generator,
    *,
    scale: float = 1.0,
    centre: tuple[float, float] | None = None,
) -> np.ndarray:
    """Paint one defect of ``kind`` into ``albedo`` (float32 HxWx3, in place); return its mask.

    The mask is a bool HxW array, True exactly where the albedo was changed. Without a
    ``centre`` the defect is placed at random, wholly inside the image.
    """
    if kind not in PAINTERS:
        raise ValueError(f"unknown defect type {kind!r}; choose one of {', '.join(DEFECT_TYPES)}")
    if albedo.ndim != 3 or albedo.dtype != np.float32:
        raise ValueError("albedo must be a float32 HxWx3 array")
    if centre is None:
        centre = _random_centre(albedo.shape[:2], rng, _radius(DEFECT_RADIUS * 0.8, scale))
    return PAINTERS[kind](albedo, rng, centre, scale)
