"""Reading a label file's text, as every reader of a text format does (celeba, csv, awa2)."""

from __future__ import annotations

from pathlib import Path

from attrnet.errors import AttrnetError


def read_label_text(path: Path) -> str:
    """A label file's text with every line ending made \\n (\\r\\n and a lone \\r end a line too, as in an
    editor, so line numbers in messages match). The file must be UTF-8 (a BOM is dropped): anything else,
    or a NUL character (a binary or UTF-16 file), is an error naming the line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AttrnetError(f"cannot read {path}: {exc.strerror or exc}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise AttrnetError(f"{path}: the file is UTF-16 text; save it as UTF-8")
    data = data.removeprefix(b"\xef\xbb\xbf")  # the BOM some editors write
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = _one_newline(data[:exc.start].decode("utf-8")).count("\n") + 1
        raise AttrnetError(f"{path}:{line}: byte 0x{data[exc.start]:02x} is not UTF-8 text; "
                           f"save the file as UTF-8") from None
    text = _one_newline(text)
    nul = text.find("\0")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        raise AttrnetError(f"{path}:{line}: a NUL character: this is not a text file (or not UTF-8); "
                           f"save it as UTF-8 text")
    return text


def _one_newline(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def counted(n: int, noun: str) -> str:
    """'1 value', '3 values'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")
