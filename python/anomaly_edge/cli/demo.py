"""`anomaly-edge demo`: the whole job on a generated dataset, no data of your own needed.

Makes a brushed-metal dataset (MVTec layout) with scratches, holes, stains and missing pieces,
trains PaDiM on it, exports the IR, renders a video of the surface passing a camera and runs
the stream on it. Ends by saying where the annotated video, the events and the metrics are.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from anomaly_edge.cli.common import (
    CliError,
    ExitCode,
    add_device_argument,
    check_device,
    require_train_extra,
)

DEFAULT_OUT = Path("anomaly-edge-demo")
# --quick: the same steps at toy sizes (a smoke test of an installation). With 16 training
# images (fewer than PaDiM's channels) every clean frame of the video was flagged: 48 images
# plus two compressed, re-lit copies of each give the Gaussians enough samples. The false-alarm
# threshold stands on the normal test images of the validation split: with 12 (4 in validation)
# seed 3 flagged 4 of 30 clean frames; with 30 (9 in validation), seeds 0-4 flag 1, 1, 0, 0, 0
# and catch both defects (a toy, not a benchmark).
QUICK: dict[str, Any] = {
    "n_train": 48,
    "n_test_good": 30,
    "n_test_per_defect": 3,
    "dataset_size": 128,
    "image_size": 128,
    "video_seconds": 3.0,
    "video_fps": 8.0,
    "video_size": (240, 320),
    "video_speed": 40,
    "video_defects": ("hole", "missing"),
    "augment": "jpeg=70-95,jitter=0.03,copies=2",
}


HELP = "train and run a model on generated data (no data needed; needs the train extra)"
DESCRIPTION = (
    "Generate a small industrial-surface dataset and video, train PaDiM, export to OpenVINO "
    "IR and run the stream on the video. Takes a few minutes on a laptop CPU."
)
EPILOG = (
    "exit codes: 0 done, 2 bad arguments, 3 --out holds files the demo did not make, "
    "5 training extra not installed, 1 other errors"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the demo writes, its device, seed and size."""
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"folder for everything the demo makes (default: ./{DEFAULT_OUT})",
    )
    add_device_argument(parser, "OpenVINO device for the stream")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller dataset, images and video (a smoke test, under a minute)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the whole demo and print where its results are."""
    require_train_extra("anomaly-edge demo")
    check_device(args.device)  # before minutes of work, not after
    from anomaly_edge.demo.run import DemoSettings, format_report, run_demo
    from anomaly_edge.errors import InvalidInputError

    settings = DemoSettings(seed=args.seed, device=args.device, **(QUICK if args.quick else {}))
    try:
        report = run_demo(args.out, settings)
    except InvalidInputError as exc:
        raise CliError(str(exc), ExitCode.INPUT) from None
    except OSError as exc:  # e.g. an output folder that cannot be written
        raise CliError(f"demo output in {args.out}: {exc}", ExitCode.FAILURE) from None
    print(format_report(report))
    return int(ExitCode.OK)
