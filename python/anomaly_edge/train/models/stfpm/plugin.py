"""STFPM's plug-in: how the driver trains the student (single views, tiles or augmented
copies) and what ``metrics.json`` records of its schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anomaly_edge.train.models.base import CliFlag, FitRequest, Fitted, ModelPlugin
from anomaly_edge.train.models.stfpm.options import StfpmOptions

if TYPE_CHECKING:
    from torch import nn


class StfpmPlugin(ModelPlugin):
    name = "stfpm"
    title = "STFPM"
    options_type = StfpmOptions
    cli_flags = (
        CliFlag(
            "--epochs",
            "max_epochs",
            "STFPM: maximum number of epochs (default 30; given alone, run in full)",
        ),
        CliFlag(
            "--steps",
            "max_steps",
            "STFPM: maximum optimiser steps, in whole epochs (default 600: large sets "
            "take fewer epochs)",
        ),
        CliFlag(
            "--lr-schedule",
            "cosine",
            "STFPM: the learning rate decays along half a cosine to 0 by the last epoch "
            "(default), or stays at 0.4 (the paper's schedule)",
            kind="choice",
            choices=("cosine", "constant"),
            to_option=lambda value: value == "cosine",
        ),
        CliFlag(
            "--map-layers",
            "map_layers",
            "STFPM: the anomaly map combines only the N deepest of the 3 layers (the "
            "student still learns all); 2 ranks whole images a little better on some sets, "
            "all 3 (default) localise small defects best",
        ),
        CliFlag(
            "--fine-layer-weight",
            "fine_layer_weight",
            "STFPM: the finest layer's exponent in the map's product (default 0.25): 1 "
            "weighs it like the others (the paper), 0 leaves it out like --map-layers 2",
            kind="non_negative_float",
        ),
    )

    def fit(self, request: FitRequest, options: StfpmOptions) -> Fitted:
        import torch

        from anomaly_edge.train.augment import augmented
        from anomaly_edge.train.backbones import build_backbone
        from anomaly_edge.train.data import ImageDataset, make_loader
        from anomaly_edge.train.models.stfpm.training import fit_stfpm
        from anomaly_edge.train.tiling import TileFrames, tile_images

        # the backbone's input normalisation, without loading its weights twice
        probe = build_backbone(request.backbone, layers=request.layers, pretrained=False)
        mean, std = probe.mean, probe.std
        del probe
        train, size, seed = request.split.train, request.size, request.seed
        batch = min(request.batch_size, 8)
        loader: Any = make_loader(train, size, mean, std, batch_size=batch, shuffle=True, seed=seed)
        if request.layout is not None:  # every tile is a training image of its own
            loader = tile_images(TileFrames(train, request.layout, mean, std), batch)
        elif request.augmentation is not None:
            loader = torch.utils.data.DataLoader(
                augmented(ImageDataset(train, size, mean, std), request.augmentation, seed),
                batch_size=loader.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(seed),
            )
        stfpm = fit_stfpm(
            request.backbone,
            loader,
            layers=request.layers,
            weights=request.weights,
            seed=seed,
            progress=request.bar if request.show_progress else False,
            **options.fit_arguments(),
        )
        return Fitted(stfpm.eval(), mean, std)

    def settings(self, module: nn.Module, options: StfpmOptions) -> dict[str, Any]:
        from anomaly_edge.train.models.stfpm.training import resolved_schedule

        settings = super().settings(module, options)
        settings["schedule"] = resolved_schedule(options.fit_arguments())
        history = getattr(module, "history", None)
        if history is not None:
            settings["epochs_run"] = history.epochs
            settings["best_epoch"] = history.best_epoch
        return settings
