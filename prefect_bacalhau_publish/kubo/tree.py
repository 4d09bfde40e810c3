"""A folder's shape as UnixFS sees it: names, kinds, sizes, modes and symlink targets, without contents."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["Entry", "UnsupportedEntryError", "scan"]


class UnsupportedEntryError(ValueError):
    """A folder holds something UnixFS cannot represent: `path` is `what` (a socket, a FIFO, a device)."""

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(f"{path} is {what}; UnixFS holds files, folders and symlinks only")
        self.path = path
        self.what = what


def _kind(mode: int) -> str:
    kinds = {
        stat.S_IFSOCK: "a socket",
        stat.S_IFIFO: "a FIFO",
        stat.S_IFCHR: "a device",
        stat.S_IFBLK: "a device",
    }
    return kinds.get(stat.S_IFMT(mode), f"an unsupported file type ({stat.filemode(mode)})")


@dataclass(eq=False)
class Entry:
    """One scanned file, symlink or directory (children sorted by name, hidden ones included)."""

    name: bytes
    path: Path
    kind: Literal["file", "dir", "symlink"]
    size: int = 0
    target: bytes = b""
    children: list[Entry] = field(default_factory=list)
    mode: int = 0
    """Permission bits with setuid, setgid and sticky (st_mode & 0o7777)."""


def scan(path: Path) -> Entry:
    """The shape of `path` (a folder, file or symlink): names, kinds, sizes, modes, symlink targets."""
    info = os.lstat(path)
    name = os.fsencode(path.name)
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        return Entry(name, path, "symlink", target=os.fsencode(os.readlink(path)), mode=mode)
    if stat.S_ISREG(info.st_mode):
        return Entry(name, path, "file", size=info.st_size, mode=mode)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsupportedEntryError(path, _kind(info.st_mode))
    with os.scandir(path) as it:
        children = [scan(Path(item.path)) for item in it]
    children.sort(key=lambda child: child.name)
    return Entry(name, path, "dir", children=children, mode=mode)
