"""Hostile archives through every path that extracts, end to end with real MinIO and a real result server.

Each hostile tar.gz is published *as the genuine article* (its real SHA-256 in the S3 spec and in the result
server's sidecar), so the checksum passes and the archive checks are what must refuse it. Paths:

- ``s3-input-extract``: an S3 input source with ``Extract: true`` (``fetch_inputs``), SPEC §7;
- ``s3-get`` / ``s3-get-presigned``: ``get_result`` on an S3 result, directly and through a presigned URL;
- ``url-input`` / ``url-get``: the URL input source and ``get_result`` on a local result, from ``running_server``;
- ``cli-get-local``: ``python -m prefect_bacalhau_publish.cli get spec.json -o DIR`` on a local result.

For every case × path: an error of the expected FetchError subclass naming the problem, the destination
untouched (not created when absent, identical when it existed), nothing written anywhere else (the whole test
folder and a sentinel folder outside it are compared before and after), and no temporary folder left over.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import inspect
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prefect_aws import MinIOCredentials
from pydantic import SecretStr

from prefect_bacalhau_publish.archive import extract_archive
from prefect_bacalhau_publish.blocks import LocalResultServer, S3Storage
from prefect_bacalhau_publish.errors import ChecksumMismatchError, FetchError, UnsafeArchiveError
from prefect_bacalhau_publish.server import running_server
from prefect_bacalhau_publish.specs import PublishedResult
from prefect_bacalhau_publish.tasks import fetch_inputs, get_result
from prefect_bacalhau_publish.testing import MinioServer

from ..tarkit import member, tar_bytes, tar_gz

MiB = 1 << 20
GiB = 1 << 30
# extract_archive's default max_bytes (100 GiB): the only cap the end-to-end paths can use
DEFAULT_CAP: int = inspect.signature(extract_archive).parameters["max_bytes"].default
SENTINEL = b"the sentinel outside the destination must never change\n"

# ------------------------------------------------------------------------------------------ builders


def declared_size_bomb(declared: int) -> bytes:
    """A member whose PAX header declares `declared` bytes, followed by 1 MiB of zeros and no end."""
    info = tarfile.TarInfo("bomb.bin")
    info.size = declared
    head = tar_bytes(member("ok.txt", b"fine\n"))[: 2 * tarfile.BLOCKSIZE]  # its header and data block
    return gzip.compress(head + info.tobuf(tarfile.PAX_FORMAT) + bytes(MiB), compresslevel=1, mtime=0)


def streaming_bomb(count: int, size: int) -> bytes:
    """A tar.gz of `count` files of `size` zeros (`count * size` bytes once inflated), built without ever
    holding them: one gzip member per header and one, compressed once and repeated, per file body. A gzip
    file may hold any number of members; every reader (gzip, Python, Go) inflates them as one stream."""
    body = gzip.compress(bytes(size), compresslevel=9, mtime=0)
    parts: list[bytes] = []
    for index in range(count):
        info = tarfile.TarInfo(f"zeros{index:05d}.bin")
        info.size = size
        parts.append(gzip.compress(info.tobuf(tarfile.USTAR_FORMAT), mtime=0))
        parts.append(body)
    parts.append(gzip.compress(bytes(2 * tarfile.RECORDSIZE), mtime=0))
    return b"".join(parts)


def many_empty_files_gz(count: int) -> bytes:
    """`count` empty files in folders of 1000 (`dNNN/fNNNNNN`), headers stamped from one template (fast)."""
    template = bytearray(tarfile.TarInfo("d000/f000000").tobuf(tarfile.USTAR_FORMAT))
    template[148:156] = b" " * 8
    template[0:12] = bytes(12)
    base = sum(template)
    headers: list[bytes] = []
    for index in range(count):
        name = f"d{index // 1000:03d}/f{index:06d}".encode()
        block = bytearray(template)
        block[0:12] = name
        block[148:156] = b"%06o\0 " % (base + sum(name))
        headers.append(bytes(block))
    headers.append(bytes(2 * tarfile.BLOCKSIZE))
    return gzip.compress(b"".join(headers), compresslevel=1, mtime=0)


# --------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    build: Callable[[Path], bytes]  # gets the outside folder (absolute targets point into it)
    error: type[FetchError]
    match: str  # regex searched in the error message (and in the CLI's one line)
    tampered: bool = False  # published with the checksum of a benign archive instead of its own
    bug: str | None = None  # a known library bug this case exposes (the test is a strict xfail)


def _benign() -> bytes:
    return tar_gz(member("stdout", b"hello\n"), member("outputs/data.csv", b"a,b\n1,2\n"))


def _truncated(_: Path) -> bytes:
    whole = tar_gz(member("ok.txt", b"fine\n"), member("big.bin", os.urandom(256 * 1024)))
    return whole[: len(whole) // 2]


CASES: dict[str, Case] = {
    "dotdot": Case(
        lambda out: tar_gz(member("ok.txt", b"fine\n"), member("../escaped.txt", b"evil")),
        UnsafeArchiveError,
        r"'\.\./escaped\.txt'.*'\.\.' component",
    ),
    "nested-dotdot": Case(
        lambda out: tar_gz(member("ok.txt", b"fine\n"), member("a/../../escaped.txt", b"evil")),
        UnsafeArchiveError,
        r"'a/\.\./\.\./escaped\.txt'.*'\.\.' component",
    ),
    "absolute-path": Case(
        lambda out: tar_gz(member("ok.txt", b"fine\n"), member(str(out / "written.txt"), b"evil")),
        UnsafeArchiveError,
        r"absolute name '/.*written\.txt'",
    ),
    "symlink-absolute": Case(
        lambda out: tar_gz(member("l", kind=tarfile.SYMTYPE, linkname=str(out / "sentinel"))),
        UnsafeArchiveError,
        r"'l'.*absolute path",
    ),
    "symlink-relative": Case(
        lambda out: tar_gz(member("a/l", kind=tarfile.SYMTYPE, linkname="../../../outside/sentinel")),
        UnsafeArchiveError,
        r"'a/l'.*resolves outside",
    ),
    "symlink-then-write-absolute": Case(
        lambda out: tar_gz(
            member("link", kind=tarfile.SYMTYPE, linkname=str(out)), member("link/pwned.txt", b"evil")
        ),
        UnsafeArchiveError,
        r"'link'.*absolute path",
    ),
    "symlink-then-write-relative": Case(
        lambda out: tar_gz(
            member("link", kind=tarfile.SYMTYPE, linkname="../.."), member("link/pwned.txt", b"evil")
        ),
        UnsafeArchiveError,
        r"'link'.*resolves outside",
    ),
    "symlink-redirected-later": Case(  # each link is inside on its own; together they escape
        lambda out: tar_gz(
            member("a/b/x", kind=tarfile.SYMTYPE, linkname="s/../y"),
            member("ok.txt", b"fine\n"),
            member("a/b/s", kind=tarfile.SYMTYPE, linkname="../.."),
        ),
        UnsafeArchiveError,
        r"'a/b/x'.*resolves outside",
    ),
    "hardlink-relative": Case(
        lambda out: tar_gz(
            member("ok.txt", b"fine\n"),
            member("h", kind=tarfile.LNKTYPE, linkname="../../outside/sentinel"),
        ),
        UnsafeArchiveError,
        r"'h'.*hard link target.*'\.\.' component",
    ),
    "hardlink-absolute": Case(
        lambda out: tar_gz(member("h", kind=tarfile.LNKTYPE, linkname=str(out / "sentinel"))),
        UnsafeArchiveError,
        r"'h'.*absolute hard link target",
    ),
    "char-device": Case(
        lambda out: tar_gz(member("null", kind=tarfile.CHRTYPE, devmajor=1, devminor=3)),
        UnsafeArchiveError,
        r"'null'.*character device",
    ),
    "fifo": Case(
        lambda out: tar_gz(member("ok.txt", b"fine\n"), member("pipe", kind=tarfile.FIFOTYPE)),
        UnsafeArchiveError,
        r"'pipe'.*FIFO",
    ),
    "declared-size-bomb": Case(
        lambda out: declared_size_bomb(200 * GiB),
        UnsafeArchiveError,
        rf"'bomb\.bin'.*more than {DEFAULT_CAP} bytes",
    ),
    "truncated-gzip": Case(_truncated, FetchError, r"truncated"),
    "not-gzip": Case(
        lambda out: b"PK\x03\x04" + b"this is a zip file, not a tar.gz " * 100,
        UnsafeArchiveError,
        r"not a gzip archive",
    ),
    "duplicate-names": Case(
        lambda out: tar_gz(member("a.txt", b"first"), member("a.txt", b"second")),
        UnsafeArchiveError,
        r"'a\.txt'.*duplicate member name",
    ),
    "pax-path-override": Case(  # the ustar name is harmless; the PAX record that replaces it is not
        lambda out: tar_gz(member("innocent.txt", b"evil", pax_headers={"path": "../escaped.txt"})),
        UnsafeArchiveError,
        r"'\.\./escaped\.txt'.*'\.\.' component",
    ),
    "gnu-longname-dotdot": Case(
        lambda out: tar_gz(member("n" * 120 + "/../../escaped.txt", b"evil"), fmt=tarfile.GNU_FORMAT),
        UnsafeArchiveError,
        r"'n{120}/\.\./\.\./escaped\.txt'.*'\.\.' component",
    ),
    "name-too-long": Case(
        lambda out: tar_gz(member("ok.txt", b"fine\n"), member("n" * 300, b"x")),
        FetchError,
        r"cannot extract member 'n{300}'.*File name too long",
    ),
    "path-too-deep": Case(  # deeper than PATH_MAX: creating it fails half-way, cleaning up must not
        lambda out: tar_gz(member("ok.txt", b"fine\n"), member("d/" * 2100 + "x", b"x")),
        FetchError,
        r"member '(d/)+x'",
    ),
    "control-chars-in-name": Case(  # a name that would drive the terminal if printed raw
        lambda out: tar_gz(member("evil\x1b[2J\x1b]0;pwned\x07\r\n/../escaped.txt", b"evil")),
        UnsafeArchiveError,
        r"'evil\\x1b\[2J.*'\.\.' component",
    ),
    "deep-tree-then-refused": Case(  # a tree deeper than Python's recursion limit, then a refusal
        lambda out: tar_gz(member("d/" * 1200 + "x", b"x"), member("../escaped.txt", b"evil")),
        UnsafeArchiveError,
        r"member '(\.\./escaped\.txt|(d/)+x)'",
    ),
    "tampered": Case(
        lambda out: tar_gz(member("../escaped.txt", b"evil")),
        ChecksumMismatchError,
        r"checksum mismatch",
        tampered=True,
    ),
}

PATHS = ["s3-input-extract", "s3-get", "s3-get-presigned", "url-input", "url-get"]
CLI_PATH = "cli-get-local"


# ------------------------------------------------------------------------------------------ fixtures


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@dataclass(frozen=True)
class Published:
    s3: PublishedResult
    url: PublishedResult


@dataclass(frozen=True)
class World:
    outside: Path
    outside_state: dict[str, tuple[Any, ...]]
    storage: S3Storage
    published: dict[str, Published]
    bucket: str
    client: Any
    store_dir: Path
    base_url: str

    def put(self, name: str, data: bytes, *, checksum: str | None = None) -> Published:
        """Publish `data` as S3 object `name.tar.gz` and as local result `name.tar.gz` (checksum: the one
        recorded, default the bytes' own)."""
        key = f"hostile/{name}.tar.gz"
        answer = self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256")
        assert answer["ChecksumSHA256"] == sha256_b64(data)
        recorded = checksum or sha256_b64(data)
        s3 = PublishedResult.model_validate(
            {
                "Type": "s3",
                "Params": {
                    "Bucket": self.bucket,
                    "Key": key,
                    "Endpoint": self.storage.endpoint_url,
                    "Region": "us-east-1",
                    "ChecksumSHA256": recorded,
                },
            }
        )
        archive = self.store_dir / f"{name}.tar.gz"
        archive.write_bytes(data)
        digest = base64.b64decode(recorded).hex()
        Path(f"{archive}.sha256").write_text(f"{digest}  {archive.name}\n")  # sha256sum format
        url = PublishedResult.model_validate(
            {"Type": "urlDownload", "Params": {"URL": f"{self.base_url}/{archive.name}"}}
        )
        return Published(s3, url)


@pytest.fixture(scope="module")
def world(minio: MinioServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Every case published once: to MinIO and into a result server's storage folder."""
    outside = tmp_path_factory.mktemp("outside")
    (outside / "sentinel").write_bytes(SENTINEL)
    store_dir = tmp_path_factory.mktemp("store")
    client: Any = minio.client()
    bucket = f"hostile-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    storage = S3Storage(
        credentials=MinIOCredentials(
            minio_root_user=minio.user, minio_root_password=SecretStr(minio.password)
        ),
        endpoint_url=minio.endpoint,
        region_name="us-east-1",
    )
    with running_server(LocalResultServer(storage_dir=store_dir), "127.0.0.1", 0) as base_url:
        here = World(outside, listing(outside), storage, {}, bucket, client, store_dir, base_url)
        benign = _benign()
        for name, case in CASES.items():
            data = case.build(outside)
            here.published[name] = here.put(
                name, data, checksum=sha256_b64(benign) if case.tampered else None
            )
        yield here


@pytest.fixture()
def outside(world: World) -> Iterator[Path]:
    """The sentinel folder outside every destination; checked unchanged after each test."""
    yield world.outside
    assert listing(world.outside) == world.outside_state
    assert (world.outside / "sentinel").read_bytes() == SENTINEL


@pytest.fixture()
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """A scratch folder on tmpfs when there is one (creating 200k files on a busy disk measures the disk,
    not the extractor), else under tmp_path; removed afterwards."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        folder = Path(tempfile.mkdtemp(prefix="pbp-hostile-", dir=shm))
    else:
        folder = tmp_path / "fast"
        folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def listing(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under `root` (not following links): kind, mode and content hash or link target."""
    seen: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                entry: tuple[Any, ...] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                entry = ("dir", mode)
            elif stat.S_ISREG(info.st_mode):
                entry = ("file", mode, hashlib.sha256(Path(path).read_bytes()).hexdigest())
            else:
                entry = ("other", stat.S_IFMT(info.st_mode), mode)
            seen[os.path.relpath(path, root)] = entry
    return seen


def fetch_by(path: str, published: Published, dest: Path, storage: S3Storage) -> None:
    """Materialise `published` at `dest` through one of the library paths."""
    if path == "s3-input-extract":
        source = published.s3.to_input_source(f"/{dest.name}")
        assert source.source.params.extract is True  # type: ignore[attr-defined]
        fetch_inputs.fn([source], dest.parent, s3=storage)
    elif path == "s3-get":
        get_result.fn(published.s3, dest, s3=storage)
    elif path == "s3-get-presigned":
        get_result.fn(published.s3, dest, s3=storage, presigned=True)
    elif path == "url-input":
        fetch_inputs.fn([published.url.to_input_source(f"/{dest.name}")], dest.parent)
    elif path == "url-get":
        get_result.fn(published.url, dest)
    else:  # pragma: no cover - a typo in a parametrize list
        raise AssertionError(path)


def prepare_dest(tmp_path: Path, state: str) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "neighbour.txt").write_text("a file beside the destination\n")
    dest = work / "dest"
    if state == "empty":
        dest.mkdir()
    elif state == "populated":
        (dest / "keep").mkdir(parents=True)
        (dest / "keep" / "mine.txt").write_text("the user's own file\n")
        (dest / "stdout").write_text("an earlier result\n")
    return dest


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect_bacalhau_publish.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        check=False,
        timeout=180,
    )


# --------------------------------------------------------------------------------------------- tests


def case_param(name: str, *extra: str, raises: type[BaseException]) -> Any:
    """`name` (and `extra` values) as a parameter, a strict xfail when the case exposes a known bug."""
    bug = CASES[name].bug
    marks = [pytest.mark.xfail(strict=True, raises=raises, reason=bug)] if bug else []
    return pytest.param(name, *extra, marks=marks, id="-".join((name, *extra)))


@pytest.fixture(autouse=True)
def scrub(tmp_path: Path) -> Iterator[None]:
    """Remove the work folder with `rm -rf` (iterative): a known bug can leave a tree there too deep for
    shutil.rmtree, which pytest's own cleanup uses."""
    yield
    work = tmp_path / "work"
    if work.exists():
        subprocess.run(["rm", "-rf", str(work)], check=True, timeout=120)


# Every case × path × destination state; the known-bug cases (slow: a ~2000-folder-deep tree) once per path.
MATRIX = [
    case_param(name, path, state, raises=AssertionError)
    for name in CASES
    for path in PATHS
    for state in (["absent"] if CASES[name].bug else ["absent", "empty"])
]


@pytest.mark.parametrize(("case", "path", "dest_state"), MATRIX)
def test_hostile_archive_is_refused_and_changes_nothing(
    case: str, path: str, dest_state: str, world: World, outside: Path, tmp_path: Path
) -> None:
    spec = CASES[case]
    dest = prepare_dest(tmp_path, dest_state)
    before = listing(tmp_path)
    started = time.monotonic()
    with pytest.raises(FetchError) as failure:
        try:
            fetch_by(path, world.published[case], dest, world.storage)
        except RecursionError:  # kept short: pytest would render a thousand frames
            raise AssertionError(f"RecursionError escaped instead of {spec.error.__name__}") from None
    assert time.monotonic() - started < 30
    assert isinstance(failure.value, spec.error), repr(failure.value)
    assert failure.match(spec.match)
    assert not CONTROL.search(str(failure.value)), repr(str(failure.value))
    assert listing(tmp_path) == before  # destination, neighbours, no temporary folder left
    assert dest.exists() == (dest_state == "empty")


@pytest.mark.parametrize("path", PATHS)
def test_modes_and_owners_are_normalised(path: str, world: World, tmp_path: Path) -> None:
    """Accepted, but defused: setuid/setgid/sticky bits, world-writable modes and foreign owners are dropped."""
    data = tar_gz(
        member("outputs", kind=tarfile.DIRTYPE, mode=0o1777, uid=12345, gid=12345),
        member("outputs/suid", b"#!/bin/sh\n", mode=0o6777, uid=0, gid=0, uname="root"),
        member("outputs/open.txt", b"anyone may write\n", mode=0o666, uid=12345),
    )
    published = world.put(f"modes-{path}", data)
    dest = prepare_dest(tmp_path, "absent")
    fetch_by(path, published, dest, world.storage)
    seen = {
        rel: (stat.S_IMODE(os.lstat(dest / rel).st_mode), os.lstat(dest / rel).st_uid)
        for rel in ("", "outputs", "outputs/suid", "outputs/open.txt")
    }
    me = os.getuid()
    assert seen == {
        "": (0o755, me),
        "outputs": (0o755, me),
        "outputs/suid": (0o755, me),
        "outputs/open.txt": (0o644, me),
    }


# The CLI runs the same fetch as `url-get` (every case above) plus its own staging, --force and one-line
# error printing; each run costs a Python + Prefect start (~2.5 s), so it gets one case per distinct
# mechanism, not the near-duplicates.
CLI_SKIPS_DUPLICATES = {
    "nested-dotdot",
    "symlink-relative",
    "hardlink-absolute",
    "gnu-longname-dotdot",
    "char-device",
}
CLI_CASES = [name for name in CASES if name not in CLI_SKIPS_DUPLICATES]
CLI_ABSENT = ["symlink-then-write-absolute", "tampered"]
# A message must never carry raw control characters (they would drive the user's terminal).
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "dest_state"),
    [case_param(name, "populated", raises=AssertionError) for name in CLI_CASES]
    + [case_param(name, "absent", raises=AssertionError) for name in CLI_ABSENT],
)
def test_hostile_local_result_is_refused_by_the_cli(
    case: str, dest_state: str, world: World, outside: Path, tmp_path: Path
) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(world.published[case].url.to_bacalhau()))
    dest = prepare_dest(tmp_path, dest_state)
    force = ["--force"] if dest_state == "populated" else []
    before = listing(tmp_path)
    done = run_cli("get", str(spec_file), "-o", str(dest), *force)
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert re.search(CASES[case].match, lines[0]), lines[0]
    assert not CONTROL.search(lines[0]), lines[0]
    assert listing(tmp_path) == before
    assert dest.exists() == (dest_state == "populated")


@pytest.mark.slow
def test_two_hundred_thousand_tiny_members_extract_in_bounded_time(world: World, fast_dir: Path) -> None:
    count = 200_000
    data = many_empty_files_gz(count)
    assert len(data) < 8 * MiB
    published = world.put("many-members-200k", data)
    dest = prepare_dest(fast_dir, "absent")
    started = time.monotonic()
    fetch_by("s3-input-extract", published, dest, world.storage)
    elapsed = time.monotonic() - started
    assert elapsed < 120, f"{count} members took {elapsed:.1f}s"
    assert sum(len(names) for _, _, names in os.walk(dest)) == count
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest", "neighbour.txt"]  # no temp left


@pytest.mark.parametrize("path", [*PATHS, CLI_PATH])
def test_twenty_thousand_tiny_members_through_every_path(
    path: str, world: World, tmp_path: Path, fast_dir: Path
) -> None:
    count = 20_000
    published = world.put(f"many-members-20k-{path}", many_empty_files_gz(count))
    dest = prepare_dest(fast_dir, "absent")
    started = time.monotonic()
    if path == CLI_PATH:
        spec_file = tmp_path / "spec.json"
        spec_file.write_text(json.dumps(published.url.to_bacalhau()))
        done = run_cli("get", str(spec_file), "-o", str(dest))
        assert done.returncode == 0, done.stderr
    else:
        fetch_by(path, published, dest, world.storage)
    assert time.monotonic() - started < 60
    assert sum(len(names) for _, _, names in os.walk(dest)) == count
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest", "neighbour.txt"]  # no temp left


def test_member_count_cap_refuses_cleanly(fast_dir: Path) -> None:
    data = many_empty_files_gz(20_000)
    area = fast_dir / "area"
    area.mkdir()
    started = time.monotonic()
    with pytest.raises(UnsafeArchiveError, match=r"'d010/f010000'.*more than 10000 members"):
        extract_archive(io.BytesIO(data), area / "dest", max_members=10_000)
    assert time.monotonic() - started < 30
    assert list(area.iterdir()) == []


def test_symlink_already_in_the_destination_is_not_written_through(tmp_path: Path, outside: Path) -> None:
    """Merging into a non-empty folder (extract_archive's own mode) never follows a link that was there."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "outputs").symlink_to(outside)
    before = listing(tmp_path)
    data = tar_gz(member("outputs/pwned.txt", b"evil"), member("stdout", b"x"))
    with pytest.raises(FetchError, match=r"already holds 'outputs'"):
        extract_archive(io.BytesIO(data), dest)
    assert listing(tmp_path) == before


def test_real_gzip_bomb_stops_at_a_small_cap(tmp_path: Path) -> None:
    """2 GiB of zeros in 4 MiB files squeezed into a few MiB: refused after inflating little more than the cap.

    The end-to-end paths (fetch_inputs, get_result, the CLI) cannot lower the cap: they always extract with
    the default max_bytes of 100 GiB, so a small download can still fill a disk before it is refused.
    """
    data = streaming_bomb(512, 4 * MiB)
    assert len(data) < 8 * MiB
    area = tmp_path / "area"
    area.mkdir()
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(UnsafeArchiveError, match=r"'zeros00016\.bin'.*more than 67108864 bytes"):
            extract_archive(io.BytesIO(data), area / "dest", max_bytes=64 * MiB)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 10
    assert peak < 32 * MiB
    assert list(area.iterdir()) == []
