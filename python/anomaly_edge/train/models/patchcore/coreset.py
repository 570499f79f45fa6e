"""Greedy coreset selection (k-center greedy), in a random projection, over a stream of patches.

PatchCore (Roth et al., CVPR 2022) keeps a subset of the training patches that covers them
all: each step adds the patch farthest from the subset so far. Distances are measured in a
seeded Gaussian random projection to ``projection_dim`` dimensions (Johnson-Lindenstrauss),
as the paper does, which makes each step one matrix-vector product.

The fit streams: :class:`StreamingCoreset` holds at most ``pool_limit`` raw patches; when
more arrive, that chunk is reduced to twice the final ratio and set aside, so memory is the
chunk plus about twice the bank, whatever the number of training images. With fewer patches
than ``pool_limit`` (every shared category at its default input) the selection is the paper's
single greedy pass over all patches.
"""

from __future__ import annotations

import math

import torch

DEFAULT_PROJECTION_DIM = 128
DEFAULT_POOL_LIMIT = 200_000
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
    at random (seeded), then always the row farthest from those chosen."""
    total = features.shape[0]
    if count <= 0:
        raise ValueError(f"a coreset needs at least one patch, got count={count}")
    if count >= total:
        return torch.arange(total)
    projected = project(features, projection_dim, seed)
    squares = (projected * projected).sum(dim=1)
    nearest = torch.full((total,), math.inf)
    chosen = torch.empty(count, dtype=torch.long)
    current = int(torch.randint(total, (1,), generator=torch.Generator().manual_seed(seed)))
    for step in range(count):
        chosen[step] = current
        # squared distance of every row to the newest choice: |a|^2 - 2 a.b + |b|^2
        distance = squares - 2.0 * (projected @ projected[current]) + squares[current]
        torch.minimum(nearest, distance, out=nearest)
        current = int(nearest.argmax())
    return chosen


class StreamingCoreset:
    """Collect patches ``[n, D]`` batch by batch and return the coreset of all of them."""

    def __init__(
        self,
        ratio: float,
        projection_dim: int = DEFAULT_PROJECTION_DIM,
        pool_limit: int = DEFAULT_POOL_LIMIT,
        seed: int = 0,
    ) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
        self.ratio = ratio
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
            seed = self.seed + self.chunks_reduced + 1
            self._kept.append(chunk[greedy_coreset(chunk, keep, self.projection_dim, seed)])
            self.chunks_reduced += 1

    def finish(self) -> torch.Tensor:
        """The bank: ``ceil(seen * ratio)`` patches chosen from everything added."""
        if self.seen == 0:
            raise ValueError("PatchCore fit got no images; train/good must hold at least one")
        pool = torch.cat(self._kept + self._raw)
        self._kept, self._raw, self._raw_rows = [], [], 0
        count = max(1, math.ceil(self.seen * self.ratio))
        return pool[greedy_coreset(pool, count, self.projection_dim, self.seed)].contiguous()
