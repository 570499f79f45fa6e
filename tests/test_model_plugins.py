"""Models as plug-ins: a model defined here trains, exports and runs with no other file touched,
and the driver, the exporter and the CLI name no model."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from anomaly_edge.cli.main import main  # noqa: E402
from anomaly_edge.train import train  # noqa: E402
from anomaly_edge.train.models import registry  # noqa: E402
from anomaly_edge.train.models.base import CliFlag, FitRequest, Fitted, ModelPlugin  # noqa: E402
from tests.test_data_factory import make_category  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "anomaly_edge"
MEAN = (127.5, 127.5, 127.5)
STD = (64.0, 64.0, 64.0)


class MeanDistance(nn.Module):
    """The smallest anomaly model: how far each pixel is from the mean training image."""

    mean: torch.Tensor

    def __init__(self, size: tuple[int, int], scale: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, 3, *size))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (x - self.mean).abs().mean(dim=1, keepdim=True)


@dataclass(frozen=True)
class MeanOptions:
    scale: float = 1.0


class MeanPlugin(ModelPlugin):
    name = "mean_distance"
    title = "mean distance"
    options_type = MeanOptions
    cli_flags = (CliFlag("--mean-scale", "scale", "scale of the map", kind="positive_float"),)

    def fit(self, request: FitRequest, options: MeanOptions) -> Fitted:
        from anomaly_edge.train.data import ImageDataset

        module = MeanDistance(request.size, options.scale)
        images = ImageDataset(request.split.train, request.size, MEAN, STD)
        total = torch.zeros_like(module.mean)
        for item in images:
            total += item["image"][None]
        module.mean.copy_(total / len(images))
        return Fitted(module.eval(), MEAN, STD)


@pytest.fixture
def mean_plugin() -> Iterator[MeanPlugin]:
    plugin = MeanPlugin()
    registry.register(plugin)
    try:
        yield plugin
    finally:
        registry.unregister(plugin.name)


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return make_category(tmp_path_factory.mktemp("data") / "cat", train=8, good=4)


def test_a_model_registered_in_a_test_trains_exports_and_runs(mean_plugin, category, tmp_path):
    pytest.importorskip("openvino")
    from anomaly_edge import AnomalyModel

    result = train(
        category,
        model="mean_distance",
        out=tmp_path / "run",
        image_size=64,
        options=MeanOptions(scale=2.0),
        precision="FP32",
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["model"] == "mean_distance" and result.metadata.model == "mean_distance"
    assert metrics["model_settings"] == {}  # the module records no init_kwargs
    assert metrics["image_auroc"] is not None
    # a module outside anomaly_edge.train cannot be rebuilt from a checkpoint: said, not written
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert any("no checkpoint.pt" in note for note in metrics["notes"])
    assert result.ir_path is not None and result.ir_path.is_file()
    with AnomalyModel(result.ir_path) as model:
        image = np.full((64, 64, 3), 127, dtype=np.uint8)
        prediction = model.predict(image)
    assert np.isfinite(prediction.raw_score)


def test_the_cli_offers_a_registered_model_and_its_own_flags(mean_plugin, category, tmp_path):
    out = tmp_path / "cli"
    args = ["train", "--data", str(category), "--image-size", "64", "--quiet", "--no-export"]
    code = main([*args, "--out", str(out), "--arch", "mean_distance", "--mean-scale", "3"])
    assert code == 0
    assert json.loads((out / "metrics.json").read_text())["model"] == "mean_distance"
    # another model's flag is refused with the model it belongs to
    code = main([*args, "--out", str(tmp_path / "x"), "--arch", "padim", "--mean-scale", "3"])
    assert code == 2


def test_options_of_another_model_are_refused(mean_plugin, category):
    from anomaly_edge.train import PadimOptions

    with pytest.raises(ValueError, match="options for mean_distance must be a MeanOptions"):
        train(category, model="mean_distance", options=PadimOptions(), export=False)


def test_registry_names_each_built_in_model_once():
    names = registry.model_names()
    assert names[:2] == ("padim", "stfpm")
    assert len(set(names)) == len(names) == len(registry.BUILT_IN)
    with pytest.raises(ValueError, match="registered already"):
        registry.register(registry.get_model("padim"))
    with pytest.raises(ValueError, match="unknown model 'nope'; choose one of padim, stfpm"):
        registry.get_model("nope")


@pytest.mark.parametrize("path", ["train/api.py", "train/export.py", "cli/train.py"])
def test_driver_exporter_and_cli_name_no_model(path):
    """No identifier or import there names a model (string defaults such as "padim" may)."""
    tree = ast.parse((PACKAGE / path).read_text())
    named: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            named.add(node.id)
        elif isinstance(node, ast.Attribute):
            named.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and node.module:
            named.add(node.module)
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            named.add(node.name)
    for name in registry.model_names():
        assert not [n for n in named if name in n.lower()], f"{path} names {name}"


@pytest.mark.parametrize(
    ("old_name", "tiles"),
    [("anomaly_edge.train.padim:Padim", 0), ("anomaly_edge.train.tiling:TilePositionPadim", 2)],
)
def test_checkpoints_naming_the_modules_before_the_move_still_load(tmp_path, old_name, tiles):
    from anomaly_edge.metadata import ModelMetadata
    from anomaly_edge.train.checkpoint import factory_of, load_checkpoint, save_checkpoint
    from anomaly_edge.train.models.padim.model import Padim
    from anomaly_edge.train.models.padim.tiled import TilePositionPadim

    padim = Padim("resnet18", (64, 64), n_channels=8, pretrained=False)
    module: nn.Module = TilePositionPadim(padim, tiles) if tiles else padim
    images = torch.randn(4, 3, 64, 64)
    module.fit([images])
    assert factory_of(module).startswith("anomaly_edge.train.models.padim.")
    metadata = ModelMetadata("padim", "resnet18", (64, 64), MEAN, STD, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0)
    path = save_checkpoint(module, metadata, tmp_path / "old.pt", factory=old_name)
    loaded, _ = load_checkpoint(path)
    assert type(loaded) is type(module)
    torch.testing.assert_close(loaded(images[:2]), module(images[:2]))
