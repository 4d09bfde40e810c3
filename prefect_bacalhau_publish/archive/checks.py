"""Checks shared by the writer and the extractor: symlink containment, file kinds, nesting depth."""

from __future__ import annotations

import stat
from collections import deque
from collections.abc import Mapping

MAX_DEPTH = 256  # path components in one member name: deeper trees are refused, not extracted
_MAX_HOPS = 40  # symlinks followed when resolving one target, as Linux does


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return f"an unsupported file type ({stat.filemode(mode)})"


def _link_problem(links: Mapping[str, str], name: str, target: str) -> str | None:
    """Why symlink ``name -> target`` points outside its tree (following the tree's other links), or None."""
    if not target:
        return "has an empty target"
    if target.startswith("/"):
        return f"points to the absolute path {target!r}"
    here = name.split("/")[:-1]
    parts = deque(target.split("/"))
    hops = 0
    while parts:
        part = parts.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not here:
                return f"target {target!r} resolves outside the folder"
            here.pop()
            continue
        here.append(part)
        via = links.get("/".join(here))
        if via is not None:
            hops += 1
            if hops > _MAX_HOPS or via.startswith("/"):
                return f"target {target!r} goes through a symlink loop or an absolute symlink"
            here.pop()
            parts.extendleft(reversed(via.split("/")))
    return None
