"""Issue #17 §3: publishing to MinIO erasure-coded across 4 nodes (one drive each, all on 127.0.0.1) while
a node is killed mid-upload. Nodes are numbered 0-3; every publish goes through node 0's endpoint.

MinIO's default for 4 drives is EC:2 (2 data + 2 parity shards per object): reads need any 2 drives (read
quorum = data shards), writes 3 (write quorum = data + 1, since data == parity), and MinIO's distributed
locks likewise need 3 of the 4 nodes for a write lock. So with one node killed a publish keeps its quorum
and completes; with two killed, writes fail while reads still work. The tests check those figures against
MinIO's own reports, kill a node under a 200 MiB gzip (multipart) publish and under a plain publish, fetch
both back verified (`get_result` checks the SHA-256 S3 stored, then every file is compared with the source)
with 3 of 4 nodes up, again once the node is back, and again with a different node down. The last test
takes the write quorum away mid-upload: the publish must fail with a clear error within seconds of its abort
(which MinIO holds on its lock, so it is journaled), leave nothing visible, and the rerun must abort the
journaled upload (nothing orphaned) and complete once a node is back.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_bacalhau_publish import journal, progress
from prefect_bacalhau_publish.blocks import S3Storage
from prefect_bacalhau_publish.errors import S3PublishError
from prefect_bacalhau_publish.s3access import QUICK_READ_TIMEOUT
from prefect_bacalhau_publish.specs import ExecutionContext, PublishedResult, PublisherSpec, S3Params
from prefect_bacalhau_publish.tasks import get_result, publish_result
from tests.minio_cluster import NODES, MinioCluster
from tests.reliability.faultkit import BOUND, MiB, digest_tree, in_thread

pytestmark = pytest.mark.slow

BUCKET = "pbp-cluster"
BIG = 200 * MiB
PART = 16 * MiB  # S3Storage's default multipart_chunksize (threshold 8 MiB): the big archive's part size
PLAIN_FILES = 24  # of 2 MiB, beside one of 20 MiB that obstore sends in parts
PLAIN_BYTES = PLAIN_FILES * 2 * MiB + 20 * MiB


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioCluster]:
    """4 MinIO nodes with one drive each, and the bucket; drives and logs are deleted afterwards."""
    nodes = MinioCluster(tmp_path_factory.mktemp("minio-cluster")).start()
    try:
        nodes.client().create_bucket(Bucket=BUCKET)
        yield nodes
    finally:
        nodes.remove()


@pytest.fixture()
def all_up(cluster: MinioCluster) -> Iterator[MinioCluster]:
    """The cluster with every node running and writes through node 0 reaching every drive."""
    cluster.ensure_all_up()
    yield cluster


@pytest.fixture()
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A folder for results and fetched copies, deleted after the test (pytest keeps tmp_path otherwise)."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


PUBLISHED: dict[str, tuple[PublishedResult, dict[str, str]]] = {}
"""What the publish tests stored, for the read-back test: name → (result, source file digests)."""


class KillAt:
    """A progress listener that SIGKILLs `node` (from the transferring thread, once) as soon as the publish
    has read `threshold` bytes of the result; `at` is the byte count then."""

    def __init__(self, cluster: MinioCluster, node: int, threshold: int) -> None:
        self.cluster = cluster
        self.node = node
        self.threshold = threshold
        self.moved = 0
        self.at: int | None = None
        self.killed = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, nbytes: int) -> None:
        with self._lock:
            self.moved += nbytes
            fire = self.at is None and self.moved >= self.threshold
            if fire:
                self.at = self.moved
        if fire:
            self.cluster.kill(self.node)
            self.killed.set()


def write_random(path: Path, size: int) -> None:
    """`size` incompressible bytes, written in 8 MiB chunks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = min(left, 8 * MiB)
            out.write(os.urandom(chunk))
            left -= chunk


def bacalhau_result(root: Path, outputs: dict[str, int]) -> Path:
    """A result folder as Bacalhau lays one out, with random `outputs/` files of the given sizes."""
    root.mkdir(parents=True)
    (root / "stdout").write_text("erasure-coded\n")
    (root / "stderr").write_text("")
    (root / "exitCode").write_text("0")
    for name, size in outputs.items():
        write_random(root / "outputs" / name, size)
    return root


def spec(key: str, **extra: str) -> PublisherSpec:
    return PublisherSpec.model_validate({"Type": "s3", "Params": {"Bucket": BUCKET, "Key": key, **extra}})


def visible(cluster: MinioCluster, prefix: str) -> list[str]:
    """Keys visible under `prefix`."""
    listed = cluster.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for item in listed.get("Contents", [])]


def pending_uploads(cluster: MinioCluster, prefix: str) -> list[str]:
    """Ids of the multipart uploads in progress under `prefix`."""
    listed = cluster.client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
    return [upload["UploadId"] for upload in listed.get("Uploads", [])]


def publish(
    source: Path, target: PublisherSpec, context: ExecutionContext, storage: S3Storage
) -> PublishedResult:
    """`publish_result` outside a flow run (`.fn`: no task run, as a plain function call)."""
    result = publish_result.fn(source, target, context=context, s3=storage)
    assert isinstance(result, PublishedResult)
    return result


def publish_through_a_kill(
    cluster: MinioCluster, source: Path, target: PublisherSpec, killer: KillAt, prefix: str
) -> tuple[PublishedResult, str | None]:
    """Publish `source` through node 0 while `killer` kills a node. Should that publish fail, it must fail
    cleanly (an S3PublishError naming the key, nothing visible) and one rerun must complete. Returns the
    result and, when the first try failed, its error with the nodes' log tails then."""
    context = ExecutionContext.new()
    storage = cluster.storage(0)
    try:
        with progress.listening(killer):
            return publish(source, target, context, storage), None
    except S3PublishError as exc:
        assert f"s3://{BUCKET}/{prefix}" in str(exc), exc
        first = f"{exc}\n{cluster.log_tails()}"
    assert visible(cluster, prefix) == [], f"the failed publish left objects visible: {first}"
    try:
        return publish(source, target, context, storage), first
    except S3PublishError as exc:
        raise AssertionError(
            f"the rerun failed too: {exc}\n{cluster.log_tails()}\nfirst try: {first}"
        ) from exc


def fetch_verified(
    cluster: MinioCluster, result: PublishedResult, expected: dict[str, str], dest: Path, via: int = 0
) -> None:
    """`get_result` through node `via` (it checks the SHA-256 S3 stored), then every file's SHA-256 against
    the source's; the copy is deleted afterwards."""
    if via != 0:  # the result names node 0's endpoint: send it to another node, as a load balancer would
        data = result.to_bacalhau()
        data["Params"]["Endpoint"] = cluster.endpoint(via)
        result = PublishedResult.model_validate(data)
    try:
        get_result.fn(result, dest, s3=cluster.storage(via))
        assert digest_tree(dest) == expected
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def test_one_erasure_set_of_4_drives_with_ec2_quorums(all_up: MinioCluster) -> None:
    cluster = all_up
    info = cluster.admin_info()
    backend = info["backend"]
    assert backend["backendType"] == "Erasure"
    assert backend["totalSets"] == [1] and backend["totalDrivesPerSet"] == [NODES]
    assert backend["standardSCParity"] == 2  # EC:2, MinIO's default for a set of 4 drives
    assert backend["onlineDisks"] == NODES and backend["offlineDisks"] == 0
    listed = sorted(server["endpoint"] for server in info["servers"])
    assert listed == sorted(f"127.0.0.1:{port}" for port in cluster.ports)
    assert {server["state"] for server in info["servers"]} == {"online"}
    for node in range(NODES):  # MinIO's own figures: writes need data + 1 = 3 drives, reads data = 2
        writable = cluster.health(node)
        assert writable.status_code == 200 and writable.headers["x-minio-write-quorum"] == "3"
        readable = cluster.health(node, "cluster/read")
        assert readable.status_code == 200 and readable.headers["x-minio-read-quorum"] == "2"
        assert cluster.health(node, maintenance="true").status_code == 200  # any one node may go down


def test_200mib_gzip_multipart_publish_while_a_node_is_killed(all_up: MinioCluster, scratch: Path) -> None:
    cluster = all_up
    source = bacalhau_result(scratch / "big", {"random.bin": BIG})
    expected = digest_tree(source)
    killer = KillAt(cluster, node=3, threshold=96 * MiB)

    result, first_error = publish_through_a_kill(cluster, source, spec("big/{executionID}"), killer, "big/")

    # Node 3 died mid-upload: with 96 of 200 MiB read, at least 3 of the 13 parts had been sent (the archive
    # fills a 4th part buffer only once one of 3 is free) and at least 7 were still to come.
    assert killer.at is not None and 96 * MiB <= killer.at < BIG
    assert first_error is None, (
        f"one node down keeps the write quorum, yet the first try failed: {first_error}"
    )
    params = result.params
    assert isinstance(params, S3Params)
    size = cluster.client().head_object(Bucket=BUCKET, Key=params.key)["ContentLength"]
    parts = math.ceil(size / PART)
    assert parts == 13 and params.checksum_sha256 is not None
    assert params.checksum_sha256.endswith(f"-{parts}")  # S3 checked each part's SHA-256 and the whole
    assert visible(cluster, "big/") == [params.key]
    assert pending_uploads(cluster, "big/") == []
    cluster.wait_drives_online(3)
    assert cluster.health(0).status_code == 200  # 3 drives: still the write quorum...
    assert cluster.health(0, maintenance="true").status_code == 412  # ...so node 0 must not go down too

    fetch_verified(cluster, result, expected, scratch / "got")  # 3 of 4 nodes up
    PUBLISHED["gzip"] = (result, expected)


def test_plain_publish_while_a_node_is_killed(all_up: MinioCluster, scratch: Path) -> None:
    cluster = all_up
    outputs = {f"part-{index:02d}.bin": 2 * MiB for index in range(PLAIN_FILES)} | {"large.bin": 20 * MiB}
    source = bacalhau_result(scratch / "plain", outputs)
    expected = digest_tree(source)
    killer = KillAt(cluster, node=2, threshold=PLAIN_BYTES // 3)

    result, first_error = publish_through_a_kill(
        cluster, source, spec("plain/{executionID}", Encoding="plain"), killer, "plain/"
    )

    assert killer.at is not None and PLAIN_BYTES // 3 <= killer.at < PLAIN_BYTES
    assert first_error is None, (
        f"one node down keeps the write quorum, yet the first try failed: {first_error}"
    )
    params = result.params
    assert isinstance(params, S3Params)
    keys = visible(cluster, "plain/")
    assert len(keys) == len(outputs) + 3 + 1, keys  # outputs/*, stdout, stderr, exitCode, the manifest
    assert pending_uploads(cluster, "plain/") == []
    cluster.wait_drives_online(3)

    fetch_verified(cluster, result, expected, scratch / "got")  # 3 of 4 nodes up; checks the manifest
    PUBLISHED["plain"] = (result, expected)


def test_write_quorum_lost_mid_upload_fails_cleanly_and_rerun_completes(
    all_up: MinioCluster, scratch: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = all_up
    source = bacalhau_result(scratch / "quorum", {"random.bin": 48 * MiB})
    expected = digest_tree(source)
    # 5 MiB parts, so that many are still to go after the second kill. With the write quorum gone, MinIO at
    # times holds the part in flight until the client gives up: botocore's read timeout (60 s by default)
    # is cut to 20 s to bound this test.
    storage = cluster.storage(
        0,
        client_config={"read_timeout": 20},
        multipart_threshold=5 * MiB,
        multipart_chunksize=5 * MiB,
        max_concurrency=2,
    )
    target = spec("quorum/{executionID}")
    context = ExecutionContext.new()
    key = f"quorum/{context.execution_id}.tar.gz"
    # The publisher aborts through the block's clean-up client (one per endpoint): note when it does.
    aborting = threading.Event()
    sent: list[float] = []  # each try of the abort
    failed: list[float] = []  # the abort given up (after its last try)
    cleaner: Any = storage.get_client(quick=True)

    def on_send(**_: Any) -> None:
        sent.append(time.monotonic())
        aborting.set()

    cleaner.meta.events.register("before-send.s3.AbortMultipartUpload", on_send)
    cleaner.meta.events.register(
        "after-call-error.s3.AbortMultipartUpload", lambda **_: failed.append(time.monotonic())
    )

    cluster.kill(3)  # 3 of 4: still the write quorum...
    cluster.wait_drives_online(3)
    killer = KillAt(cluster, node=2, threshold=20 * MiB)  # ...until node 2 dies too, mid-upload
    with (
        progress.listening(killer),
        in_thread(lambda: publish(source, target, context, storage)) as (worker, results, errors),
    ):
        assert killer.killed.wait(BOUND), f"the publish never read 20 MiB: {results} {errors}"
        cluster.wait_drives_online(2)
        cluster.wait_health(0, 503)  # 2 drives: no write quorum...
        cluster.wait_health(0, 200, "cluster/read")  # ...but still the read quorum
        # The parts fail (MinIO answers 503 SlowDownWrite, boto3 tries 4 times) and the publisher aborts
        # the upload. MinIO holds that abort (it needs a write lock from 3 of the 4 nodes); the clean-up
        # client gives up after 2 tries of QUICK_READ_TIMEOUT, so the error is not held for minutes.
        assert aborting.wait(BOUND), f"the publisher never aborted: {results} {errors}"
        worker.join(BOUND)
    assert not worker.is_alive() and results == [], results
    # 2 tries of QUICK_READ_TIMEOUT each, not botocore's 4 of 60 s
    assert 1 <= len(sent) <= 2 and len(failed) == 1, (sent, failed)
    assert failed[0] - sent[0] < 2 * QUICK_READ_TIMEOUT + 5, failed[0] - sent[0]
    assert killer.at is not None and 20 * MiB <= killer.at < 48 * MiB
    assert len(errors) == 1 and isinstance(errors[0], S3PublishError), errors
    message = str(errors[0])
    assert message.startswith(f"publish to s3://{BUCKET}/{key} failed: SlowDownWrite"), message
    assert visible(cluster, "quorum/") == []  # nothing visible...
    # ...and the upload MinIO would not abort yet is in the journal, named in one warning
    assert [k for k, _ in journal.pending(cluster.endpoint(0), BUCKET)] == [key]
    assert (
        f"could not abort multipart upload {journal.pending(cluster.endpoint(0), BUCKET)[0][1]}"
        in caplog.text
    )
    assert "the next publish to bucket" in caplog.text

    cluster.restart(2)  # 3 of 4 again: the lock and so the abort go through
    rerun = publish(
        source, target, context, storage
    )  # still 3 of 4 nodes; it first aborts the journaled upload
    assert journal.pending(cluster.endpoint(0), BUCKET) == []
    params = rerun.params
    assert isinstance(params, S3Params) and params.key == key
    assert visible(cluster, "quorum/") == [key]
    assert pending_uploads(cluster, "quorum/") == []
    fetch_verified(cluster, rerun, expected, scratch / "got")


def test_killed_nodes_back_then_another_node_down(cluster: MinioCluster, scratch: Path) -> None:
    assert sorted(PUBLISHED) == ["gzip", "plain"], "the publish tests above did not store their results"
    cluster.ensure_all_up()  # the nodes killed above come back on their drives (no `mc admin heal`)
    for name, (result, expected) in PUBLISHED.items():
        fetch_verified(cluster, result, expected, scratch / f"{name}-all-up")

    # Node 0, never killed so far, is the endpoint the results name; through node 1 they read the same.
    cluster.wait_writes_land(1)  # node 1 reaches every drive (after the restarts above)
    cluster.kill(0)  # left down: the module's last test
    cluster.wait_drives_online(3, via=1)
    for name, (result, expected) in PUBLISHED.items():
        fetch_verified(cluster, result, expected, scratch / f"{name}-without-0", via=1)
