"""One result, several publishers, one pass (SPEC §6, issue #16 §1): S3, local and IPFS at once, on the real
MinIO, Kubo and result server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import logging
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

import prefect_bacalhau_publish.archive.write as archive_write
from prefect_bacalhau_publish import get_result, publish_result, run_job
from prefect_bacalhau_publish.archive import write_archive
from prefect_bacalhau_publish.artifacts import spec_from_description
from prefect_bacalhau_publish.blocks import IPFSNode, LocalResultServer, S3Storage
from prefect_bacalhau_publish.errors import IPFSPublishError, PublishError, S3PublishError, SpecError
from prefect_bacalhau_publish.publishers import get_publisher
from prefect_bacalhau_publish.publishers.fanout import FanOutError, publish_many
from prefect_bacalhau_publish.server import running_server
from prefect_bacalhau_publish.specs import (
    ExecutionContext,
    IPFSParams,
    PublishedResult,
    PublisherSpec,
    S3Params,
    URLParams,
)
from prefect_bacalhau_publish.tasks_async import apublish_result
from prefect_bacalhau_publish.testing import KuboServer, MinioServer
from prefect_bacalhau_publish.transfer import human_bytes, tree_size
from tests.prefectkit import artifacts_of

MiB = 1024 * 1024
LOCAL = PublisherSpec.model_validate({"Type": "local"})
IPFS = PublisherSpec.model_validate({"Type": "ipfs"})


def s3_spec(bucket: str, key: str = "fan/{executionID}") -> PublisherSpec:
    return PublisherSpec.model_validate({"Type": "s3", "Params": {"Bucket": bucket, "Key": key}})


def tree(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def archive_of(folder: Path) -> bytes:
    out = io.BytesIO()
    write_archive(folder, out)
    return out.getvalue()


@contextlib.contextmanager
def local_server(storage: Path) -> Iterator[LocalResultServer]:
    """A running result server over `storage`; yields the block publishers use (with the real port)."""
    config = LocalResultServer(storage_dir=storage)
    with running_server(config) as base:
        yield config.model_copy(update={"port": int(base.rsplit(":", 1)[1])})


@pytest.fixture()
def node(kubo: KuboServer) -> IPFSNode:
    return IPFSNode(api_address=kubo.api_multiaddr)


@pytest.fixture()
def archives_written(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every archive written from now on, by anyone (each `write_archive` scans its folder once)."""
    seen: list[str] = []
    scan = archive_write._scan

    def counting(root: str) -> Any:
        seen.append(root)
        return scan(root)

    monkeypatch.setattr(archive_write, "_scan", counting)
    return seen


def s3_body(s3_client: Any, result: PublishedResult) -> bytes:
    assert isinstance(result.params, S3Params)
    body: bytes = s3_client.get_object(Bucket=result.params.bucket, Key=result.params.key)["Body"].read()
    return body


# ---------------------------------------------------------------------------------------- one pass


def test_s3_local_ipfs_from_one_call(
    result_dir: Path,
    s3_storage: S3Storage,
    bucket: str,
    s3_client: Any,
    node: IPFSNode,
    tmp_path: Path,
    archives_written: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = tmp_path / "storage"
    context = ExecutionContext.new(execution_id="e-fan")
    with local_server(storage) as block:
        with caplog.at_level(logging.INFO, logger="prefect_bacalhau_publish"):
            results = publish_result.fn(
                result_dir,
                [s3_spec(bucket), "local", {"Type": "ipfs"}],  # any form a single spec takes
                context=context,
                s3=s3_storage,
                ipfs=node,
                local=block,
            )
        assert isinstance(results, list)
        assert [r.type for r in results] == ["s3", "urlDownload", "ipfs"]  # in the specs' order
        s3_result, local_result, ipfs_result = results
        assert archives_written == [str(result_dir)]  # the archive was written once, for S3 and local

        # S3 (one PUT) and local hold the same bytes: S3's ChecksumSHA256 is the local .sha256
        assert isinstance(s3_result.params, S3Params) and isinstance(local_result.params, URLParams)
        assert s3_result.params.key == "fan/e-fan.tar.gz"
        assert local_result.params.url == f"http://127.0.0.1:{block.port}/e-fan.tar.gz"
        local_bytes = (storage / "e-fan.tar.gz").read_bytes()
        sidecar = (storage / "e-fan.tar.gz.sha256").read_text()
        assert sidecar == f"{hashlib.sha256(local_bytes).hexdigest()}  e-fan.tar.gz\n"
        checksum = s3_result.params.checksum_sha256
        assert checksum is not None and "-" not in checksum  # a single PUT's full-object checksum
        assert checksum == base64.b64encode(bytes.fromhex(sidecar.split()[0])).decode()
        assert s3_body(s3_client, s3_result) == local_bytes == archive_of(result_dir)
        assert len(archives_written) == 2  # (archive_of wrote one more: the counter counts)

        # each fetches back, verified, as the folder
        for name, result in (("s3", s3_result), ("local", local_result), ("ipfs", ipfs_result)):
            dest = get_result.fn(result, tmp_path / name, s3=s3_storage, ipfs=node, local=block)
            assert tree(dest) == tree(result_dir), name

    # the CID is the one a publish of its own gives
    assert isinstance(ipfs_result.params, IPFSParams)
    alone = get_publisher("ipfs")(result_dir, IPFS, ExecutionContext.new(), node)
    assert ipfs_result.params.cid == alone.to_bacalhau()["Params"]["CID"]

    # each target was metered on its own: one summary line each, every one for the whole folder
    files, size = tree_size(result_dir)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("published ")]
    lines = [line for line in lines if f"{files} files, {human_bytes(size)} in" in line]
    assert sorted(line.rsplit(" to ", 1)[1] for line in lines) == sorted(
        [f"s3://{bucket}/fan/e-fan.tar.gz", local_result.params.url, f"ipfs://{ipfs_result.params.cid}"]
    )


def test_multipart_s3_and_local_get_the_same_archive(
    tmp_path: Path, minio: MinioServer, bucket: str, s3_client: Any, archives_written: list[str]
) -> None:
    folder = tmp_path / "big"
    (folder / "outputs").mkdir(parents=True)
    (folder / "outputs" / "random.bin").write_bytes(os.urandom(13 * MiB))  # 3 parts of 5 MiB
    (folder / "stdout").write_text("x\n" * 100_000)
    storage = tmp_path / "storage"
    small_parts = minio.storage(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    s3_result, local_result = publish_many(
        folder,
        [s3_spec(bucket, "big"), LOCAL],
        ExecutionContext.new(execution_id="e-big"),
        s3=small_parts,
        local=LocalResultServer(storage_dir=storage),
    )
    assert archives_written == [str(folder)]
    assert local_result.to_bacalhau()["Params"]["URL"].endswith("/e-big.tar.gz")
    body = s3_body(s3_client, s3_result)
    assert body == (storage / "e-big.tar.gz").read_bytes()
    assert (storage / "e-big.tar.gz.sha256").read_text().split()[0] == hashlib.sha256(body).hexdigest()
    assert isinstance(s3_result.params, S3Params) and s3_result.params.checksum_sha256
    assert s3_result.params.checksum_sha256.endswith("-3")  # multipart: three parts went up
    assert body == archive_of(folder)


def test_single_spec_keeps_todays_shape(
    result_dir: Path, s3_storage: S3Storage, bucket: str, tmp_path: Path
) -> None:
    one = publish_result.fn(result_dir, s3_spec(bucket), context=ExecutionContext.new(), s3=s3_storage)
    assert isinstance(one, PublishedResult) and one.type == "s3"
    listed = publish_result.fn(result_dir, [s3_spec(bucket)], context=ExecutionContext.new(), s3=s3_storage)
    assert isinstance(listed, list) and [r.type for r in listed] == ["s3"]


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([], "at least one"),
        (["local", {"Type": "local"}], "publisher 2 .local. is the same target as publisher 1"),
        (
            ["s3://b/k", "ipfs", "s3://b/k"],
            r"publisher 3 \(s3://b/k\) is the same target as publisher 1",
        ),
    ],
)
def test_no_publishers_or_one_target_twice_is_refused(
    result_dir: Path, tmp_path: Path, specs: list[Any], message: str
) -> None:
    storage = tmp_path / "storage"
    with pytest.raises(SpecError, match=message):
        publish_result.fn(
            result_dir, specs, context=ExecutionContext.new(), local=LocalResultServer(storage_dir=storage)
        )
    assert not storage.exists()  # refused before anything started


def test_async_twin_takes_a_list(
    result_dir: Path, s3_storage: S3Storage, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    results = asyncio.run(
        apublish_result.fn(
            result_dir,
            [LOCAL, s3_spec(bucket)],
            context=ExecutionContext.new(execution_id="e-async"),
            s3=s3_storage,
            local=LocalResultServer(storage_dir=storage),
        )
    )
    assert isinstance(results, list) and [r.type for r in results] == ["urlDownload", "s3"]
    assert s3_body(s3_client, results[1]) == (storage / "e-async.tar.gz").read_bytes()


# ------------------------------------------------------------------------------------------ failures


def stopped_kubo(tmp_path: Path) -> IPFSNode:
    """A block naming a Kubo node that ran on a loopback port and has stopped: nothing answers there."""
    (tmp_path / "kubo").mkdir()
    kubo = KuboServer(tmp_path / "kubo" / "repo").start()
    down = IPFSNode(api_address=kubo.api_multiaddr)  # read before the stop: Kubo removes its api file
    kubo.stop()
    return down


def test_kubo_stopped_keeps_s3_and_local(
    result_dir: Path, s3_storage: S3Storage, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    down = stopped_kubo(tmp_path)
    storage = tmp_path / "storage"
    with local_server(storage) as block:
        with pytest.raises(FanOutError) as caught:
            publish_many(
                result_dir,
                [s3_spec(bucket), LOCAL, IPFS],
                ExecutionContext.new(execution_id="e-down"),
                s3=s3_storage,
                ipfs=down,
                local=block,
            )
        error = caught.value
        assert isinstance(error, PublishError)
        assert [r.type if r else None for r in error.results] == ["s3", "urlDownload", None]
        assert error.published == [r for r in error.results if r is not None]
        [(index, spec, failure)] = error.errors
        assert (index, spec) == (2, IPFS)
        assert isinstance(failure, IPFSPublishError) and "is the Kubo daemon running" in str(failure)
        assert str(error).startswith("published to 2 of 3 targets; failed: [3] ipfs: ")
        assert f"kept (FanOutError.published): s3://{bucket}/fan/e-down.tar.gz, http://127.0.0.1" in str(
            error
        )
        assert error.transient is False  # published results exist: a retry would publish them again
        # what was published is complete and verifies
        s3_result, local_result, _ = error.results
        assert s3_result is not None and local_result is not None
        assert s3_body(s3_client, s3_result) == (storage / "e-down.tar.gz").read_bytes()
        for name, result in (("s3", s3_result), ("local", local_result)):
            dest = get_result.fn(result, tmp_path / name, s3=s3_storage, local=block)
            assert tree(dest) == tree(result_dir), name
    # and the error survives pickling (Prefect keeps a failed task's exception)
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, FanOutError) and again.results == error.results and str(again) == str(error)


def test_a_target_failing_mid_archive_leaves_the_others(
    tmp_path: Path, minio: MinioServer, archives_written: list[str]
) -> None:
    folder = tmp_path / "big"
    (folder / "outputs").mkdir(parents=True)
    (folder / "outputs" / "random.bin").write_bytes(os.urandom(32 * MiB))
    storage = tmp_path / "storage"
    small_parts = minio.storage(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    with pytest.raises(FanOutError) as caught:
        publish_many(
            folder,
            [s3_spec("no-such-bucket-fanout"), LOCAL],  # S3 gives up at the first part, mid-archive
            ExecutionContext.new(execution_id="e-half"),
            s3=small_parts,
            local=LocalResultServer(storage_dir=storage),
        )
    [(index, _, failure)] = caught.value.errors
    assert index == 0 and isinstance(failure, S3PublishError) and "does not exist" in str(failure)
    assert caught.value.results[1] is not None
    assert archives_written == [str(folder)]
    local_bytes = (storage / "e-half.tar.gz").read_bytes()
    assert local_bytes == archive_of(folder)  # the local target got the whole archive all the same
    assert sorted(p.name for p in storage.iterdir()) == ["e-half.tar.gz", "e-half.tar.gz.sha256"]


def test_an_unarchivable_folder_fails_every_target_and_leaves_nothing(
    result_dir: Path, s3_storage: S3Storage, bucket: str, s3_client: Any, node: IPFSNode, tmp_path: Path
) -> None:
    os.mkfifo(result_dir / "outputs" / "pipe")
    storage = tmp_path / "storage"
    with pytest.raises(FanOutError) as caught:
        publish_many(
            result_dir,
            [s3_spec(bucket), LOCAL, IPFS],
            ExecutionContext.new(),
            s3=s3_storage,
            ipfs=node,
            local=LocalResultServer(storage_dir=storage),
        )
    assert caught.value.published == [] and len(caught.value.errors) == 3
    for _, _, failure in caught.value.errors:
        assert isinstance(failure, PublishError) and "FIFO" in str(failure)
    assert str(caught.value).startswith("published to 0 of 3 targets")
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert list(storage.iterdir()) == []


# ------------------------------------------------------------------------------ in a flow: artifacts


def recorded(artifacts: list[Any]) -> dict[str, dict[str, Any]]:
    """Table artifact key → the published result spec it holds."""
    tables = [a for a in artifacts if a.type == "table"]
    return {a.key: spec_from_description(a.description).to_bacalhau() for a in tables}


@pytest.mark.usefixtures("prefect_server")
def test_run_job_with_a_list_records_each_result(
    s3_storage: S3Storage, bucket: str, node: IPFSNode, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"

    @flow
    def fan() -> Any:
        with local_server(storage) as block:
            return run_job(
                "echo fanned > outputs/a.txt",
                publisher=[f"s3://{bucket}/jobs/{{executionID}}", "local", "ipfs"],
                name="fan",
                s3=s3_storage,
                ipfs=node,
                local=block,
            )

    state = fan(return_state=True)
    assert state.is_completed(), state
    job = state.result()
    assert len(job.all_published) == 3 and job.published == job.all_published[0]
    assert [r.type for r in job.all_published] == ["s3", "urlDownload", "ipfs"]
    assert job.artifact_key == "bacalhau-fan-fan"
    tables = recorded(artifacts_of(state.state_details.flow_run_id))
    assert tables == {
        "bacalhau-fan-fan": job.all_published[0].to_bacalhau(),
        "bacalhau-fan-fan-2-urldownload": job.all_published[1].to_bacalhau(),
        "bacalhau-fan-fan-3-ipfs": job.all_published[2].to_bacalhau(),
    }
    links = [a for a in artifacts_of(state.state_details.flow_run_id) if a.type in ("link", "markdown")]
    assert sorted(a.key for a in links) == sorted(f"{key}-link" for key in tables)
    # every result is found again by its own artifact key
    dest = get_result.fn("bacalhau-fan-fan-3-ipfs", tmp_path / "by-key", ipfs=node)
    assert (dest / "outputs" / "a.txt").read_text() == "fanned\n"


@pytest.mark.usefixtures("prefect_server")
def test_partial_failure_in_a_flow_records_what_was_published(
    result_dir: Path, s3_storage: S3Storage, bucket: str, tmp_path: Path
) -> None:
    down = stopped_kubo(tmp_path)
    storage = tmp_path / "storage"

    @flow
    def fan() -> Any:
        return publish_result(
            result_dir,
            [s3_spec(bucket), LOCAL, IPFS],
            s3=s3_storage,
            ipfs=down,
            local=LocalResultServer(storage_dir=storage),
        )

    state = fan(return_state=True)
    assert state.is_failed()
    with pytest.raises(FanOutError, match="published to 2 of 3 targets") as caught:
        state.result()
    s3_result, local_result, ipfs_result = caught.value.results
    assert ipfs_result is None and s3_result is not None and local_result is not None
    tables = recorded(artifacts_of(state.state_details.flow_run_id))
    [key] = [k for k in tables if not k.endswith("-2-urldownload")]
    assert tables == {key: s3_result.to_bacalhau(), f"{key}-2-urldownload": local_result.to_bacalhau()}

    async def task_runs() -> list[Any]:
        async with get_client() as client:
            from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )

    [run] = asyncio.run(task_runs())
    assert run.run_count == 1  # not retried: a retry would publish S3 and local again


def test_single_publisher_job_lists_its_one_result(s3_storage: S3Storage, bucket: str) -> None:
    job = run_job.fn("true", publisher=s3_spec(bucket), s3=s3_storage, log_output=False)
    assert job.published is not None and job.all_published == (job.published,)


def test_a_list_of_publishers_names_the_task_run_by_every_target() -> None:
    from prefect_bacalhau_publish.runnames import target_text

    assert target_text(["s3://b/k", {"Type": "ipfs"}, "local"]) == "s3://b/k + ipfs + local"
    assert target_text(("ipfs",)) == "ipfs"
    assert target_text("s3://b/k") == "s3://b/k"
