"""The README as a newcomer types it: every `attrnet ...` line of its shell blocks parses with today's CLI, every
config, document and script it names exists (and every config loads), every make target it names is in the
Makefile, every import of its Python blocks works. Running each command is left to the tests of that command
(most need a data set or a trained run); this catches the README falling behind the code."""

from __future__ import annotations

import re
import shutil
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


RUNNER_MARK = "<!-- readme-runner: the next block runs as typed -->"


def _runner_block() -> str:
    after = README.split(RUNNER_MARK, 1)[1]
    return re.match(r"\s*```bash\n(.*?)```", after, flags=re.S).group(1)


@pytest.mark.slow
def test_the_first_model_block_runs_as_typed(tmp_path):
    """The README's first-hour block, line by line, in a fresh folder holding what a clone holds (configs/) and
    the environment `make demo` builds (.venv: the one running these tests); any failing line fails the test."""
    import os
    import subprocess
    import sys

    shutil.copytree(REPO / "configs", tmp_path / "configs")
    if (Path(sys.executable).parent / "activate").is_file():
        (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent, target_is_directory=True)
    lines = _lines(_runner_block())
    assert lines[0].startswith(". .venv/bin/activate") and len(lines) >= 8
    if not (tmp_path / ".venv").exists():  # not in a virtual environment: attrnet is on PATH already
        lines = lines[1:]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    script = "set -euo pipefail\n" + "\n".join(f"echo '+ {line}' >&2\n{line}" for line in lines) + "\n"
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for made in ("runs/first/checkpoints/best.pt", "runs/first-test.json", "runs/first.onnx",
                 "runs/first-predictions.csv", "runs/first-card.md"):
        assert (tmp_path / made).is_file(), made
    rows = (tmp_path / "runs/first-predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 600  # the header and one row per synthetic face
