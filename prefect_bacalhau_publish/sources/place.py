"""Where fetched inputs and results land: a staging folder beside the destination, then one atomic rename.

Every fetch (S3, URL, IPFS, `get_result`, the CLI's `get`) stages its content in `beside(dest)`, which is
on the destination's filesystem, and moves it into place with `place()` only once it is complete and
verified, so readers see either nothing or the whole input; a failed fetch leaves `dest` as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import FetchError

__all__ = ["beside", "check_dest", "place"]


def check_dest(dest: Path) -> None:
    """Refuse a destination that is not absent or an empty folder (before any byte is fetched)."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise FetchError(
            f"destination {dest} exists and is not an empty folder (it is a file): remove it or choose another path"
        )
    if dest.is_dir() and any(dest.iterdir()):
        raise FetchError(f"destination {dest} is not an empty folder: empty it or choose another path")


@contextlib.contextmanager
def beside(dest: Path, prefix: str) -> Iterator[Path]:
    """A temporary folder next to `dest` (its parent is created), removed when the block ends.

    Raises FetchError naming `dest` when its folder cannot be created or written (before any byte is fetched).
    """
    parent = dest.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = tempfile.TemporaryDirectory(prefix=prefix, dir=parent)
    except OSError as exc:
        raise FetchError(_unwritable(dest, parent, exc)) from None
    with staging as tmp:
        yield Path(tmp)


def _unwritable(dest: Path, parent: Path, exc: OSError) -> str:
    """Why nothing can be written at `dest`, naming it and the folder at fault rather than a staging name."""
    for folder in (parent, *parent.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                return f"cannot write {dest}: {folder} is a file, not a folder"
            break
    problem = "is not writable" if parent.is_dir() else "cannot be created"
    return f"cannot write {dest}: its folder {parent} {problem} ({exc.strerror or exc})"


def place(staging: Path, dest: Path) -> None:
    """Rename `staging` to `dest`; `dest` must not exist or be an empty folder (it is then replaced).

    `staging` must be on the same filesystem (`beside`), so the rename is atomic.
    """
    check_dest(dest)
    was_empty_dir = dest.is_dir()
    if was_empty_dir:
        dest.rmdir()
    try:
        os.rename(staging, dest)
    except OSError as exc:
        if was_empty_dir:
            with contextlib.suppress(OSError):
                dest.mkdir()
        raise FetchError(f"could not move the fetched input into {dest}: {exc.strerror}") from None
