"""Tiles of large frames: cut a frame into overlapping network-sized tiles, stitch their maps.

A tiled model sees a frame at (near) native resolution instead of one shrunken view: the frame
is resized to the layout's ``frame_size`` (what training used), cut into a ``rows x cols`` grid
of ``tile_size`` tiles that overlap, and all tiles go through the network as one batch. The C++
post-processor blends the tile maps back into one frame map
(:func:`anomaly_edge.postprocess.stitch_tiles`), which is then scored, thresholded and split
into regions like any single-view map, so a defect across a tile border is one region.

    layout = TileLayout.covering(frame_size=(1024, 1224), tile_size=(256, 256))
    batch = layout.cut(frame)            # (tiles, 256, 256, C) uint8, one inference call
    frame_map = layout.stitch(maps)      # (1024, 1224) float32

No torch here: training (:mod:`anomaly_edge.train.tiling`) and the runtime share this module.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import numpy as np

from anomaly_edge.errors import InvalidInputError
from anomaly_edge.images import resize_for_network
from anomaly_edge.postprocess import stitch_tiles

BLENDS = ("cosine", "average")
DEFAULT_OVERLAP = 0.125  # share of a tile's side shared with each neighbour, at least
MAX_TILES = 64  # a bigger batch is a mistake (or a frame that should be shrunk first)

Size = tuple[int, int]


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of a frame lie.

    Attributes:
        frame_size: (height, width) every frame is resized to before it is cut.
        tile_size: (height, width) of one tile: the network input.
        grid: (rows, cols) of tiles; tile (r, c) is batch item ``r * cols + c``.
        blend: how overlapping tile maps are merged: ``"cosine"`` (weights fall smoothly to
            the tile edge across each overlap, no seams) or ``"average"``.

    Tile starts are spread evenly, the first at 0 and the last ending on the frame's edge.
    """

    frame_size: Size
    tile_size: Size
    grid: Size
    blend: str = "cosine"

    def __post_init__(self) -> None:
        for name in ("frame_size", "tile_size", "grid"):
            value = getattr(self, name)
            try:
                pair = (int(value[0]), int(value[1]))
            except (TypeError, ValueError, IndexError):
                raise InvalidInputError(
                    f"tile layout {name} must be a pair of ints, got {value!r}"
                ) from None
            if len(value) != 2 or min(pair) < 1:
                raise InvalidInputError(
                    f"tile layout {name} must be two positive ints, got {value!r}"
                )
            object.__setattr__(self, name, pair)
        if self.blend not in BLENDS:
            raise InvalidInputError(
                f"unknown tile blend {self.blend!r}: choose one of {', '.join(BLENDS)}"
            )
        if self.count > MAX_TILES:
            raise InvalidInputError(
                f"a {self.grid[0]}x{self.grid[1]} grid is {self.count} "
                f"tiles; at most {MAX_TILES} go through the network at once"
            )
        for axis, frame, tile, count in zip(
            ("height", "width"), self.frame_size, self.tile_size, self.grid, strict=True
        ):
            if frame < tile:
                raise InvalidInputError(
                    f"tile {axis} {tile} is larger than the frame {axis} "
                    f"{frame}: tiles must lie inside the frame"
                )
            if count == 1 and frame != tile:
                raise InvalidInputError(
                    f"one tile of {axis} {tile} cannot cover a frame "
                    f"{axis} of {frame}: use more tiles"
                )
            if count > 1 and math.ceil((frame - tile) / (count - 1)) > tile:
                raise InvalidInputError(
                    f"{count} tiles of {axis} {tile} leave gaps in a frame "
                    f"{axis} of {frame}: use more or larger tiles"
                )
            if count > 1 and frame == tile:
                raise InvalidInputError(
                    f"{count} tiles of {axis} {tile} in a frame {axis} of "
                    f"{frame} would all be the same tile"
                )

    @classmethod
    def covering(
        cls,
        frame_size: Size,
        tile_size: Size,
        overlap: float = DEFAULT_OVERLAP,
        blend: str = "cosine",
    ) -> TileLayout:
        """The smallest grid of ``tile_size`` tiles over ``frame_size`` in which neighbours
        share at least ``overlap`` of a tile's side."""
        if not 0.0 <= overlap < 1.0:
            raise InvalidInputError(f"tile overlap must be in [0, 1), got {overlap}")
        grid = tuple(
            tiles_along(frame, tile, overlap)
            for frame, tile in zip(frame_size, tile_size, strict=True)
        )
        return cls(frame_size, tile_size, grid, blend)  # type: ignore[arg-type]

    # ---- geometry ----------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Tiles per frame: the static batch size of the network."""
        return self.grid[0] * self.grid[1]

    @property
    def ys(self) -> list[int]:
        """First row of each tile row."""
        return _starts(self.frame_size[0], self.tile_size[0], self.grid[0])

    @property
    def xs(self) -> list[int]:
        """First column of each tile column."""
        return _starts(self.frame_size[1], self.tile_size[1], self.grid[1])

    @property
    def overlap(self) -> Size:
        """Smallest overlap of neighbouring tiles in pixels, (rows, cols); 0 without neighbours."""
        return (_min_overlap(self.ys, self.tile_size[0]), _min_overlap(self.xs, self.tile_size[1]))

    # ---- frames and maps ---------------------------------------------------------------------

    def cut(self, frame: np.ndarray, channels: int | None = None) -> np.ndarray:
        """A uint8 ``H x W x C`` frame -> ``(tiles, h, w, C)`` contiguous tile batch.

        The frame is first resized to :attr:`frame_size` (with the resize training uses).
        ``channels=3`` expands a grey frame for a colour model (after resizing: less work).
        """
        if frame.ndim != 3:
            raise InvalidInputError(f"cut() takes an H x W x C frame, got shape {frame.shape}")
        resized = resize_for_network(
            frame if frame.shape[2] != 1 else frame[:, :, 0], self.frame_size
        )
        if resized.ndim == 2:
            resized = resized[:, :, None]
        h, w = self.tile_size
        batch = np.empty((self.count, h, w, resized.shape[2]), dtype=resized.dtype)
        cols = self.grid[1]
        for r, y in enumerate(self.ys):
            for c, x in enumerate(self.xs):
                batch[r * cols + c] = resized[y : y + h, x : x + w]
        if channels == 3 and batch.shape[3] == 1:
            batch = np.repeat(batch, 3, axis=3)  # grey: equal channels in any order
        return batch

    def stitch(self, tile_maps: np.ndarray) -> np.ndarray:
        """``(tiles, h, w)`` (or ``(tiles, 1, h, w)``) float32 maps -> the frame map."""
        return stitch_tiles(tile_maps, self.ys, self.xs, self.frame_size, self.blend)

    def describe(self) -> str:
        (fh, fw), (th, tw), (rows, cols) = self.frame_size, self.tile_size, self.grid
        oy, ox = self.overlap
        return (
            f"{rows}x{cols} tiles of {tw}x{th} over {fw}x{fh} frames "
            f"(overlap >= {ox}x{oy} px, {self.blend} blend)"
        )


def parse_tile_option(text: str) -> str | tuple[int, int]:
    """``"auto"``, ``"off"`` or a grid ``"RxC"`` (e.g. ``"4x5"``); ValueError otherwise."""
    value = text.strip().lower()
    if value in ("auto", "off"):
        return value
    match = re.fullmatch(r"(\d+)\s*[x×]\s*(\d+)", value)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise ValueError(f"tile option {text!r}: give auto, off, or a grid ROWSxCOLS such as 3x4")
    return int(match[1]), int(match[2])


def tiles_along(frame: int, tile: int, overlap: float = DEFAULT_OVERLAP) -> int:
    """Fewest tiles of ``tile`` pixels over ``frame`` pixels sharing >= ``overlap`` of a tile."""
    if frame <= tile:
        return 1
    step = max(1, math.floor(tile * (1.0 - overlap)))
    return math.ceil((frame - tile) / step) + 1


def _starts(frame: int, tile: int, count: int) -> list[int]:
    if count == 1:
        return [0]
    return [round(i * (frame - tile) / (count - 1)) for i in range(count)]


def _min_overlap(starts: list[int], tile: int) -> int:
    if len(starts) < 2:
        return 0
    return tile - max(b - a for a, b in itertools.pairwise(starts))
