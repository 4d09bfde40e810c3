"""Kubo killed under a transfer: mid-add (publish) and mid-export (fetch). Clear errors, nothing half-done.

The client is held at a byte threshold by a progress listener that blocks on an Event the test sets once the
daemon is dead: the kill lands mid-transfer every time, with no sleeps. The daemon is then restarted on the
same repository and the same transfer must succeed, with the CID of the local computation and a fetched tree
identical to the source.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from prefect_bacalhau_publish.blocks import IPFSNode
from prefect_bacalhau_publish.errors import FetchError, IPFSPublishError
from prefect_bacalhau_publish.kubo.rpc import KuboClient
from prefect_bacalhau_publish.kubo.unixfs import PROFILES, import_path
from prefect_bacalhau_publish.progress import listening
from prefect_bacalhau_publish.publishers import publish_to
from prefect_bacalhau_publish.specs import ExecutionContext, PublishedResult, PublisherSpec
from prefect_bacalhau_publish.tasks import get_result
from prefect_bacalhau_publish.testing import KuboServer

from .faultkit import BOUND, Gate, digest_tree, in_thread

MiB = 1 << 20
FILES = 4
FILE_SIZE = 50 * MiB  # 200 MiB of random data in all: incompressible, several seconds of transfer
THRESHOLD = 48 * MiB  # the kill lands once this much has moved (a quarter of the way)


def kill(server: KuboServer) -> None:
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait(timeout=30)


def recursive_pins(server: KuboServer) -> set[str]:
    answer = httpx.post(
        f"{server.api_url}/api/v0/pin/ls", params={"type": "recursive"}, timeout=30, trust_env=False
    )
    answer.raise_for_status()
    return set(answer.json().get("Keys", {}))


@pytest.fixture()
def big_result(tmp_path: Path) -> Path:
    root = tmp_path / "result"
    (root / "outputs").mkdir(parents=True)
    (root / "stdout").write_text("big job\n")
    (root / "stderr").write_text("")
    (root / "exitCode").write_text("0")
    for index in range(FILES):
        with open(root / "outputs" / f"part{index}.bin", "wb") as out:
            for _ in range(FILE_SIZE // (4 * MiB)):
                out.write(os.urandom(4 * MiB))
            out.write(os.urandom(FILE_SIZE % (4 * MiB)))
    return root


@pytest.mark.slow
def test_kubo_killed_mid_add_then_mid_export(big_result: Path, tmp_path: Path) -> None:
    expected_cid = import_path(big_result, PROFILES["unixfs-v1-2025"])
    source_tree = digest_tree(big_result)
    server = KuboServer(tmp_path / "repo").start()
    try:
        pins_before = recursive_pins(server)

        # 1. Publish, and kill the daemon once a quarter of the folder has been sent.
        first_url = server.api_url
        gate = Gate(THRESHOLD)
        with (
            listening(gate),
            in_thread(
                lambda: publish_to(
                    big_result,
                    PublisherSpec.model_validate({"Type": "ipfs"}),
                    ExecutionContext.new(),
                    ipfs=IPFSNode(api_address=first_url),
                )
            ) as (worker, results, errors),
        ):
            assert gate.reached.wait(BOUND), f"the add never reached {THRESHOLD} bytes: {errors}"
            assert worker.is_alive()
            kill(server)
            killed_at = time.monotonic()
            gate.opened.set()
            worker.join(BOUND)
            assert not worker.is_alive(), "publish did not give up after the node died"
        assert time.monotonic() - killed_at < 60
        assert results == [] and len(errors) == 1, (results, errors)
        assert isinstance(errors[0], IPFSPublishError), repr(errors[0])
        assert first_url in str(errors[0]), str(errors[0])
        assert THRESHOLD <= gate.moved < FILES * FILE_SIZE

        # 2. Restart on the same repository: the half-sent folder was pinned nowhere; republish it.
        server.start()
        assert recursive_pins(server) == pins_before
        node = IPFSNode(api_address=server.api_url)
        published = publish_to(
            big_result, PublisherSpec.model_validate({"Type": "ipfs"}), ExecutionContext.new(), ipfs=node
        )
        cid = published.to_bacalhau()["Params"]["CID"]
        assert cid == expected_cid
        assert cid in recursive_pins(server)
        with KuboClient(server.api_url) as client:
            assert client.dag_stat(cid) > FILES * FILE_SIZE // MiB  # the whole DAG is on the node

        # 3. Fetch it back, and kill the daemon mid-export.
        work = tmp_path / "work"
        work.mkdir()
        dest = work / "fetched"
        spec = PublishedResult.model_validate({"Type": "ipfs", "Params": {"CID": cid}})
        gate = Gate(THRESHOLD)
        second_url = server.api_url
        with (
            listening(gate),
            in_thread(lambda: get_result.fn(spec, dest, ipfs=IPFSNode(api_address=second_url))) as (
                worker,
                results,
                errors,
            ),
        ):
            assert gate.reached.wait(BOUND), f"the export never reached {THRESHOLD} bytes: {errors}"
            kill(server)
            gate.opened.set()
            worker.join(BOUND)
            assert not worker.is_alive(), "fetch did not give up after the node died"
        assert results == [] and len(errors) == 1, (results, errors)
        assert isinstance(errors[0], FetchError), repr(errors[0])
        assert second_url in str(errors[0]), str(errors[0])
        assert list(work.iterdir()) == []  # no partial destination, no temporary folder

        # 4. Restart again: the pinned result survived the kill, and the fetch now succeeds, bit for bit.
        server.start()
        assert cid in recursive_pins(server)
        get_result.fn(spec, dest, ipfs=IPFSNode(api_address=server.api_url))
        assert digest_tree(dest) == source_tree
        assert [p.name for p in work.iterdir()] == ["fetched"]
    finally:
        server.stop()
