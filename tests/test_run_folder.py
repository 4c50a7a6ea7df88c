"""Run folders: a failed start leaves nothing behind, an existing run is continued or replaced only when
asked, temporary files of killed writers are cleaned up, config-file paths are relative to the file."""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from attrnet import atomic
from attrnet.cli import main
from attrnet.config import load_config
from attrnet.engine.run_folder import check_run_folder, config_changes, start_run_folder
from attrnet.errors import AttrnetError


def test_bad_data_root_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", f"data.root={tmp_path / 'missing'}", "--out", str(out)]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert not out.exists()


# --- an existing run is continued or replaced only when asked ------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_overwrite_replaces_the_old_outputs_and_keeps_other_files(tmp_path, csv_run):
    run = tmp_path / "run"
    shutil.copytree(csv_run["run"], run)
    (run / "notes.txt").write_text("mine\n")
    cfg = load_config(run / "config.yaml")
    check_run_folder(run, cfg, overwrite=True)
    start_run_folder(run, cfg, overwrite=True)
    assert not (run / "checkpoints" / "best.pt").exists() and not (run / "metrics.json").exists()
    assert not list((run / "plots").glob("*.png"))
    assert (run / "notes.txt").read_text() == "mine\n" and (run / "config.yaml").is_file()


def test_resume_allows_more_epochs_and_refuses_fewer(tmp_path, csv_run):
    cfg = load_config(csv_run["run"] / "config.yaml")
    cfg.train.epochs += 3
    cfg.train.device = "cpu"
    check_run_folder(csv_run["run"], cfg, resume=True)  # more epochs: allowed
    cfg.train.epochs = 0
    with pytest.raises(AttrnetError, match="train.epochs was 1 in this run, now 0"):
        check_run_folder(csv_run["run"], cfg, resume=True)


def test_config_changes_compares_paths_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stored = {"data": {"root": "data", "image_size": 16}}
    current = {"data": {"root": str(tmp_path / "data"), "image_size": 24}}
    assert config_changes(stored, current) == [("data", "image_size", 16, 24)]


def test_stale_temporary_checkpoints_are_removed_live_ones_kept(tmp_path, csv_run):
    run = tmp_path / "run"
    shutil.copytree(csv_run["run"], run)
    dead = run / "checkpoints" / f".best.pt.{_dead_pid()}.ab12cd.tmp"
    live = run / "checkpoints" / f".last.pt.{os.getpid()}.ef34gh.tmp"
    other = run / "checkpoints" / "notes.tmp"
    for p in (dead, live, other):
        p.write_bytes(b"half a checkpoint")
    start_run_folder(run, load_config(run / "config.yaml"), overwrite=True)
    assert not dead.exists() and live.exists() and other.exists()


def test_atomic_temp_names_carry_the_writer_pid(tmp_path):
    seen = []
    with atomic.atomic_path(tmp_path / "f.json") as tmp:
        seen.append(tmp.name)
        tmp.write_text("{}")
    assert seen[0].startswith(f".f.json.{os.getpid()}.") and seen[0].endswith(".tmp")
    assert (tmp_path / "f.json").read_text() == "{}" and len(list(tmp_path.iterdir())) == 1


def test_config_file_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "c.yaml").write_text(yaml.safe_dump({"data": {"root": "../data/faces"}}))
    monkeypatch.chdir("/")
    cfg = load_config(tmp_path / "configs" / "c.yaml", ["data.cache_dir=cache"])
    assert cfg.data.root == str(tmp_path / "data" / "faces")
    assert cfg.data.cache_dir == "/cache"  # a command-line value: relative to the working directory
