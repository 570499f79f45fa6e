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

The fit streams: :class:`StreamingCoreset` holds at most ``pool_limit`` patches (features in
float16, their projection in float32); when it is full, the newest patches are reduced to
twice the ratio of them (k-center greedy), beside earlier reductions, so a fit's memory is
bounded whatever the number of training images. With fewer patches than ``pool_limit``
(metal_plate's 55k at its default input) the selection is the paper's single greedy pass.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

DEFAULT_PROJECTION_DIM = 128
DEFAULT_POOL_LIMIT = 65_536  # patches held at once (fit memory); see StreamingCoreset
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
    # by blocks: a whole [N, p] temporary would double the fit's peak memory
    squares = torch.cat([(part * part).sum(dim=1) for part in torch.split(projected, CHUNK_ROWS)])
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
    """Collect patches ``[n, D]`` batch by batch and return the coreset of all of them.

    Patches are held in two buffers of ``pool_limit`` rows, allocated once: the features in
    float16 (the bank is FP16 in the IR anyway) and their projection in float32, computed as
    they arrive, which the greedy steps read. When the buffers are full, rows are freed by
    reductions in place (:meth:`_make_room`), so the fit's memory does not grow with the
    number of training images.
    """

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
        self.chunks_reduced = 0  # reductions of the held patches
        self.rows = 0  # patches held now
        self.reduced = 0  # of which the first ones are reductions' picks
        self._features: torch.Tensor | None = None  # [capacity, D] float16
        self._projected: torch.Tensor | None = None  # [capacity, p] float32
        self._matrix: torch.Tensor | None = None  # [D, p], None when D <= p

    def add(self, patches: torch.Tensor) -> None:
        patches = patches.detach()
        if self._features is None:
            self._allocate(patches.shape[1], self.pool_limit)
        start = 0
        while start < patches.shape[0]:
            if self.rows == self._capacity:
                self._make_room()
            part = patches[start : start + self._capacity - self.rows]
            end = self.rows + part.shape[0]
            self._buffers()[0][self.rows : end] = part
            self._buffers()[1][self.rows : end] = self._project(part)
            self.rows = end
            self.seen += part.shape[0]
            start += part.shape[0]

    def finish(self) -> torch.Tensor:
        """The bank: ``ceil(seen * ratio)`` patches (at most ``max_count``) chosen from
        everything added."""
        if self.seen == 0:
            raise ValueError("PatchCore fit got no images; train/good must hold at least one")
        features, projected = self._buffers()
        count = self._bank_count(1.0)
        if count >= self.rows:
            chosen = torch.arange(self.rows)
        else:
            with _one_thread():
                chosen = _greedy(projected[: self.rows], count, self.seed)
        bank = features[chosen].float().contiguous()
        self._features = self._projected = None
        self.rows = self.reduced = 0
        return bank

    # ---- the buffers --------------------------------------------------------------------------

    @property
    def _capacity(self) -> int:
        return 0 if self._features is None else self._features.shape[0]

    def _buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._features is None or self._projected is None:
            raise RuntimeError("no patches held")
        return self._features, self._projected

    def _allocate(self, dims: int, capacity: int) -> None:
        # empty: pages become resident only as rows are written, so a small fit stays small
        projected_dims = min(dims, self.projection_dim)
        if dims > self.projection_dim:
            generator = torch.Generator().manual_seed(self.seed)
            matrix = torch.randn(dims, self.projection_dim, generator=generator)
            self._matrix = matrix / math.sqrt(self.projection_dim)
        self._features = torch.empty(capacity, dims, dtype=torch.float16)
        self._projected = torch.empty(capacity, projected_dims)

    def _project(self, part: torch.Tensor) -> torch.Tensor:
        return part.float() if self._matrix is None else part.float() @ self._matrix

    def _bank_count(self, factor: float) -> int:
        count = max(1, math.ceil(self.seen * min(1.0, factor * self.ratio)))
        if self.max_count is not None:
            count = min(count, math.ceil(factor * self.max_count))
        return count

    def _make_room(self) -> None:
        """Free rows when the buffers are full: reduce the newest patches alone to twice the
        ratio of them (k-center greedy) and keep those beside the earlier reductions' picks;
        once the picks fill most of the buffers, reduce everything held the same way. Each
        reduction keeps at least twice the bank so far; where that would free less than half
        of the rows reduced, hold more instead.

        Keeping twice the ratio of each chunk, not twice the (capped) bank, is what keeps a
        chunked fit as good as one pass: ball_screw's image AUROC fell from 0.956 to 0.941
        with chunks cut to twice its 2,310-patch bank (see docs/results.md, PatchCore)."""
        features, projected = self._buffers()
        newest = self.rows - self.reduced
        candidates = (self.reduced, 0) if newest >= self._capacity // 8 else (0,)
        for low in candidates:
            held = self.rows - low
            keep = max(math.ceil(held * min(1.0, 2.0 * self.ratio)), self._bank_count(2.0))
            if 2 * keep <= held:
                break
        else:
            old_rows = self.rows
            self._allocate(features.shape[1], max(2 * self._capacity, 4 * keep))
            self._buffers()[0][:old_rows] = features[:old_rows]
            self._buffers()[1][:old_rows] = projected[:old_rows]
            return
        seed = self.seed + self.chunks_reduced + 1
        with _one_thread():
            chosen = low + _greedy(projected[low : self.rows], keep, seed).sort().values
        features[low : low + keep] = features[chosen]
        projected[low : low + keep] = projected[chosen]
        self.rows = self.reduced = low + keep
        self.chunks_reduced += 1
