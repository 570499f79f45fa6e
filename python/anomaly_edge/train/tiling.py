"""Training on tiles: when to tile, the tile data, tiled evaluation (any model).

A single resized view throws away what a large image shows: a 2448 x 2048 frame shrunk to
256 x 256 turns a 15 px defect into a 1-2 px speck. A tiled model keeps the frame at (near)
native resolution and cuts it into overlapping tiles of the network's input size
(:class:`anomaly_edge.tiles.TileLayout`); all tiles of a frame are one batch, and their maps
are stitched (in C++) into one frame map before scoring.

* :func:`choose_layout` turns the ``tile`` option (``"auto"``, ``"off"``, ``"RxC"`` or a
  :class:`TileLayout`) and the training images' median size into a layout (or ``None``).
* :class:`TileFrames` reads images as tile batches ``[T, 3, h, w]`` with masks at frame size.
* Each model fits on tiles in its own way (PaDiM: :mod:`anomaly_edge.train.models.padim.tiled`).
* :func:`predict_tiled` evaluates a module on whole frames, maps stitched as the runtime does.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from anomaly_edge.tiles import DEFAULT_OVERLAP, TileLayout, parse_tile_option, tiles_along
from anomaly_edge.train.data import Sample, read_mask, read_rgb
from anomaly_edge.train.evaluate import Predictions

# moved to the PaDiM plug-in; imported here so that older imports keep working
from anomaly_edge.train.models.padim.tiled import (  # noqa: F401
    DEFAULT_TILE_GAUSSIANS,
    TILE_GAUSSIANS,
    TilePositionPadim,
    resolve_tile_gaussians,
)

# `auto` tiles when the training images are at least this many times the network input on
# both sides, i.e. a single view would shrink them by that much. Measured at the two ends: at
# 2x (metal_plate, 512 px) 3x3 tiles lost image AUROC (0.963 -> 0.943) for a little pixel
# accuracy; at 8-10x (2448x2048 frames) tiles find 8-20 px holes the single view cannot see
# (README, "Tiles for large frames"). 3 sits between, on the side of the single view.
AUTO_MIN_FACTOR = 3.0
# `auto` keeps native resolution up to this many tiles a frame, and shrinks the frame beyond.
AUTO_MAX_TILES = 32
SIZE_PROBES = 25  # images read to find the median training image size

TileOption = str | TileLayout | None


# ---- choosing the layout ---------------------------------------------------------------------


def median_image_size(samples: Sequence[Sample], probes: int = SIZE_PROBES) -> tuple[int, int]:
    """Median (height, width) of up to ``probes`` images spread over ``samples``."""
    if not samples:
        raise ValueError("no training images to measure")
    step = max(1, len(samples) // probes)
    sizes = [read_rgb(s.path).shape[:2] for s in samples[::step][:probes]]
    return (
        int(statistics.median(h for h, _ in sizes)),
        int(statistics.median(w for _, w in sizes)),
    )


def choose_layout(
    tile: TileOption,
    image_size: tuple[int, int],
    native: tuple[int, int],
    overlap: float = DEFAULT_OVERLAP,
    blend: str = "cosine",
) -> TileLayout | None:
    """The tile layout for training images of median size ``native`` and a network input of
    ``image_size`` (one tile), or ``None`` for a single view.

    * ``"off"``/``None``: a single view.
    * ``"auto"``: tiles when ``native`` is at least :data:`AUTO_MIN_FACTOR` times
      ``image_size`` on both sides; frames keep their native size unless that takes more than
      :data:`AUTO_MAX_TILES` tiles, then they shrink (aspect kept) until it does not.
    * ``"RxC"`` or ``(rows, cols)``: that grid; frames are as large as the grid covers with
      ``overlap``, but no larger than native (and at least one tile).
    * a :class:`TileLayout`: used as it is (its tile must be ``image_size``).
    """
    if tile is None:
        return None
    if isinstance(tile, TileLayout):
        if tile.tile_size != tuple(image_size):
            raise ValueError(
                f"the tile layout's tiles are {tile.tile_size}, the network input "
                f"{tuple(image_size)}: they must match"
            )
        return tile if tile.count > 1 else None
    option = parse_tile_option(tile) if isinstance(tile, str) else tuple(tile)
    th, tw = image_size
    nh, nw = native
    if option == "off":
        return None
    if option == "auto":
        if min(nh / th, nw / tw) < AUTO_MIN_FACTOR:
            return None
        scale = 1.0
        while True:
            frame = (max(th, round(nh * scale)), max(tw, round(nw * scale)))
            if (
                tiles_along(frame[0], th, overlap) * tiles_along(frame[1], tw, overlap)
                <= AUTO_MAX_TILES
            ):
                return TileLayout.covering(frame, image_size, overlap, blend)
            scale *= 0.95
    rows, cols = (int(n) for n in option)
    _check_tiles_fit((rows, cols), (th, tw), (nh, nw), overlap)
    covered = [t + (n - 1) * math.floor(t * (1.0 - overlap)) for t, n in ((th, rows), (tw, cols))]
    scale = min(1.0, covered[0] / nh, covered[1] / nw)
    frame = (
        th if rows == 1 else max(th + rows - 1, round(nh * scale)),
        tw if cols == 1 else max(tw + cols - 1, round(nw * scale)),
    )
    layout = TileLayout(frame, image_size, (rows, cols), blend)
    return layout if layout.count > 1 else None


def _check_tiles_fit(
    grid: tuple[int, int], tile: tuple[int, int], native: tuple[int, int], overlap: float
) -> None:
    """Refuse a grid whose tiles are as large as the training images along a tiled side.

    Each tile is the network input. Where it already spans the images' native size, the
    tiles along that side would each see (nearly) the whole side, upscaled: n times the
    cost for the same pixels (ball_screw, 230 x 565, 1x3 tiles of 256 x 626: 2.7x the
    training time at the same metrics). The message names an input that does fit.
    """
    too_large = [
        side
        for side, count, t, n in zip(("height", "width"), grid, tile, native, strict=True)
        if count > 1 and t >= n
    ]
    if not too_large:
        return
    fits = [
        max(32, _STRIDE * math.floor(n / (1 + (count - 1) * (1 - overlap)) / _STRIDE))
        for count, n in zip(grid, native, strict=True)
    ]
    raise ValueError(
        f"tile {grid[0]}x{grid[1]}: each tile is the network input, {tile[0]}x{tile[1]} "
        f"(height x width), as large as the training images ({native[0]}x{native[1]}) along "
        f"the {' and '.join(too_large)}, so the tiles would see the same pixels, upscaled, "
        f"at {grid[0] * grid[1]} times the cost. Give a smaller input (image size "
        f"{fits[0]}x{fits[1]} fits this grid), fewer tiles, or no tiling"
    )


_STRIDE = 16  # the suggested input is a multiple of the backbones' usual deepest stride


# ---- data ------------------------------------------------------------------------------------


class TileFrames(torch.utils.data.Dataset[dict[str, Any]]):
    """Samples as tile batches: ``{"image": [T, 3, h, w] normalised, "mask": [1, H, W] 0/1 at
    the layout's frame size, "label", "has_mask", "index"}``.

    ``cache=True`` keeps the resized uint8 frames (for multi-epoch training)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        layout: TileLayout,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        cache: bool = False,
    ) -> None:
        self.samples = tuple(samples)
        self.layout = layout
        self.mean = torch.tensor([float(v) for v in mean]).reshape(1, 3, 1, 1)
        self.std = torch.tensor([float(v) for v in std]).reshape(1, 3, 1, 1)
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def tiles(self, index: int) -> np.ndarray:
        """uint8 RGB tiles ``[T, h, w, 3]`` of sample ``index`` (cut as the runtime cuts)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        tiles = self.layout.cut(read_rgb(self.samples[index].path))
        if self._cache is not None:
            self._cache[index] = tiles
        return tiles

    def __getitem__(self, index: int) -> dict[str, Any]:
        tiles = torch.from_numpy(self.tiles(index)).permute(0, 3, 1, 2).float()
        sample = self.samples[index]
        height, width = self.layout.frame_size
        mask = torch.zeros((1, height, width), dtype=torch.float32)
        if sample.mask_path is not None:
            resized = cv2.resize(
                read_mask(sample.mask_path).astype(np.uint8),
                (width, height),
                interpolation=cv2.INTER_NEAREST,
            )
            mask = torch.from_numpy(resized).float()[None]
        return {
            "image": (tiles - self.mean) / self.std,
            "mask": mask,
            "label": sample.label,
            "has_mask": sample.label == 0 or sample.mask_path is not None,
            "index": index,
        }


def frame_batches(
    frames: TileFrames, batch_size: int = 16, threads: int = 2
) -> Iterator[dict[str, Any]]:
    """Batches of whole frames, tiles flattened frame by frame: ``image`` is
    ``[B * T, 3, h, w]``; decoding runs in threads ahead of the caller."""
    from anomaly_edge.train.data import iter_batches

    per_batch = max(1, batch_size // frames.layout.count)
    for batch in iter_batches(frames, per_batch, threads):  # type: ignore[arg-type]
        batch["image"] = batch["image"].flatten(0, 1)
        yield batch


def tile_images(frames: TileFrames, batch_size: int = 8) -> Iterator[dict[str, Any]]:
    """Every tile of every frame as an image of its own (for STFPM), ``batch_size`` a batch."""
    pending: list[torch.Tensor] = []
    for batch in frame_batches(frames, batch_size):
        pending.extend(batch["image"])
        while len(pending) >= batch_size:
            yield {"image": torch.stack(pending[:batch_size])}
            del pending[:batch_size]
    if pending:
        yield {"image": torch.stack(pending)}


# ---- evaluation --------------------------------------------------------------------------------


def predict_tiled(
    model: nn.Module,
    samples: Sequence[Sample],
    layout: TileLayout,
    mean: Sequence[float],
    std: Sequence[float],
    frames_per_batch: int = 2,
    progress: Callable[[int], None] | None = None,
) -> Predictions:
    """Run ``model`` over whole frames: tiles in, tile maps stitched into frame maps (at the
    layout's frame size, with the runtime's C++ stitch), masks at the same size."""
    samples = tuple(samples)
    count = len(samples)
    height, width = layout.frame_size
    maps = np.empty((count, height, width), dtype=np.float32)
    masks = np.zeros((count, height, width), dtype=bool)
    has_mask = np.ones(count, dtype=bool)
    frames = TileFrames(samples, layout, mean, std)
    model.eval()
    with torch.inference_mode():
        for batch in frame_batches(frames, frames_per_batch * layout.count):
            index = batch["index"].numpy()
            tile_maps = model(batch["image"])[:, 0].float().numpy()
            for k, i in enumerate(index):
                maps[i] = layout.stitch(tile_maps[k * layout.count : (k + 1) * layout.count])
            masks[index] = batch["mask"][:, 0].numpy() > 0.5
            has_mask[index] = batch["has_mask"].numpy()
            if progress is not None:
                progress(len(index))
    scores = maps.reshape(count, -1).max(axis=1) if count else np.empty(0, np.float32)
    labels = np.array([s.label for s in samples], dtype=np.int64)
    return Predictions(samples, scores, maps, masks, labels, has_mask)


def tile_summary(
    layout: TileLayout | None, native: tuple[int, int] | None, gaussians: str | None
) -> dict[str, Any] | None:
    """What metrics.json records under ``"tiles"`` (``None`` for a single view)."""
    if layout is None:
        return None
    return {
        "grid": list(layout.grid),
        "frame_size": list(layout.frame_size),
        "tile_size": list(layout.tile_size),
        "overlap": list(layout.overlap),
        "blend": layout.blend,
        "count": layout.count,
        "gaussians": gaussians,
        "native_size": list(native) if native else None,
    }
