"""The `inline` input source: Bacalhau's `data:` URLs (pkg/storage/inline), made, read and fetched."""

from __future__ import annotations

import base64
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from prefect_bacalhau_publish.errors import FetchError, SpecError, UnsafeArchiveError
from prefect_bacalhau_publish.parse import as_inputs
from prefect_bacalhau_publish.sources import fetch_source, inline
from prefect_bacalhau_publish.sources.inline import decode_data_url
from prefect_bacalhau_publish.specs import InlineParams, InputSource, SourceSpec
from prefect_bacalhau_publish.tasks import fetch_inputs, run_job

from .tarkit import member, tar_gz

GZ = "data:application/gzip;base64,"

# Made by Bacalhau v1.9.3's own `inline.NewStorage().Upload(ctx, "/tmp/inl/cfg")` (a throwaway Go program)
# for a folder `cfg` holding a.txt ("hello\n"), run.sh (0755), sub/b.txt ("B") and the empty folder empty/.
BACALHAU_FOLDER_URL = (
    "data:application/gzip;base64,H4sIAAAAAAAA/+yXz2qEMBCH57xPYel9nWSceO+brOKuha2W/IH27UuWnnJQ2pKE4nyXCAo"
    "zycf81PF6g9wgIvbMjxUR0/VxrZiQ2JBSGlApJoKGs3cGAMH5iwVEu65+67m9++nm/gnj9dZezv5jc29/JJ6H6boN/ybxr9n00BQ"
    "5xIP7n6f7fT3V7kKoRZz/6e3df2as8fP816ZXkv8liP5tWM5uzldj17+m1H/PKPlfguendnhdWjefpnFeGxsWeRkciTj/LgxZa/w"
    "i/0l3kv8l+PbfDhn/Afa//1Xin4g7yf8SvNRuQBAEQajCVwAAAP//Et1iQwAWAAA="
)


def tree(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def source(url: str) -> SourceSpec:
    return SourceSpec.model_validate({"Type": "inline", "Params": {"URL": url}})


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "cfg"
    (root / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a.txt").write_text("hello\n")
    (root / "sub" / "b.txt").write_text("B")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    return root


# ------------------------------------------------------------------------------------------ making one


def test_small_file_is_plain_base64_data_and_lands_as_one_file_at_target(tmp_path: Path) -> None:
    small = tmp_path / "greeting.txt"
    small.write_bytes(b"small\n")
    made = InputSource.inline(small, "/inputs/greeting.txt", alias="hi")
    # byte for byte what Bacalhau's Upload (dataurl.EncodeBytes) makes for these bytes
    assert made.to_bacalhau() == {
        "Alias": "hi",
        "Source": {"Type": "inline", "Params": {"URL": "data:text/plain;charset=utf-8;base64,c21hbGwK"}},
        "Target": "/inputs/greeting.txt",
    }
    dest = tmp_path / "work" / "inputs" / "greeting.txt"
    assert fetch_source(made.source, dest) == dest
    assert dest.is_file() and dest.read_bytes() == b"small\n"


@pytest.mark.parametrize(
    ("data", "url"),
    [
        (b"", "data:text/plain;charset=utf-8;base64,"),  # as Bacalhau writes an empty file
        (b"hello\x00bin", "data:application/octet-stream;base64,aGVsbG8AYmlu"),  # Go's binary sniff
        (b"x" * 512, "data:text/plain;charset=utf-8;base64," + base64.b64encode(b"x" * 512).decode()),
    ],
)
def test_plain_data_encoding_matches_bacalhau(tmp_path: Path, data: bytes, url: str) -> None:
    path = tmp_path / "f"
    path.write_bytes(data)
    assert InputSource.inline(path, "/inputs/f").source.params == InlineParams(URL=url)


def test_a_file_over_512_bytes_is_a_tar_gz_landing_under_its_name(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(513))  # Bacalhau: Size() > maximumPlaintextSize (512) → tar.gz
    made = InputSource.inline(big, "/inputs/big")
    assert isinstance(made.source.params, InlineParams) and made.source.params.url.startswith(GZ)
    dest = tmp_path / "work" / "inputs" / "big"
    fetch_source(made.source, dest)
    assert tree(dest) == {"big.bin": big.read_bytes()}


def test_a_folder_is_a_tar_gz_landing_at_target_under_its_name(tmp_path: Path, folder: Path) -> None:
    made = InputSource.inline(str(folder), "/inputs/cfg")
    url = made.to_bacalhau()["Source"]["Params"]["URL"]
    assert url.startswith(GZ)
    assert InputSource.inline(folder, "/inputs/cfg").source.params.url == url  # type: ignore[attr-defined]
    dest = tmp_path / "work" / "inputs" / "cfg"
    fetch_source(made.source, dest)
    assert tree(dest) == {"cfg": None, **{f"cfg/{k}": v for k, v in tree(folder).items()}}
    assert stat.S_IMODE((dest / "cfg" / "run.sh").stat().st_mode) == 0o755
    # the entries, as Bacalhau's targzip.Compress names them: the folder's own name first
    content_type, data = decode_data_url(url)
    staged = tmp_path / "raw.tar.gz"
    staged.write_bytes(data)
    with tarfile.open(staged) as tar:
        assert tar.getnames() == ["cfg", "cfg/a.txt", "cfg/empty", "cfg/run.sh", "cfg/sub", "cfg/sub/b.txt"]
    assert content_type == "application/gzip"


def test_a_folder_bacalhau_inlined_is_read(tmp_path: Path) -> None:
    dest = tmp_path / "inputs" / "cfg"
    fetch_source(source(BACALHAU_FOLDER_URL), dest)
    assert tree(dest) == {
        "cfg": None,
        "cfg/a.txt": b"hello\n",
        "cfg/empty": None,
        "cfg/run.sh": b"#!/bin/sh\necho run\n",
        "cfg/sub": None,
        "cfg/sub/b.txt": b"B",
    }
    assert stat.S_IMODE((dest / "cfg" / "run.sh").stat().st_mode) == 0o755


def test_more_than_the_limit_is_refused(tmp_path: Path) -> None:
    noise = tmp_path / "noise"
    noise.mkdir()
    (noise / "a.bin").write_bytes(os.urandom(inline.LIMIT * 3 // 4))  # incompressible: > 1 MiB as base64
    with pytest.raises(SpecError, match=r"cannot inline .*noise: its data URL would be more than 1 MiB"):
        InputSource.inline(noise, "/inputs/noise")
    # just under the limit goes through
    fits = tmp_path / "fits.bin"
    fits.write_bytes(os.urandom(700_000))
    url = InputSource.inline(fits, "/inputs/fits").source.params.url  # type: ignore[attr-defined]
    assert len(url) <= inline.LIMIT


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (
            lambda p: (p / "zeros").write_bytes(bytes(11 << 20)),
            r"'d/zeros' is 11534336 bytes, more than the 10 MiB",
        ),
        (lambda p: (p / "link").symlink_to("a.txt"), r"holds the symlink 'link': Bacalhau's inline storage"),
        (lambda p: os.mkfifo(p / "fifo"), r"'fifo' in the result folder is a FIFO"),
    ],
)
def test_what_bacalhau_cannot_carry_is_refused(tmp_path: Path, make: Any, problem: str) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    make(folder)
    with pytest.raises(SpecError, match=problem):
        InputSource.inline(folder, "/inputs/d")


def test_a_missing_path_or_a_bad_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"cannot inline .*/nope: No such file or directory"):
        InputSource.inline(tmp_path / "nope", "/inputs/x")
    (tmp_path / "f").write_text("f")
    with pytest.raises(SpecError, match=r"invalid inline input for .*/f: Target: .*must not contain '\.\.'"):
        InputSource.inline(tmp_path / "f", "/inputs/../x")


# ----------------------------------------------------------------------------------------- reading one


@pytest.mark.parametrize(
    ("url", "content_type", "data"),
    [
        ("data:,hello%20world", "text/plain", b"hello world"),
        ("data:text/plain;charset=US-ASCII,hi", "text/plain", b"hi"),
        ('data:text/plain;name="a,b";base64,aGk=', "text/plain", b"hi"),
        ("data:;base64,aGk=", "text/plain", b"hi"),
        ("data:application/octet-stream;base64,aGVs\nbG8=", "application/octet-stream", b"hello"),
        ("data:x-custom/thing,%00%FF", "x-custom/thing", b"\x00\xff"),
        ("data:textual/plain,hi", "textual/plain", b"hi"),  # dataurl checks only the type's prefix
        ("data:application/x-gzip;base64,aGk=", "application/x-gzip", b"hi"),  # a file, not extracted
    ],
)
def test_data_urls_bacalhau_reads_are_read_alike(
    tmp_path: Path, url: str, content_type: str, data: bytes
) -> None:
    """Each accepted (and each refused, below) as dataurl v1.0.0's DecodeString does (checked against it)."""
    assert decode_data_url(url) == (content_type, data)
    assert source(url).to_bacalhau() == {"Type": "inline", "Params": {"URL": url}}
    fetch_source(source(url), tmp_path / "x")
    assert (tmp_path / "x").read_bytes() == data  # anything but application/gzip: one file at Target


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "url cannot be empty"),
        ("http://example.org/x", "must start with 'data:'"),
        ("data:text/plain", "does not read as data:"),
        ("data:text;base64,aGk=", "does not read as data:"),
        ("data:foo/bar,x", "invalid media type 'foo/bar'"),
        ("data:Application/gzip;base64,aGk=", "invalid media type"),  # dataurl is case-sensitive here
        ("data:text/plain;charset=%zz,hi", "bad %-escape in the parameter value"),
        ("data:text/plain;base64,@@@@", "character outside A-Z"),
        ("data:text/plain;base64,aGk", "base64 data is malformed"),
        ("data:text/plain;base64;charset=x,aGk=", "does not read as data:"),
        ("data:,a b", "a character a URL may not"),
        ("data:,100%", "'%' not followed by two hex digits"),
        ("data:,h\u00e9", "non-ASCII"),
    ],
)
def test_a_malformed_data_url_is_a_spec_error_naming_the_field(url: str, problem: str) -> None:
    spec = {"Source": {"Type": "inline", "Params": {"URL": url}}, "Target": "/inputs/x"}
    with pytest.raises(SpecError, match=r"invalid input \[0\]: .*Params\.URL: .*" + problem):
        as_inputs([spec])


def test_a_malformed_inline_input_stops_the_job_before_anything_is_fetched(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("ok")
    inputs: list[Any] = [
        InputSource.inline(tmp_path / "ok.txt", "/inputs/ok"),
        {
            "Source": {"Type": "inline", "Params": {"URL": "data:text/plain;base64,###"}},
            "Target": "/inputs/bad",
        },
    ]
    root = tmp_path / "work"
    with pytest.raises(SpecError, match=r"invalid input \[1\]: .*Params\.URL"):
        fetch_inputs.fn(inputs, root)
    assert not (root / "inputs" / "ok").exists()


# ------------------------------------------------------------------------------------------ hostile data

HOSTILE = {
    "parent escape": tar_gz(member("../evil", b"x")),
    "absolute path": tar_gz(member("/tmp/evil", b"x")),
    "symlink out": tar_gz(member("link", kind=tarfile.SYMTYPE, linkname="/etc")),
    "symlink then through it": tar_gz(
        member("up", kind=tarfile.SYMTYPE, linkname=".."), member("up/evil", b"x")
    ),
    "hard link out": tar_gz(member("hard", kind=tarfile.LNKTYPE, linkname="/etc/passwd")),
    "device": tar_gz(member("dev", kind=tarfile.CHRTYPE, devmajor=1, devminor=3)),
    "not gzip": b"plain bytes labelled application/gzip",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_tar_gz_in_a_data_url_is_refused(tmp_path: Path, name: str) -> None:
    spec = source(GZ + base64.b64encode(HOSTILE[name]).decode())  # a well-formed URL: read fine
    work = tmp_path / "work"
    work.mkdir()
    dest = work / "inputs" / "x"
    with pytest.raises(UnsafeArchiveError, match=r"inline input for .*inputs/x: "):
        fetch_source(spec, dest)
    assert not dest.exists()
    assert not (tmp_path / "evil").exists() and not (work / "evil").exists()
    assert [p.name for p in work.rglob("*")] in ([], ["inputs"])  # no staging folder left behind


def test_a_gzip_bomb_stops_at_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inline, "MAX_EXTRACTED", 10_000)
    spec = source(GZ + base64.b64encode(tar_gz(member("zeros", bytes(50_000)))).decode())
    with pytest.raises(UnsafeArchiveError, match="more than 10000 bytes of file data"):
        fetch_source(spec, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_destination_that_is_not_empty_is_refused_first(tmp_path: Path) -> None:
    dest = tmp_path / "x"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(FetchError, match="is not an empty folder"):
        fetch_source(source("data:,hi"), dest)
    assert tree(dest) == {"keep": b"mine"}


# ---------------------------------------------------------------------------------------------- in a job


def test_a_job_reads_inline_inputs(tmp_path: Path, folder: Path) -> None:
    (tmp_path / "greeting.txt").write_text("hello from the spec\n")
    inputs: list[Any] = [
        InputSource.inline(tmp_path / "greeting.txt", "/inputs/greeting.txt"),
        InputSource.inline(folder, "/inputs/cfg").to_bacalhau(),  # as its Bacalhau JSON object
    ]
    root = tmp_path / "work"
    paths = fetch_inputs.fn(inputs, root)
    assert paths == {
        "/inputs/greeting.txt": root / "inputs" / "greeting.txt",
        "/inputs/cfg": root / "inputs" / "cfg",
    }
    assert (root / "inputs" / "greeting.txt").read_text() == "hello from the spec\n"
    assert (root / "inputs" / "cfg" / "cfg" / "sub" / "b.txt").read_text() == "B"

    job = run_job.fn(
        "cat inputs/greeting.txt && sh inputs/cfg/cfg/run.sh && cat inputs/cfg/cfg/a.txt",
        publisher=None,
        inputs=inputs,
    )
    assert job.exit_code == 0, job.stderr_tail
    assert job.stdout_tail == "hello from the spec\nrun\nhello\n"
