"""The README as a newcomer types it: every `attrnet ...` line of its shell blocks parses with today's CLI, every
config, document and script it names exists (and every config loads), every make target it names is in the
Makefile, every import of its Python blocks works. Running each command is left to the tests of that command
(most need a data set or a trained run); this catches the README falling behind the code."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from attrnet.cli_args import build_parser
from attrnet.config import load_config

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _lines(text: str) -> list[str]:
    """Shell lines with continuations joined."""
    return [line for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def _attrnet_commands() -> list[list[str]]:
    commands = []
    for block in _blocks("bash"):
        for line in _lines(block):
            words = shlex.split(line, comments=True)
            if "attrnet" in words:  # attrnet ..., torchrun ... -m attrnet ...
                commands.append(words[words.index("attrnet") + 1:])
    return commands


def test_the_readme_has_commands_to_check():
    assert len(_attrnet_commands()) >= 20  # a regex gone wrong would find none, and check nothing


@pytest.mark.parametrize("argv", _attrnet_commands(), ids=lambda a: " ".join(a)[:60])
def test_every_readme_command_parses(argv):
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`attrnet {' '.join(argv)}` does not parse (exit {exc.code})")


def test_every_named_file_exists_and_every_config_loads():
    named = set(re.findall(r"(?<![\w./-])((?:configs|docs|benchmarks|tests|src)/[\w./-]*\w)", README))
    assert len(named) >= 10
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"the README names files that do not exist: {missing}"
    for path in sorted(p for p in named if p.startswith("configs/")):
        load_config(REPO / path)  # raises AttrnetError on a key or value the code no longer takes


def test_make_targets_exist():
    targets = {m for block in _blocks("bash") for m in re.findall(r"^make (\w+)", block, flags=re.M)}
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert targets and all(re.search(rf"^{t}:", makefile, flags=re.M) for t in targets), targets


def test_python_blocks_import_what_they_use():
    imports = [line.strip() for block in _blocks("python") for line in block.splitlines()
               if re.match(r"\s*(from \S+ )?import ", line)]
    assert imports
    for line in imports:
        exec(line, {})  # noqa: S102 - the README's own import lines
