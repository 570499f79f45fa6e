"""What more than one model's folder does alike: the input check of a fitted module and the
fit over a single view's (augmented) training images.

A model folder imports from here; this module names no model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from anomaly_edge.train.models.base import FitRequest, Normalization


def check_images(images: torch.Tensor, input_size: tuple[int, int], title: str) -> None:
    """Refuse a batch that is not ``[N, 3, height, width]`` at the model's input size."""
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != input_size:
        raise ValueError(
            f"{title} expects [N, 3, {input_size[0]}, {input_size[1]}] "
            f"images, got {tuple(images.shape)}"
        )


def fit_single_view(
    fit: Callable[..., Any],
    request: FitRequest,
    mean: Normalization,
    std: Normalization,
    description: str,
) -> None:
    """Run ``fit(batches, progress=...)`` over the training images at the network size, with
    the request's augmentation, under one progress bar (closed however the fit ends)."""
    from anomaly_edge.train.augment import augmented
    from anomaly_edge.train.data import ImageDataset, iter_batches

    dataset = augmented(
        ImageDataset(request.split.train, request.size, mean, std),
        request.augmentation,
        request.seed,
    )
    progress = request.bar(description, len(dataset))
    try:
        # iter_batches needs only len() and items, which the augmented dataset has
        batches: Iterable[Any] = iter_batches(dataset, request.batch_size)  # type: ignore[arg-type]
        fit(batches, progress=progress.update)
    finally:
        progress.close()
