"""The threshold options (``--image-threshold``, ``--pixel-threshold``, ``--raw-thresholds``):
defined, checked and applied in this one place for every command that takes them."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from anomaly_edge.cli.arg_types import finite_float
from anomaly_edge.cli.exit_codes import CliError, ExitCode

if TYPE_CHECKING:
    from anomaly_edge.model import AnomalyModel

_NAMES = ("image_threshold", "pixel_threshold")


def add_threshold_arguments(parser: argparse.ArgumentParser, raw_only: bool = False) -> None:
    """The three threshold options, in score units (0-1, 0.5 = trained) unless
    ``--raw-thresholds``; with ``raw_only`` (training: nothing trained to be relative to yet)
    they are raw units and need ``--raw-thresholds`` to say so."""
    if raw_only:
        group = parser.add_argument_group(
            "thresholds",
            "fixed thresholds in raw score units instead of tuned ones; there is no trained "
            "threshold yet to be relative to, so they need --raw-thresholds",
        )
        image_help = "fixed image threshold in raw score units (needs --raw-thresholds)"
        pixel_help = "fixed pixel threshold in raw map units (needs --raw-thresholds)"
        raw_help = "confirm that --image-threshold/--pixel-threshold are raw units"
    else:
        group = parser.add_argument_group(
            "thresholds",
            "in the units of the scores shown (0-1, 0.5 = the trained threshold): "
            "0.7 is stricter than trained, 0.3 more sensitive",
        )
        image_help = "flag an image when its score reaches T (default 0.5, as trained)"
        pixel_help = "mark a pixel when its map value reaches T (default 0.5)"
        raw_help = (
            "read --image-threshold/--pixel-threshold in raw score units (as "
            "`anomaly-edge info` shows them) instead"
        )
    group.add_argument("--image-threshold", type=finite_float, metavar="T", help=image_help)
    group.add_argument("--pixel-threshold", type=finite_float, metavar="T", help=pixel_help)
    group.add_argument("--raw-thresholds", action="store_true", help=raw_help)


def thresholds_given(args: argparse.Namespace) -> list[str]:
    """The threshold options the user gave, as spelled on the command line."""
    return [
        "--" + name.replace("_", "-") for name in _NAMES if getattr(args, name, None) is not None
    ]


def check_thresholds(args: argparse.Namespace, raw_only: str | None = None) -> None:
    """The one check of the threshold options (exit 2 when they are wrong).

    Normalised thresholds must lie in [0, 1]; raw ones only need to be finite (their type
    checks that). ``raw_only`` is why this command reads thresholds in raw units only: then
    they need ``--raw-thresholds``.
    """
    given = thresholds_given(args)
    raw = bool(getattr(args, "raw_thresholds", False))
    if raw_only is not None and given and not raw:
        raise CliError(f"{'/'.join(given)}: {raw_only}: add --raw-thresholds", ExitCode.USAGE)
    if raw:
        return
    for name in _NAMES:
        value = getattr(args, name, None)
        if value is not None and not 0.0 <= value <= 1.0:
            flag = "--" + name.replace("_", "-")
            raise CliError(
                f"{flag} {value:g}: thresholds are in score units, 0-1 (0.5 = the "
                "trained threshold); for raw score units add --raw-thresholds",
                ExitCode.USAGE,
            )


def raw_threshold(normalised: float, trained: float, scale: float) -> float:
    """The raw threshold whose normalised score is ``normalised`` under the trained one:
    scores are ``(raw - trained) / scale + 0.5``, so 0.5 maps to ``trained`` itself."""
    return trained + (normalised - 0.5) * scale


def apply_thresholds(model: AnomalyModel, args: argparse.Namespace) -> None:
    """Set the thresholds the user gave (normalised or raw) on a loaded model."""
    md = model.metadata
    raw = getattr(args, "raw_thresholds", False)
    for name, trained, scale in (
        ("image_threshold", md.image_threshold, md.image_scale),
        ("pixel_threshold", md.pixel_threshold, md.pixel_scale),
    ):
        value = getattr(args, name, None)
        if value is not None:
            setattr(model, name, value if raw else raw_threshold(value, trained, scale))
