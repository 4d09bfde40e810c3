"""The `local` input source (`localDirectory` is its deprecated alias): a path on this machine, allow-listed.

Bacalhau's rules (`pkg/storage/local`): `SourcePath` is usable only when it matches an allow-list entry, a
doublestar glob (`/data/**` is `/data` and everything under it, `*` stays within one folder, `?`, `[...]`,
`{a,b}`) with an optional `:rw` (read-write allowed) or `:ro` suffix; an empty allow-list allows nothing.
A read-write request needs an `:rw` entry. A missing `SourcePath` is created (`CreateAs: dir|file`) only for
a read-write input. Unlike Bacalhau, the path is resolved first (`..` and symbolic links followed), and it
is the resolved path that must match; the literal leading folders of each entry are resolved too.

The allow-list is the `target` handed to `fetch`, or else `$PBP_ALLOWED_LOCAL_PATHS`: entries separated by
commas (as `bacalhau config set Compute.AllowListedLocalPaths` takes them; commas inside `{...}` stay).

Where Bacalhau bind-mounts the path, a read-only input is copied (a file to a file at `dest`, a folder to a
folder; data copied, never hard-linked; links inside kept as relative links, links leading outside refused),
so the job cannot change the source; a read-write input becomes a symbolic link at `dest` to the resolved
path, so the job's writes reach it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from ..errors import FetchError, SpecError
from ..specs import LocalParams, SourceSpec
from .place import beside, check_dest, place

__all__ = ["ENV", "allowed_paths", "fetch", "matches"]

logger = logging.getLogger("prefect_bacalhau_publish.local")

ENV = "PBP_ALLOWED_LOCAL_PATHS"


def fetch(source: SourceSpec, dest: Path, target: Sequence[str] | str | None) -> Path:
    """Copy (read-only) or link (read-write) an allow-listed local path at `dest`; `target` is the allow-list."""
    params = source.params
    if not isinstance(params, LocalParams):
        raise FetchError(
            f"invalid storage source type. expected [local, localDirectory], but received: {source.type}"
        )
    entries, origin = allowed_paths(target)
    path = Path(os.path.realpath(params.source_path))
    _check_allowed(params, path, entries, origin)
    check_dest(dest)
    where = Path(os.path.realpath(dest.absolute().parent))
    inside = where == path or path in where.parents
    if Path(os.path.realpath(dest)) == path or (inside and not params.read_write):
        raise FetchError(f"local input {path} cannot be placed at {dest}, which is or lies inside it")
    created = _create_if_missing(params, path)
    try:
        with beside(dest, ".local-input-") as tmp:
            staging = tmp / "content"
            if params.read_write:
                staging.symlink_to(path)
            else:
                _copy(path, staging)
            place(staging, dest)
    except BaseException as exc:
        if created:  # leave the machine as it was: undo the creation this failed fetch made
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink()
        if isinstance(exc, OSError):
            raise FetchError(f"cannot materialise local input {path} at {dest}: {exc}") from None
        raise
    logger.info("%s local input %s at %s", "linked" if params.read_write else "copied", path, dest)
    return dest


def allowed_paths(given: Sequence[str] | str | None) -> tuple[list[str], str]:
    """The allow-list entries (`given`, else `$PBP_ALLOWED_LOCAL_PATHS`) and where they came from."""
    if given is None:
        return _split(os.environ.get(ENV, "")), f"${ENV}"
    if isinstance(given, str):
        return _split(given), "allowed_local_paths"
    return [entry.strip() for entry in given if entry.strip()], "allowed_local_paths"


def matches(entry: str, path: str) -> bool:
    """True when the resolved absolute `path` matches the pattern of allow-list `entry` (suffix aside)."""
    pattern = _resolve_pattern(_parse(entry)[0])
    try:
        return any(re.fullmatch(_regex(alt), path) for alt in _expand(pattern))
    except (ValueError, re.error) as exc:
        raise FetchError(f"allow-list entry {entry!r} is not a valid glob pattern: {exc}") from None


def _parse(entry: str) -> tuple[str, bool]:
    """An entry's pattern and whether it grants write access, as Bacalhau's `ParseAllowPath` reads it."""
    if entry.endswith(":rw"):
        return entry.removesuffix(":rw"), True
    return entry.removesuffix(":ro"), False


def _split(text: str) -> list[str]:
    """Comma-separated entries; commas inside `{...}` alternatives belong to the entry."""
    entries, depth, start = [], 0, 0
    for index, char in enumerate(text + ","):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth <= 0:
            entries.append(text[start:index].strip())
            start = index + 1
    return [entry for entry in entries if entry]


def _check_allowed(params: LocalParams, path: Path, entries: list[str], origin: str) -> None:
    """Refuse a path no entry allows, or a read-write request only read-only entries allow."""
    read_only = False
    for entry in entries:
        if matches(entry, str(path)):
            if params.read_write and not _parse(entry)[1]:
                read_only = True
                continue
            return
    shown = params.source_path if str(path) == params.source_path else f"{params.source_path} (= {path})"
    listed = ", ".join(entries) if entries else "empty, which allows nothing"
    problem = "is not granted write access" if read_only else "is not allowlisted"
    raise FetchError(
        f"volume {shown} {problem}: the local allow-list from {origin} is {listed}. Add a matching "
        f"entry (a path or glob such as /data/**{', with :rw for read-write' if params.read_write else ''}) "
        f"to the allowed_local_paths parameter or to ${ENV} (entries separated by commas); it plays "
        "the part of a Bacalhau compute node's Compute.AllowListedLocalPaths"
    )


def _create_if_missing(params: LocalParams, path: Path) -> bool:
    """Create a missing read-write source as `CreateAs` says, with Bacalhau's rules; True if created."""
    try:
        path.stat()
        return False
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise FetchError(f"could not access volume at {params.source_path}: {exc.strerror}") from None
    if not params.read_write:
        raise FetchError(
            f"volume {params.source_path} does not exist and read-write access is not allowed: if you want "
            "the job to create the volume, set the input Source ReadWrite property to true"
        )
    if params.create_as in (None, "noCreate"):
        raise FetchError(
            f"volume does not exist at {params.source_path} and creation is not allowed: if you want the "
            "job to create the volume, set the CreateAs property to either 'dir' or 'file'"
        )
    try:
        if params.create_as == "dir":
            path.mkdir(mode=0o700, parents=True)
            return True
        if params.source_path.endswith("/"):
            raise SpecError(
                f"SourcePath {params.source_path} is a directory but CreateAs is set to file: change the "
                "SourcePath to point to a file or set CreateAs to dir"
            )
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDONLY, 0o600))
    except OSError as exc:
        raise FetchError(f"could not create source {params.create_as} at {path}: {exc.strerror}") from None
    return True


def _copy(src: Path, out: Path) -> None:
    """Copy the file or folder tree `src` to `out`: data copied, links kept only when they stay inside."""
    if src.is_file():
        shutil.copy2(src, out)
        return
    if not src.is_dir():
        raise FetchError(f"local input {src} is not a file or a folder (a device, FIFO or socket)")
    folders: list[tuple[Path, Path]] = []

    def fail(exc: OSError) -> None:
        raise exc

    for top, dirs, files in os.walk(src, onerror=fail):
        here = Path(top)
        there = out / here.relative_to(src)
        there.mkdir()
        folders.append((here, there))
        for name in (*dirs, *files):
            item = here / name
            mode = item.lstat().st_mode
            if stat.S_ISLNK(mode):
                _link(src, item, there / name)
            elif stat.S_ISREG(mode):
                shutil.copy2(item, there / name, follow_symlinks=False)
            elif not stat.S_ISDIR(mode):
                raise FetchError(
                    f"local input {src} holds {item}, a device, FIFO or socket: it cannot be copied"
                )
    for here, there in reversed(folders):  # modes last: a read-only folder could not have been filled
        shutil.copystat(here, there)


def _link(root: Path, link: Path, out: Path) -> None:
    """Recreate `link` at `out` as a relative link when it leads inside `root`; refuse it otherwise."""
    target = Path(os.path.realpath(link))
    if target != root and root not in target.parents:
        raise FetchError(
            f"local input {root} holds the symbolic link {link} -> {os.readlink(link)}, which leads outside "
            f"it (to {target}): a read-only copy cannot keep it; remove the link or allow-list its target "
            "and give it as an input of its own"
        )
    os.symlink(os.path.relpath(target, link.parent), out)


def _resolve_pattern(pattern: str) -> str:
    """`pattern` with its literal leading folders resolved (realpath), so it compares to resolved paths."""
    pattern = pattern.rstrip("/") or "/"
    meta = re.search(r"[*?\[{\\]", pattern)
    if meta is None:
        return os.path.realpath(pattern)
    cut = pattern.rfind("/", 0, meta.start())
    if cut < 0:
        return pattern
    return os.path.realpath(pattern[:cut] or "/").rstrip("/") + pattern[cut:]


def _expand(pattern: str) -> list[str]:
    """The pattern with its `{a,b}` alternatives expanded, as doublestar matches them."""
    index = 0
    while index < len(pattern):
        if pattern[index] == "\\":
            index += 2
            continue
        if pattern[index] == "{":
            depth, cuts, end = 0, [index], index
            while end < len(pattern):
                char = pattern[end]
                if char == "\\":
                    end += 2
                    continue
                depth += {"{": 1, "}": -1}.get(char, 0)
                if char == "}" and depth == 0:
                    break
                if char == "," and depth == 1:
                    cuts.append(end)
                end += 1
            else:
                raise ValueError("'{' without its '}'")
            cuts.append(end)
            head, tail = pattern[:index], pattern[end + 1 :]
            return [
                alt for a, b in itertools.pairwise(cuts) for alt in _expand(head + pattern[a + 1 : b] + tail)
            ]
        index += 1
    return [pattern]


def _regex(pattern: str) -> str:
    """A doublestar pattern (no `{}`) as a regular expression over `/`-separated paths."""
    out: list[str] = []
    index, size = 0, len(pattern)
    while index < size:
        char = pattern[index]
        at_segment = index == 0 or pattern[index - 1] == "/"
        if char == "\\":
            if index + 1 == size:
                raise ValueError("it ends in '\\'")
            out.append(re.escape(pattern[index + 1]))
            index += 2
        elif pattern.startswith("**", index) and at_segment and pattern[index + 2 : index + 3] in ("", "/"):
            if index + 2 == size:  # a final `/**` also matches the folder itself
                out[-1:] = ["(?:/.*)?"] if out[-1:] == ["/"] else [*out[-1:], ".*"]
            else:
                out.append("(?:[^/]*/)*")
            index += 3
        elif char == "*":
            out.append("[^/]*")
            index += 1
        elif char == "?":
            out.append("[^/]")
            index += 1
        elif char == "[":
            end = index + 1
            negate = pattern[end : end + 1] in ("!", "^")
            end += negate
            start = end
            while end < size and pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            if end >= size or end == start:
                raise ValueError("'[' without its ']', or an empty class")
            body = re.sub(r"\\(.)|([^-])", lambda m: re.escape(m[1] or m[2]), pattern[start:end])
            out.append(f"[{'^/' if negate else ''}{body}]")
            index = end + 1
        else:
            out.append(re.escape(char))
            index += 1
    return "".join(out)
