"""The `local` / `localDirectory` input source on a real filesystem: copies, links, creation, allow-list."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from prefect_bacalhau_publish.errors import FetchError, SpecError
from prefect_bacalhau_publish.sources import fetch_source
from prefect_bacalhau_publish.sources.local import ENV, allowed_paths, matches
from prefect_bacalhau_publish.specs import InputSource, LocalParams, SourceSpec
from prefect_bacalhau_publish.tasks import fetch_inputs


def spec(path: Path | str, type_: str = "local", **params: Any) -> SourceSpec:
    return SourceSpec.model_validate({"Type": type_, "Params": {"SourcePath": str(path), **params}})


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` (links not followed) with its text, links as `-> target`."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_text()
    return out


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    """A source folder with a nested file, a hidden file and a link that stays inside."""
    root = tmp_path / "data" / "src"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("A")
    (root / "sub" / "b.txt").write_text("B")
    (root / ".hidden").write_text("H")
    (root / "sub" / "to-a").symlink_to(root / "a.txt")  # absolute, but inside
    (root / "rel").symlink_to("sub/b.txt")
    return root


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)


def test_read_only_folder_is_a_copy(data: Path, tmp_path: Path) -> None:
    before = tree(data)
    dest = tmp_path / "job" / "inputs" / "d"
    got = fetch_source(spec(data), dest, allowed_local_paths=[f"{data.parent}/**"])
    assert got == dest and dest.is_dir() and not dest.is_symlink()
    assert tree(dest)["a.txt"] == "A" and tree(dest)["sub/b.txt"] == "B" and tree(dest)[".hidden"] == "H"
    assert tree(dest)["sub/to-a"] == "-> ../a.txt" and tree(dest)["rel"] == "-> sub/b.txt"
    # the job writes everywhere in its copy, also through the links: the source does not change
    (dest / "a.txt").write_text("changed")
    (dest / "sub" / "to-a").write_text("through the link")
    (dest / "rel").write_text("through the other link")
    (dest / "new.txt").write_text("new")
    assert (dest / "a.txt").read_text() == "through the link"
    assert tree(data) == before
    assert os.stat(dest / "a.txt").st_ino != os.stat(data / "a.txt").st_ino


def test_read_only_file_lands_as_a_file(data: Path, tmp_path: Path) -> None:
    dest = tmp_path / "inputs" / "a.txt"
    fetch_source(spec(data / "a.txt"), dest, allowed_local_paths=[str(data / "a.txt")])
    assert dest.is_file() and not dest.is_symlink() and dest.read_text() == "A"
    dest.write_text("changed")
    assert (data / "a.txt").read_text() == "A"


def test_empty_destination_folder_is_replaced(data: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    fetch_source(spec(data), dest, allowed_local_paths=[str(data)])
    assert (dest / "a.txt").read_text() == "A"


def test_read_write_writes_reach_the_source(data: Path, tmp_path: Path) -> None:
    dest = tmp_path / "inputs" / "rw"
    fetch_source(spec(data, ReadWrite=True), dest, allowed_local_paths=[f"{data.parent}/*:rw"])
    assert dest.is_symlink() and dest.resolve() == data.resolve()
    (dest / "a.txt").write_text("written by the job")
    (dest / "out.txt").write_text("new")
    assert (data / "a.txt").read_text() == "written by the job"
    assert (data / "out.txt").read_text() == "new"


@pytest.mark.parametrize("type_", ["local", "localDirectory"])
def test_create_as_dir(tmp_path: Path, type_: str) -> None:
    source = tmp_path / "allowed" / "made"
    (tmp_path / "allowed").mkdir()
    dest = tmp_path / "job" / "out"
    fetch_source(
        spec(source, type_, ReadWrite=True, CreateAs="dir"),
        dest,
        allowed_local_paths=[f"{tmp_path}/allowed/**:rw"],
    )
    assert source.is_dir() and (source.stat().st_mode & 0o777) == 0o700
    (dest / "result.txt").write_text("r")
    assert (source / "result.txt").read_text() == "r"


def test_create_as_file(tmp_path: Path) -> None:
    source = tmp_path / "allowed" / "deep" / "log.txt"
    dest = tmp_path / "job" / "log.txt"
    fetch_source(
        spec(
            source, ReadWrite=True, CreateAs="FILE"
        ),  # CreateAs is read case-insensitively, as Bacalhau does
        dest,
        allowed_local_paths=[f"{tmp_path}/allowed/**:rw"],
    )
    assert source.is_file() and source.read_text() == ""
    dest.write_text("line\n")
    assert source.read_text() == "line\n"


def test_create_as_file_with_a_folder_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is a directory but CreateAs is set to file"):
        fetch_source(
            spec(f"{tmp_path}/new/", ReadWrite=True, CreateAs="file"),
            tmp_path / "dest",
            allowed_local_paths=[f"{tmp_path}/**:rw"],
        )
    assert not (tmp_path / "new").exists() and not (tmp_path / "dest").exists()


def test_existing_source_ignores_create_as(data: Path, tmp_path: Path) -> None:
    fetch_source(spec(data, CreateAs="dir"), tmp_path / "d", allowed_local_paths=[str(data)])
    assert (tmp_path / "d" / "a.txt").read_text() == "A"


def assert_refused(source: SourceSpec, dest: Path, allowed: list[str] | None, message: str) -> None:
    """`source` is refused with `message`, and neither `dest` nor the source path were created."""
    assert isinstance(source.params, LocalParams)
    existed = os.path.lexists(source.params.source_path)
    with pytest.raises(FetchError, match=message) as info:
        fetch_source(source, dest, allowed_local_paths=allowed)
    assert not dest.exists() and not dest.is_symlink()
    assert os.path.lexists(source.params.source_path) == existed
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".local-input-")]
    if re.search("allowlist|not granted|allow-list", message):
        assert "allowed_local_paths" in str(info.value) and ENV in str(info.value)


def test_refused_outside_the_allow_list(data: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    assert_refused(spec(other), tmp_path / "d", [f"{data}/**"], f"volume {other} is not allowlisted")
    # `*` stays within one folder, as in doublestar
    assert_refused(spec(data / "sub"), tmp_path / "d", [f"{data.parent}/*"], "is not allowlisted")


def test_refused_dotdot_escape(data: Path, tmp_path: Path) -> None:
    sneaky = f"{data}/../../../{tmp_path.name}"
    assert_refused(spec(sneaky), tmp_path / "d", [f"{data}/**"], r"is not allowlisted")
    with pytest.raises(FetchError, match=re.escape(f"{sneaky} (= {tmp_path})")):
        fetch_source(spec(sneaky), tmp_path / "d", allowed_local_paths=[f"{data}/**"])


def test_refused_symlink_escape(data: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("k")
    (data / "escape").symlink_to(secret)
    assert_refused(spec(data / "escape"), tmp_path / "d", [f"{data}/**"], "is not allowlisted")
    # a read-only copy of the folder holding that link refuses it, naming the link
    assert_refused(spec(data), tmp_path / "d", [f"{data}/**"], f"symbolic link {data / 'escape'} -> {secret}")
    # a dangling link that would lead outside is refused too
    (data / "escape").unlink()
    (data / "dangling").symlink_to("../../nowhere")
    assert_refused(spec(data), tmp_path / "d", [f"{data}/**"], "leads outside")


def test_refused_special_file_and_copy_into_itself(data: Path, tmp_path: Path) -> None:
    os.mkfifo(data / "sub" / "pipe")
    assert_refused(spec(data), tmp_path / "d", [str(data)], f"holds {data / 'sub' / 'pipe'}, a device, FIFO")
    (data / "sub" / "pipe").unlink()
    assert_refused(spec(data), data / "sub" / "copy", [str(data)], "which is or lies inside it")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FetchError, match="which is or lies inside it"):
        fetch_source(spec(empty, ReadWrite=True), empty, allowed_local_paths=[f"{empty}:rw"])
    assert empty.is_dir() and not empty.is_symlink()


def test_refused_read_write_without_rw(data: Path, tmp_path: Path) -> None:
    assert_refused(
        spec(data, ReadWrite=True),
        tmp_path / "d",
        [f"{data}/**", f"{data}:ro"],
        "is not granted write access",
    )
    # a matching :rw entry later in the list grants it, as in Bacalhau's matchAllowedPath
    fetch_source(spec(data, ReadWrite=True), tmp_path / "d", allowed_local_paths=[str(data), f"{data}:rw"])
    assert (tmp_path / "d").is_symlink()


def test_refused_by_the_default_empty_allow_list(data: Path, tmp_path: Path) -> None:
    assert_refused(
        spec(data), tmp_path / "d", None, "the local allow-list from \\$PBP_ALLOWED_LOCAL_PATHS is empty"
    )
    assert_refused(spec(data), tmp_path / "d", [], "from allowed_local_paths is empty")


def test_refused_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    allowed = [f"{tmp_path}/**:rw"]
    assert_refused(
        spec(missing), tmp_path / "d", allowed, "does not exist and read-write access is not allowed"
    )
    assert_refused(
        spec(missing, ReadWrite=True),
        tmp_path / "d",
        allowed,
        "does not exist at .* and creation is not allowed",
    )
    # CreateAs without ReadWrite creates nothing (Bacalhau: creation needs read-write)
    assert_refused(spec(missing, CreateAs="dir"), tmp_path / "d", allowed, "read-write access is not allowed")


def test_refused_before_creating_when_dest_is_taken(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "x").write_text("x")
    with pytest.raises(FetchError, match="not an empty folder"):
        fetch_source(
            spec(tmp_path / "new", ReadWrite=True, CreateAs="dir"),
            dest,
            allowed_local_paths=[f"{tmp_path}/**:rw"],
        )
    assert not (tmp_path / "new").exists() and tree(dest) == {"x": "x"}


def test_env_variable_and_parameter(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, f" /nowhere/** , {data.parent}/{{src,other}}/**:rw ,")
    assert allowed_paths(None) == (["/nowhere/**", f"{data.parent}/{{src,other}}/**:rw"], f"${ENV}")
    fetch_source(spec(data, "localDirectory", ReadWrite=True), tmp_path / "rw")
    assert (tmp_path / "rw").resolve() == data.resolve()
    # the parameter wins over the variable, also when it is empty
    assert_refused(spec(data), tmp_path / "d", [], "from allowed_local_paths is empty")
    assert_refused(spec(data, ReadWrite=True), tmp_path / "d", [str(data)], "not granted write access")
    # a string parameter is read like the variable
    fetch_source(spec(data), tmp_path / "ro", allowed_local_paths=f"/x,{data}")
    assert (tmp_path / "ro" / "a.txt").read_text() == "A"


def test_allow_list_entries_resolve_their_folders(data: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(data.parent)
    # an entry written through a linked folder allows the real path it names
    fetch_source(spec(data / "a.txt"), tmp_path / "f", allowed_local_paths=[f"{alias}/src/*.txt"])
    # a SourcePath written through the link is resolved, then matched
    fetch_source(spec(alias / "src"), tmp_path / "g", allowed_local_paths=[f"{data}"])
    assert (tmp_path / "g" / "a.txt").read_text() == "A"


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/pbp-nowhere/**", "/pbp-nowhere", True),
        ("/pbp-nowhere/**", "/pbp-nowhere/a/b/c", True),
        ("/pbp-nowhere/**", "/pbp-nowherebase", False),
        ("/pbp-nowhere/*", "/pbp-nowhere/a", True),
        ("/pbp-nowhere/*", "/pbp-nowhere/a/b", False),
        ("/pbp-nowhere/*", "/pbp-nowhere", False),
        ("/pbp-nowhere/**/x", "/pbp-nowhere/x", True),
        ("/pbp-nowhere/**/x", "/pbp-nowhere/a/b/x", True),
        ("/pbp-nowhere/a**b", "/pbp-nowhere/a/b", False),
        ("/pbp-nowhere/a**b", "/pbp-nowhere/axyb", True),
        ("/pbp-nowhere/file?", "/pbp-nowhere/file1", True),
        ("/pbp-nowhere/file[0-9]", "/pbp-nowhere/file7", True),
        ("/pbp-nowhere/file[!0-9]", "/pbp-nowhere/file7", False),
        ("/pbp-nowhere/{in,out}/**", "/pbp-nowhere/out/x", True),
        ("/pbp-nowhere/{in,out}/**", "/pbp-nowhere/tmp/x", False),
        ("/pbp-nowhere/\\*", "/pbp-nowhere/*", True),
        ("/pbp-nowhere/\\*", "/pbp-nowhere/a", False),
        ("/pbp-nowhere/", "/pbp-nowhere", True),
        ("**", "/anything/at/all", True),
    ],
)
def test_glob_semantics_follow_doublestar(pattern: str, path: str, expected: bool) -> None:
    assert matches(pattern, path) is expected
    assert matches(pattern + ":rw", path) is expected


def test_invalid_glob_is_a_clear_error(data: Path, tmp_path: Path) -> None:
    assert_refused(spec(data), tmp_path / "d", ["/data/[abc"], "'/data/\\[abc' is not a valid glob")


def test_params_round_trip_as_bacalhau_writes_them() -> None:
    cli_made = {"Type": "local", "Params": {"SourcePath": "/data", "ReadWrite": False, "CreateAs": ""}}
    assert SourceSpec.model_validate(cli_made).to_bacalhau() == {
        "Type": "local",
        "Params": {"SourcePath": "/data", "ReadWrite": False},
    }
    full = {"Type": "local", "Params": {"SourcePath": "/d", "ReadWrite": True, "CreateAs": "noCreate"}}
    assert SourceSpec.model_validate(full).to_bacalhau() == full
    lower = SourceSpec.model_validate(
        {"type": "LOCALDIRECTORY", "params": {"sourcepath": "/d", "createas": "DIR"}}
    )
    assert lower.to_bacalhau() == {
        "Type": "localDirectory",
        "Params": {"SourcePath": "/d", "CreateAs": "dir"},
    }
    # Bacalhau's DecodeSpec: a string ReadWrite is true only when it is "true"
    assert spec("/d", ReadWrite="true").params == LocalParams(SourcePath="/d", ReadWrite=True)
    assert spec("/d", ReadWrite="yes").params == LocalParams(SourcePath="/d", ReadWrite=False)
    with pytest.raises(ValueError, match=r"invalid CreateAs value folder; CreateAs must be one of \[dir"):
        spec("/d", CreateAs="folder")
    with pytest.raises(ValueError, match="SourcePath cannot be empty"):
        spec(" ")


def test_fetch_inputs_end_to_end(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, f"{data.parent}/**,{tmp_path}/rw/**:rw")
    (tmp_path / "rw").mkdir()
    inputs = [
        InputSource.model_validate({"Source": spec(data).to_bacalhau(), "Target": "/inputs/data"}),
        InputSource.model_validate(
            {
                "Source": {
                    "Type": "localDirectory",
                    "Params": {"SourcePath": f"{tmp_path}/rw/out", "ReadWrite": True, "CreateAs": "dir"},
                },
                "Target": "/outputs/shared",
            }
        ),
    ]
    root = tmp_path / "work"
    paths = fetch_inputs.fn(inputs, root)
    assert paths == {"/inputs/data": root / "inputs" / "data", "/outputs/shared": root / "outputs" / "shared"}
    assert (root / "inputs" / "data" / "sub" / "b.txt").read_text() == "B"
    (root / "outputs" / "shared" / "x").write_text("x")
    assert (tmp_path / "rw" / "out" / "x").read_text() == "x"
    monkeypatch.delenv(ENV)
    with pytest.raises(FetchError, match="is not allowlisted"):
        fetch_inputs.fn(inputs[:1], tmp_path / "work2")
