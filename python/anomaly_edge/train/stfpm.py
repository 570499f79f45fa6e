"""STFPM: Student-Teacher Feature Pyramid Matching (Wang, Wu, Cui and Lu, BMVC 2021).

A frozen, ImageNet-pretrained teacher and a randomly initialised student of the same architecture
see the same normal images, and the student learns to reproduce the teacher's feature maps at
three scales. The student never saw a defect, so where it disagrees with the teacher the image is
anomalous: the disagreement is the anomaly map.

Conventions (those of the paper's reference code, which anomalib follows too):

* Features are L2-normalised over channels at every position; the distance of one layer at one
  position is ``d = 0.5 * ||t/|t| - s/|s|||^2`` (so it lies in [0, 2]).
* Loss = sum over layers of ``d`` averaged over the layer's positions, **summed** over the images
  of a batch (not averaged). That is what makes the paper's SGD settings (lr 0.4, momentum 0.9)
  mean what they mean; the losses we report are divided by the number of images.
* Anomaly map = the per-layer ``d`` maps upsampled bilinearly to the input size and multiplied
  (anomalib's choice), then smoothed by a Gaussian blur of sigma 4 (anomalib does not blur
  STFPM maps; PaDiM's maps get the same blur). Measured on mpdd/metal_plate, EfficientNet-Lite0,
  256 px, batch 8 (image AUROC / pixel AUROC / AUPRO):

      epochs   product                product + blur 4       sum
      5        0.931 / 0.971 / 0.857  0.977 / 0.978 / 0.888  0.925 / 0.960 / 0.802
      10       0.975 / 0.987 / 0.933  0.977 / 0.988 / 0.936  0.966 / 0.987 / 0.932
      15       0.967 / 0.988 / 0.942  0.973 / 0.989 / 0.946  0.960 / 0.988 / 0.941

  The product asks a defect to show at every scale; the blur removes isolated one-position
  disagreements, which otherwise decide the maximum (the image score) of normal images.

Training details: the teacher's batch norms are folded (it is frozen) and its features of the
un-augmented training images are computed once; the student's batch-norm momentum is torch's
0.1 (see :data:`STUDENT_BN_MOMENTUM`); the weights of the epoch with the lowest validation loss
are kept.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_edge.train.padim import gaussian_kernel_1d

Combine = Literal["product", "sum"]

# Beyond this many MB the teacher's training features are recomputed every epoch instead of
# being cached (one forward of a frozen network is cheaper than running out of memory).
TEACHER_CACHE_LIMIT_MB = 256.0
STUDENT_BN_MOMENTUM = 0.1
BLUR_SIGMA = 4.0


def layer_distance(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Per-position ``0.5 * ||t/|t| - s/|s|||^2`` over channels: [N,C,h,w] x2 -> [N,1,h,w]."""
    diff = F.normalize(teacher, dim=1) - F.normalize(student, dim=1)
    return 0.5 * diff.pow(2).sum(dim=1, keepdim=True)


def stfpm_loss(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of the mean per-position distance, summed over the batch's images."""
    total = teacher[0].new_zeros(())
    for t, s in zip(teacher, student, strict=True):
        total = total + layer_distance(t, s).mean(dim=(1, 2, 3)).sum()
    return total


class Stfpm(nn.Module):
    """A trained STFPM as an anomaly module: ``forward(x [N,3,H,W] normalised) -> map [N,1,H,W]``.

    Only the teacher, the student and the map arithmetic are in the graph, so
    ``openvino.convert_model`` turns it into an IR as it is. The teacher stays in eval mode and
    frozen whatever mode the module is put in.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, *, combine: Combine = "product",
                 blur_sigma: float = BLUR_SIGMA):
        super().__init__()
        if combine not in ("product", "sum"):
            raise ValueError(f"combine must be 'product' or 'sum', got {combine!r}")
        if not (blur_sigma >= 0 and math.isfinite(blur_sigma)):
            raise ValueError(f"blur_sigma must be >= 0 (0 = no blur), got {blur_sigma}")
        for attr in ("channels", "mean", "std"):
            if getattr(teacher, attr, None) != getattr(student, attr, None):
                raise ValueError(f"teacher and student differ in {attr}: they must be the "
                                 "same backbone with the same layers")
        self.teacher = teacher
        self.student = student
        self.combine: Combine = combine
        self.blur_sigma = float(blur_sigma)
        self.register_buffer("blur_kernel", gaussian_kernel_1d(self.blur_sigma), persistent=False)
        self.teacher.requires_grad_(False)
        # Channels-last weights make PyTorch's CPU convolutions take the oneDNN path, which is
        # an order of magnitude faster for EfficientNet's depthwise convolutions; inputs may
        # stay NCHW (the first convolution's output follows the weights).
        self.to(memory_format=torch.channels_last)
        self.history: StfpmHistory | None = None
        self.eval()

    # How anomaly_edge.train.checkpoint rebuilds this module without downloading weights.
    checkpoint_factory = "anomaly_edge.train.stfpm:rebuild_stfpm"

    @property
    def init_kwargs(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "layers": list(getattr(self.teacher, "layers", [])),
                "combine": self.combine, "blur_sigma": self.blur_sigma}

    # What the train API needs for the metadata, taken from the backbone.
    @property
    def backbone(self) -> str:
        return str(getattr(self.teacher, "name", type(self.teacher).__name__))

    @property
    def mean(self) -> tuple[float, float, float]:
        return tuple(self.teacher.mean)  # type: ignore[return-value]

    @property
    def std(self) -> tuple[float, float, float]:
        return tuple(self.teacher.std)  # type: ignore[return-value]

    def train(self, mode: bool = True) -> Stfpm:
        super().train(mode)
        self.teacher.eval()  # BatchNorm must keep the ImageNet statistics
        return self

    def distances(self, teacher: list[torch.Tensor], student: list[torch.Tensor],
                  size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Combine per-layer distances, each upsampled to ``size``, into one [N,1,H,W] map."""
        amap: torch.Tensor | None = None
        for t, s in zip(teacher, student, strict=True):
            d = F.interpolate(layer_distance(t, s), size=size, mode="bilinear",
                              align_corners=False)
            if amap is None:
                amap = d
            elif self.combine == "product":
                amap = amap * d
            else:
                amap = amap + d
        assert amap is not None  # at least one layer, checked by the backbone
        return amap

    def blur(self, maps: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur with reflected borders, [N,1,H,W] -> same."""
        radius = (self.blur_kernel.numel() - 1) // 2
        if radius == 0:
            return maps
        maps = F.pad(maps, (radius, radius, radius, radius), mode="reflect")
        maps = F.conv2d(maps, self.blur_kernel.reshape(1, 1, 1, -1))
        return F.conv2d(maps, self.blur_kernel.reshape(1, 1, -1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(self.distances(self.teacher(x), self.student(x), x.shape[-2:]))


@dataclass
class StfpmHistory:
    """What happened during fitting; losses are per image (the batch sum divided by its size)."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0  # 1-based; its weights are the ones kept
    stopped_early: bool = False
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def as_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early, "fit_seconds": round(self.seconds, 2),
                "best_val_loss": (self.val_loss[self.best_epoch - 1]
                                  if self.best_epoch else None)}


def build_stfpm(backbone: str = "resnet18", *, layers: list[str] | None = None,
                weights: str | None = None, combine: Combine = "product",
                blur_sigma: float = BLUR_SIGMA, seed: int = 0) -> Stfpm:
    """A pretrained teacher and a seeded random student of the same backbone, not yet trained."""
    from anomaly_edge.train.backbones import build_backbone

    teacher = build_backbone(backbone, layers=layers, pretrained=True, weights=weights)
    if hasattr(teacher, "fold_batchnorm"):
        teacher.fold_batchnorm()  # frozen: same outputs, about half the CPU time
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = build_backbone(backbone, layers=layers, pretrained=False)
    for module in student.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # The Lite networks carry TensorFlow's slow running-statistics decay (0.99), made
            # for long ImageNet runs; over a few hundred steps it would leave the eval-mode
            # statistics far behind the weights. torch's default follows them.
            module.momentum = STUDENT_BN_MOMENTUM
    return Stfpm(teacher, student, combine=combine, blur_sigma=blur_sigma)


def rebuild_stfpm(backbone: str, layers: list[str] | None = None,
                  combine: Combine = "product", blur_sigma: float = BLUR_SIGMA) -> Stfpm:
    """An untrained STFPM with the structure of :func:`build_stfpm`'s, for loading a state dict.

    Nothing is downloaded: the state dict restores every weight (the teacher's folded too).
    """
    from anomaly_edge.train.backbones import build_backbone

    teacher = build_backbone(backbone, layers=layers or None, pretrained=False)
    if hasattr(teacher, "fold_batchnorm"):
        teacher.fold_batchnorm()
    student = build_backbone(backbone, layers=layers or None, pretrained=False)
    return Stfpm(teacher, student, combine=combine, blur_sigma=blur_sigma)


def fit_stfpm(backbone: str, train_loader: Iterable[Any], val_loader: Iterable[Any] | None = None,
              *, layers: list[str] | None = None, weights: str | None = None,
              lr: float = 0.4, momentum: float = 0.9, weight_decay: float = 1e-4,
              batch_size: int | None = None, patience: int = 10, max_epochs: int = 30,
              val_fraction: float = 0.15, combine: Combine = "product",
              blur_sigma: float = BLUR_SIGMA, seed: int = 0, progress: bool = True) -> Stfpm:
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
        combine: how per-layer maps make the anomaly map ("product" or "sum").
        blur_sigma: Gaussian blur of the map in pixels (0 = none).
        seed: fixes the student's initialisation, the hold-out and the batch order.
        progress: show a progress bar.
    """
    model = build_stfpm(backbone, layers=layers, weights=weights, combine=combine,
                        blur_sigma=blur_sigma, seed=seed)
    train_stfpm(model, train_loader, val_loader, lr=lr, momentum=momentum,
                weight_decay=weight_decay, batch_size=batch_size, patience=patience,
                max_epochs=max_epochs, val_fraction=val_fraction, seed=seed, progress=progress)
    return model


def train_stfpm(model: Stfpm, train_loader: Iterable[Any],
                val_loader: Iterable[Any] | None = None, *, lr: float = 0.4,
                momentum: float = 0.9, weight_decay: float = 1e-4, batch_size: int | None = None,
                patience: int = 10, max_epochs: int = 30, val_fraction: float = 0.15,
                seed: int = 0, progress: bool = True) -> StfpmHistory:
    """Fit ``model.student`` in place (see :func:`fit_stfpm`); returns and stores the history."""
    _check_settings(lr=lr, momentum=momentum, weight_decay=weight_decay, patience=patience,
                    max_epochs=max_epochs, val_fraction=val_fraction, batch_size=batch_size)
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

    optimizer = torch.optim.SGD(model.student.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay)
    history = StfpmHistory()
    best_loss, best_state, stale = math.inf, None, 0
    epochs = _progress(range(max_epochs), progress)
    for epoch in epochs:
        model.train()
        order = torch.randperm(len(train_images), generator=generator)
        running = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            x = net_input(train_images[index])
            target = _targets_for(model.teacher, train_targets, index, x)
            loss = stfpm_loss(target, model.student(x))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += float(loss.detach())
        history.train_loss.append(running / len(order))
        if not math.isfinite(history.train_loss[-1]):
            raise FloatingPointError(
                f"STFPM training diverged at epoch {epoch + 1} (loss "
                f"{history.train_loss[-1]}); lower the learning rate (now {lr}) or the batch "
                f"size (now {batch_size})")

        val_loss = _evaluate_loss(model, val_images, val_targets, net_input, batch_size)
        history.val_loss.append(val_loss)
        if val_loss < best_loss:
            best_loss, stale = val_loss, 0
            best_state = copy.deepcopy(model.student.state_dict())
            history.best_epoch = epoch + 1
        else:
            stale += 1
        if hasattr(epochs, "set_postfix"):
            epochs.set_postfix(train=f"{history.train_loss[-1]:.4f}", val=f"{val_loss:.4f}",
                               best=history.best_epoch)
        if stale >= patience:
            history.stopped_early = True
            break
    if hasattr(epochs, "close"):
        epochs.close()

    if best_state is not None:
        model.student.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - started
    model.history = history
    return history


# ---- helpers ------------------------------------------------------------------------------


def _check_settings(*, lr: float, momentum: float, weight_decay: float, patience: int,
                    max_epochs: int, val_fraction: float, batch_size: int | None) -> None:
    problems = []
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
            raise TypeError(f"{source} yields dicts without an 'image' key "
                            f"(keys: {sorted(batch)})")
        batch = batch["image"]
    elif isinstance(batch, (tuple, list)):
        if not batch:
            raise TypeError(f"{source} yielded an empty batch")
        batch = batch[0]
    if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or batch.shape[1] != 3:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise TypeError(f"{source} must yield image batches shaped [N,3,H,W], got {shape}")
    return batch


def _collect_images(loader: Iterable[Any], source: str, mean: torch.Tensor,
                    std: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All images of a loader in one tensor, as uint8 whenever that loses nothing."""
    batches = [_compact(_batch_images(batch, source), mean, std) for batch in loader]
    if not batches:
        raise ValueError(f"{source} yielded no images: STFPM needs normal images to learn from")
    sizes = {tuple(b.shape[1:]) for b in batches}
    if len(sizes) > 1:
        raise ValueError(f"{source} yields images of different sizes {sorted(sizes)}; "
                         "resize them to one input size")
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


def _hold_out(images: torch.Tensor, fraction: float,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Split off a seeded validation subset for early stopping (at least one image each way)."""
    if len(images) < 2:
        raise ValueError(f"STFPM needs at least 2 normal training images to hold one out for "
                         f"early stopping, got {len(images)}; add images or pass val_loader")
    n_val = min(len(images) - 1, max(1, round(len(images) * fraction)))
    order = torch.randperm(len(images), generator=generator)
    return images[order[n_val:]], images[order[:n_val]]


def _network_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return (images.float() - mean) / std
    return images.float()


@torch.no_grad()
def _teacher_features(teacher: nn.Module, images: torch.Tensor, net_input: Any,
                      batch_size: int) -> list[torch.Tensor] | None:
    """The teacher's features of every image, or None when they would not fit the cache limit."""
    first = teacher(net_input(images[:1]))
    per_image = sum(f[0].numel() for f in first) * 4 / 2**20
    if per_image * len(images) > TEACHER_CACHE_LIMIT_MB:
        return None
    chunks = [teacher(net_input(images[i:i + batch_size]))
              for i in range(0, len(images), batch_size)]
    return [torch.cat(layer) for layer in zip(*chunks, strict=True)]


def _targets_for(teacher: nn.Module, cache: list[torch.Tensor] | None, index: torch.Tensor,
                 x: torch.Tensor) -> list[torch.Tensor]:
    if cache is not None:
        return [layer[index] for layer in cache]
    with torch.no_grad():
        return teacher(x)


@torch.no_grad()
def _evaluate_loss(model: Stfpm, images: torch.Tensor, targets: list[torch.Tensor] | None,
                   net_input: Any, batch_size: int) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(images), batch_size):
        index = torch.arange(start, min(start + batch_size, len(images)))
        x = net_input(images[index])
        total += float(stfpm_loss(_targets_for(model.teacher, targets, index, x),
                                  model.student(x)))
    return total / len(images)


def _progress(iterable: range, enabled: bool) -> Any:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the train extra, but a bar is not worth failing over
        return iterable
    return tqdm(iterable, desc="STFPM epochs", unit="epoch", leave=False)
