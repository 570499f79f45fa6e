"""A procedural brushed-metal surface and the light that falls on it.

The surface is split into two parts, as a camera on a production line sees it:

* the *albedo* belongs to the material (brushing streaks, uneven finish, defects) and moves
  with it;
* the *lighting* belongs to the camera station (overall gain, a gradient, the bright band a
  line light leaves on brushed metal) and stays put while the material slides past.

Both the demo dataset and the demo video are rendered from these two functions, at the same
field of view (:data:`VIEW_SHAPE`), so a model trained on the dataset sees the video frames at
the scale it was trained on. Everything is deterministic for a given random generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# The camera's field of view in material pixels (height, width): one video frame.
VIEW_SHAPE = (480, 640)

# Metal is a little cooler than neutral grey (BGR multipliers).
METAL_TINT = np.array([1.03, 1.0, 0.96], dtype=np.float32)
BASE_ALBEDO = 0.55
SENSOR_NOISE = 0.006  # std of per-pixel camera noise, in [0, 1] units


def _unit_noise(
    shape: tuple[int, int], rng: np.random.Generator, sigma_x: float, sigma_y: float
) -> np.ndarray:
    """Gaussian noise blurred anisotropically and scaled back to unit standard deviation."""
    noise: np.ndarray = rng.standard_normal(shape, dtype=np.float32)
    noise = cv2.GaussianBlur(
        noise, (0, 0), sigmaX=sigma_x, sigmaY=sigma_y, borderType=cv2.BORDER_REFLECT
    )
    return noise / max(float(noise.std()), 1e-6)


def metal_albedo(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Brushed-metal albedo: float32 HxWx3 (BGR) around :data:`BASE_ALBEDO`.

    Statistically the same everywhere (a texture), brushed along the x axis.
    """
    h, w = shape
    if h < 8 or w < 8:
        raise ValueError(f"surface shape must be at least 8x8 pixels, got {shape}")
    # Each layer is made at a reduced size along the directions it is smooth in and scaled up:
    # same look, a fraction of the blur cost (video sheets are thousands of pixels long).
    fine = cv2.resize(
        _unit_noise((h, max(w // 3, 2)), rng, 6.0, 0.9), (w, h), interpolation=cv2.INTER_LINEAR
    )
    bh, bw = max(h // 4, 2), max(w // 4, 2)
    bands = cv2.resize(
        _unit_noise((bh, bw), rng, 15.0, 1.0), (w, h), interpolation=cv2.INTER_LINEAR
    )
    wh, ww = max(h // 48, 2), max(w // 48, 2)
    waviness = cv2.resize(
        _unit_noise((wh, ww), rng, 1.0, 1.0), (w, h), interpolation=cv2.INTER_CUBIC
    )
    grey = BASE_ALBEDO + 0.045 * fine + 0.03 * bands + 0.025 * waviness
    albedo: np.ndarray = grey[:, :, None] * METAL_TINT
    return albedo


def rotated_albedo(
    shape: tuple[int, int], rng: np.random.Generator, max_angle_deg: float
) -> np.ndarray:
    """A patch of metal whose brushing direction is turned by up to ``max_angle_deg``."""
    h, w = shape
    margin = int(np.ceil(0.5 * (h + w) * np.sin(np.radians(abs(max_angle_deg))))) + 2
    big = metal_albedo((h + 2 * margin, w + 2 * margin), rng)
    angle = float(rng.uniform(-max_angle_deg, max_angle_deg))
    centre = (big.shape[1] / 2.0, big.shape[0] / 2.0)
    rotation = cv2.getRotationMatrix2D(centre, angle, 1.0)
    turned = cv2.warpAffine(
        big,
        rotation,
        (big.shape[1], big.shape[0]),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    return np.ascontiguousarray(turned[margin : margin + h, margin : margin + w])


@dataclass(frozen=True)
class Lighting:
    """The light at the camera station, in normalised view coordinates (-1..1)."""

    gain: float = 1.0
    gradient_x: float = 0.0
    gradient_y: float = 0.0
    band_centre: float = 0.0  # y of the line light's reflection
    band_width: float = 0.3
    band_strength: float = 0.12

    @staticmethod
    def random(rng: np.random.Generator, variation: float = 1.0) -> Lighting:
        """A plausible station light; ``variation`` scales how far it strays from nominal."""
        v = variation
        return Lighting(
            gain=1.0 + v * float(rng.uniform(-0.06, 0.06)),
            gradient_x=v * float(rng.uniform(-0.06, 0.06)),
            gradient_y=v * float(rng.uniform(-0.06, 0.06)),
            band_centre=v * float(rng.uniform(-0.4, 0.4)),
            band_width=0.3 + v * float(rng.uniform(-0.06, 0.06)),
            band_strength=0.12 + v * float(rng.uniform(-0.03, 0.03)),
        )

    def field(self, shape: tuple[int, int]) -> np.ndarray:
        """The multiplicative light field, float32 HxW."""
        h, w = shape
        y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
        x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
        band = self.band_strength * np.exp(-(((y - self.band_centre) / self.band_width) ** 2))
        light: np.ndarray = (
            self.gain * (1.0 + self.gradient_x * x + self.gradient_y * y) + band
        ).astype(np.float32)
        return light


def expose(albedo: np.ndarray, lighting: Lighting, rng: np.random.Generator) -> np.ndarray:
    """Photograph lit material: albedo x light + sensor noise -> uint8 BGR image."""
    h, w = albedo.shape[:2]
    light = lighting.field((h, w))[:, :, None]
    # Uniform noise of the same spread as Gaussian sensor noise: looks alike, half the cost.
    noise = rng.random(albedo.shape, dtype=np.float32) - np.float32(0.5)
    image = (albedo * light + np.float32(SENSOR_NOISE * np.sqrt(12.0)) * noise) * 255.0 + 0.5
    photo: np.ndarray = np.clip(image, 0, 255).astype(np.uint8)
    return photo
