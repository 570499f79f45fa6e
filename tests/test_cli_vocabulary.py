"""One CLI vocabulary: every command's ``--help``, read from the real parser, spells the shared
options the same way; every command that uses a model takes it as MODEL (a run folder)
positionally or as ``--model``; options and positionals mix in any order."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket

import cv2
import numpy as np
import pytest

from anomaly_edge.cli.common import ExitCode
from anomaly_edge.cli.main import build_parser, command_modules, main, parse_arguments
from tests.ir_factory import GREY

# The commands the issue names as taking a model; the walk below finds them (and any other)
# from the parser, this only checks that none of them lost MODEL.
MODEL_COMMANDS = {"calibrate", "serve", "predict", "info", "benchmark", "export", "run"}
# Spellings of shared things that must not come back (the shared spelling is on the right).
SYNONYMS = {
    "--model-path": "--model",
    "--xml": "--model",
    "--ir": "--model",
    "--checkpoint": "--model",
    "--run": "--model",
    "--target": "--device",
    "--target-device": "--device",
    "--nireq": "--num-requests",
    "--requests": "--num-requests",
    "--threshold": "--image-threshold",
    "--out-dir": "--out",
    "--output-dir": "--out",
    "--outdir": "--out",
    "--frame": "--frame-size",
}
# Option pairs that normalise alike but name different things (see _stem).
DIFFERENT_THINGS = {
    # run: the overlay's style (heatmap|mask); predict: the folder of overlay images
    frozenset({"--overlay", "--overlays"}),
}
# Commands still in the older `register(subparsers)` shape (run.py is being rewritten by the
# stream work; it moves to the shape below then).
OLD_SHAPE = {"run"}
# Options shared by commands but with a different value each may take, and why.
METAVAR_DIFFERS = {
    "--out": "calibrate writes one IR: a .xml path or a folder",
}


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _options(text: str) -> dict[str, str | None]:
    """{option: its metavar (None for a flag)} from the option lines of a --help text."""
    found: dict[str, str | None] = {}
    body = text.split("\n\n", 1)[1]  # past the usage lines
    for match in re.finditer(r"^\s{2,}(-[^\n]*?)(?:\s{2,}|\n)", body, re.MULTILINE):
        for part in match.group(1).split(", "):
            name, _, metavar = part.partition(" ")
            if name.startswith("--"):
                found[name] = metavar or None
    return found


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """Every command's --help text, as users see it."""
    texts = {}
    for command in _commands():
        parser = _commands()[command]
        texts[command] = parser.format_help()
    return texts


def test_every_command_has_its_help_and_the_walk_finds_them_all(capsys, helps):
    assert set(helps) >= MODEL_COMMANDS, "a command that takes a model went missing"
    for command, text in helps.items():
        assert _help(command, capsys) == text  # the real --help, as argparse prints it
        assert text.startswith(f"usage: anomaly-edge {command}")
        assert _options(text), f"{command}: no options read from its help"


def test_every_command_has_one_shape():
    import anomaly_edge.cli as package

    commands = command_modules(package.__path__)
    assert set(commands) == set(_commands())
    for name, module in commands.items():
        if name in OLD_SHAPE:
            continue
        assert not hasattr(module, "register"), name
        for part in ("HELP", "DESCRIPTION", "EPILOG", "add_arguments", "run"):
            assert getattr(module, part, None), f"{name} has no {part}"


def test_shared_options_are_spelled_and_shaped_the_same_everywhere(helps):
    seen: dict[str, dict[str, str | None]] = {}
    for command, text in helps.items():
        for option, metavar in _options(text).items():
            seen.setdefault(option, {})[command] = metavar
            assert option not in SYNONYMS, (
                f"{command} spells {option}; the CLI says {SYNONYMS[option]}"
            )
    shared = {o: by for o, by in seen.items() if len(by) > 1 and o != "--help"}
    # the shared vocabulary itself: present in more than one command
    for option in ("--model", "--device", "--task", "--image-threshold", "--num-requests"):
        assert option in shared, f"{option} is no longer shared"
    for option, by_command in shared.items():
        shapes = {metavar is None for metavar in by_command.values()}
        assert len(shapes) == 1, f"{option} is a flag in some commands, valued in others"
        if option not in METAVAR_DIFFERS:
            assert len(set(by_command.values())) == 1, f"{option} differs: {by_command}"
    stems: dict[str, set[str]] = {}
    for option in seen:
        stems.setdefault(_stem(option), set()).add(option)
    for spellings in stems.values():
        if len(spellings) > 1:
            assert frozenset(spellings) in DIFFERENT_THINGS, f"near-twins: {sorted(spellings)}"


def _stem(option: str) -> str:
    """An option's name without dashes, underscores and a plural s: what users remember."""
    stem = option.lstrip("-").replace("-", "").replace("_", "")
    return stem[:-1] if stem.endswith("s") else stem


def test_every_model_command_takes_model_positionally_and_as_an_option(helps):
    for command, text in helps.items():
        usage = text.split("\n\n", 1)[0]
        if "MODEL" not in usage:
            continue
        assert "[MODEL]" in usage, f"{command}: MODEL is not positional"
        assert _options(text).get("--model") == "MODEL", f"{command}: no --model MODEL"
    for command in MODEL_COMMANDS:
        assert "[MODEL]" in helps[command].split("\n\n", 1)[0], command


def test_train_names_the_architecture_arch_and_still_reads_model(helps, capsys):
    options = _options(helps["train"])
    assert "--arch" in options and "--model" not in options
    parser = build_parser()
    base = ["train", "--data", "D", "--out", "O"]
    assert parse_arguments(parser, [*base, "--arch", "stfpm"]).arch == "stfpm"
    assert parse_arguments(parser, base).arch == "padim"
    assert parse_arguments(parser, [*base, "--model", "stfpm"]).arch == "stfpm"
    assert "--model is deprecated here; use --arch" in capsys.readouterr().err


def test_old_spellings_still_parse(synthetic_ir):
    parser = build_parser()
    args = parse_arguments(parser, ["benchmark", str(synthetic_ir), "--frame", "64x48"])
    assert args.frame_size == (64, 48)
    assert parse_arguments(parser, ["export", "--run", "R"]).run == "R"
    assert parse_arguments(parser, ["export", "--checkpoint", "R"]).run == "R"


# ---- a run folder, positionally, in every command --------------------------------------------


@pytest.fixture
def run_dir(synthetic_ir, tmp_path):
    """A run folder as `train --out` leaves it: model.xml and model.bin inside."""
    folder = tmp_path / "plate"
    folder.mkdir()
    for suffix in (".xml", ".bin"):
        shutil.copy(synthetic_ir.with_suffix(suffix), folder / f"model{suffix}")
    return folder


@pytest.fixture
def images(tmp_path):
    """Twelve slightly noisy grey frames (enough for `calibrate`)."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(12):
        frame = np.full((48, 64, 3), GREY, np.int16) + rng.integers(-3, 4, (48, 64, 3))
        cv2.imwrite(str(folder / f"{index:02d}.png"), frame.clip(0, 255).astype(np.uint8))
    return folder


def test_predict_model_then_options_then_images(run_dir, images, capsys):
    code = main(["predict", str(run_dir), "--task", "segmentation", str(images), "--device", "CPU"])
    assert code == ExitCode.OK
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 12 and all("mask" in row for row in rows)
    code = main(["predict", "--task", "classification", str(run_dir), str(images / "00.png")])
    assert code == ExitCode.OK
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and "mask" not in rows[0]


def test_info_benchmark_and_run_take_the_run_folder_first(run_dir, images, capsys):
    assert main(["info", str(run_dir), "--json"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["path"] == str(run_dir / "model.xml")
    benchmark = ["benchmark", str(run_dir), "--seconds", "0.05", "--frame-size", "64x48"]
    assert main([*benchmark, "--device", "CPU", "--json"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["frame"] == "64x48"
    events = run_dir.parent / "events.jsonl"
    run = ["run", str(run_dir), "--source", str(images), "--device", "CPU", "--quiet"]
    assert main([*run, "--events", str(events), "--all-frames"]) == ExitCode.OK
    assert len(events.read_text().splitlines()) == 12


def test_calibrate_takes_the_run_folder_first(run_dir, images, capsys):
    out = run_dir.parent / "calibrated"
    out.mkdir()
    argv = ["calibrate", "--source", str(images), "--out", str(out), str(run_dir)]  # MODEL last
    assert main([*argv, "--frames", "12", "--device", "CPU"]) == ExitCode.OK
    assert (out / "model.xml").is_file()
    assert "calibrated on 12 frames" in capsys.readouterr().out


def test_serve_takes_the_run_folder_first(run_dir, monkeypatch, capsys):
    import sys

    saved_argv, sys.argv = sys.argv, sys.argv[:1]  # kserve reads sys.argv when imported
    try:
        from anomaly_edge.serve.server import AnomalyModelServer
    finally:
        sys.argv = saved_argv
    served = []  # the server is not started: the models it would serve are kept here
    monkeypatch.setattr(AnomalyModelServer, "start", lambda self, models: served.extend(models))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["serve", str(run_dir), "--host", "127.0.0.1", "--http-port", str(port)]
    try:
        assert main([*argv, "--grpc-port", "0", "--device", "CPU"]) == ExitCode.OK
    finally:
        for model in served:
            model.stop()
    assert len(served) == 1 and served[0].ready is False  # loaded, then stopped above
    assert f"serving {run_dir / 'model.xml'} as 'anomaly-edge'" in capsys.readouterr().err


def test_export_publishes_the_ir_of_a_folder_given_first(run_dir, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["export", str(run_dir), "--repository", str(repo), "--name", "plate"]) == 0
    assert (repo / "plate" / "1" / "model.xml").is_file()
    assert main(["export", str(run_dir)]) == ExitCode.USAGE  # an IR alone: nothing to do
    assert "--repository DIR and --name NAME" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
def test_two_different_models_are_a_usage_error(command, run_dir, synthetic_ir, capsys):
    extra = ["--source", "0", "--out", "x.xml"] if command == "calibrate" else []
    code = main([command, str(run_dir), "--model", str(synthetic_ir), *extra])
    assert code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "two models given" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["info", "calibrate", "serve", "export"])
def test_commands_that_need_the_files_refuse_a_url_clearly(command, capsys):
    argv = [command, "http://127.0.0.1:1"]
    if command == "calibrate":
        argv += ["--source", "0", "--out", "x.xml"]
    assert main(argv) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "model server URL" in err and "Traceback" not in err
