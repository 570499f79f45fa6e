"""PaDiM's plug-in: how the driver fits it on single views or tiles and what it records."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anomaly_edge.train.models.base import CliFlag, FitRequest, Fitted, ModelPlugin
from anomaly_edge.train.models.padim.options import PadimOptions

if TYPE_CHECKING:
    from torch import nn


class PadimPlugin(ModelPlugin):
    name = "padim"
    title = "PaDiM"
    options_type = PadimOptions
    cli_flags = (
        CliFlag("--channels", "n_channels", "PaDiM: size of the random channel subset"),
        CliFlag(
            "--pool",
            "pool",
            "PaDiM: one Gaussian per NxN block of the finest feature grid "
            "(default 2; 1 = one per stride-4 position, as in the paper)",
        ),
        CliFlag(
            "--tile-gaussians",
            "tile_gaussians",
            "PaDiM on tiles: Gaussians per tile position, or one set shared by all tiles; "
            "auto (default): per position when there are more training images than PaDiM "
            "channels",
            kind="choice",
            choices=("auto", "position", "shared"),
        ),
    )

    def check_options(self, options: PadimOptions) -> None:
        from anomaly_edge.train.models.padim.tiled import resolve_tile_gaussians

        resolve_tile_gaussians(options.tile_gaussians, 0, 0)  # a bad choice fails now

    def default_layers(self, backbone: str) -> list[str] | None:
        from anomaly_edge.train.backbones import DEFAULT_LAYERS
        from anomaly_edge.train.models.padim.model import default_layers

        return default_layers(backbone) if backbone in DEFAULT_LAYERS else None

    def fit(self, request: FitRequest, options: PadimOptions) -> Fitted:
        from anomaly_edge.train.models.common import fit_single_view
        from anomaly_edge.train.models.padim.model import DEFAULT_POOL, Padim
        from anomaly_edge.train.models.padim.tiled import (
            TilePositionPadim,
            resolve_tile_gaussians,
        )
        from anomaly_edge.train.tiling import TileFrames, frame_batches

        padim = Padim(
            request.backbone,
            request.size,
            n_channels=options.n_channels,
            seed=request.seed,
            layers=request.layers,
            pool=DEFAULT_POOL if options.pool is None else options.pool,
            pretrained=options.pretrained,
            weights=request.weights,
        )
        mean, std = padim.backbone.mean, padim.backbone.std
        layout, train = request.layout, request.split.train
        if layout is not None:  # tiles: Gaussians per tile position, or shared by all tiles
            frames = TileFrames(train, layout, mean, std)
            gaussians = resolve_tile_gaussians(
                options.tile_gaussians, len(frames), padim.n_channels
            )
            module = TilePositionPadim(padim, layout.count) if gaussians == "position" else padim
            progress = request.bar("fitting PaDiM on tiles", len(frames))
            # the shared Gaussians count tiles, the per-position ones frames
            per_frame = layout.count if module is padim else 1
            module.fit(
                frame_batches(frames, max(request.batch_size, layout.count)),
                progress=lambda n: progress.update(n // per_frame),
            )
            progress.close()
            return Fitted(module, mean, std)
        fit_single_view(padim.fit, request, mean, std, "fitting PaDiM")
        return Fitted(padim, mean, std)

    def settings(self, module: nn.Module, options: PadimOptions) -> dict[str, Any]:
        inner = getattr(module, "padim", module)  # a tiled PaDiM wraps one
        settings = super().settings(inner, options)
        settings["n_channels"] = inner.n_channels  # the backbone's default, resolved
        return settings

    def tile_statistics(self, module: nn.Module) -> str | None:
        return "position" if hasattr(module, "padim") else "shared"
