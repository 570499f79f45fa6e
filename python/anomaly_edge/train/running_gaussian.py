"""Per-position Gaussian statistics accumulated one batch at a time (PaDiM's "fit").

Memory is fixed by the number of positions P and feature dimensions d, never by the number of
images: float64 sums of x and of the lower triangle of x xᵀ per position (the upper half is
the same numbers, so it is not stored). Two details keep this fast and exact:

* features are centred on the first batch's mean before their outer products are formed (the
  covariance does not change under a shift, but the float32 batch products and the final
  E[x xᵀ] - μ μᵀ would otherwise lose digits to cancellation);
* positions are processed in chunks, each held as its own tensor. Batch products go through
  buffers allocated once (no allocator churn, so memory stays flat). The final decompositions
  are many small matrices, which run best as single-threaded kernels on a few Python threads,
  and every chunk of sums is freed as soon as its output is written, so the sums and the
  result never need memory at the same time.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

POSITION_CHUNK = 512  # positions per accumulator tensor (and per update buffer)
WHITEN_CHUNK = 128  # positions per decomposition: temporaries ~3 * 128 * d * d * 8 bytes


class RunningGaussian:
    """Accumulates mean and covariance of ``positions`` variables of ``dims`` dimensions."""

    def __init__(self, positions: int, dims: int, workers: int | None = None) -> None:
        self.positions = positions
        self.dims = dims
        self.count = 0
        self.shift: torch.Tensor | None = None  # [P, d] float32
        self.workers = max(1, workers or torch.get_num_threads())
        rows, cols = torch.tril_indices(dims, dims)
        self._flat_tril = rows * dims + cols  # positions of the lower triangle in a d*d matrix
        self.bounds = [
            (start, min(start + POSITION_CHUNK, positions))
            for start in range(0, positions, POSITION_CHUNK)
        ]
        self.sums = [
            torch.zeros(stop - start, dims, dtype=torch.float64) for start, stop in self.bounds
        ]
        triangle = self._flat_tril.numel()
        self.outers: list[torch.Tensor | None] = [
            torch.zeros(stop - start, triangle, dtype=torch.float64) for start, stop in self.bounds
        ]
        self._products: torch.Tensor | None = None
        self._triangle: torch.Tensor | None = None

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of features shaped [B, P, d]."""
        batch, positions, dims = features.shape
        if (positions, dims) != (self.positions, self.dims):
            raise ValueError(
                f"expected [B, {self.positions}, {self.dims}] features, got {tuple(features.shape)}"
            )
        if self.outers[0] is None:
            raise RuntimeError("statistics were already turned into a model; start a new fit")
        features = features.float()
        if self.shift is None:
            self.shift = features.mean(dim=0).contiguous()

        # Reused every batch: no allocator churn, flat memory. (Set and cleared together.)
        if self._products is None or self._triangle is None:
            chunk = self.bounds[0][1] - self.bounds[0][0]
            self._products = torch.empty(chunk, self.dims, self.dims)
            self._triangle = torch.empty(chunk, self._flat_tril.numel())
        for index, (start, stop) in enumerate(self.bounds):
            size = stop - start
            x = features[:, start:stop].transpose(0, 1) - self.shift[start:stop, None]  # [c,B,d]
            products = torch.bmm(x.transpose(1, 2), x, out=self._products[:size])
            triangle = torch.index_select(
                products.view(size, -1), 1, self._flat_tril, out=self._triangle[:size]
            )
            outer = self.outers[index]
            assert outer is not None  # checked above: no chunk is consumed before whiten_into
            outer += triangle  # in place: the list keeps the same tensor
            self.sums[index] += x.sum(dim=1)
        self.count += batch

    def mean(self) -> torch.Tensor:
        """Per-position mean, [P, d] float64."""
        self._require_data()
        assert self.shift is not None  # _require_data checked it
        return torch.cat(self.sums) / self.count + self.shift.double()

    def whiten_into(
        self, mean_out: torch.Tensor, whiten_t_out: torch.Tensor, regularization: float = 0.01
    ) -> None:
        """Write the model: mean [P, d] and Wᵀ [P, d, d] with Wᵀ W = (Σ + λI)⁻¹ (float32).

        W = C⁻¹ for the Cholesky factor C of the regularised covariance, so the Mahalanobis
        distance is ‖W (x - μ)‖ = ‖(x - μ)ᵀ Wᵀ‖. Consumes the accumulated sums.
        """
        self._require_data()
        mean_out.copy_(self.mean().reshape(mean_out.shape))
        self._products = self._triangle = None
        denominator = max(self.count - 1, 1)  # unbiased, like torch.cov
        eye = torch.eye(self.dims, dtype=torch.float64)

        def whiten(index: int) -> None:
            start, stop = self.bounds[index]
            packed = self.outers[index]
            assert packed is not None  # each chunk is whitened once
            mean = self.sums[index] / self.count  # mean of the shifted features
            for first in range(0, stop - start, WHITEN_CHUNK):
                last = min(first + WHITEN_CHUNK, stop - start)
                whiten_t_out[start + first : start + last].copy_(  # copy_ casts, no temporary
                    self._inverse_cholesky(
                        packed[first:last], mean[first:last], denominator, regularization, eye
                    ).transpose(1, 2)
                )
            self.outers[index] = None  # this chunk's sums are no longer needed

        self._parallel(whiten)

    def _inverse_cholesky(
        self,
        packed: torch.Tensor,
        mean: torch.Tensor,
        denominator: int,
        regularization: float,
        eye: torch.Tensor,
    ) -> torch.Tensor:
        # Only the lower triangle is filled: Cholesky reads nothing else.
        size = packed.shape[0]
        cov = torch.zeros(size, self.dims * self.dims, dtype=torch.float64)
        cov.index_copy_(1, self._flat_tril, packed)
        cov = cov.view(size, self.dims, self.dims)
        column = mean[:, :, None]
        # cov = (Σ x xᵀ - n m mᵀ) / (n - 1), as one in-place rank-1 update
        cov.baddbmm_(
            column, column.transpose(1, 2), beta=1.0 / denominator, alpha=-self.count / denominator
        )
        cov.diagonal(dim1=1, dim2=2).add_(regularization)
        chol = torch.linalg.cholesky(cov)
        del cov
        inverse: torch.Tensor = torch.linalg.solve_triangular(
            chol, eye.expand_as(chol), upper=False
        )
        return inverse

    def _parallel(self, work: Callable[[int], None]) -> None:
        # Small batched kernels scale badly with intra-op threads (and spin when the machine
        # is busy); one thread per chunk on a small pool keeps every core usefully busy.
        previous = torch.get_num_threads()

        def single_threaded(index: int) -> None:
            torch.set_num_threads(1)  # OpenMP keeps this setting per calling thread
            work(index)

        try:
            if self.workers == 1:
                for index in range(len(self.bounds)):
                    single_threaded(index)
            else:
                with ThreadPoolExecutor(self.workers) as pool:
                    list(pool.map(single_threaded, range(len(self.bounds))))
        finally:
            torch.set_num_threads(previous)

    def _require_data(self) -> None:
        if self.count == 0 or self.shift is None:
            raise ValueError("no features were accumulated: fitting needs at least one image")
        if self.outers[0] is None:
            raise RuntimeError("statistics were already turned into a model; start a new fit")
