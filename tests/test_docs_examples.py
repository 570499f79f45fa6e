"""The README's and docs/'s examples run, so they cannot drift from the code.

Every ```bash block of README.md and docs/*.md runs in a fresh folder that holds a small model
and data under the names the docs use (``runs/plate``: a generated IR; ``shots/``: images;
``line.mp4``: a video; ``my_part/``: a dataset in the MVTec layout), with ``anomaly-edge`` on
the PATH. Blocks that train are in the slow set. A block that cannot run here (installs, a
camera, a server, the real datasets) carries ``<!-- not-run: why -->`` on the line just before
it; its ``anomaly-edge`` lines must still parse with the real argument parser.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, child_env

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 300
SHELL_LANGUAGES = {"bash", "sh", "shell"}
# Blocks that train a model take seconds to minutes: they run in the slow set.
SLOW = re.compile(r"anomaly-edge\s+(train|demo)\b|anomaly-edge\s+export\s+--run\b")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<why>.*?)\s*-->$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<language>[\w+-]*)\s*$")
SHELL_OPERATORS = {"&&", "||", ";", "|"}


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    not_run: str | None  # why it cannot run in a test, from the marker before it

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def code_blocks(path: Path, text: str | None = None) -> list[Block]:
    """The fenced blocks of a Markdown file, dedented (blocks inside list items are indented)."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index])
            index += 1
        index += 1  # the closing fence
        previous = next((line.strip() for line in reversed(lines[:start]) if line.strip()), "")
        marker = NOT_RUN.match(previous)
        blocks.append(
            Block(
                path=path,
                line=start + 1,
                language=opening["language"],
                text=textwrap.dedent("\n".join(body)) + "\n",
                not_run=marker["why"] if marker else None,
            )
        )
    return blocks


def shell_blocks() -> list[Block]:
    return [b for path in DOCS for b in code_blocks(path) if b.language in SHELL_LANGUAGES]


def anomaly_edge_commands(script: str) -> list[list[str]]:
    """The argument lists of the ``anomaly-edge`` commands a shell script runs."""
    joined = script.replace("\\\n", " ")
    commands: list[list[str]] = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token not in SHELL_OPERATORS:
                words.append(token)
                continue
            while words and "=" in words[0] and not words[0].startswith("-"):
                words.pop(0)  # VARIABLE=value before the command
            if words and words[0] == "anomaly-edge":
                commands.append(words[1:])
            words = []
    return commands


def parse_error(argv: list[str]) -> str | None:
    """Why the real parser refuses ``anomaly-edge ARGV``, or None when it accepts it."""
    from anomaly_edge.cli.main import build_parser

    messages = io.StringIO()
    try:
        with contextlib.redirect_stderr(messages), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return None if exc.code in (0, None) else messages.getvalue().strip()
    return None if getattr(args, "command", None) else "no subcommand"


# ---- the checks of the checks --------------------------------------------------------------


def test_blocks_are_found_with_their_markers(tmp_path: Path) -> None:
    sample = (
        "# Title\n\n```bash\nanomaly-edge info runs/plate\n```\n\n"
        "<!-- not-run: needs a camera -->\n```bash\nanomaly-edge run runs/plate --source 0\n```\n"
        "- a list item:\n\n  ```python\n  print(1)\n  ```\n"
    )
    blocks = code_blocks(tmp_path / "sample.md", sample)
    assert [(b.line, b.language, b.not_run) for b in blocks] == [
        (3, "bash", None),
        (8, "bash", "needs a camera"),
        (13, "python", None),
    ]
    assert blocks[2].text == "print(1)\n"


def test_commands_are_split_out_of_shell_lines() -> None:
    script = (
        "pip install 'anomaly-edge[web]' && anomaly-edge info runs/plate  # a comment\n"
        "CI=1 anomaly-edge run runs/plate \\\n    --source 'a b.mp4'; echo done\n"
        "echo anomaly-edge | anomaly-edge predict runs/plate shots/\n"
    )
    assert anomaly_edge_commands(script) == [
        ["info", "runs/plate"],
        ["run", "runs/plate", "--source", "a b.mp4"],
        ["predict", "runs/plate", "shots/"],
    ]


def test_the_parser_check_refuses_unknown_options() -> None:
    assert parse_error(["info", "runs/plate"]) is None
    assert parse_error(["info", "runs/plate", "--no-such-option"]) is not None
    assert parse_error(["no-such-command"]) is not None


# ---- the documents -------------------------------------------------------------------------


def test_the_readme_is_short() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move results, design "
        "and process notes to docs/"
    )


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub makes for a Markdown file's headings."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", path.read_text(encoding="utf-8"), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_links_stay_inside_the_repository() -> None:
    link = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<img[^>]*\ssrc=\"([^\"]+)\"")
    bad: list[str] = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for found in link.finditer(text):
            target, _, anchor = (found[1] or found[2]).partition("#")
            if re.match(r"^[a-z]+:", target):  # a URL
                continue
            resolved = (path.parent / target).resolve() if target else path
            if not resolved.is_relative_to(REPO) or not resolved.exists():
                bad.append(f"{path.relative_to(REPO)}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                bad.append(f"{path.relative_to(REPO)}: {target}#{anchor} (no such heading)")
        if "../shared" in text:
            bad.append(f"{path.relative_to(REPO)}: names ../shared, which users do not have")
    assert not bad, "links to files that are not in the repository:\n" + "\n".join(bad)


def test_the_quick_start_test_command_is_what_ci_runs() -> None:
    quick_start = shell_blocks()[0]
    assert quick_start.path.name == "README.md"
    tested = [line for line in quick_start.text.splitlines() if "python -m pytest" in line]
    assert len(tested) == 1
    command = tested[0][tested[0].index("pip install") :].strip()
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert command in ci, f"`{command}` (README quick start) is not what .ci/run runs"


@pytest.mark.parametrize("block", shell_blocks(), ids=lambda b: b.name)
def test_every_command_of_a_block_parses(block: Block) -> None:
    errors = {
        shlex.join(argv): error
        for argv in anomaly_edge_commands(block.text)
        if (error := parse_error(argv)) is not None
    }
    assert not errors, f"{block.name}: the CLI refuses\n" + "\n".join(
        f"  anomaly-edge {command}\n    {error}" for command, error in errors.items()
    )
    for tool in re.findall(r"(?:^|\s)((?:tools|\.ci)/[\w./-]+)", block.text):
        assert (REPO / tool).exists(), f"{block.name}: {tool} does not exist"


@pytest.mark.parametrize(
    "block",
    [b for path in DOCS for b in code_blocks(path) if b.language == "python"],
    ids=lambda b: b.name,
)
def test_every_python_block_is_python(block: Block) -> None:
    tree = ast.parse(block.text, block.name)
    assert tree.body, f"{block.name} is empty"


# ---- running the blocks --------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the docs' commands expect: a model, images, a video, a dataset."""
    from anomaly_edge.demo import make_dataset
    from tests.ir_factory import build_synthetic_ir
    from tests.stream_media import make_image_folder, make_video

    root = tmp_path_factory.mktemp("docs_workspace")
    build_synthetic_ir(root / "runs" / "plate" / "model.xml")
    make_image_folder(root / "shots", 4, defects=[1])
    # 5 s at 20 fps, 3.5 s clean; with sensor noise, as `calibrate` refuses a frozen camera
    make_video(root / "line.mp4", 100, defects=range(70, 80), noise=2)
    # 256x341: large enough for docs/tiling.md's 2x2 grid of 160 px tiles (never above native)
    make_dataset(root / "my_part", n_train=12, n_test_good=4, n_test_per_defect=2, size=256)
    tool = root / "bin" / "anomaly-edge"
    tool.parent.mkdir()
    tool.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m anomaly_edge "$@"\n')
    tool.chmod(0o755)
    return root


def _runnable(block: Block) -> object:
    return pytest.param(
        block, id=block.name, marks=[pytest.mark.slow] if SLOW.search(block.text) else []
    )


@pytest.mark.parametrize("block", [_runnable(b) for b in shell_blocks() if b.not_run is None])
def test_every_block_runs(block: Block, workspace: Path, tmp_path: Path) -> None:
    folder = tmp_path / "work"
    shutil.copytree(workspace, folder, symlinks=True)
    env = child_env()
    env["PATH"] = os.pathsep.join([str(folder / "bin"), env.get("PATH", "")])
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.text],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=900 if SLOW.search(block.text) else 300,
        check=False,
    )
    assert done.returncode == 0, (
        f"{block.name} fails (exit code {done.returncode}); fix the example or the code, or mark "
        f"it <!-- not-run: why --> if it cannot run in a test:\n{block.text}\n"
        f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    )
