"""STFPM's training loop: fit the student to the frozen teacher on normal images.

The teacher's features of the un-augmented training images are computed once (no
augmentation, so they never change); the student learns by SGD on :func:`stfpm_loss`; a
held-out set of normal images decides when to stop, and the weights of the epoch with the
lowest validation loss are kept.

The default schedule is the paper's SGD (lr 0.4, momentum 0.9, weight decay 1e-4) at batch 8 for
30 epochs, capped at 600 optimiser steps in whole epochs, with one change: the learning rate
decays along half a cosine to 0 by the last epoch instead of staying at 0.4. Measured on all four
shared categories (Lite0, input geometry from the data, whole test sets, seed 0, the map's plain
product of three layers, which :mod:`.model` has since weighted; image AUROC / pixel
AUROC / AUPRO):

    schedule                    metal_plate            magnetic_tile (8 epochs)
    lr 0.4 constant (paper)     0.989 / 0.992 / 0.958  0.539 / 0.495 / 0.201
    cosine to 0 (default)       0.991 / 0.990 / 0.952  0.653 / 0.578 / 0.660
    warm-up 1, cosine, clip 1   0.989 / 0.993 / 0.956  0.655 / 0.573 / 0.656

    schedule                    ball_screw             tire
    lr 0.4 constant (paper)     0.888 / 0.989 / 0.900  0.689 / 0.991 / 0.963
    cosine to 0 (default)       0.876 / 0.992 / 0.932  0.713 / 0.991 / 0.963
    warm-up 1, cosine, clip 1   0.876 / 0.984 / 0.865  0.711 / 0.991 / 0.963

At the constant rate the student never settles on magnetic_tile's 648 varied grey tiles: its
distance to the teacher is as large on the normal surface as on the defects (0.16 / 0.18 / 0.15
against 0.15 / 0.19 / 0.18 for the three layers; validation loss 0.50, against 0.23-0.26 on
the other sets), so the map is noise. Decaying the rate lets it settle (validation loss 0.34)
and lifts AUPRO from 0.20 to 0.66; on magnetic_tile a warm-up alone gave 0.567 / 0.551 / 0.543
and clipping alone 0.549 / 0.499 / 0.389, so the decay is what matters. The cosine costs
ball_screw 0.012 image AUROC at seed 0 (at seed 1 it scored 0.892 / 0.992 / 0.932: the seed moves
image AUROC by about 0.01) and gains it 0.032 AUPRO; ``cosine=False`` (``train
--lr-schedule constant``) is the paper's schedule. The warm-up and clipping make *short* runs
stable across instruction sets (the README's "Other CPUs") but cost ball_screw 0.068 AUPRO over
the cosine alone at 30 epochs, so they stay options (``warmup_epochs``, ``max_grad_norm``).

The three smaller sets take 180-390 steps in 30 epochs, under the step cap; magnetic_tile's 648
images take 81 steps an epoch, so the cap gives it 8 epochs instead of 30 (2,430 steps, about
4x the time): with warm-up/cosine/clipping, 30 epochs scored 0.634 / 0.587 / 0.653 there, no
better than 8.
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from anomaly_edge.train.models.stfpm.history import StfpmHistory
from anomaly_edge.train.models.stfpm.model import (
    BLUR_SIGMA,
    FINE_LAYER_WEIGHT,
    Combine,
    Stfpm,
    build_stfpm,
    stfpm_loss,
)

# Beyond this many MB the teacher's training features are recomputed every epoch instead of
# being cached (one forward of a frozen network is cheaper than running out of memory).
# magnetic_tile's 648 images at 256x256 need 415 MB with Lite0's layers; the cache saves the
# teacher's forward pass on every step.
TEACHER_CACHE_LIMIT_MB = 1024.0
# The default schedule (measured in the module docstring).
DEFAULT_MAX_EPOCHS = 30
DEFAULT_MAX_STEPS = 600
DEFAULT_COSINE = True
DEFAULT_MAP_LAYERS: int | None = None


# fit_stfpm's arguments that make up the training schedule (what metrics.json records).
SCHEDULE_ARGUMENTS = (
    "lr",
    "momentum",
    "weight_decay",
    "patience",
    "max_epochs",
    "max_steps",
    "warmup_epochs",
    "cosine",
    "max_grad_norm",
)


def fit_stfpm(
    backbone: str,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any] | None = None,
    *,
    layers: list[str] | None = None,
    weights: str | None = None,
    lr: float = 0.4,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    batch_size: int | None = None,
    patience: int = 10,
    max_epochs: int = DEFAULT_MAX_EPOCHS,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    val_fraction: float = 0.15,
    warmup_epochs: float = 0.0,
    cosine: bool = DEFAULT_COSINE,
    max_grad_norm: float | None = None,
    combine: Combine = "product",
    blur_sigma: float = BLUR_SIGMA,
    map_layers: int | None = DEFAULT_MAP_LAYERS,
    fine_layer_weight: float = FINE_LAYER_WEIGHT,
    seed: int = 0,
    progress: bool | Callable[[str, int], Any] = True,
) -> Stfpm:
    """Train STFPM on normal images and return it in eval mode, with the best epoch's weights.

    Args:
        backbone: a name :func:`anomaly_edge.train.backbones.build_backbone` knows.
        train_loader: normal training images; batches as the data loaders give them (a tensor,
            a tuple/list whose first item is the images, or a dict with ``"image"``), uint8
            (normalised here with the backbone's mean/std) or already normalised float.
        val_loader: held-out normal images for early stopping; ``None`` holds out
            ``val_fraction`` of the training images (chosen with ``seed``).
        layers, weights: passed to ``build_backbone`` (``weights`` for the teacher).
        lr, momentum, weight_decay: SGD on the student.
        batch_size: images per step; ``None`` keeps the loader's batch size.
        patience: stop after this many epochs without a better validation loss.
        max_epochs: hard cap on the number of epochs.
        max_steps: cap on the optimiser steps, in whole epochs (the epochs are
            ``min(max_epochs, ceil(max_steps / steps per epoch))``): a large training set
            takes fewer epochs of more steps, so its cost stops growing with its size.
            ``None`` = only ``max_epochs`` counts.
        warmup_epochs: the learning rate rises linearly from ``lr / steps`` to ``lr`` over
            this many epochs (0 = none).
        cosine: after the warm-up, the learning rate follows half a cosine from ``lr`` down
            to 0 at the last planned epoch (the default); ``False`` keeps it at ``lr``, the
            paper's schedule.
        max_grad_norm: clip the student's gradient to this norm per step (None = never).
        combine: how per-layer maps make the anomaly map ("product" or "sum").
        blur_sigma: Gaussian blur of the map in pixels (0 = none).
        map_layers: how many of the deepest layers make the anomaly map (None = all); the
            student learns every layer either way.
        fine_layer_weight: the finest layer's exponent in the product (its factor in a sum):
            below 1 its noisy one-position disagreements decide fewer image scores, while
            its sharp outlines still shape the map (see :mod:`.model`).
        seed: fixes the student's initialisation, the hold-out and the batch order.
        progress: ``True`` for a tqdm bar over the epochs, or a factory
            ``(description, total) -> bar`` (the bar's ``update(n)`` and ``close()`` are used).
    """
    model = build_stfpm(
        backbone,
        layers=layers,
        weights=weights,
        combine=combine,
        blur_sigma=blur_sigma,
        map_layers=map_layers,
        fine_layer_weight=fine_layer_weight,
        seed=seed,
    )
    train_stfpm(
        model,
        train_loader,
        val_loader,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        batch_size=batch_size,
        patience=patience,
        max_epochs=max_epochs,
        max_steps=max_steps,
        val_fraction=val_fraction,
        warmup_epochs=warmup_epochs,
        cosine=cosine,
        max_grad_norm=max_grad_norm,
        seed=seed,
        progress=progress,
    )
    return model


def train_stfpm(
    model: Stfpm,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any] | None = None,
    *,
    lr: float = 0.4,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    batch_size: int | None = None,
    patience: int = 10,
    max_epochs: int = DEFAULT_MAX_EPOCHS,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    val_fraction: float = 0.15,
    warmup_epochs: float = 0.0,
    cosine: bool = DEFAULT_COSINE,
    max_grad_norm: float | None = None,
    seed: int = 0,
    progress: bool | Callable[[str, int], Any] = True,
) -> StfpmHistory:
    """Fit ``model.student`` in place (see :func:`fit_stfpm`); returns and stores the history."""
    _check_settings(
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        patience=patience,
        max_epochs=max_epochs,
        max_steps=max_steps,
        val_fraction=val_fraction,
        batch_size=batch_size,
        warmup_epochs=warmup_epochs,
        max_grad_norm=max_grad_norm,
    )
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)

    mean = torch.tensor(model.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(model.std, dtype=torch.float32).view(1, 3, 1, 1)

    # Decode once, keep the images in memory: every later epoch is pure arithmetic.
    train_images, loader_batch = _collect_images(train_loader, "train_loader", mean, std)
    batch_size = batch_size or loader_batch
    if val_loader is not None:
        val_images, _ = _collect_images(val_loader, "val_loader", mean, std)
    else:
        train_images, val_images = _hold_out(train_images, val_fraction, generator)
    model.teacher.eval()

    def net_input(images: torch.Tensor) -> torch.Tensor:
        return _network_input(images, mean, std)

    # No augmentation, so the teacher's answers never change: compute them once.
    train_targets = _teacher_features(model.teacher, train_images, net_input, batch_size)
    val_targets = _teacher_features(model.teacher, val_images, net_input, batch_size)

    optimizer = torch.optim.SGD(
        model.student.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    steps_per_epoch = math.ceil(len(train_images) / batch_size)
    planned_epochs = epochs_for(max_epochs, max_steps, steps_per_epoch)
    rate = _lr_schedule(lr, steps_per_epoch, planned_epochs, warmup_epochs, cosine)
    clip = math.inf if max_grad_norm is None else max_grad_norm
    history = StfpmHistory()
    best_loss, best_state, stale, step = math.inf, None, 0, 0
    epochs = _epoch_bar(progress, planned_epochs)
    for epoch in range(planned_epochs):
        model.train()
        order = torch.randperm(len(train_images), generator=generator)
        running, largest_norm = 0.0, 0.0
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            x = net_input(train_images[index])
            target = _targets_for(model.teacher, train_targets, index, x)
            loss = stfpm_loss(target, model.student(x))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            norm = torch.nn.utils.clip_grad_norm_(model.student.parameters(), clip)
            largest_norm = max(largest_norm, float(norm))
            for group in optimizer.param_groups:
                group["lr"] = rate(step)
            optimizer.step()
            step += 1
            running += float(loss.detach())
        history.train_loss.append(running / len(order))
        history.grad_norm.append(largest_norm)
        if not math.isfinite(history.train_loss[-1]):
            raise FloatingPointError(
                f"STFPM training diverged at epoch {epoch + 1} (loss "
                f"{history.train_loss[-1]}); lower the learning rate (now {lr}) or the batch "
                f"size (now {batch_size})"
            )

        val_loss = _evaluate_loss(model, val_images, val_targets, net_input, batch_size)
        history.val_loss.append(val_loss)
        if val_loss < best_loss:
            best_loss, stale = val_loss, 0
            best_state = copy.deepcopy(model.student.state_dict())
            history.best_epoch = epoch + 1
        else:
            stale += 1
        if hasattr(epochs, "set_postfix"):
            epochs.set_postfix(
                train=f"{history.train_loss[-1]:.4f}",
                val=f"{val_loss:.4f}",
                best=history.best_epoch,
            )
        epochs.update(1)
        if stale >= patience:
            history.stopped_early = True
            break
    epochs.close()

    if best_state is not None:
        model.student.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - started
    model.history = history
    return history


# ---- helpers ------------------------------------------------------------------------------


def epochs_for(max_epochs: int, max_steps: int | None, steps_per_epoch: int) -> int:
    """The epochs to run: ``max_epochs``, fewer where ``max_steps`` is reached first (at
    least one)."""
    if max_steps is None:
        return max_epochs
    return max(1, min(max_epochs, math.ceil(max_steps / steps_per_epoch)))


def _lr_schedule(
    lr: float, steps_per_epoch: int, max_epochs: int, warmup_epochs: float, cosine: bool
) -> Any:
    """``step -> learning rate``: linear warm-up, then constant or half a cosine down to 0."""
    warmup = round(warmup_epochs * steps_per_epoch)
    total = max_epochs * steps_per_epoch

    def rate(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        if not cosine:
            return lr
        done = (step - warmup) / max(1, total - warmup)
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))

    return rate


def _check_settings(
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    patience: int,
    max_epochs: int,
    val_fraction: float,
    batch_size: int | None,
    max_steps: int | None = None,
    warmup_epochs: float = 0.0,
    max_grad_norm: float | None = None,
) -> None:
    problems = []
    if not (warmup_epochs >= 0 and math.isfinite(warmup_epochs)):
        problems.append(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    if max_grad_norm is not None and not (max_grad_norm > 0 and math.isfinite(max_grad_norm)):
        problems.append(f"max_grad_norm must be a positive number or None, got {max_grad_norm}")
    if not (lr > 0 and math.isfinite(lr)):
        problems.append(f"lr must be a positive number, got {lr}")
    if not 0 <= momentum < 1:
        problems.append(f"momentum must be in [0, 1), got {momentum}")
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        problems.append(f"weight_decay must be >= 0, got {weight_decay}")
    if patience < 1:
        problems.append(f"patience must be at least 1 epoch, got {patience}")
    if max_epochs < 1:
        problems.append(f"max_epochs must be at least 1, got {max_epochs}")
    if max_steps is not None and max_steps < 1:
        problems.append(f"max_steps must be at least 1 or None, got {max_steps}")
    if not 0 < val_fraction < 1:
        problems.append(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if batch_size is not None and batch_size < 1:
        problems.append(f"batch_size must be at least 1, got {batch_size}")
    if problems:
        raise ValueError("; ".join(problems))


def _batch_images(batch: Any, source: str) -> torch.Tensor:
    """The image tensor of one batch, whatever container the loader wraps it in."""
    if isinstance(batch, dict):
        if "image" not in batch:
            raise TypeError(f"{source} yields dicts without an 'image' key (keys: {sorted(batch)})")
        batch = batch["image"]
    elif isinstance(batch, (tuple, list)):
        if not batch:
            raise TypeError(f"{source} yielded an empty batch")
        batch = batch[0]
    if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or batch.shape[1] != 3:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise TypeError(f"{source} must yield image batches shaped [N,3,H,W], got {shape}")
    return batch


def _collect_images(
    loader: Iterable[Any], source: str, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """All images of a loader in one tensor, as uint8 whenever that loses nothing."""
    batches = [_compact(_batch_images(batch, source), mean, std) for batch in loader]
    if not batches:
        raise ValueError(f"{source} yielded no images: STFPM needs normal images to learn from")
    sizes = {tuple(b.shape[1:]) for b in batches}
    if len(sizes) > 1:
        raise ValueError(
            f"{source} yields images of different sizes {sorted(sizes)}; "
            "resize them to one input size"
        )
    return torch.cat(batches), int(batches[0].shape[0])


def _compact(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised 8-bit pixels back to uint8 (a quarter of the memory), other floats as they are."""
    if images.dtype == torch.uint8:
        return images
    pixels = images.float() * std + mean
    rounded = pixels.round()
    if rounded.min() >= 0 and rounded.max() <= 255 and (pixels - rounded).abs().max() < 1e-2:
        return rounded.to(torch.uint8)
    return images.float()


def _hold_out(
    images: torch.Tensor, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split off a seeded validation subset for early stopping (at least one image each way)."""
    if len(images) < 2:
        raise ValueError(
            f"STFPM needs at least 2 normal training images to hold one out for "
            f"early stopping, got {len(images)}; add images or pass val_loader"
        )
    n_val = min(len(images) - 1, max(1, round(len(images) * fraction)))
    order = torch.randperm(len(images), generator=generator)
    return images[order[n_val:]], images[order[:n_val]]


def _network_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return (images.float() - mean) / std
    return images.float()


@torch.no_grad()
def _teacher_features(
    teacher: nn.Module, images: torch.Tensor, net_input: Any, batch_size: int
) -> list[torch.Tensor] | None:
    """The teacher's features of every image, or None when they would not fit the cache limit."""
    first = teacher(net_input(images[:1]))
    per_image = sum(f[0].numel() for f in first) * 4 / 2**20
    if per_image * len(images) > TEACHER_CACHE_LIMIT_MB:
        return None
    chunks = [
        teacher(net_input(images[i : i + batch_size])) for i in range(0, len(images), batch_size)
    ]
    return [torch.cat(layer) for layer in zip(*chunks, strict=True)]


def _targets_for(
    teacher: nn.Module, cache: list[torch.Tensor] | None, index: torch.Tensor, x: torch.Tensor
) -> list[torch.Tensor]:
    if cache is not None:
        return [layer[index] for layer in cache]
    with torch.no_grad():
        features: list[torch.Tensor] = teacher(x)
    return features


@torch.no_grad()
def _evaluate_loss(
    model: Stfpm,
    images: torch.Tensor,
    targets: list[torch.Tensor] | None,
    net_input: Any,
    batch_size: int,
) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(images), batch_size):
        index = torch.arange(start, min(start + batch_size, len(images)))
        x = net_input(images[index])
        total += float(stfpm_loss(_targets_for(model.teacher, targets, index, x), model.student(x)))
    return total / len(images)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _epoch_bar(progress: bool | Callable[[str, int], Any], epochs: int) -> Any:
    """A bar over the epochs: the caller's factory, tqdm for ``True``, nothing for ``False``."""
    if callable(progress):
        return progress("STFPM epochs", epochs)
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm  # part of the train extra

    return tqdm(total=epochs, desc="STFPM epochs", unit="epoch", leave=False)


def resolved_schedule(given: dict[str, Any]) -> dict[str, Any]:
    """The schedule :func:`fit_stfpm` runs with these keyword arguments, defaults filled in."""
    parameters = inspect.signature(fit_stfpm).parameters
    return {name: given.get(name, parameters[name].default) for name in SCHEDULE_ARGUMENTS}
