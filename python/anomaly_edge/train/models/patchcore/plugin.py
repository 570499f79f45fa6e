"""PatchCore's plug-in: how the driver builds its memory bank on single views or tiles."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from anomaly_edge.train.models.base import CliFlag, FitRequest, Fitted, ModelPlugin
from anomaly_edge.train.models.patchcore.options import PatchcoreOptions

if TYPE_CHECKING:
    from torch import nn

FIT_BATCH = 4  # images decoded at once for a single-view fit


class PatchcorePlugin(ModelPlugin):
    name = "patchcore"
    title = "PatchCore"
    options_type = PatchcoreOptions
    cli_flags = (
        CliFlag(
            "--coreset-ratio",
            "coreset_ratio",
            "PatchCore: share of the training patches kept in the memory bank (default 0.1)",
            kind="positive_float",
        ),
        CliFlag(
            "--max-bank",
            "max_bank",
            "PatchCore: most patches in the memory bank, which a frame's kNN searches (default: "
            "as many as keep it to 5.8M distances a frame: 5632 at 256x256)",
        ),
        CliFlag(
            "--pool-limit",
            "pool_limit",
            "PatchCore: training patches held at once while the bank is chosen (default 65536, "
            "about 55 MB); a training set with more is reduced in chunks",
        ),
        CliFlag(
            "--neighbours",
            "neighbours",
            "PatchCore: bank neighbours in the paper's re-weighting of the image score "
            "(default 9; 1 = the plain maximum)",
        ),
    )

    def check_options(self, options: PatchcoreOptions) -> None:
        ratio = options.coreset_ratio
        if ratio is not None and not 0.0 < ratio <= 1.0:
            raise ValueError(
                f"coreset_ratio must be in (0, 1] (a share of the training patches), got {ratio}"
            )
        for name in ("max_bank", "neighbours", "projection_dim", "pool_limit"):
            value = getattr(options, name)
            if value is not None and (isinstance(value, bool) or int(value) < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def default_layers(self, backbone: str) -> list[str] | None:
        from anomaly_edge.train.models.patchcore.model import default_layers

        return default_layers(backbone)

    def fit(self, request: FitRequest, options: PatchcoreOptions) -> Fitted:
        from anomaly_edge.train.models.common import fit_single_view
        from anomaly_edge.train.models.patchcore.model import Patchcore
        from anomaly_edge.train.tiling import TileFrames, frame_batches

        given: dict[str, Any] = {
            "coreset_ratio": options.coreset_ratio,
            "max_bank": options.max_bank,
            "neighbours": options.neighbours,
            "projection_dim": options.projection_dim,
            "pool_limit": options.pool_limit,
        }
        model = Patchcore(
            request.backbone,
            request.size,
            layers=request.layers,
            pretrained=options.pretrained,
            weights=request.weights,
            seed=request.seed,
            **{key: value for key, value in given.items() if value is not None},
        )
        mean, std = model.backbone.mean, model.backbone.std
        layout = request.layout
        if layout is None:
            # the fit extracts one image at a time: larger batches only hold more decoded
            # images (two batches of 16 at 256 x 624: 60 MB of the fit's peak)
            fewer = replace(request, batch_size=min(request.batch_size, FIT_BATCH))
            fit_single_view(model.fit, fewer, mean, std, "fitting PatchCore")
            return Fitted(model, mean, std)
        # tiles: every tile's patches join one bank
        frames = TileFrames(request.split.train, layout, mean, std)
        progress = request.bar("fitting PatchCore on tiles", len(frames))
        try:
            model.fit(
                frame_batches(frames, max(request.batch_size, layout.count)),
                progress=progress.update,
                images_per_step=layout.count,
            )
        finally:
            progress.close()
        return Fitted(model, mean, std)

    def settings(self, module: nn.Module, options: PatchcoreOptions) -> dict[str, Any]:
        settings = super().settings(module, options)
        settings.update(getattr(module, "fit_report", {}))
        return settings

    def tile_statistics(self, module: nn.Module) -> str | None:
        return "shared"  # one memory bank for every tile position
