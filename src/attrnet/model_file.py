"""Model files that are safe to open: only tensors, numbers, strings, lists and dicts, read back with
`torch.load(weights_only=True)`, which refuses anything else without running it.

A model file is something people download and share, and a pickle can carry code that runs as it is loaded.
Everything attrnet saves with torch goes through save_file (which turns numpy values into tensors and plain
numbers, and refuses other objects), and everything it reads goes through load_file. Files written before
this rule (numpy scalars in the history, say) are refused with the one command that converts them,
upgrade_file, for a user to run knowingly on a file they trust.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

from attrnet import atomic
from attrnet.errors import AttrnetError

PLAIN = (str, int, float, bool, type(None))
ACCEPTED = ("attrnet reads a run folder, a checkpoint .pt it wrote, an exported folder (config.json + "
            "model.safetensors) or an exported .onnx file")


def to_plain(obj: Any, where: str = "value") -> Any:
    """obj with numpy arrays as tensors and numpy scalars as Python numbers; anything else is a TypeError."""
    import numpy as np
    import torch

    if isinstance(obj, np.generic):  # before the plain types: np.float64 is a subclass of float
        return obj.item()
    if isinstance(obj, PLAIN) or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        out = {k: to_plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
        if isinstance(obj, OrderedDict):  # a state dict: keep its type and its per-module version metadata
            out = OrderedDict(out)
            if hasattr(obj, "_metadata"):
                out._metadata = to_plain(obj._metadata, f"{where}._metadata")  # type: ignore[attr-defined]
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, torch.Size):
        return list(obj)
    raise TypeError(f"{where}: a {type(obj).__name__} cannot go into a model file (only tensors, numbers, "
                    f"strings, lists and dicts)")


def save_file(path: str | Path, obj: dict) -> None:
    """Write atomically (temp file, fsync, rename): a run killed mid-write leaves the old file intact."""
    import torch

    plain = to_plain(obj)
    with atomic.atomic_path(path) as tmp:
        torch.save(plain, tmp)


def load_file(path: str | Path, what: str = "attrnet model file") -> Any:
    """torch.load with weights_only=True; every failure is one AttrnetError that says what to do."""
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():  # a reference to a Python object: a class, a function
            raise AttrnetError(
                f"{path}: refused: it holds Python objects besides tensors, numbers, strings, lists and dicts, "
                f"and loading those could run code hidden in the file. If it is an older attrnet file from a "
                f"source you trust, convert it once with: attrnet checkpoint upgrade {path}") from None
        # torch's own text here suggests weights_only=False: the one thing never to do with a file of unknown origin
        raise AttrnetError(f"{path}: not {_article(what)} (not a file torch saves: {_kind_of(path)}). {ACCEPTED}") from None
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, AttributeError) as exc:
        raise AttrnetError(f"{path}: not a readable {what} ({type(exc).__name__}: {_first_line(exc)}). "
                           f"{ACCEPTED}") from None


class AlreadySafe(Exception):
    """upgrade_file's answer for a file that needs no conversion (nothing was written)."""


def upgrade_file(path: str | Path, out: str | Path | None = None) -> Path:
    """Re-save an older attrnet file (one that weights_only refuses) in the safe form; returns where.

    This UNPICKLES THE FILE WITHOUT RESTRICTION, which runs any code it carries: only for trusted files.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise AttrnetError(f"no such file: {path}")
    out = Path(out) if out else path
    atomic.check_writable(out, what="output")
    try:  # a file that opens safely needs nothing: it is never unpickled without restriction
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - refused or unreadable: the conversion below says which
        pass
    else:
        raise AlreadySafe(f"{path} is already weights-only: attrnet opens it without running code; nothing to do")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure of an arbitrary pickle is "not readable"
        raise AttrnetError(f"{path}: not a readable torch file ({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(obj, dict):
        raise AttrnetError(f"{path}: not an attrnet file (a {type(obj).__name__}, not a dict)")
    try:
        save_file(out, obj)
    except TypeError as exc:
        raise AttrnetError(f"{path}: cannot be converted: {exc}") from None
    return out


def _article(what: str) -> str:
    return ("an " if what[:1] in "aeiou" else "a ") + what


def _kind_of(path: Path) -> str:
    """What the file looks like, from its first bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return "unreadable"
    if head.lstrip()[:1] in (b"{", b"["):
        onnx = path.with_suffix(".onnx")
        return f"it is the description of {onnx}: give that file" if onnx.is_file() else "it is JSON text"
    if head.startswith(b"\x08") or b"onnx" in head.lower():
        return "it looks like an ONNX graph: load the .onnx file itself"
    if not head:
        return "it is empty"
    return "its first bytes are " + head[:8].hex()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
