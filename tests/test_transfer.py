"""Progress artifacts and summary lines of publishes, gets and input fetches (issue #23, items 2 and 3).

The metering logic is tested with a fake clock and board; every transfer kind then runs in a real flow on
the throwaway Prefect server (MinIO, Kubo, the local result server) and is read back through the client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_bacalhau_publish import (
    IPFSNode,
    LocalResultServer,
    PublishedResult,
    S3Storage,
    apublish_result,
    fetch_inputs,
    get_result,
    progress,
    publish_result,
)
from prefect_bacalhau_publish.server import running_server
from prefect_bacalhau_publish.specs import IPFSParams, S3Params, SourceSpec, URLParams
from prefect_bacalhau_publish.testing import KuboServer
from prefect_bacalhau_publish.transfer import THRESHOLD, Meter, human_bytes, location, metered, tree_size

MIB = 1024 * 1024
SUMMARY = r"\d+(\.\d+)? s \(\d+\.\d MiB/s\)"

# ------------------------------------------------------------------------------------ the pure logic


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeBoard:
    """Records what a progress artifact would show."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, float, str | None]] = []
        self.fail = fail

    def create(self, progress: float, description: str) -> Any:
        if self.fail:
            raise RuntimeError("API down")
        self.calls.append(("create", progress, description))
        return "artifact-1"

    def update(self, artifact_id: Any, progress: float, description: str | None = None) -> None:
        assert artifact_id == "artifact-1"
        self.calls.append(("update", progress, description))


def test_updates_at_most_once_per_interval() -> None:
    clock, board = FakeClock(), FakeBoard()
    meter = Meter(lambda total: f"moving {total}", board=board, threshold=1000, interval=1.0, clock=clock)
    meter.expect(1000)
    assert board.calls == [("create", 0.0, "moving 1000")]
    for _ in range(50):  # many reads within the same second: no update
        meter.advance(1)
        clock.now += 0.01
    assert len(board.calls) == 1
    clock.now += 0.5  # 1.0 s after the creation
    meter.advance(50)
    assert board.calls[-1] == ("update", 10.0, None)
    meter.advance(100)
    clock.now += 0.99
    meter.advance(100)
    assert len(board.calls) == 2
    clock.now += 5
    meter.advance(749)  # all 1000 bytes: still 99 until the transfer ends
    assert board.calls[-1] == ("update", 99.0, None)
    meter.end("moved it all")
    assert board.calls[-1] == ("update", 100.0, "moved it all")
    clock.now += 5
    meter.advance(10)  # nothing after the end
    assert len(board.calls) == 4


def test_small_or_unknown_totals_get_no_artifact() -> None:
    clock, board = FakeClock(), FakeBoard()
    unknown = Meter(str, board=board, threshold=1000, clock=clock)
    small = Meter(str, board=board, threshold=1000, clock=clock)
    small.expect(999)
    for meter in (unknown, small):
        meter.advance(5000)
        clock.now += 10
        meter.advance(5000)
        meter.end("done")
    assert board.calls == []
    assert unknown.moved == small.moved == 10_000


def test_failed_transfer_keeps_its_percentage() -> None:
    board = FakeBoard()
    with pytest.raises(OSError), metered("published", "to", "s3://b/k", total=THRESHOLD, board=board):
        progress.advance(THRESHOLD // 4)
        raise OSError("disk gone")
    assert board.calls[0] == ("create", 0.0, "publishing 64.0 MiB to s3://b/k")
    assert board.calls[-1] == (
        "update",
        25.0,
        "publishing 64.0 MiB to s3://b/k failed at 25% (16.0 MiB of 64.0 MiB)",
    )


def test_a_failing_board_never_fails_the_transfer(caplog: pytest.LogCaptureFixture) -> None:
    board = FakeBoard(fail=True)
    with metered("fetched", "from", "ipfs://x", board=board) as transfer:
        progress.expect(THRESHOLD)
        progress.advance(THRESHOLD)
    assert transfer.meter.artifact is None
    assert "progress artifact dropped: RuntimeError: API down" in caplog.text


def test_advances_from_many_threads_add_up() -> None:
    meter = Meter(str, board=FakeBoard(), threshold=1, interval=0.0)
    meter.expect(8 * 10_000)

    def work() -> None:
        for _ in range(10_000):
            meter.advance(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert meter.moved == 80_000


def test_listeners_are_scoped_to_their_context() -> None:
    """Two transfers on two threads at once, each with helper threads: no byte reaches the other."""
    barrier = threading.Barrier(2)
    counts: dict[str, list[int]] = {"a": [], "b": []}

    def transfer(name: str, each: int) -> None:
        with progress.listening(counts[name].append, expected=lambda total: counts[name].append(-total)):
            barrier.wait()
            progress.expect(1000)
            with ThreadPoolExecutor(4) as pool:
                for future in [progress.submit(pool, progress.advance, each) for _ in range(20)]:
                    future.result()
            helper = progress.thread(lambda: progress.advance(each), "helper")
            helper.start()
            helper.join()
            barrier.wait()
        progress.advance(12345)  # after the block: heard by nobody

    threads = [threading.Thread(target=transfer, args=args) for args in (("a", 1), ("b", 7))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(counts["a"]) == [-1000] + [1] * 21
    assert sorted(counts["b"]) == [-1000] + [7] * 21


def test_outside_a_run_the_summary_goes_to_the_package_logger(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="prefect_bacalhau_publish")
    with metered("fetched", "from", "http://127.0.0.1:1/x.tar.gz", total=THRESHOLD * 2) as transfer:
        progress.advance(3 * MIB // 2)
        transfer.files = 1
    assert transfer.meter.artifact is None  # no run: no artifact
    [line] = [r.getMessage() for r in caplog.records if r.name == "prefect_bacalhau_publish"]
    assert re.fullmatch(rf"fetched 1 file, 1\.5 MiB in {SUMMARY} from http://127\.0\.0\.1:1/x\.tar\.gz", line)


def test_names_sizes_and_counts(tmp_path: Path) -> None:
    assert [human_bytes(n) for n in (0, 1023, 1536, 70 * MIB, 1100 * MIB)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "70.0 MiB",
        "1.07 GiB",
    ]
    url = SourceSpec.model_validate(
        {"Type": "urlDownload", "Params": {"URL": "https://user:pw@example.org/r.tar.gz?token=t"}}
    )
    assert location(url.params) == "https://example.org/r.tar.gz?…"
    presigned = SourceSpec.model_validate(
        {
            "Type": "s3PreSigned",
            "Params": {"Bucket": "b", "Key": "k.tar.gz", "PreSignedURL": "https://s3/b/k?X-Amz-Signature=s"},
        }
    )
    assert location(presigned.params) == "s3://b/k.tar.gz"
    local = SourceSpec.model_validate({"Type": "local", "Params": {"SourcePath": "/data/in"}})
    assert location(local.params) == "/data/in"
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "f").write_bytes(b"12345")
    (tmp_path / "d" / "e" / "g").write_bytes(b"67")
    (tmp_path / "d" / "link").symlink_to("f")
    assert tree_size(tmp_path / "d") == (2, 7)
    assert tree_size(tmp_path / "d" / "f") == (1, 5)


# ------------------------------------------------------------------------------- in flows, for real


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 70 MiB result of incompressible data: three files."""
    root = tmp_path_factory.mktemp("big") / "result"
    (root / "outputs").mkdir(parents=True)
    (root / "outputs" / "a.bin").write_bytes(os.urandom(40 * MIB))
    (root / "outputs" / "b.bin").write_bytes(os.urandom(30 * MIB - 5))
    (root / "stdout").write_bytes(b"done\n")
    return root


def read_back(flow_run_id: Any, *, lines: int) -> tuple[list[Any], list[str]]:
    """The flow run's progress artifacts and its summary log lines (waiting for `lines` of them)."""

    async def read() -> tuple[list[Any], list[str]]:
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                    type=ArtifactFilterType(any_=["progress"]),
                )
            )
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
            )
        found = [log.message for log in logs if re.match(r"(published|fetched) \d", log.message)]
        return artifacts, found

    APILogHandler().flush()  # the run's last records may still be queued for the API
    deadline = time.monotonic() + 15
    while True:
        artifacts, found = asyncio.run(read())
        if len(found) >= lines or time.monotonic() > deadline:
            return artifacts, found
        time.sleep(0.3)


def one_per_task_run(artifacts: list[Any], task_runs: int) -> list[Any]:
    """The artifacts, checked to be exactly one per task run, each finished at 100."""
    by_task: dict[Any, list[Any]] = defaultdict(list)
    for artifact in artifacts:
        by_task[artifact.task_run_id].append(artifact)
    assert len(by_task) == task_runs and all(len(group) == 1 for group in by_task.values()), by_task
    assert all(a.data == 100 for a in artifacts), [a.data for a in artifacts]
    return artifacts


def summary(verb: str, files: int, size: str, preposition: str, target: str) -> Callable[[str], bool]:
    pattern = rf"{verb} {files} files?, {re.escape(size)} in {SUMMARY} {preposition} {re.escape(target)}"
    return lambda line: re.fullmatch(pattern, line) is not None


def the_one(lines: list[str], check: Callable[[str], bool]) -> str:
    matching = [line for line in lines if check(line)]
    assert len(matching) == 1, lines
    return matching[0]


@pytest.mark.usefixtures("prefect_server")
def test_s3_gzip_publish_get_and_input(
    big_dir: Path, s3_storage: S3Storage, bucket: str, tmp_path: Path
) -> None:
    @flow
    def moves() -> PublishedResult:
        published = publish_result(big_dir, f"s3://{bucket}/big/{{executionID}}", s3=s3_storage)
        get_result(published, tmp_path / "got", s3=s3_storage)
        fetch_inputs([published.to_input_source("/inputs/big")], tmp_path / "job", s3=s3_storage)
        return published

    state = moves(return_state=True)
    published = state.result()
    assert isinstance(published.params, S3Params)
    target = f"s3://{bucket}/{published.params.key}"
    artifacts, lines = read_back(state.state_details.flow_run_id, lines=3)
    one_per_task_run(artifacts, 3)
    put = the_one(lines, summary("published", 3, "70.0 MiB", "to", target))
    got = [line for line in lines if summary("fetched", 3, "70.0 MiB", "from", target)(line)]
    assert len(got) == 2, lines  # the get and the input
    assert sorted(a.description for a in artifacts) == sorted([put, *got])


@pytest.mark.usefixtures("prefect_server")
def test_local_publish_and_its_download(big_dir: Path, tmp_path: Path) -> None:
    config = LocalResultServer(storage_dir=tmp_path / "store", host="127.0.0.1", public_address="127.0.0.1")
    with running_server(config) as base:
        config = config.model_copy(update={"port": int(base.rsplit(":", 1)[1])})

        @flow
        def local_moves() -> PublishedResult:
            published = publish_result(big_dir, "local", local=config)
            get_result(published, tmp_path / "got")
            return published

        state = local_moves(return_state=True)
        published = state.result()
    assert isinstance(published.params, URLParams)
    artifacts, lines = read_back(state.state_details.flow_run_id, lines=2)
    one_per_task_run(artifacts, 2)
    url = published.params.url
    put = the_one(lines, summary("published", 3, "70.0 MiB", "to", url))
    got = the_one(lines, summary("fetched", 3, "70.0 MiB", "from", url))
    assert sorted(a.description for a in artifacts) == sorted([put, got])


@pytest.mark.usefixtures("prefect_server")
def test_ipfs_publish_and_input(big_dir: Path, kubo: KuboServer, tmp_path: Path) -> None:
    node = IPFSNode(api_address=kubo.api_multiaddr)

    @flow
    def ipfs_moves() -> PublishedResult:
        published = publish_result(big_dir, "ipfs", ipfs=node)
        fetch_inputs([published.to_input_source("/inputs/big")], tmp_path / "job", ipfs=node)
        return published

    state = ipfs_moves(return_state=True)
    published = state.result()
    assert isinstance(published.params, IPFSParams)
    target = f"ipfs://{published.params.cid}"
    artifacts, lines = read_back(state.state_details.flow_run_id, lines=2)
    one_per_task_run(artifacts, 2)
    put = the_one(lines, summary("published", 3, "70.0 MiB", "to", target))
    # the CAR (blocks with their CIDs) is a little more than the files' bytes; its size comes from files/stat
    got = the_one(lines, summary("fetched", 3, "70.0 MiB", "from", target))
    assert sorted(a.description for a in artifacts) == sorted([put, got])


@pytest.mark.usefixtures("prefect_server")
def test_small_transfers_log_but_make_no_artifact(
    result_dir: Path, s3_storage: S3Storage, bucket: str, tmp_path: Path
) -> None:
    @flow
    def small() -> PublishedResult:
        published = publish_result(result_dir, f"s3://{bucket}/small", s3=s3_storage)
        get_result(published, tmp_path / "got", s3=s3_storage)
        return published

    state = small(return_state=True)
    assert state.is_completed()
    artifacts, lines = read_back(state.state_details.flow_run_id, lines=2)
    assert artifacts == []
    files, size = tree_size(result_dir)
    assert files == 6
    the_one(lines, summary("published", 6, human_bytes(size), "to", f"s3://{bucket}/small.tar.gz"))
    the_one(
        lines,
        lambda line: line.startswith("fetched 6 files, ") and line.endswith(f"s3://{bucket}/small.tar.gz"),
    )


@pytest.mark.usefixtures("prefect_server")
def test_concurrent_publishes_count_their_own_bytes(
    big_dir: Path, s3_storage: S3Storage, bucket: str, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    (other / "outputs").mkdir(parents=True)
    for name in ("outputs/a.bin", "outputs/b.bin", "stdout"):
        os.link(big_dir / name, other / name)  # the same 70 MiB without copying it
    (other / "outputs" / "c.bin").write_bytes(os.urandom(4 * MIB))

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def two_at_once() -> list[PublishedResult]:
        one = publish_result.submit(big_dir, f"s3://{bucket}/one", s3=s3_storage)
        two = publish_result.submit(other, f"s3://{bucket}/two", s3=s3_storage)
        return [one.result(), two.result()]

    state = two_at_once(return_state=True)
    assert state.is_completed()
    artifacts, lines = read_back(state.state_details.flow_run_id, lines=2)
    one_per_task_run(artifacts, 2)
    one = the_one(lines, summary("published", 3, "70.0 MiB", "to", f"s3://{bucket}/one.tar.gz"))
    two = the_one(lines, summary("published", 4, "74.0 MiB", "to", f"s3://{bucket}/two.tar.gz"))
    assert sorted(a.description for a in artifacts) == sorted([one, two])


@pytest.mark.usefixtures("prefect_server")
def test_async_flow_gets_its_artifact(big_dir: Path, s3_storage: S3Storage, bucket: str) -> None:
    """The async twin runs the sync body in a worker thread: the artifact calls must still happen."""

    @flow
    async def async_moves() -> PublishedResult:
        return await apublish_result(big_dir, f"s3://{bucket}/async", s3=s3_storage)

    state = asyncio.run(async_moves(return_state=True))
    assert state.is_completed()
    artifacts, lines = read_back(state.state_details.flow_run_id, lines=1)
    [artifact] = one_per_task_run(artifacts, 1)
    assert artifact.description == the_one(
        lines, summary("published", 3, "70.0 MiB", "to", f"s3://{bucket}/async.tar.gz")
    )
