"""What happened while STFPM's student learned (kept on the trained module, for metrics.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StfpmHistory:
    """What happened during fitting; losses are per image (the batch sum divided by its size)."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)  # largest gradient norm per epoch
    best_epoch: int = 0  # 1-based; its weights are the ones kept
    stopped_early: bool = False
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def as_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "fit_seconds": round(self.seconds, 2),
            "best_val_loss": (self.val_loss[self.best_epoch - 1] if self.best_epoch else None),
        }
