#!/usr/bin/env python
"""How much accuracy moves with the CPU's instruction set: train the same model under each.

Every (level, category, model) run is a fresh child process whose oneDNN, OpenVINO and ATen
kernels are capped at one instruction-set level (:mod:`anomaly_edge.train.isa`: ``sse41``,
``avx2``, ``avx512``, ``native``; levels this CPU lacks are skipped). Same data, same seed,
same settings; only the kernels differ, as they would on another CPU. Prints a table, then the
spread (max - min over levels) per category and model, then as the last stdout line one JSON
object:

    {"benchmark": "isa", "levels": [...], "runs": [{"level": ..., "dataset": ...,
      "category": ..., "model": ..., "image_auroc": ..., "pixel_auroc": ..., "aupro": ...,
      "fit_s": ..., "epochs": ..., "best_epoch": ...}, ...],
     "spread": [{"dataset": ..., "category": ..., "model": ..., "image_auroc": ...,
                 "pixel_auroc": ..., "aupro": ...}, ...]}

    python tools/bench_isa.py --datasets mpdd --models stfpm --image-size 128 --max-epochs 3
    python tools/bench_isa.py --levels avx2 native --stfpm-options '{"lr": 0.1}'
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
__import__("checkout").use_package()  # the built checkout, else the installed package

from anomaly_edge.train import isa  # noqa: E402
from bench_accuracy import datasets_root, find_categories  # noqa: E402

MODELS = ("padim", "stfpm")
METRICS = ("image_auroc", "pixel_auroc", "aupro")
CHILD_FLAG = "--child-run"
RESULT_PREFIX = "BENCH_ISA_RESULT "


def child_main(args: argparse.Namespace) -> int:
    """Train one model on one category under the caps already in the environment."""
    import torch

    torch.set_num_threads(args.threads)
    from anomaly_edge.train import train
    from anomaly_edge.train.options import StfpmOptions

    options = {
        "model": args.model,
        "backbone": args.backbone,
        "image_size": args.image_size,
        "seed": args.seed,
        "export": False,
        "threads": args.threads,
    }
    if args.model == "stfpm":
        stfpm_options = json.loads(args.stfpm_options or "{}")
        if args.max_epochs is not None:
            stfpm_options["max_epochs"] = args.max_epochs
        options["options"] = StfpmOptions(**stfpm_options)
    result = train(args.data, **options)
    history = getattr(result.model, "history", None)
    record = {key: result.metrics.get(key) for key in METRICS}
    record["fit_s"] = result.metrics.get("fit_seconds")
    record["epochs"] = history.epochs if history is not None else None
    record["best_epoch"] = history.best_epoch if history is not None else None
    norms = getattr(history, "grad_norm", None)
    record["grad_norm_max"] = max(norms) if norms else None
    record["aten"] = torch.backends.cpu.get_cpu_capability()
    print(RESULT_PREFIX + json.dumps(record), flush=True)
    return 0


def run_child(
    level: isa.IsaLevel, folder: Path, model: str, args: argparse.Namespace
) -> dict | str:
    """One child run: its record, or the tail of its error output."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        CHILD_FLAG,
        "--data",
        str(folder),
        "--model-name",
        model,
        "--backbone",
        args.backbone,
        "--image-size",
        str(args.image_size),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ]
    if args.max_epochs is not None:
        command += ["--max-epochs", str(args.max_epochs)]
    if args.stfpm_options:
        command += ["--stfpm-options", args.stfpm_options]
    # A fresh process per level: the libraries read their caps once, at start.
    env = level.environment({k: v for k, v in os.environ.items() if k not in isa.CAP_VARIABLES})
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning threads starve a shared machine
    env.setdefault("CI", "true")  # no telemetry attempts offline
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return "\n".join(done.stderr.strip().splitlines()[-5:]) or f"exit code {done.returncode}"


def spreads(runs: list[dict]) -> list[dict]:
    """Max - min of each metric over the levels, per (dataset, category, model)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for run in runs:
        if "error" not in run:
            groups.setdefault((run["dataset"], run["category"], run["model"]), []).append(run)
    result = []
    for (dataset, category, model), members in groups.items():
        row: dict = {
            "dataset": dataset,
            "category": category,
            "model": model,
            "levels": len(members),
        }
        for key in METRICS:
            values = [m[key] for m in members if m[key] is not None]
            row[key] = round(max(values) - min(values), 4) if values else None
        result.append(row)
    return result


def format_table(runs: list[dict]) -> str:
    header = ("level", "data", "model", "img AUROC", "pix AUROC", "AUPRO", "fit s", "epochs")
    rows = [header]
    for run in runs:
        rows.append(
            (
                run["level"],
                f"{run['dataset']}/{run['category']}",
                run["model"],
                *(_fmt(run.get(k), 3) for k in METRICS),
                _fmt(run.get("fit_s"), 1),
                f"{run.get('best_epoch') or '-'}/{run.get('epochs') or '-'}",
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", help="datasets root (default ../shared/datasets or $ANOMALY_EDGE_DATASETS)"
    )
    parser.add_argument("--datasets", nargs="+", help="dataset folder names (default: all)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument(
        "--levels",
        nargs="+",
        choices=list(isa.LEVELS),
        default=list(isa.LEVELS),
        help="instruction-set levels (default: all this CPU has)",
    )
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument(
        "--max-epochs", type=int, default=None, help="STFPM epoch cap (default: the train API's)"
    )
    parser.add_argument(
        "--stfpm-options",
        default=None,
        help="JSON object of extra STFPM settings, e.g. '{\"lr\": 0.1}'",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument(CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model-name", dest="model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.max_epochs is not None and args.max_epochs < 1:
        parser.error("--max-epochs must be at least 1")
    if args.stfpm_options is not None:
        try:
            if not isinstance(json.loads(args.stfpm_options), dict):
                raise ValueError
        except ValueError:
            parser.error(f"--stfpm-options must be a JSON object, got {args.stfpm_options!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_run:
        return child_main(args)
    available = {level.name for level in isa.supported_levels()}
    levels = [isa.level(name) for name in args.levels if name in available]
    for name in sorted(set(args.levels) - available):
        print(f"skipping {name}: this CPU lacks it", file=sys.stderr)
    categories = find_categories(datasets_root(args.root), args.datasets)
    runs = []
    for dataset, category, folder in categories:
        for model in args.models:
            for level in levels:
                print(
                    f"{model} on {dataset}/{category} at {level.name} ...",
                    file=sys.stderr,
                    flush=True,
                )
                record = run_child(level, folder, model, args)
                run = {
                    "level": level.name,
                    "dataset": dataset,
                    "category": category,
                    "model": model,
                }
                if isinstance(record, str):
                    print(f"  FAILED: {record}", file=sys.stderr, flush=True)
                    run["error"] = record
                else:
                    run.update(
                        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
                    )
                    print("  " + json.dumps(run), file=sys.stderr, flush=True)
                runs.append(run)
    spread = spreads(runs)
    print(format_table(runs))
    print()
    for row in spread:
        print(
            f"spread over {row['levels']} levels, {row['dataset']}/{row['category']} "
            f"{row['model']}: " + ", ".join(f"{k} {_fmt(row[k], 3)}" for k in METRICS)
        )
    print(
        json.dumps(
            {
                "benchmark": "isa",
                "levels": [level.name for level in levels],
                "image_size": args.image_size,
                "max_epochs": args.max_epochs,
                "stfpm_options": json.loads(args.stfpm_options or "{}"),
                "runs": runs,
                "spread": spread,
            }
        )
    )
    return 1 if any("error" in run for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
