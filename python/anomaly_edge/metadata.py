"""The contract between training and runtime: everything a model needs, stored in the IR's rt_info.

Two sections:

* ``model_info``: the keys OpenVINO Model API's ``AnomalyDetection`` wrapper reads, so that
  ``model_api.models.AnomalyDetection.create_model("model.xml")`` loads our IR as it is.
* ``anomaly_edge``: our own, for what Model API has no key for (separate normalisation of the
  image score and of the map, the backbone, metrics at export time, the format version).

No side files, no pickles: an IR pair is a complete model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from anomaly_edge.errors import InvalidInputError, ModelLoadError
from anomaly_edge.prediction import Task

if TYPE_CHECKING:
    import openvino as ov

    from anomaly_edge.tiles import TileLayout

FORMAT_VERSION = 2  # the newest this runtime reads
# Tiled models are written as format 2 so that a runtime from before tiling refuses them with
# "upgrade anomaly-edge" instead of failing on the batch shape; single-view models stay 1.
SINGLE_VIEW_FORMAT_VERSION = 1
TILED_FORMAT_VERSION = 2
OUR_SECTION = "anomaly_edge"
# The graph's tensor names and the precisions an IR is exported at: part of the contract.
INPUT_NAME = "image"
OUTPUT_NAME = "anomaly_map"
PRECISIONS = ("FP32", "FP16", "INT8")
# The backbones training offers (train/backbones.py builds them), named here so the CLI can
# list them without importing torch.
BACKBONES = (
    "resnet18",
    "wide_resnet50_2",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
)
MODEL_API_SECTION = "model_info"
# Fields that older IRs lack (they load with None).
OPTIONAL_FLOATS = ("normal_score_low", "normal_score_median", "normal_score_high", "train_aspect")


@dataclass
class ModelMetadata:
    """What the runtime needs to turn a frame into a :class:`~anomaly_edge.Prediction`.

    Thresholds and normalisation statistics are in raw anomaly-map units.
    ``mean`` and ``std`` are per RGB channel in 0-255 units: input = (rgb - mean) / std.
    """

    model: str  # "padim" | "stfpm"
    backbone: str
    input_size: tuple[int, int]  # (height, width) of the network input
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_threshold: float
    pixel_threshold: float
    image_min: float  # image-score statistics on the validation split
    image_max: float
    pixel_min: float  # anomaly-map statistics on the validation split
    pixel_max: float
    task: str = Task.SEGMENTATION.value
    precision: str = "FP16"
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = SINGLE_VIEW_FORMAT_VERSION
    # Tiles (anomaly_edge.tiles.TileLayout; the tile is input_size): a 1x1 grid is a single view.
    tile_grid: tuple[int, int] = (1, 1)
    tile_frame_size: tuple[int, int] | None = None  # frames are resized to it; None = input_size
    tile_blend: str = "cosine"
    # Raw image scores of normal images at training (normal validation images) or, after
    # `anomaly-edge calibrate`, of the calibration frames: low/median/high. The drift monitor
    # watches the stream against this range. None in IRs exported before these fields existed.
    normal_score_low: float | None = None
    normal_score_median: float | None = None
    normal_score_high: float | None = None
    # What `anomaly-edge calibrate` did (source, frames, date, before/after); empty if never.
    calibration: dict[str, Any] = field(default_factory=dict)
    # The operating point (anomaly_edge.operating_point): the policy that placed the image
    # threshold, the false-alarm rate and recall it expected on the validation images (with
    # their counts) and what the test images showed at it; {} for models from before.
    operating_point: dict[str, Any] = field(default_factory=dict)
    # Median width / height of the training images: the runtime warns once about frames of
    # another shape. None where the training images varied in shape (any frame shape is
    # expected then) and in IRs exported before it was stored.
    train_aspect: float | None = None

    def __post_init__(self) -> None:
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        self.tile_grid = (int(self.tile_grid[0]), int(self.tile_grid[1]))
        frame = self.input_size if self.tile_frame_size is None else self.tile_frame_size
        self.tile_frame_size = (int(frame[0]), int(frame[1]))
        if self.tiled:
            self.tile_layout  # noqa: B018 - validates the layout
            self.format_version = max(int(self.format_version), TILED_FORMAT_VERSION)
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        self.task = Task.parse(self.task).value
        for name in (
            "image_threshold",
            "pixel_threshold",
            "image_min",
            "image_max",
            "pixel_min",
            "pixel_max",
        ):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"metadata {name} must be a finite number, got {value}")
            setattr(self, name, value)
        for name in OPTIONAL_FLOATS:
            value = getattr(self, name)
            if value is not None:
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError(
                        f"metadata {name} must be a finite number or None, got {value}"
                    )
                setattr(self, name, value)

    @property
    def normal_score_range(self) -> tuple[float, float] | None:
        """(low, high) raw image scores of normal images, when the IR records them."""
        if self.normal_score_low is None or self.normal_score_high is None:
            return None
        return self.normal_score_low, self.normal_score_high

    @property
    def tiled(self) -> bool:
        """Whether frames are cut into several tiles (one batch through the network)."""
        return self.tile_grid != (1, 1)

    @property
    def tile_layout(self) -> TileLayout | None:
        """Where the tiles of a frame lie; ``None`` for a single-view model."""
        if not self.tiled:
            return None
        from anomaly_edge.tiles import TileLayout

        assert self.tile_frame_size is not None
        return TileLayout(self.tile_frame_size, self.input_size, self.tile_grid, self.tile_blend)

    @property
    def batch_size(self) -> int:
        """The static batch of the network: tiles per frame (1 for a single view)."""
        return self.tile_grid[0] * self.tile_grid[1]

    @property
    def image_scale(self) -> float:
        """Normalisation scale of image scores: score = (raw - threshold) / scale + 0.5."""
        return _positive_span(self.image_min, self.image_max)

    @property
    def pixel_scale(self) -> float:
        """Normalisation scale of anomaly-map values."""
        return _positive_span(self.pixel_min, self.pixel_max)

    # ---- rt_info ---------------------------------------------------------------------------

    def write_to(self, model: ov.Model) -> None:
        """Store this metadata in ``model``'s rt_info (both sections)."""
        h, w = self.input_size
        model_info = {
            "model_type": "AnomalyDetection",
            "task": self.task,
            "labels": "Normal Anomaly",
            "image_threshold": repr(self.image_threshold),
            "pixel_threshold": repr(self.pixel_threshold),
            # Model API has a single scale for scores and maps; the image one decides labels.
            "normalization_scale": repr(self.image_scale),
            "mean_values": " ".join(repr(v) for v in self.mean),
            "scale_values": " ".join(repr(v) for v in self.std),
            "reverse_input_channels": "True",  # Model API feeds BGR; the network wants RGB
            "resize_type": "standard",
            "orig_height": str(h),
            "orig_width": str(w),
        }
        for key, value in model_info.items():
            model.set_rt_info(value, [MODEL_API_SECTION, key])
        ours = asdict(self)
        ours["input_size"] = f"{h} {w}"
        ours["mean"] = model_info["mean_values"]
        ours["std"] = model_info["scale_values"]
        ours["metrics"] = json.dumps(self.metrics, sort_keys=True)
        ours["calibration"] = json.dumps(self.calibration, sort_keys=True)
        ours["operating_point"] = json.dumps(self.operating_point, sort_keys=True)
        assert self.tile_frame_size is not None
        ours["tile_grid"] = "{} {}".format(*self.tile_grid)
        ours["tile_frame_size"] = "{} {}".format(*self.tile_frame_size)
        layout = self.tile_layout
        # for readers (anomaly-edge info, Netron): the runtime derives it from the grid
        ours["tile_overlap"] = "{} {}".format(*(layout.overlap if layout else (0, 0)))
        for key, value in ours.items():
            if key in OPTIONAL_FLOATS and value is None:
                continue  # absent means unknown, as in older IRs
            model.set_rt_info(str(value), [OUR_SECTION, key])

    @classmethod
    def read_from(cls, model: ov.Model, source: str = "the model") -> ModelMetadata:
        """Read the metadata an anomaly-edge export stored; a clear error when it is not there."""
        if not model.has_rt_info([OUR_SECTION, "format_version"]):
            raise ModelLoadError(
                f"{source} has no anomaly-edge metadata in its rt_info: it was not exported by "
                "anomaly-edge. Export it with `anomaly-edge export` (or `anomaly-edge train`), "
                "which stores thresholds and normalisation with the model."
            )

        def get(key: str) -> str:
            if not model.has_rt_info([OUR_SECTION, key]):
                raise ModelLoadError(
                    f"{source}: anomaly-edge metadata lacks the key {key!r}; "
                    "re-export the model with this version of anomaly-edge."
                )
            return str(model.get_rt_info([OUR_SECTION, key]).astype(str))

        def optional(key: str, default: str | None = None) -> str | None:
            # Keys added after format 1 was fixed: older IRs lack them and still load.
            return get(key) if model.has_rt_info([OUR_SECTION, key]) else default

        def optional_float(key: str) -> float | None:
            text = optional(key)
            return None if text is None else float(text)

        try:
            version = int(get("format_version"))
        except ValueError:
            raise ModelLoadError(
                f"{source}: metadata format_version "
                f"{get('format_version')!r} is not a whole number; the rt_info "
                "was edited or damaged: re-export the model."
            ) from None
        if version > FORMAT_VERSION:
            raise ModelLoadError(
                f"{source} uses metadata format {version}, newer than this anomaly-edge "
                f"understands ({FORMAT_VERSION}); upgrade anomaly-edge."
            )
        try:
            metadata = cls(
                model=get("model"),
                backbone=get("backbone"),
                input_size=tuple(int(v) for v in get("input_size").split()),  # type: ignore[arg-type]
                mean=tuple(float(v) for v in get("mean").split()),  # type: ignore[arg-type]
                std=tuple(float(v) for v in get("std").split()),  # type: ignore[arg-type]
                image_threshold=float(get("image_threshold")),
                pixel_threshold=float(get("pixel_threshold")),
                image_min=float(get("image_min")),
                image_max=float(get("image_max")),
                pixel_min=float(get("pixel_min")),
                pixel_max=float(get("pixel_max")),
                task=get("task"),
                precision=get("precision"),
                metrics=json.loads(get("metrics")),
                format_version=version,
                normal_score_low=optional_float("normal_score_low"),
                normal_score_median=optional_float("normal_score_median"),
                normal_score_high=optional_float("normal_score_high"),
                calibration=json.loads(optional("calibration") or "{}"),
                operating_point=json.loads(optional("operating_point") or "{}"),
                tile_grid=tuple(int(v) for v in str(optional("tile_grid", "1 1")).split()),  # type: ignore[arg-type]
                tile_frame_size=tuple(  # type: ignore[arg-type]
                    int(v) for v in str(optional("tile_frame_size", get("input_size"))).split()
                ),
                tile_blend=str(optional("tile_blend", "cosine")),
                train_aspect=optional_float("train_aspect"),
            )
        except (ValueError, TypeError, IndexError, InvalidInputError) as exc:
            raise ModelLoadError(
                f"{source}: anomaly-edge metadata is malformed ({exc}); re-export the model."
            ) from exc
        metadata.check_against(model, source)
        return metadata

    def check_against(self, model: ov.Model, source: str = "the model") -> None:
        """Refuse metadata that cannot drive this graph: sizes, mean/std, output shape."""
        problems = []
        if len(self.mean) != 3 or len(self.std) != 3:
            problems.append(
                f"mean and std need 3 values (RGB), got {len(self.mean)} and {len(self.std)}"
            )
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            problems.append("mean and std must be finite numbers")
        elif any(v <= 0 for v in self.std):
            problems.append(
                f"std must be positive, got {list(self.std)} (a zero std divides "
                "every pixel by zero)"
            )
        if min(self.input_size) < 1:
            problems.append(f"input size {self.input_size} is not positive")
        for kind in ("image", "pixel"):
            low, high = getattr(self, f"{kind}_min"), getattr(self, f"{kind}_max")
            if low > high:  # the score scale would collapse to a constant 1.0 span
                problems.append(
                    f"{kind}_min {low:g} is above {kind}_max {high:g} (the {kind} scores' "
                    "range on the validation images)"
                )
        # The graph checks apply to a network (an image input); a holder of rt_info alone
        # (a remote model's metadata) has a dummy graph.
        image_graph = (
            len(model.inputs) == 1
            and model.inputs[0].get_partial_shape().rank.is_static
            and len(model.inputs[0].get_partial_shape()) == 4
        )
        if image_graph:
            shape = model.inputs[0].get_partial_shape()
            if shape.is_static:
                graph_size = (shape[2].get_length(), shape[3].get_length())
                if shape[1].get_length() != 3:
                    problems.append(f"the graph takes {shape[1].get_length()} channels, not 3")
                if graph_size != self.input_size:
                    problems.append(
                        f"input_size {self.input_size[0]}x{self.input_size[1]} does "
                        f"not match the graph's input {graph_size[0]}x{graph_size[1]}"
                    )
        if image_graph and len(model.outputs) == 1:
            out = model.outputs[0].get_partial_shape()
            if (
                out.rank.is_dynamic
                or len(out) != 4
                or (out[1].is_static and out[1].get_length() != 1)
            ):
                problems.append(f"the graph's output must be a [1, 1, H, W] map, not {out}")
        if problems:
            raise ModelLoadError(
                f"{source}: the model's metadata does not fit its graph: "
                + "; ".join(problems)
                + ". Re-export the model."
            )


def _positive_span(lo: float, hi: float) -> float:
    # A degenerate span (one validation image, a constant map) must not divide by zero.
    span = hi - lo
    return span if span > 1e-12 else 1.0
