"""The journal of multipart uploads still to abort (journal.py): ids, ageing, where it lives."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from prefect_bacalhau_publish import journal


@pytest.fixture()
def path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    target = tmp_path / "j" / "s3-pending.json"
    monkeypatch.setenv("PBP_JOURNAL", str(target))
    return target


def test_remember_pending_forget_by_upload_id(path: Path) -> None:
    assert journal.pending("http://e", "b") == []
    assert not path.exists()  # nothing pending: no file at all
    journal.remember("http://e", "b", "k1", "id-1")
    journal.remember("http://e", "b", "k1", "id-1")  # once only
    journal.remember("http://e", "b", "k2", "id-2")
    journal.remember("http://other", "b", "k3", "id-3")
    assert journal.pending("http://e", "b") == [("k1", "id-1"), ("k2", "id-2")]
    journal.forget("http://e", "b", "id-1")
    assert journal.pending("http://e", "b") == [("k2", "id-2")]
    assert journal.pending("http://other", "b") == [("k3", "id-3")]


def test_old_and_id_less_entries_are_dropped_with_a_log_line(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal.remember(None, "b", "fresh", "id-f")
    entries = json.loads(path.read_text())
    entries.append(
        {"endpoint": "", "bucket": "b", "key": "old", "upload_id": "id-o", "since": time.time() - 8 * 86400}
    )
    entries.append({"endpoint": "", "bucket": "b", "key": "legacy"})  # an older version's entry
    path.write_text(json.dumps(entries))
    caplog.set_level(logging.INFO, logger="prefect_bacalhau_publish")
    assert journal.pending(None, "b") == [("fresh", "id-f")]
    dropped = [r.getMessage() for r in caplog.records if "dropped the journal entry" in r.getMessage()]
    assert len(dropped) == 2 and "s3://b/old at AWS" in dropped[0] and "older than 7 days" in dropped[0]
    assert [e["key"] for e in json.loads(path.read_text())] == ["fresh"]


def test_lives_in_prefect_home_unless_pbp_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_HOME, temporary_settings

    monkeypatch.delenv("PBP_JOURNAL", raising=False)
    with temporary_settings({PREFECT_HOME: tmp_path / "profile-home"}):
        assert (
            journal.journal_path()
            == tmp_path / "profile-home" / "prefect-bacalhau-publish" / "s3-pending.json"
        )


_BOTH = (
    "import sys; from prefect_bacalhau_publish import journal; light = journal.journal_path();"
    "loaded = 'prefect' in sys.modules; import prefect.settings; print(light, loaded, journal.journal_path())"
)


@pytest.mark.parametrize(
    ("files", "env", "home"),
    [
        ({}, {}, "user/.prefect"),  # nothing set: Prefect's default, found without importing Prefect
        ({}, {"PREFECT_HOME": "{tmp}/env-home"}, "env-home"),
        ({".env": "PREFECT_HOME={tmp}/dotenv-home\n"}, {}, "dotenv-home"),
        ({"prefect.toml": 'home = "{tmp}/toml-home"\n'}, {}, "toml-home"),
        (
            {
                "user/.prefect/profiles.toml": 'active = "p"\n[profiles.p]\nPREFECT_HOME = "{tmp}/profile-home"\n'
            },
            {},
            "profile-home",
        ),
    ],
)
def test_home_found_as_prefect_finds_it(
    tmp_path: Path, files: dict[str, str], env: dict[str, str], home: str
) -> None:
    """Fresh processes: the path found before Prefect is imported is the one Prefect's settings give."""
    import os
    import subprocess
    import sys

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text.format(tmp=tmp_path))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PBP_"))}
    settings = {name: value.format(tmp=tmp_path) for name, value in env.items()}
    done = subprocess.run(
        [sys.executable, "-c", _BOTH],
        env={**clean, **settings, "HOME": str(tmp_path / "user")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    light, loaded, prefects = done.stdout.split()
    expected = tmp_path / home / "prefect-bacalhau-publish" / "s3-pending.json"
    assert light == prefects == str(expected)
    assert loaded == str(bool(files))  # Prefect is asked only when a settings file could move the home
