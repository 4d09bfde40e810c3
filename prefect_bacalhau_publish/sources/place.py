"""Move a fully fetched and verified staging folder into its destination, atomically."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import FetchError


def place(staging: Path, dest: Path) -> None:
    """Rename `staging` to `dest`; `dest` must not exist or be an empty folder (it is then replaced).

    `staging` must be on the same filesystem (callers create it beside `dest`), so the rename is atomic:
    readers see either nothing or the whole input.
    """
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise FetchError(f"destination {dest} exists and is not a folder: remove it or choose another path")
    if dest.is_dir():
        if any(dest.iterdir()):
            raise FetchError(f"destination {dest} is not empty: empty it or choose another path")
        dest.rmdir()
    try:
        os.rename(staging, dest)
    except OSError as exc:
        raise FetchError(f"could not move the fetched input into {dest}: {exc.strerror}") from None
