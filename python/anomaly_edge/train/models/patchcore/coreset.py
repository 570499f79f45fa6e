"""Greedy coreset selection (k-center greedy), in a random projection, over a stream of patches.

PatchCore (Roth et al., CVPR 2022) keeps a subset of the training patches that covers them
all: each step adds the patch farthest from the subset so far. Distances are measured in a
seeded Gaussian random projection to ``projection_dim`` dimensions (Johnson-Lindenstrauss),
as the paper does, which makes each step one matrix-vector product.

Each step of plain greedy reads every row (``N`` x ``projection_dim`` floats); here a step
reads only the rows the triangle inequality cannot rule out, and runs on one thread (see
:func:`_one_thread`): metal_plate's 55,296 patches to 5,530 took 208 s before both changes
and 20 s after, on this 2-core machine while it was busy. The choice is exactly plain
greedy's (tested).

The fit streams: :class:`StreamingCoreset` holds at most ``pool_limit`` raw patches; when
more arrive, that chunk is reduced to twice the final ratio and set aside, so memory is the
chunk plus about twice the bank, whatever the number of training images (with ``max_count``,
a chunk keeps at most twice that many: each greedy step costs a pass over the chunk). With
fewer patches than ``pool_limit`` (metal_plate 55k, tire 161k and ball_screw 277k at their
default input; not magnetic_tile, 780k) the selection is the paper's single greedy pass over
all patches.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

DEFAULT_PROJECTION_DIM = 128
DEFAULT_POOL_LIMIT = 300_000  # ball_screw (277k patches) and tire fit in one pass
CHUNK_ROWS = 65_536  # rows per projection product (bounds the temporary)


def project(features: torch.Tensor, dims: int, seed: int) -> torch.Tensor:
    """``features [N, D]`` in a seeded Gaussian random projection to ``dims`` (as they are
    when ``D <= dims``)."""
    if features.shape[1] <= dims:
        return features.float()
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(features.shape[1], dims, generator=generator) / math.sqrt(dims)
    parts = torch.split(features, CHUNK_ROWS)
    return torch.cat([part.float() @ matrix for part in parts])


def greedy_coreset(
    features: torch.Tensor,
    count: int,
    projection_dim: int = DEFAULT_PROJECTION_DIM,
    seed: int = 0,
) -> torch.Tensor:
    """Indices of ``count`` rows of ``features [N, D]`` chosen by k-center greedy: the first
    at random (seeded), then always the row farthest from those chosen.

    Exact, but most rows are skipped at each step: a row can only move to the new centre
    ``c`` if ``d(c, o) < 2 d(row, o)`` for the centre ``o`` it is nearest to now (triangle
    inequality), so once the centres cover the data, a step reads a few rows instead of all
    ``N`` (``N`` x ``projection_dim`` floats a step is what makes plain greedy slow).
    """
    total = features.shape[0]
    if count <= 0:
        raise ValueError(f"a coreset needs at least one patch, got count={count}")
    if count >= total:
        return torch.arange(total)
    projected = project(features, projection_dim, seed)
    with _one_thread():
        return _greedy(projected, count, seed)


def _greedy(projected: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    total = projected.shape[0]
    squares = (projected * projected).sum(dim=1)
    nearest = torch.full((total,), math.inf)  # squared distance to the nearest centre
    owner = torch.zeros(total, dtype=torch.long)  # which centre (step) that is
    centres = torch.empty(count, projected.shape[1])
    centre_squares = torch.empty(count)
    chosen = torch.empty(count, dtype=torch.long)
    current = int(torch.randint(total, (1,), generator=torch.Generator().manual_seed(seed)))
    for step in range(count):
        chosen[step] = current
        centre, centre_square = projected[current], squares[current]
        centres[step], centre_squares[step] = centre, centre_square
        rows = None  # all
        if step > 0:
            between = centre_squares[:step] - 2.0 * torch.mv(centres[:step], centre) + centre_square
            # squared form of d(c, o) < 2 d(row, o), with slack for rounding
            bound = 4.0 * PRUNE_SLACK * nearest + 1e-6
            rows = torch.nonzero(between.index_select(0, owner) < bound)[:, 0]
            if rows.numel() > total // 4:  # a gather would cost more than it saves
                rows = None
        if rows is None:
            distance = squares - 2.0 * torch.mv(projected, centre) + centre_square
            closer = distance < nearest
            owner = torch.where(closer, step, owner)
            nearest = torch.minimum(nearest, distance)
        else:
            part = projected.index_select(0, rows)
            distance = squares.index_select(0, rows) - 2.0 * torch.mv(part, centre) + centre_square
            closer = distance < nearest.index_select(0, rows)
            moved = rows[closer]
            nearest.index_copy_(0, moved, distance[closer])
            owner.index_fill_(0, moved, step)
        current = int(nearest.argmax())
    return chosen


PRUNE_SLACK = 1.001  # check a few more rows than the bound needs: rounding never skips one


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The greedy loop is thousands of small memory-bound steps; with two threads on a busy
    machine each one waited on the other (2 ms a step became 15-30 ms), with one it does not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class StreamingCoreset:
    """Collect patches ``[n, D]`` batch by batch and return the coreset of all of them."""

    def __init__(
        self,
        ratio: float,
        projection_dim: int = DEFAULT_PROJECTION_DIM,
        pool_limit: int = DEFAULT_POOL_LIMIT,
        seed: int = 0,
        max_count: int | None = None,
    ) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
        if max_count is not None and max_count < 1:
            raise ValueError(f"a bank needs at least one patch, got max_count={max_count}")
        self.ratio = ratio
        self.max_count = max_count
        self.projection_dim = projection_dim
        self.pool_limit = max(1, int(pool_limit))
        self.seed = seed
        self.seen = 0  # patches added so far
        self.chunks_reduced = 0
        self._raw: list[torch.Tensor] = []
        self._raw_rows = 0
        self._kept: list[torch.Tensor] = []  # reduced chunks

    def add(self, patches: torch.Tensor) -> None:
        self._raw.append(patches.detach().float().clone())
        self._raw_rows += patches.shape[0]
        self.seen += patches.shape[0]
        if self._raw_rows > self.pool_limit:
            chunk = torch.cat(self._raw)
            self._raw, self._raw_rows = [], 0
            keep = max(1, math.ceil(chunk.shape[0] * min(1.0, 2.0 * self.ratio)))
            if self.max_count is not None:  # twice the final bank at most: the greedy's steps
                keep = min(keep, 2 * self.max_count)
            seed = self.seed + self.chunks_reduced + 1
            self._kept.append(chunk[greedy_coreset(chunk, keep, self.projection_dim, seed)])
            self.chunks_reduced += 1

    def finish(self) -> torch.Tensor:
        """The bank: ``ceil(seen * ratio)`` patches (at most ``max_count``) chosen from
        everything added."""
        if self.seen == 0:
            raise ValueError("PatchCore fit got no images; train/good must hold at least one")
        pool = torch.cat(self._kept + self._raw)
        self._kept, self._raw, self._raw_rows = [], [], 0
        count = max(1, math.ceil(self.seen * self.ratio))
        if self.max_count is not None:
            count = min(count, self.max_count)
        return pool[greedy_coreset(pool, count, self.projection_dim, self.seed)].contiguous()
