"""One result tree, every publisher (issue 22): the same awkward folders published and fetched back through
S3 (gzip, plain), IPFS (with and without `preserve_mode`) and Local, on the real MinIO, Kubo and result
server; each outcome asserted from one table, which is the README's "What each publisher keeps" section."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from prefect_bacalhau_publish.blocks import IPFSNode, LocalResultServer, S3Storage
from prefect_bacalhau_publish.errors import PublishError
from prefect_bacalhau_publish.publishers import publish_to
from prefect_bacalhau_publish.resolve import fetch_result
from prefect_bacalhau_publish.server import running_server
from prefect_bacalhau_publish.specs import ExecutionContext, PublisherSpec
from prefect_bacalhau_publish.testing import KuboServer

README = Path(__file__).resolve().parents[1] / "README.md"


def _empty_folder(r: Path) -> None:
    (r / "outputs" / "scratch").mkdir()


def _script(r: Path) -> None:
    (r / "outputs" / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (r / "outputs" / "run.sh").chmod(0o755)


def _private(r: Path) -> None:
    (r / "outputs" / "key").write_bytes(b"secret")
    (r / "outputs" / "key").chmod(0o600)


def _inside_link(r: Path) -> None:
    (r / "outputs" / "data.csv").write_bytes(b"a,b\n1,2\n")
    (r / "outputs" / "latest.csv").symlink_to("data.csv")


def _outside_link(r: Path) -> None:
    (r / "outputs" / "host").symlink_to("/etc/hostname")


def _non_utf8(r: Path) -> None:
    Path(os.fsdecode(os.fsencode(r / "outputs") + b"/caf\xe9.txt")).write_bytes(b"latin-1")


def _long_path(r: Path) -> None:
    deep = (r / "outputs").joinpath(*(c * 250 for c in "abcd"))
    deep.mkdir(parents=True)
    (deep / "end.txt").write_bytes(b"deep")  # 1 000+ bytes of path: over S3's key limit with any prefix


def _fifo(r: Path) -> None:
    os.mkfifo(r / "outputs" / "pipe")


def _ordinary_odd(r: Path) -> None:
    out = r / "outputs"
    (out / "zero").write_bytes(b"")
    (out / ".hidden").write_bytes(b"h")
    for name in ("with space.txt", "q?h#p%p+.txt", "tab\there", "ünïcødé 日本語"):
        (out / name).write_bytes(name.encode())


ROWS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "empty": ("empty folder", _empty_folder),
    "script": ("executable script (0755)", _script),
    "private": ("private file (0600)", _private),
    "inside-link": ("symlink to a file inside the result", _inside_link),
    "outside-link": ("symlink to `/etc/hostname`", _outside_link),
    "non-utf8": ("file name with a non-UTF-8 byte", _non_utf8),
    "long-path": ("path longer than S3's 1024-byte key limit", _long_path),
    "fifo": ("FIFO", _fifo),
    "odd": ("zero-byte file, hidden file, names with spaces, `?#%+`, tabs, non-ASCII", _ordinary_odd),
}

COLUMNS = {
    "gzip": "S3 gzip",
    "plain": "S3 plain",
    "ipfs": "IPFS",
    "ipfs-mode": "IPFS `preserve_mode`",
    "local": "Local",
}

SAME = "same"
REFUSED = "refused at publish"
MODE_LOST = "not executable any more"
X_BIT = "becomes 0644"
COPY = "link kept as a copy of its target"
FOLDER_LOST = "folder lost"

TABLE: dict[str, dict[str, str]] = {
    "empty": dict.fromkeys(COLUMNS, SAME),
    "script": {"gzip": SAME, "plain": SAME, "ipfs": MODE_LOST, "ipfs-mode": SAME, "local": SAME},
    "private": {"gzip": X_BIT, "plain": SAME, "ipfs": X_BIT, "ipfs-mode": SAME, "local": X_BIT},
    "inside-link": {"gzip": SAME, "plain": COPY, "ipfs": SAME, "ipfs-mode": SAME, "local": SAME},
    "outside-link": dict.fromkeys(COLUMNS, REFUSED),
    "non-utf8": {"gzip": SAME, "plain": REFUSED, "ipfs": SAME, "ipfs-mode": SAME, "local": SAME},
    "long-path": {"gzip": SAME, "plain": REFUSED, "ipfs": SAME, "ipfs-mode": SAME, "local": SAME},
    "fifo": dict.fromkeys(COLUMNS, REFUSED),
    "odd": dict.fromkeys(COLUMNS, SAME),
}


def markdown_table() -> str:
    """The README's table, from TABLE."""
    lines = ["| result folder holds | " + " | ".join(COLUMNS.values()) + " |"]
    lines.append("|---" * (len(COLUMNS) + 1) + "|")
    for row, (label, _) in ROWS.items():
        lines.append(f"| {label} | " + " | ".join(TABLE[row][c] for c in COLUMNS) + " |")
    return "\n".join(lines)


Snapshot = dict[str, tuple[str, bytes, int]]


def snapshot(root: Path) -> Snapshot:
    """Every entry under `root` → (kind, bytes or link target, permission bits; 0 for folders and links)."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.fsdecode(os.path.relpath(path, os.fsencode(root)))
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), 0)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", b"", 0)
            else:
                with open(path, "rb") as f:
                    out[rel] = ("file", f.read(), stat.S_IMODE(st.st_mode))
    return out


def outcome(source: Path, got: Path) -> str:
    """How the fetched tree differs from the published one, in the table's words."""
    before, after = snapshot(source), snapshot(got)
    found: set[str] = set()
    for rel, (kind, data, mode) in before.items():
        if rel not in after:
            found.add(FOLDER_LOST if kind == "dir" else f"{rel} lost")
            continue
        new_kind, new_data, new_mode = after[rel]
        if kind == "link" and new_kind == "file":
            target = (source / rel).resolve()
            found.add(COPY if new_data == target.read_bytes() else f"{rel} is a wrong copy")
        elif (kind, data) != (new_kind, new_data):
            found.add(f"{rel} differs")
        elif mode != new_mode:
            lost_x = bool(mode & 0o111) and not new_mode & 0o111
            found.add(MODE_LOST if lost_x else f"becomes {new_mode:04o}")
    found |= {f"{rel} added" for rel in after.keys() - before.keys()}
    return "; ".join(sorted(found)) or SAME


@contextmanager
def local_block(storage: Path) -> Iterator[LocalResultServer]:
    config = LocalResultServer(storage_dir=storage)
    with running_server(config) as base:
        yield config.model_copy(update={"port": int(base.rsplit(":", 1)[1])})


@pytest.fixture(scope="module")
def targets(
    minio: Any, kubo: KuboServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    storage = minio.storage()
    bucket = "conformance"
    storage.get_client().create_bucket(Bucket=bucket)
    with local_block(tmp_path_factory.mktemp("local-storage")) as local:
        yield {
            "bucket": bucket,
            "s3": storage,
            "ipfs": IPFSNode(api_address=kubo.api_multiaddr),
            "ipfs-mode": IPFSNode(api_address=kubo.api_multiaddr, preserve_mode=True),
            "local": local,
        }


def publisher(column: str, bucket: str, row: str) -> PublisherSpec:
    if column in ("gzip", "plain"):
        params = {"Bucket": bucket, "Key": f"{row}/{column}/{{executionID}}", "Encoding": column}
        return PublisherSpec.model_validate({"Type": "s3", "Params": params})
    return PublisherSpec.model_validate({"Type": "ipfs" if column.startswith("ipfs") else "local"})


def blocks(column: str, targets: dict[str, Any]) -> dict[str, Any]:
    s3: S3Storage = targets["s3"]
    ipfs = targets["ipfs-mode" if column == "ipfs-mode" else "ipfs"]
    return {"s3": s3, "ipfs": ipfs, "local": targets["local"]}


@pytest.mark.parametrize("column", list(COLUMNS))
@pytest.mark.parametrize("row", list(ROWS))
def test_every_publisher_round_trip_matches_the_table(
    row: str, column: str, targets: dict[str, Any], tmp_path: Path
) -> None:
    source = tmp_path / "result"
    (source / "outputs").mkdir(parents=True)
    (source / "stdout").write_bytes(b"ok\n")
    ROWS[row][1](source)
    spec = publisher(column, targets["bucket"], row)
    try:
        published = publish_to(source, spec, ExecutionContext.new(), **blocks(column, targets))
    except PublishError as exc:  # the package's own error, never a raw one
        assert "'outputs/" in str(exc), "a refusal names the path inside the result"
        assert str(source / "outputs") not in str(exc), exc
        got = REFUSED
    else:
        fetched = fetch_result(published, tmp_path / "fetched", **blocks(column, targets))
        got = outcome(source, fetched)
    assert got == TABLE[row][column]


def test_the_readme_shows_the_table() -> None:
    assert markdown_table() in README.read_text(), (
        "README.md's 'What each publisher keeps' table differs from tests/test_conformance.py's TABLE:\n"
        + markdown_table()
    )
