"""Progress bars: tqdm's, drawn only where a person watches them (a terminal, and not under --quiet); in a log
file or a pipe they would be cursor-up escapes and carriage returns."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from tqdm import tqdm

QUIET_ENV = "ATTRNET_QUIET"  # "1": no bars and only warnings (attrnet --quiet; inherited by worker processes)


def bars_shown() -> bool:
    return os.environ.get(QUIET_ENV) != "1" and sys.stderr.isatty()


def progress_bar(iterable: Iterable[Any] | None = None, *, disable: bool = False, **kwargs: Any) -> tqdm:
    """tqdm(iterable, **kwargs), switched off when the caller says so or bars_shown() is false."""
    from tqdm import tqdm  # here, not at the top: the CLI reads QUIET_ENV before any command, and --help stays fast

    return tqdm(iterable, disable=disable or not bars_shown(), **kwargs)
