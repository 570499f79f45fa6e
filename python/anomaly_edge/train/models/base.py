"""What a model plug-in gives the training driver, the CLI and the exporter.

A model is one folder under ``train/models/`` with a :class:`ModelPlugin` subclass in it, and
one line in :mod:`.registry`. The driver (:func:`anomaly_edge.train.train`) asks the plug-in
to check its options, fit on the training images (single view or tiles) and describe the
result for ``metrics.json``; the exporter traces the module the fit returned, whatever it is
(``forward(x [N, 3, H, W] normalised) -> raw map [N, 1, H, W]``); the CLI adds the flags the
plug-in declares. Nothing outside the folder names the model.

No torch at import time: the CLI reads plug-ins to build its options before the training extra
is checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from torch import nn

    from anomaly_edge.tiles import TileLayout
    from anomaly_edge.train.augment import Augmentation
    from anomaly_edge.train.data import Split

ProgressFactory = Callable[[str, int], Any]  # (description, total) -> object with update(n)
Normalization = tuple[float, float, float]


@dataclass(frozen=True)
class CliFlag:
    """One model-specific option of ``anomaly-edge train``.

    ``field`` is the options dataclass field it sets; ``kind`` how the CLI parses it
    (``"positive_int"``, ``"non_negative_float"``, ``"positive_float"`` or ``"choice"`` with
    ``choices``); ``to_option`` turns the parsed value into the field's value (default: as is).
    """

    flag: str
    field: str
    help: str
    kind: str = "positive_int"
    choices: tuple[str, ...] = ()
    to_option: Callable[[Any], Any] | None = None

    @property
    def dest(self) -> str:
        """The argparse destination: unique per flag, so two models may share a field name."""
        return "model_" + self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class FitRequest:
    """Everything the driver knows that a fit may use."""

    split: Split  # train (fit on it), validation and test samples
    backbone: str
    size: tuple[int, int]  # network input (height, width): the tile size when tiled
    seed: int
    layers: list[str] | None
    weights: str | None  # backbone weights file
    batch_size: int
    bar: ProgressFactory  # progress bars (a no-op factory when quiet)
    show_progress: bool  # whether the user asked for progress bars at all
    augmentation: Augmentation | None = None
    layout: TileLayout | None = None  # None: a single view


@dataclass
class Fitted:
    """A fit's result: the anomaly module (eval mode) and the input normalisation it expects."""

    module: nn.Module
    mean: Normalization
    std: Normalization


class ModelPlugin:
    """Base class of a model plug-in; subclass it in the model's folder.

    Required: :attr:`name`, :attr:`title`, :attr:`options_type` (a dataclass whose fields all
    have defaults) and :meth:`fit`. The other hooks have defaults that suit most models.
    """

    name: ClassVar[str]  # what users type: train(model=...), `train --model ...`
    title: ClassVar[str]  # how messages and progress bars name it
    options_type: ClassVar[type]
    cli_flags: ClassVar[tuple[CliFlag, ...]] = ()

    def resolve_options(self, options: Any | None) -> Any:
        """The options to train with: the given ones, or every default."""
        if options is None:
            return self.options_type()
        if not isinstance(options, self.options_type):
            raise ValueError(
                f"options for {self.name} must be a {self.options_type.__name__}, "
                f"got {type(options).__name__}"
            )
        return options

    def check_options(self, options: Any) -> None:
        """Refuse bad options before any work (raise ``ValueError`` saying what to change)."""

    def options_from_flags(self, values: dict[str, Any]) -> Any:
        """The options object for the CLI's parsed flags (``field -> value``, unset left out)."""
        known = {f.name for f in fields(self.options_type)}
        return self.options_type(**{k: v for k, v in values.items() if k in known})

    def default_layers(self, backbone: str) -> list[str] | None:
        """The backbone layers the model reads when the user names none (None: the
        backbone's own default); the input geometry is rounded to their deepest stride."""
        return None

    def fit(self, request: FitRequest, options: Any) -> Fitted:
        """Fit on ``request.split.train`` (tiles when ``request.layout`` is set)."""
        raise NotImplementedError

    def settings(self, module: nn.Module, options: Any) -> dict[str, Any]:
        """What ``metrics.json`` records under ``model_settings``: how the map is made, with
        defaults resolved. Default: the module's ``init_kwargs`` less what ``metrics.json``
        records at the top level."""
        recorded = getattr(module, "init_kwargs", None) or {}
        return {key: value for key, value in recorded.items() if key not in TOP_LEVEL_SETTINGS}

    def tile_statistics(self, module: nn.Module) -> str | None:
        """For a tiled model: whether its statistics belong to each tile position
        (``"position"``) or are shared by all tiles (``"shared"``); None: no such choice."""
        return None


# the backbone, image size and seed are top-level keys of metrics.json already
TOP_LEVEL_SETTINGS = frozenset({"backbone", "pretrained", "input_size", "seed"})
