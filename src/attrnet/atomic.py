"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

A reader (or a killed run) never sees half a file: the old version stays until the new one is complete. The
file and its folder are fsync'ed around the rename, so a power loss cannot leave a half file under the final
name either. Temporary names carry the writer's process id (`.NAME.PID.XXXX.tmp`), so leftovers of a killed
writer can be told from files another live process is writing (remove_stale_temps).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from attrnet.errors import AttrnetError

_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~umask())  # mkstemp makes 0600; give the usual permissions
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
        _fsync_folder(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (the folder's entry), where the platform allows opening a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (a process of another user counts as alive). On Windows
    os.kill(pid, 0) would terminate the process, so every pid counts as alive there: nothing is cleaned up."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists but belongs to someone else
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove this module's temporary files in `folder` whose writer process is gone; returns them."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if match and entry.is_file() and not pid_alive(int(match.group(1))):
            try:
                entry.unlink()
                removed.append(entry)
            except FileNotFoundError:  # another process cleaned it first
                pass
    return removed


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def save_torch(path: str | Path, obj: Any) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def check_writable(path: str | Path, folder: bool = False, what: str = "--out") -> Path:
    """Fail now, with one clear line, if `path` could not be written later (as a file, or a folder to fill).

    Checked before any work so that a long evaluation or training never ends in a write error: the path must
    not be a folder where a file is wanted (or a file where a folder is wanted), every existing ancestor must
    be a folder, and the nearest existing one must accept a new file (probed by creating and removing one:
    permission bits say nothing for root, and a read-only mount only shows itself on a write).
    """
    path = Path(path)
    if path.is_dir() and not folder:
        raise AttrnetError(f"{what} {path} is a folder; give a file name")
    if path.exists() and folder and not path.is_dir():
        raise AttrnetError(f"{what} {path} is a file, not a folder")
    existing = path if path.is_dir() else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise AttrnetError(f"{what} {path} cannot be created: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise AttrnetError(f"{what} {path} cannot be written: {existing}: {exc.strerror or exc}") from None
    return path
