"""The local result server killed under a download: a clear FetchError and nothing half-written, or, when it
comes back in time, a download resumed with `Range` that still verifies.

The server is the real CLI (`python -m prefect_bacalhau_publish.cli serve`) in its own process, killed with
SIGKILL. The client is held at a byte threshold by a progress listener blocking on an Event the test sets,
so the kill (and the restart) always lands mid-body, with no sleeps.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from prefect_bacalhau_publish.blocks import LocalResultServer
from prefect_bacalhau_publish.errors import FetchError
from prefect_bacalhau_publish.progress import listening
from prefect_bacalhau_publish.publishers import publish_to
from prefect_bacalhau_publish.specs import ExecutionContext, PublishedResult, PublisherSpec
from prefect_bacalhau_publish.tasks import get_result
from prefect_bacalhau_publish.testing import ResultServerProcess, free_port

from .faultkit import BOUND, Gate, digest_tree, in_thread

MiB = 1 << 20
FILES = 2
FILE_SIZE = 64 * MiB  # 128 MiB of random data: the archive is as large, and far larger than socket buffers
THRESHOLD = 32 * MiB


@dataclass(frozen=True)
class Setup:
    server: ResultServerProcess
    result: PublishedResult
    archive_size: int
    source_tree: dict[str, str]
    work: Path


@pytest.fixture()
def setup(tmp_path: Path) -> Iterator[Setup]:
    """A 128 MiB result published by the local publisher into a storage folder served by the CLI."""
    folder = tmp_path / "result"
    (folder / "outputs").mkdir(parents=True)
    (folder / "stdout").write_text("big job\n")
    (folder / "exitCode").write_text("0")
    for index in range(FILES):
        with open(folder / "outputs" / f"part{index}.bin", "wb") as out:
            for _ in range(FILE_SIZE // (4 * MiB)):
                out.write(os.urandom(4 * MiB))
    storage = tmp_path / "store"
    port = free_port()
    config = LocalResultServer(storage_dir=storage, port=port, public_address="loopback")
    result = publish_to(
        folder, PublisherSpec.model_validate({"Type": "local"}), ExecutionContext.new(), local=config
    )
    archive = storage / result.to_bacalhau()["Params"]["URL"].rpartition("/")[2]
    work = tmp_path / "work"
    work.mkdir()
    (work / "neighbour.txt").write_text("beside the destination\n")
    server = ResultServerProcess(storage, tmp_path / "serve.log", port).start()
    try:
        yield Setup(server, result, archive.stat().st_size, digest_tree(folder), work)
    finally:
        server.stop()


@pytest.mark.slow
def test_server_killed_mid_download_then_retry_succeeds(setup: Setup) -> None:
    dest = setup.work / "got"
    before = sorted(p.name for p in setup.work.iterdir())
    gate = Gate(THRESHOLD)
    with (
        listening(gate),
        in_thread(lambda: get_result.fn(setup.result, dest)) as (worker, results, errors),
    ):
        assert gate.reached.wait(BOUND), f"the download never reached {THRESHOLD} bytes: {errors}"
        setup.server.kill()
        killed_at = time.monotonic()
        gate.opened.set()
        worker.join(BOUND)
        assert not worker.is_alive(), "the download did not give up after the server died"
    assert time.monotonic() - killed_at < 60
    assert results == [] and len(errors) == 1, (results, errors)
    assert isinstance(errors[0], FetchError), repr(errors[0])
    message = str(errors[0])
    assert setup.server.base_url in message and "result server may be down" in message, message
    assert THRESHOLD <= gate.moved < setup.archive_size
    assert sorted(p.name for p in setup.work.iterdir()) == before  # no partial destination, no temp

    setup.server.start()  # same port, same storage
    get_result.fn(setup.result, dest)
    assert digest_tree(dest) == setup.source_tree
    assert sorted(p.name for p in setup.work.iterdir()) == sorted([*before, "got"])


@pytest.mark.slow
def test_server_restarted_mid_download_is_resumed(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="prefect_bacalhau_publish.url")
    dest = setup.work / "got"
    gate = Gate(THRESHOLD)
    with (
        listening(gate),
        in_thread(lambda: get_result.fn(setup.result, dest)) as (worker, results, errors),
    ):
        assert gate.reached.wait(BOUND), f"the download never reached {THRESHOLD} bytes: {errors}"
        setup.server.kill()
        setup.server.start()  # back on the same port before the client notices
        gate.opened.set()
        worker.join(BOUND)
        assert not worker.is_alive(), "the resumed download did not finish"
    assert errors == [] and results == [dest], errors
    assert digest_tree(dest) == setup.source_tree
    assert sorted(p.name for p in setup.work.iterdir()) == ["got", "neighbour.txt"]
    # Resumed, not restarted: every byte was received exactly once, the second request was a Range.
    assert gate.moved == setup.archive_size
    assert any("resuming" in record.getMessage() for record in caplog.records), caplog.text
    ranged = setup.server.wait_for_lines(lambda line: line["status"] == 206, count=1)
    assert 0 < ranged[0]["bytes"] < setup.archive_size
