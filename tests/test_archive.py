"""Tests for prefect_bacalhau_publish.archive: deterministic tar.gz writing and safe, atomic extraction."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_bacalhau_publish import archive
from prefect_bacalhau_publish.archive import (
    DEFAULT_COMPRESSOR,
    HAVE_ISAL,
    ArchiveInfo,
    archive_digest,
    extract_archive,
    write_archive,
)
from prefect_bacalhau_publish.archive import checks as archive_checks
from prefect_bacalhau_publish.archive import codec as archive_codec
from prefect_bacalhau_publish.archive import extract as archive_extract
from prefect_bacalhau_publish.archive import write as archive_write
from prefect_bacalhau_publish.errors import FetchError, PublishError, UnsafeArchiveError

from .tarkit import member, tar_gz

COMPRESSORS: list[archive.Compressor] = ["zlib", "isal"] if HAVE_ISAL else ["zlib"]
LONG_NAME = "deep/" + "n" * 120 + ".txt"  # > 100 characters: needs a PAX header


# ------------------------------------------------------------------------------------------------ helpers


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root``: folders, files (content + exec bit) and symlinks (target)."""
    seen: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                seen[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                seen[rel] = ("dir",)
            else:
                seen[rel] = ("file", Path(path).read_bytes(), bool(mode & 0o111))
    return seen


def full_listing(root: Path) -> dict[str, tuple[Any, ...]]:
    """Like `snapshot`, plus exact modes: used to prove a folder did not change at all."""
    listing = snapshot(root)
    return {rel: (*v, stat.S_IMODE(os.lstat(root / rel).st_mode)) for rel, v in listing.items()}


def make_tree(root: Path, spec: Mapping[str, bytes | str | None]) -> Path:
    """bytes → file, None → empty folder, str → symlink with that target."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, value in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if value is None:
            path.mkdir(exist_ok=True)
        elif isinstance(value, str):
            path.symlink_to(value)
        else:
            path.write_bytes(value)
    return root


def archive_bytes(src: Path, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    write_archive(src, out, **kwargs)
    return out.getvalue()


class ZeroReader(io.RawIOBase):
    """``size`` zero bytes, produced lazily."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.left)
        buf[:n] = bytes(n)
        self.left -= n
        return n


def bomb(file_sizes: list[int]) -> bytes:
    """A tar.gz of files full of zeros, built without holding them in memory."""
    out = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for i, size in enumerate(file_sizes):
            info = tarfile.TarInfo(f"zeros{i}")
            info.size = size
            tar.addfile(info, ZeroReader(size))
    return out.getvalue()


class Unseekable(io.RawIOBase):
    """A read-only stream with no seek or tell, like an HTTP response body; returns short reads."""

    def __init__(self, data: bytes, step: int = 7919) -> None:
        self.data = memoryview(data)
        self.step = step

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.step, len(self.data))
        buf[:n] = self.data[:n]
        self.data = self.data[n:]
        return n

    def seek(self, *args: Any) -> int:
        raise AssertionError("seek called on a non-seekable source")

    def tell(self) -> int:
        raise AssertionError("tell called on a non-seekable source")


class WriteOnly:
    """A sink with only write(), which takes at most ``step`` bytes per call (like a raw pipe)."""

    def __init__(self, step: int = 65_537) -> None:
        self.chunks: list[bytes] = []
        self.step = step

    def write(self, data: Any) -> int:
        piece = bytes(data[: self.step])
        self.chunks.append(piece)
        return len(piece)

    def value(self) -> bytes:
        return b"".join(self.chunks)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A result folder exercising every supported kind of entry."""
    root = make_tree(
        tmp_path / "src",
        {
            "stdout": b"hello\n",
            "stderr": b"",
            ".hidden": b"secret-ish",
            "outputs/empty-dir": None,
            "outputs/a.txt": b"a" * 1000,
            "outputs/binary.bin": bytes(range(256)) * 4096 + os.urandom(3 * 2**20),
            "outputs/nested/deeper/x.json": b'{"x": 1}',
            "outputs/.dot/inner": b"dot",
            LONG_NAME: b"long",
            "unicodé/日本語.txt": "ünïcödé".encode(),
            "outputs/link-to-a": "a.txt",
            "outputs/nested/link-up": "../../stdout",
            "outputs/dangling": "does-not-exist-yet",
            "outputs/dir-link": "nested",
        },
    )
    (root / "outputs/run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "outputs/run.sh").chmod(0o700)
    return root


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """An empty work area; destinations go in here and nothing else may appear in it."""
    path = tmp_path / "area"
    path.mkdir()
    return path


def assert_refused(
    area: Path,
    data: bytes | Callable[[], Any],
    error: type[Exception],
    match: str,
    *,
    dest_exists: bool,
    **kwargs: Any,
) -> None:
    """Extracting ``data`` fails with ``error`` matching ``match``; ``area`` is left exactly as it was."""
    dest = area / "dest"
    if dest_exists:
        make_tree(dest, {"keep.txt": b"keep", "sub/old": b"old"})
    before = full_listing(area)
    source = io.BytesIO(data) if isinstance(data, bytes) else data()
    with pytest.raises(error, match=match):
        extract_archive(source, dest, **kwargs)
    assert full_listing(area) == before  # dest untouched, no temp folder, nothing written beside it
    assert dest.exists() == dest_exists


# ------------------------------------------------------------------------------------------------ writing


def test_same_folder_gives_identical_bytes_and_matching_info(sample: Path) -> None:
    out = io.BytesIO()
    info = write_archive(sample, out)
    data = out.getvalue()
    assert archive_bytes(sample) == data
    assert info == ArchiveInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        files=10,
        bytes_in=sum(len(v[1]) for v in snapshot(sample).values() if v[0] == "file"),
    )
    assert archive_digest(sample) == info


def test_digest_ignores_mtimes_modes_owners_order_and_umask(tmp_path: Path) -> None:
    content = {"b/y": b"y" * 5000, "a": b"a", "b/x": os.urandom(10_000), "c/empty": None, "run": b"#!"}
    first = make_tree(tmp_path / "one", content)
    (first / "run").chmod(0o755)
    old_umask = os.umask(0o077)
    try:  # same content, created in the opposite order under another umask, with other modes and mtimes
        second = make_tree(tmp_path / "two", dict(reversed(list(content.items()))))
    finally:
        os.umask(old_umask)
    (second / "run").chmod(0o711)
    (second / "a").chmod(0o600)
    for path in [second, *second.rglob("*")]:
        os.utime(path, (1_000_000, 1_000_000))
    assert archive_digest(first) == archive_digest(second)

    (second / "run").chmod(0o644)  # losing the exec bit is a real change
    assert archive_digest(first).sha256 != archive_digest(second).sha256
    (second / "run").chmod(0o755)
    (second / "b/y").write_bytes(b"Y" * 5000)  # so is content
    assert archive_digest(first).sha256 != archive_digest(second).sha256


def test_entries_are_sorted_relative_and_normalised(sample: Path) -> None:
    data = archive_bytes(sample)
    assert data[:4] == b"\x1f\x8b\x08\x00"  # gzip, deflate, no FNAME/FEXTRA/FCOMMENT flags
    assert data[4:8] == bytes(4)  # mtime 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=os.fsencode)
    assert set(names) == set(snapshot(sample))
    assert "outputs" in names and "outputs/empty-dir" in names and LONG_NAME in names
    assert not any(n.startswith(("/", "./")) for n in names)
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 0)
        if m.isdir():
            assert m.mode == 0o755
        elif m.isfile():
            assert m.mode == (0o755 if m.name == "outputs/run.sh" else 0o644)
        else:
            assert m.issym()
    assert {m.name: m.linkname for m in members if m.issym()}["outputs/nested/link-up"] == "../../stdout"


def test_output_passes_gzip_and_gnu_tar(sample: Path, tmp_path: Path) -> None:
    path = tmp_path / "out.tar.gz"
    with open(path, "wb") as out:
        write_archive(sample, out)
    assert subprocess.run(["gzip", "-t", str(path)], capture_output=True).returncode == 0
    listed = subprocess.run(["tar", "-tzf", str(path)], capture_output=True, text=True, check=True).stdout
    assert {line.rstrip("/") for line in listed.splitlines()} == set(snapshot(sample))
    unpacked = tmp_path / "gnu"
    unpacked.mkdir()
    subprocess.run(["tar", "-xzf", str(path), "-C", str(unpacked)], check=True)
    assert snapshot(unpacked) == snapshot(sample)


def test_hard_links_are_stored_as_regular_files(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": b"shared content"})
    os.link(src / "a", src / "b")
    with tarfile.open(fileobj=io.BytesIO(archive_bytes(src)), mode="r:gz") as tar:
        assert [(m.name, m.type, m.size) for m in tar.getmembers()] == [
            ("a", tarfile.REGTYPE, 14),
            ("b", tarfile.REGTYPE, 14),
        ]


def test_empty_folder_gives_a_valid_empty_archive(tmp_path: Path, area: Path) -> None:
    (tmp_path / "empty").mkdir()
    data = archive_bytes(tmp_path / "empty")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert tar.getmembers() == []
    extract_archive(io.BytesIO(data), area / "dest")
    assert (area / "dest").is_dir() and snapshot(area / "dest") == {}


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"x": "/etc/passwd"}, "absolute path '/etc/passwd'"),
        ({"d/x": "../../outside"}, "resolves outside"),
        ({"x": ".."}, "resolves outside"),
        ({"a/b/s": "../..", "a/b/x": "s/../y"}, "x.*resolves outside"),  # escapes only through another link
        ({"loop1": "loop2", "loop2": "loop1"}, "loop"),
    ],
)
def test_write_refuses_symlinks_leaving_the_folder(
    tmp_path: Path, spec: dict[str, bytes | str | None], match: str
) -> None:
    src = make_tree(tmp_path / "src", {"ok.txt": b"ok", **spec})
    out = io.BytesIO()
    with pytest.raises(PublishError, match=match) as caught:
        write_archive(src, out)
    assert "in the result folder" in str(caught.value)
    assert str(tmp_path) not in str(caught.value)  # the path inside the result, not where it sits
    assert out.getvalue() == b""  # checked before anything is written


def test_write_refuses_fifo_and_socket(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "s", {"ok": b"ok"})
    os.mkfifo(src / "pipe")
    with pytest.raises(PublishError, match=r"'pipe' in the result folder is a FIFO"):
        archive_digest(src)
    os.unlink(src / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "sock"))
        with pytest.raises(PublishError, match=r"'sock' in the result folder is a socket"):
            archive_digest(src)


def test_write_refuses_a_missing_or_non_folder_source(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(PublishError, match="not a folder"):
        archive_digest(tmp_path / "file")
    with pytest.raises(PublishError, match="missing"):
        archive_digest(tmp_path / "missing")


def test_write_refuses_a_file_that_changes_size_while_archived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_tree(tmp_path / "src", {"grows": b"x" * 100, "shrinks": b"y" * 100})
    real_scan = archive_write._scan

    def scan_then_change(root: str) -> Any:
        entries = real_scan(root)
        (src / "shrinks").write_bytes(b"y" * 10)
        return entries

    monkeypatch.setattr(archive_write, "_scan", scan_then_change)
    with pytest.raises(PublishError, match="shrinks changed size"):
        archive_digest(src)
    (src / "shrinks").write_bytes(b"y" * 100)

    def scan_then_grow(root: str) -> Any:
        entries = real_scan(root)
        (src / "grows").write_bytes(b"x" * 101)
        return entries

    monkeypatch.setattr(archive_write, "_scan", scan_then_grow)
    with pytest.raises(PublishError, match="grows changed size"):
        archive_digest(src)


def test_sink_errors_propagate(sample: Path) -> None:
    class Broken:
        def write(self, data: Any) -> int:
            raise BrokenPipeError("reader went away")

    with pytest.raises(BrokenPipeError, match="reader went away"):
        write_archive(sample, Broken())  # type: ignore[arg-type]


def test_non_seekable_sinks_get_the_same_bytes(sample: Path) -> None:
    expected = archive_bytes(sample)
    partial = WriteOnly()
    info = write_archive(sample, partial)  # type: ignore[arg-type]
    assert partial.value() == expected and info.size == len(expected)

    read_fd, write_fd = os.pipe()
    received: list[bytes] = []

    def collect() -> None:
        with open(read_fd, "rb") as pipe:
            received.append(pipe.read())

    reader = threading.Thread(target=collect)
    reader.start()
    with open(write_fd, "wb", buffering=0) as pipe:
        assert not pipe.seekable()
        write_archive(sample, pipe)
    reader.join()
    assert received == [expected]


@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_each_compressor_gives_valid_gzip_of_the_same_tree(
    compressor: archive.Compressor, sample: Path, area: Path
) -> None:
    data = archive_bytes(sample, compressor=compressor)
    assert zlib.decompress(data, wbits=31) == gzip.decompress(data)  # one complete gzip member
    extract_archive(io.BytesIO(data), area / compressor)
    assert snapshot(area / compressor) == snapshot(sample)
    tar_bytes = gzip.decompress(data)
    other = "isal" if compressor == "zlib" else "zlib"
    if other in COMPRESSORS:  # the tar stream is identical; only the compression differs
        assert gzip.decompress(archive_bytes(sample, compressor=other)) == tar_bytes


def test_default_compressor_and_levels(sample: Path) -> None:
    assert ("isal" if HAVE_ISAL else "zlib") == DEFAULT_COMPRESSOR
    tar_bytes = gzip.decompress(archive_bytes(sample, compressor="zlib"))
    for compressor in COMPRESSORS:
        for level in (0, 3, 9):
            assert gzip.decompress(archive_bytes(sample, level=level, compressor=compressor)) == tar_bytes
    for level in (-1, 10):
        with pytest.raises(ValueError, match="level"):
            archive_digest(sample, level=level)
    with pytest.raises(ValueError, match="compressor"):
        archive_digest(sample, compressor="brotli")  # type: ignore[arg-type]
    if not HAVE_ISAL:
        with pytest.raises(ValueError, match="isal"):
            archive_digest(sample, compressor="isal")


# ---------------------------------------------------------------------------------------------- round trip


def test_round_trip(sample: Path, area: Path) -> None:
    dest = area / "dest"
    extract_archive(io.BytesIO(archive_bytes(sample)), dest)
    assert snapshot(dest) == snapshot(sample)
    assert os.readlink(dest / "outputs/link-to-a") == "a.txt"
    assert (dest / "outputs/link-to-a").read_bytes() == b"a" * 1000
    assert stat.S_IMODE((dest / "outputs/run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "stdout").stat().st_mode) == 0o644
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert sorted(os.listdir(area)) == ["dest"]


def test_extract_accepts_a_path_or_a_str(sample: Path, tmp_path: Path, area: Path) -> None:
    path = tmp_path / "a.tar.gz"
    path.write_bytes(archive_bytes(sample))
    extract_archive(path, area / "one")
    extract_archive(str(path), area / "two")
    assert snapshot(area / "one") == snapshot(area / "two") == snapshot(sample)


def test_gnu_tar_archives_extract(sample: Path, tmp_path: Path, area: Path) -> None:
    for flags, name in (
        (["-C", str(sample), "."], "dot"),
        (["-C", str(sample), "outputs", "stdout"], "names"),
    ):
        path = tmp_path / f"{name}.tar.gz"
        subprocess.run(["tar", "-czf", str(path), *flags], check=True)
        extract_archive(path, area / name)
    assert snapshot(area / "dot") == snapshot(sample)
    assert set(snapshot(area / "names")) == {
        p for p in snapshot(sample) if p.split("/")[0] in ("outputs", "stdout")
    }


def test_extract_normalises_modes(area: Path) -> None:
    data = tar_gz(
        member("dir", kind=tarfile.DIRTYPE, mode=0o700),
        member("dir/setuid", b"x", mode=0o4777),
        member("private", b"p", mode=0o600),
        member("sticky-dir", kind=tarfile.DIRTYPE, mode=0o1777),
    )
    extract_archive(io.BytesIO(data), area / "d")
    modes = {p: stat.S_IMODE(os.lstat(area / "d" / p).st_mode) for p in snapshot(area / "d")}
    assert modes == {"dir": 0o755, "dir/setuid": 0o755, "private": 0o644, "sticky-dir": 0o755}


def test_extract_implied_folders_and_listed_folder_after_its_files(area: Path) -> None:
    data = tar_gz(member("./a/b/c.txt", b"c"), member("a/b", kind=tarfile.DIRTYPE), member("./", kind=b"5"))
    extract_archive(io.BytesIO(data), area / "d")
    assert snapshot(area / "d") == {"a": ("dir",), "a/b": ("dir",), "a/b/c.txt": ("file", b"c", False)}


def test_hard_link_to_an_earlier_file_extracts(area: Path) -> None:
    data = tar_gz(member("a", b"data"), member("sub/b", kind=tarfile.LNKTYPE, linkname="a"))
    extract_archive(io.BytesIO(data), area / "d")
    assert (area / "d/sub/b").read_bytes() == b"data"
    assert os.stat(area / "d/sub/b").st_ino == os.stat(area / "d/a").st_ino


def test_trailing_garbage_and_concatenated_members_are_fine(sample: Path, area: Path) -> None:
    data = archive_bytes(sample)
    extract_archive(io.BytesIO(data + b"\x00" * 100 + b"trailing garbage"), area / "one")
    tar_bytes = gzip.decompress(data)
    half = len(tar_bytes) // 2
    two_members = gzip.compress(tar_bytes[:half], mtime=0) + gzip.compress(tar_bytes[half:], mtime=0)
    extract_archive(io.BytesIO(two_members), area / "two")
    assert snapshot(area / "one") == snapshot(area / "two") == snapshot(sample)


def test_extract_streams_from_non_seekable_sources(sample: Path, area: Path) -> None:
    data = archive_bytes(sample)
    extract_archive(Unseekable(data), area / "wrapped")  # type: ignore[arg-type]
    assert snapshot(area / "wrapped") == snapshot(sample)

    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with open(write_fd, "wb") as pipe:
            for i in range(0, len(data), 50_000):
                pipe.write(data[i : i + 50_000])

    feeder = threading.Thread(target=feed)
    feeder.start()
    with open(read_fd, "rb", buffering=0) as pipe:
        assert not pipe.seekable()
        extract_archive(pipe, area / "piped")
    feeder.join()
    assert snapshot(area / "piped") == snapshot(sample)


def test_hostile_archive_through_a_pipe_is_refused_and_the_writer_unblocks(area: Path) -> None:
    data = bomb([4 << 20] * 64)
    assert len(data) > 1 << 17  # more than a pipe buffer holds, so the writer is still writing at refusal
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            with open(write_fd, "wb") as pipe:
                pipe.write(data)
        except BrokenPipeError as exc:
            errors.append(exc)

    feeder = threading.Thread(target=feed)
    feeder.start()
    with open(read_fd, "rb", buffering=0) as pipe, pytest.raises(UnsafeArchiveError, match="more than"):
        extract_archive(pipe, area / "dest", max_bytes=5 << 20)
    feeder.join(timeout=30)
    assert not feeder.is_alive()
    assert os.listdir(area) == []


names = st.text(alphabet="abcXYZ019._- é文", min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
trees = st.recursive(
    st.dictionaries(names, st.binary(max_size=3000), max_size=4),
    lambda children: st.dictionaries(names, st.one_of(st.binary(max_size=3000), children), max_size=4),
    max_leaves=24,
)


def _build(root: Path, tree: dict[str, Any]) -> None:
    root.mkdir()
    for name, value in tree.items():
        if isinstance(value, dict):
            _build(root / name, value)
        else:
            (root / name).write_bytes(value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees, compressor=st.sampled_from(COMPRESSORS))
def test_property_round_trip_keeps_tree_and_contents(
    tree: dict[str, Any], compressor: archive.Compressor
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, dest = Path(tmp, "src"), Path(tmp, "dest")
        _build(src, tree)
        data = archive_bytes(src, compressor=compressor)
        assert archive_bytes(src, compressor=compressor) == data
        extract_archive(io.BytesIO(data), dest)
        assert snapshot(dest) == snapshot(src)


link_targets = st.lists(st.sampled_from(["..", ".", "a", "b", "l1", "l2", "x"]), min_size=1, max_size=5).map(
    "/".join
)


@settings(max_examples=200, deadline=None)
@given(
    links=st.dictionaries(
        st.sampled_from(["l1", "a/l2", "a/b/l1", "a/b/l2", "b/l1"]), link_targets, max_size=4
    )
)
def test_property_symlinks_judged_inside_really_stay_inside(links: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp, "root")
        make_tree(root, {"a/b/x": b"", "b/x": b"", "x": b""})
        for name, target in links.items():
            (root / name).symlink_to(target)
        real_root = os.path.realpath(root)
        for name, target in links.items():
            if archive_checks._link_problem(links, name, target) is None:
                resolved = os.path.realpath(root / name)
                assert resolved == real_root or resolved.startswith(real_root + os.sep), (name, links)


# ------------------------------------------------------------------------------------------ hostile archives

HOSTILE: dict[str, tuple[Callable[[Path], bytes], type[Exception], str]] = {
    "parent traversal": (
        lambda out: tar_gz(member("../x", b"evil")),
        UnsafeArchiveError,
        r"'\.\./x'.*'\.\.'",
    ),
    "inner traversal": (lambda out: tar_gz(member("a/../../x", b"evil")), UnsafeArchiveError, r"'\.\.'"),
    "absolute name": (
        lambda out: tar_gz(member("/etc/x", b"evil")),
        UnsafeArchiveError,
        "absolute name '/etc/x'",
    ),
    "empty name": (lambda out: tar_gz(member("./", b"evil")), UnsafeArchiveError, "name is empty"),
    "absolute symlink": (
        lambda out: tar_gz(member("l", kind=tarfile.SYMTYPE, linkname="/etc/passwd")),
        UnsafeArchiveError,
        "'l'.*absolute path '/etc/passwd'",
    ),
    "relative symlink escape": (
        lambda out: tar_gz(member("a/l", kind=tarfile.SYMTYPE, linkname="../../x")),
        UnsafeArchiveError,
        "'a/l'.*outside",
    ),
    "symlink to outside then write through it": (
        lambda out: tar_gz(
            member("link", kind=tarfile.SYMTYPE, linkname=str(out)), member("link/f", b"evil")
        ),
        UnsafeArchiveError,
        "'link'.*absolute path",
    ),
    "symlink to parent then write through it": (
        lambda out: tar_gz(member("link", kind=tarfile.SYMTYPE, linkname=".."), member("link/f", b"evil")),
        UnsafeArchiveError,
        "'link'.*outside",
    ),
    "write through an inside symlink": (
        lambda out: tar_gz(
            member("sub", kind=tarfile.DIRTYPE),
            member("link", kind=tarfile.SYMTYPE, linkname="sub"),
            member("link/f", b"x"),
        ),
        UnsafeArchiveError,
        "'link/f'.*parent 'link' is a symlink",
    ),
    "symlink escaping via a later symlink": (
        lambda out: tar_gz(
            member("a/b/x", kind=tarfile.SYMTYPE, linkname="s/../y"),
            member("a/b/s", kind=tarfile.SYMTYPE, linkname="../.."),
        ),
        UnsafeArchiveError,
        "'a/b/x'.*outside",
    ),
    "hard link escape": (
        lambda out: tar_gz(member("h", kind=tarfile.LNKTYPE, linkname="../outside")),
        UnsafeArchiveError,
        "'h'.*hard link target.*'\\.\\.'",
    ),
    "absolute hard link": (
        lambda out: tar_gz(member("h", kind=tarfile.LNKTYPE, linkname="/etc/passwd")),
        UnsafeArchiveError,
        "'h'.*absolute hard link target",
    ),
    "hard link to a missing member": (
        lambda out: tar_gz(member("h", kind=tarfile.LNKTYPE, linkname="later"), member("later", b"x")),
        UnsafeArchiveError,
        "'h'.*not an earlier file",
    ),
    "hard link to a symlink": (
        lambda out: tar_gz(
            member("s", kind=tarfile.SYMTYPE, linkname="x"), member("h", kind=tarfile.LNKTYPE, linkname="s")
        ),
        UnsafeArchiveError,
        "'h'.*not an earlier file",
    ),
    "sparse file": (
        lambda out: tar_gz(
            member(
                "s",
                b"abcd",
                pax_headers={
                    "GNU.sparse.map": "0,4",
                    "GNU.sparse.realsize": str(1 << 40),
                    "GNU.sparse.name": "s",
                },
            )
        ),
        UnsafeArchiveError,
        "'s'.*sparse",
    ),
    "character device": (
        lambda out: tar_gz(member("null", kind=tarfile.CHRTYPE, devmajor=1, devminor=3)),
        UnsafeArchiveError,
        "'null'.*character device",
    ),
    "block device": (
        lambda out: tar_gz(member("sda", kind=tarfile.BLKTYPE, devmajor=8, devminor=0)),
        UnsafeArchiveError,
        "'sda'.*block device",
    ),
    "fifo": (lambda out: tar_gz(member("p", kind=tarfile.FIFOTYPE)), UnsafeArchiveError, "'p'.*FIFO"),
    "duplicate file": (
        lambda out: tar_gz(member("a", b"1"), member("a", b"2")),
        UnsafeArchiveError,
        "'a'.*duplicate",
    ),
    "duplicate folder": (
        lambda out: tar_gz(member("d", kind=tarfile.DIRTYPE), member("d/", kind=tarfile.DIRTYPE)),
        UnsafeArchiveError,
        "'d'.*duplicate",
    ),
    "file over an implied folder": (
        lambda out: tar_gz(member("d/x", b"1"), member("d", b"2")),
        UnsafeArchiveError,
        "'d'.*already a folder",
    ),
    "member under a file": (
        lambda out: tar_gz(member("f", b"1"), member("f/x", b"2")),
        UnsafeArchiveError,
        "'f/x'.*parent 'f' is a file",
    ),
    "too many members": (
        lambda out: tar_gz(*(member(f"f{i}") for i in range(11))),
        UnsafeArchiveError,
        "'f10'.*more than 10 members",
    ),
    "huge PAX header": (
        lambda out: tar_gz(member("x", b"1", pax_headers={"comment": "c" * (2 << 20)})),
        UnsafeArchiveError,
        "header is larger",
    ),
    "data after the end marker": (
        lambda out: gzip.compress(gzip.decompress(tar_gz(member("x", b"1"))) + bytes(20 << 20), mtime=0),
        UnsafeArchiveError,
        "follow the end of the tar archive",
    ),
    "not gzip": (lambda out: b"PK\x03\x04 this is a zip file", UnsafeArchiveError, "not a gzip archive"),
    "plain tar": (lambda out: gzip.decompress(tar_gz(member("x", b"1"))), UnsafeArchiveError, "not a gzip"),
    "empty input": (lambda out: b"", UnsafeArchiveError, r"not a gzip archive \(the input is empty\)"),
    "gzip of not-a-tar": (
        lambda out: gzip.compress(b"hello " * 200),
        FetchError,
        "corrupt or truncated tar archive",
    ),
    "bad gzip checksum": (
        lambda out: (lambda d: d[:-8] + bytes([d[-8] ^ 1]) + d[-7:])(tar_gz(member("x", b"1"))),
        FetchError,
        "corrupt gzip data",
    ),
    "corrupt header mid-archive": (
        lambda out: (lambda t: gzip.compress(t[:1024] + b"X" * 512 + t[1536:], mtime=0))(
            gzip.decompress(tar_gz(member("a", b"1"), member("b", b"2"), member("c", b"3")))
        ),
        FetchError,
        "corrupt or truncated tar archive",
    ),
    "member data cut short": (
        lambda out: gzip.compress(gzip.decompress(tar_gz(member("a", b"x" * 5000)))[:2048], mtime=0),
        FetchError,
        "truncated|unexpected end",
    ),
}


@pytest.mark.parametrize("dest_exists", [False, True], ids=["no-dest", "dest-with-content"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_and_change_nothing(
    case: str, dest_exists: bool, area: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside-target"
    build, error, match = HOSTILE[case]
    kwargs = {"max_members": 10} if case == "too many members" else {}
    assert_refused(area, build(outside), error, match, dest_exists=dest_exists, **kwargs)
    assert not outside.exists()


@pytest.mark.parametrize("cut", ["10 bytes", "half", "all but the trailer", "all but 1 byte"])
def test_truncated_archives_are_refused(cut: str, sample: Path, area: Path) -> None:
    data = archive_bytes(sample)
    keep = {
        "10 bytes": 10,
        "half": len(data) // 2,
        "all but the trailer": len(data) - 8,
        "all but 1 byte": -1,
    }
    assert_refused(area, data[: keep[cut]], FetchError, "truncated", dest_exists=True)


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    return bomb([200 << 20])


def test_gzip_bomb_stops_early_with_bounded_memory(gzip_bomb: bytes, area: Path) -> None:
    assert len(gzip_bomb) < 1 << 20  # 200 MiB of zeros squeezed into well under 1 MiB
    tracemalloc.start()
    start = time.perf_counter()
    try:
        assert_refused(
            area,
            gzip_bomb,
            UnsafeArchiveError,
            "'zeros0'.*more than 10485760 bytes",
            dest_exists=False,
            max_bytes=10 << 20,
        )
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 5
    assert peak < 16 << 20


def test_byte_cap_counts_across_members_while_streaming(area: Path) -> None:
    data = bomb([4 << 20] * 20)  # 80 MiB in 4 MiB files
    start = time.perf_counter()
    assert_refused(
        area, data, UnsafeArchiveError, "'zeros2'.*more than", dest_exists=True, max_bytes=10 << 20
    )
    assert time.perf_counter() - start < 5
    extract_archive(io.BytesIO(bomb([4 << 20] * 2)), area / "fits", max_bytes=8 << 20)  # exactly at the cap
    assert sorted(os.listdir(area / "fits")) == ["zeros0", "zeros1"]


def test_reader_refuses_to_inflate_past_its_allowance() -> None:
    reader = archive_extract._GunzipReader(io.BytesIO(gzip.compress(bytes(50 << 20), compresslevel=1)))
    reader.allow(3 << 20, "too much")
    got = 0
    with pytest.raises(UnsafeArchiveError, match="too much"):
        while chunk := reader.read(1 << 20):
            got += len(chunk)
    assert got <= 3 << 20


# ------------------------------------------------------------------------------------------------ merging


def test_missing_dest_is_created(sample: Path, area: Path) -> None:
    extract_archive(io.BytesIO(archive_bytes(sample)), area / "new")
    assert snapshot(area / "new") == snapshot(sample)
    assert os.listdir(area) == ["new"]


def test_empty_dest_is_replaced(sample: Path, area: Path) -> None:
    (area / "dest").mkdir()
    extract_archive(io.BytesIO(archive_bytes(sample)), area / "dest")
    assert snapshot(area / "dest") == snapshot(sample)
    assert os.listdir(area) == ["dest"]


def test_non_empty_dest_is_merged_when_names_do_not_clash(sample: Path, area: Path) -> None:
    dest = make_tree(area / "dest", {"inputs/data.csv": b"1,2", "notes": b"mine"})
    extract_archive(io.BytesIO(archive_bytes(sample)), dest)
    merged = snapshot(dest)
    assert merged == {
        **snapshot(sample),
        "inputs": ("dir",),
        "inputs/data.csv": ("file", b"1,2", False),
        "notes": ("file", b"mine", False),
    }
    assert os.listdir(area) == ["dest"]


@pytest.mark.parametrize("clash", ["stdout", "outputs"])
def test_merge_refuses_clashes_before_moving_anything(clash: str, sample: Path, area: Path) -> None:
    dest = area / "dest"
    make_tree(dest, {"mine": b"x", clash: b"existing"})
    before = full_listing(area)
    with pytest.raises(FetchError, match=f"already holds '{clash}'"):
        extract_archive(io.BytesIO(archive_bytes(sample)), dest)
    assert full_listing(area) == before


def test_dest_that_is_a_file_or_has_no_parent_is_refused(sample: Path, area: Path) -> None:
    (area / "file").write_bytes(b"x")
    with pytest.raises(FetchError, match="not a folder"):
        extract_archive(io.BytesIO(archive_bytes(sample)), area / "file")
    with pytest.raises(FetchError, match="does not exist"):
        extract_archive(io.BytesIO(archive_bytes(sample)), area / "missing" / "dest")
    assert os.listdir(area) == ["file"]


@pytest.fixture
def failing_commit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the second rename during a merge fail, to exercise the roll-back."""
    real_rename = os.rename
    calls = {"n": 0}

    def rename(src: Any, dst: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    yield


def test_a_failed_merge_is_rolled_back(sample: Path, area: Path, failing_commit: None) -> None:
    dest = make_tree(area / "dest", {"mine": b"x"})
    before = full_listing(area)
    with pytest.raises(FetchError, match="No space left"):
        extract_archive(io.BytesIO(archive_bytes(sample)), dest)
    assert full_listing(area) == before


# ------------------------------------------------------------------------------------------ source problems


def test_zlib_inflater_is_used_without_isal(
    sample: Path, area: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = archive_bytes(sample, compressor="zlib")
    monkeypatch.setattr(archive_codec, "HAVE_ISAL", False)
    assert type(archive_codec._inflater()) is type(zlib.decompressobj(31))
    with pytest.raises(ValueError, match="isal"):
        archive_digest(sample, compressor="isal")
    extract_archive(io.BytesIO(data), area / "ok")
    assert snapshot(area / "ok") == snapshot(sample)
    bad_crc = data[:-8] + bytes([data[-8] ^ 1]) + data[-7:]
    assert_refused(area, bad_crc, FetchError, "corrupt gzip data", dest_exists=False)
    assert_refused(area, data[: len(data) // 2], FetchError, "truncated", dest_exists=False)


def test_unreadable_sources_raise_fetch_error(sample: Path, area: Path) -> None:
    with pytest.raises(FetchError, match="cannot open the archive"):
        extract_archive(area / "missing.tar.gz", area / "dest")

    class Failing(Unseekable):
        def readinto(self, buf: Any) -> int:
            if len(self.data) < 100_000:
                raise ConnectionResetError("connection reset by peer")
            return super().readinto(buf)

    data = archive_bytes(sample)
    assert len(data) > 200_000
    assert_refused(
        area, lambda: Failing(data), FetchError, "cannot read the archive.*reset", dest_exists=True
    )


def test_member_nesting_is_capped(tmp_path: Path) -> None:
    from prefect_bacalhau_publish.archive import MAX_DEPTH

    def one_member(depth: int) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo("/".join(["d"] * (depth - 1) + ["x"]))
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        return buf.getvalue()

    extract_archive(io.BytesIO(one_member(MAX_DEPTH)), tmp_path / "ok")
    assert (tmp_path / "ok").joinpath(*["d"] * (MAX_DEPTH - 1), "x").read_bytes() == b"x"
    with pytest.raises(UnsafeArchiveError, match=f"nested {MAX_DEPTH + 1} levels deep"):
        extract_archive(io.BytesIO(one_member(MAX_DEPTH + 1)), tmp_path / "deep")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]
