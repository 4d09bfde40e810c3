"""Publish on one IPFS node, fetch from another (issue #17 §1): two online Kubo nodes on loopback, peered with
each other only (`KuboServer(online=True)`: no bootstrap, no routing, no mDNS, no AutoConf, no relay, no NAT
port mapping). What node 1 holds reaches node 2 over bitswap and is verified block by block as it streams; a
publishing node that is gone gives a clear error within the block's timeout, and nothing is written.

Node 2's gateway gives up on a block after its `Gateway.RetrievalTimeout` (Kubo's default is 30 s; 5 s here),
so a fetch of content no peer has ends at the sooner of that and `IPFSNode.timeout`.

The tasks run as plain functions (`.fn`): the chain through a Prefect flow is tests/test_flows.py's, and a
Prefect server would triple this file's time.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefect_bacalhau_publish import IPFSNode, get_result, publish_result, run_job
from prefect_bacalhau_publish.errors import FetchError
from prefect_bacalhau_publish.kubo.cid import CID
from prefect_bacalhau_publish.sources.ipfs import EMPTY_BLOCK
from prefect_bacalhau_publish.specs import IPFSParams, PublishedResult
from prefect_bacalhau_publish.testing import KuboServer

from .test_ipfs_publish import listing

pytestmark = pytest.mark.slow

RETRIEVAL_TIMEOUT = 5.0
NODE_CONFIG = {"Gateway.RetrievalTimeout": f"{RETRIEVAL_TIMEOUT:g}s"}
SHORT_TIMEOUT = 3.0
"""An IPFSNode.timeout shorter than the gateway's RetrievalTimeout: the client gives up first."""
SLACK = 2.0
"""Seconds allowed past a timeout for the calls around the fetch (version, config, stat) on a busy machine."""
LOOPBACK = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it
UNSET = "00000000:0000"  # the remote side of a listening socket


@pytest.fixture(scope="module")
def node1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboServer]:
    """The publishing node: online, loopback only, no peer but node 2."""
    server = KuboServer(tmp_path_factory.mktemp("node1") / "repo", online=True, config=NODE_CONFIG)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def node2(tmp_path_factory: pytest.TempPathFactory, node1: KuboServer) -> Iterator[KuboServer]:
    """The fetching node, connected to node 1 (and to nothing else)."""
    server = KuboServer(tmp_path_factory.mktemp("node2") / "repo", online=True, config=NODE_CONFIG)
    try:
        server.start()
        server.connect(node1)
        server.wait_for_peers({node1.peer_id})
        node1.wait_for_peers({server.peer_id})
        yield server
    finally:
        server.stop()


def block(node: KuboServer, **settings: Any) -> IPFSNode:
    return IPFSNode(api_address=node.api_multiaddr, **settings)


def rpc(node: KuboServer, path: str, **params: str) -> list[dict[str, Any]]:
    """An RPC command's answer: its JSON object, or each line of a streamed (ndjson) answer."""
    answer = httpx.post(f"{node.api_url}/api/v0/{path}", params=params, timeout=30.0, trust_env=False)
    assert answer.status_code == 200, answer.text
    return [json.loads(line) for line in answer.text.splitlines() if line.strip()]


def multihash(cid: str) -> bytes:
    return CID.parse(cid).multihash


def dag_blocks(holder: KuboServer, cid: str) -> set[bytes]:
    """The multihashes of every block of the DAG under `cid`, as the node holding it lists them."""
    refs = rpc(holder, "refs", arg=cid, recursive="true", unique="true")
    assert all(not ref["Err"] for ref in refs), refs
    return {multihash(cid)} | {multihash(ref["Ref"]) for ref in refs}


def local_blocks(node: KuboServer) -> set[bytes]:
    """The multihashes of every block in the node's blockstore (`ipfs refs local`)."""
    return {multihash(ref["Ref"]) for ref in rpc(node, "refs/local")}


def has_offline(node: KuboServer, cid: str) -> bool:
    """`ipfs block stat --offline CID` succeeds."""
    stat = httpx.post(
        f"{node.api_url}/api/v0/block/stat", params={"arg": cid, "offline": "true"}, trust_env=False
    )
    assert stat.status_code == 200 or "not found" in stat.json()["Message"], stat.text
    return stat.status_code == 200


def assert_never_seen(node: KuboServer, holder: KuboServer, cid: str) -> set[bytes]:
    """`node` holds no block of the DAG `holder` has under `cid` (but, maybe, the empty block: every fetch
    gives the fetching node that one); returns the DAG's blocks."""
    dag = dag_blocks(holder, cid)
    assert len(dag) > 5
    assert (dag - {multihash(EMPTY_BLOCK)}).isdisjoint(local_blocks(node))
    assert not has_offline(node, cid)
    return dag


def blocks_received(node: KuboServer) -> int:
    return int(rpc(node, "bitswap/stat")[0]["BlocksReceived"])


def results(root: Path, *, empty_file: bool = False) -> Path:
    """A result folder no other one shares a block with (Kubo's zero-length block aside, with `empty_file`):
    random bytes in every file, a file of three 1 MiB chunks, nested and unicode names, a hidden file and a
    symlink to a randomly named file."""
    note = f"note-{os.urandom(6).hex()}"
    (root / "outputs" / "ünï cødé" / "deep").mkdir(parents=True)
    (root / "stdout").write_bytes(os.urandom(300))
    (root / note).write_bytes(os.urandom(40))
    (root / "outputs" / ".hidden").write_bytes(os.urandom(100))
    (root / "outputs" / "ünï cødé" / "naïve file.bin").write_bytes(os.urandom(5000))
    (root / "outputs" / "ünï cødé" / "deep" / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024 + 4321))
    os.symlink(f"../{note}", root / "outputs" / "link to note")
    if empty_file:
        (root / "stderr").write_bytes(b"")  # as most jobs' stderr is
    return root


def inet_sockets(pid: int) -> list[tuple[str, str, str]]:
    """(table, local, remote) of every inet socket the process holds, from /proc: `ADDR:PORT` in hex."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(link.removeprefix("socket:[").removesuffix("]"))
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        found += [(table, p[1], p[2]) for p in map(str.split, lines) if p[9] in inodes]
    return found


def port(address: str) -> int:
    return int(address.split(":")[1], 16)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process, with no Kubo repo of its own to fall back on."""
    env = {**os.environ, "IPFS_PATH": "/nonexistent/pbp-no-repo"}
    command = [sys.executable, "-m", "prefect_bacalhau_publish.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=120)


# ------------------------------------------------------------------------------------------- the swarm


def test_each_node_is_peered_with_the_other_only_on_loopback(node1: KuboServer, node2: KuboServer) -> None:
    for node, other in ((node1, node2), (node2, node1)):
        peers = node.wait_for_peers({other.peer_id})
        assert list(peers) == [other.peer_id]
        assert peers[other.peer_id].startswith("/ip4/127.0.0.1/tcp/")
        identity = rpc(node, "id")[0]
        assert identity["Addresses"] == [node.swarm_multiaddr]  # the one address it tells its peer
        assert set(identity["Protocols"]) == {
            "/ipfs/bitswap", "/ipfs/bitswap/1.0.0", "/ipfs/bitswap/1.1.0", "/ipfs/bitswap/1.2.0",
            "/ipfs/id/1.0.0", "/ipfs/id/push/1.0.0", "/ipfs/ping/1.0.0", "/x/",
        }  # fmt: skip  # no relay, AutoNAT, hole punching or DHT protocol
        assert rpc(node, "config", arg="Bootstrap")[0]["Value"] == []
        assert rpc(node, "config", arg="Routing.Type")[0]["Value"] == "none"
        assert node.proc is not None
        sockets = inet_sockets(node.proc.pid)
        assert all(table == "tcp" for table, _, _ in sockets), sockets  # no UDP (QUIC, mDNS), no IPv6
        for _table, local, remote in sockets:
            assert local.startswith(f"{LOOPBACK}:") and remote[:8] in (LOOPBACK, UNSET[:8]), sockets
        served = {int(url.rsplit(":", 1)[1]) for url in (node.api_url, node.gateway_url)}
        listening = {port(local) for _, local, remote in sockets if remote == UNSET}
        assert listening == served | {node.swarm_port}, sockets
        swarm = [
            (local, remote) for _, local, remote in sockets if remote != UNSET and port(local) not in served
        ]
        assert len(swarm) == 1, sockets  # besides this test's API calls, one connection: to the other node
        assert node1.swarm_port in {port(swarm[0][0]), port(swarm[0][1])}  # node 2 dialled node 1


# ------------------------------------------------------------------------------------------- fetches


def test_result_published_on_node_1_is_got_through_node_2(
    node1: KuboServer, node2: KuboServer, tmp_path: Path
) -> None:
    """The DAG node 2 never had comes over bitswap, the empty file's block included: bitswap never sends a
    zero-length block (Kubo 0.42), so the fetch gives node 2 that block itself."""
    source = results(tmp_path / "results", empty_file=True)
    published = publish_result.fn(source, "ipfs", ipfs=block(node1))
    assert isinstance(published.params, IPFSParams)
    cid = published.params.cid
    rpc(node2, "block/rm", arg=EMPTY_BLOCK, force="true")  # as a node that never fetched anything
    dag = assert_never_seen(node2, node1, cid)
    assert multihash(EMPTY_BLOCK) in dag and not has_offline(node2, EMPTY_BLOCK)
    asked = httpx.post(
        f"{node2.api_url}/api/v0/block/get", params={"arg": EMPTY_BLOCK, "timeout": "2s"}, trust_env=False
    )
    assert asked.status_code == 500 and "deadline" in asked.text, asked.text  # node 1 did not send it
    received = blocks_received(node2)

    dest = tmp_path / "got" / "result"
    assert get_result.fn(published, dest, ipfs=block(node2)) == dest
    assert listing(dest) == listing(source)  # every file's bytes, the symlink, the folders
    assert os.listdir(dest.parent) == ["result"]  # no staging folder left
    assert dag <= local_blocks(node2)  # node 2 now holds the whole DAG ...
    assert blocks_received(node2) - received == len(dag) - 1  # ... all but the empty block over bitswap


def test_job_b_on_node_2_reads_job_a_output_published_on_node_1(
    node1: KuboServer, node2: KuboServer, tmp_path: Path
) -> None:
    one, two = block(node1), block(node2)
    token = os.urandom(8).hex()
    make = (
        "mkdir -p outputs/sub && head -c 1500000 /dev/urandom > outputs/data.bin && "
        f"head -c 777 /dev/urandom > outputs/sub/small.bin && echo out-{token} && echo err-{token} >&2"
    )
    a = run_job.fn(make, publisher="ipfs", ipfs=one, fail_on_nonzero=True)
    assert a.published is not None and isinstance(a.published.params, IPFSParams)
    dag = assert_never_seen(node2, node1, a.published.params.cid)

    # B, on node 2, sums A's files as its input gives them; its own result goes to node 2.
    read = (
        "cd inputs/a && sha256sum stdout stderr outputs/data.bin outputs/sub/small.bin "
        "| tee ../../outputs/sums && echo summed >&2"
    )
    inputs = [a.published.to_input_source("/inputs/a")]
    b = run_job.fn(read, publisher="ipfs", inputs=inputs, ipfs=two, fail_on_nonzero=True)
    assert isinstance(b.published, PublishedResult) and isinstance(b.published.params, IPFSParams)
    assert dag <= local_blocks(node2)

    got_a = get_result.fn(a.published, tmp_path / "a", ipfs=one)  # node 1's own copy
    assert (got_a / "stdout").read_text() == f"out-{token}\n"
    assert (got_a / "stderr").read_text() == f"err-{token}\n"
    expected = subprocess.run(
        ["sha256sum", "stdout", "stderr", "outputs/data.bin", "outputs/sub/small.bin"],
        cwd=got_a,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # B's result was published on node 2: node 1 gets it over bitswap, the other way round. Node 1 holds one
    # block of it already: the exit code's, "0", as A's.
    exit_code_block = b"\x12\x20" + hashlib.sha256(b"0").digest()
    assert dag_blocks(node2, b.published.params.cid) & local_blocks(node1) == {exit_code_block}
    got_b = get_result.fn(b.published, tmp_path / "b", ipfs=one)
    assert (got_b / "outputs" / "sums").read_text() == (got_b / "stdout").read_text() == expected
    assert (got_b / "exitCode").read_text() == "0"


def test_cli_get_through_node_2(node1: KuboServer, node2: KuboServer, tmp_path: Path) -> None:
    source = results(tmp_path / "results")
    done = cli("publish", str(source), "-p", "ipfs", "--ipfs-api", node1.api_multiaddr)
    assert done.returncode == 0, done.stderr
    cid = json.loads(done.stdout)["Params"]["CID"]
    dag = assert_never_seen(node2, node1, cid)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(done.stdout)
    dest = tmp_path / "got"
    done = cli("get", str(spec_file), "-o", str(dest), "--ipfs-api", node2.api_multiaddr)
    assert done.returncode == 0, done.stderr
    assert "1 result(s) verified and extracted" in done.stdout
    assert listing(dest) == listing(source)
    assert sorted(os.listdir(tmp_path)) == ["got", "results", "spec.json"]
    assert dag <= local_blocks(node2)


# ------------------------------------------------------------------------------------------- the publisher gone


def test_publishing_node_stopped_before_node_2_fetches(
    node1: KuboServer, node2: KuboServer, tmp_path: Path
) -> None:
    """A third node, peered with node 2 only, publishes and stops: node 2 cannot get the DAG anywhere. The
    fetch fails at the block's timeout (or sooner, at the gateway's RetrievalTimeout), naming node 2, and
    leaves nothing behind, through the task and through the CLI."""
    publisher = KuboServer(tmp_path / "node3", online=True, config=NODE_CONFIG)
    try:
        publisher.start()
        node2.connect(publisher)
        node2.wait_for_peers({node1.peer_id, publisher.peer_id})
        published = publish_result.fn(results(tmp_path / "results"), "ipfs", ipfs=block(publisher))
        assert isinstance(published.params, IPFSParams)
        cid = published.params.cid
        dag = assert_never_seen(node2, publisher, cid)
    finally:
        publisher.stop()
    node2.wait_for_peers({node1.peer_id})
    work = tmp_path / "work"
    work.mkdir()

    # 1. IPFSNode.timeout shorter than the gateway's RetrievalTimeout: the client stops waiting, once.
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        get_result.fn(published, work / "short", ipfs=block(node2, timeout=SHORT_TIMEOUT))
    elapsed = time.monotonic() - started
    assert SHORT_TIMEOUT <= elapsed < SHORT_TIMEOUT + SLACK, elapsed  # not again through the RPC API
    message = str(caught.value)
    assert f"the gateway {node2.gateway_url} of the Kubo node at {node2.api_url}" in message
    assert f"sent nothing of {cid} within {SHORT_TIMEOUT:g} s (IPFSNode.timeout)" in message
    assert "is a node that holds them running and connected to it?" in message
    assert os.listdir(work) == []  # no destination, no staging folder

    # 2. The default timeout (300 s): node 2's gateway gives up first and ends the CAR before its first block.
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        get_result.fn(published, work / "default", ipfs=block(node2))
    elapsed = time.monotonic() - started
    assert RETRIEVAL_TIMEOUT <= elapsed < RETRIEVAL_TIMEOUT + SLACK, elapsed
    message = str(caught.value)
    assert (
        f"the CAR stream from the gateway {node2.gateway_url} of the Kubo node at {node2.api_url}" in message
    )
    assert "cannot get a block from its peers within its Gateway.RetrievalTimeout" in message
    assert os.listdir(work) == []

    # 3. The CLI (its node has the default timeout): exit 1, one `error:` line, no destination.
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(published.to_bacalhau()))
    done = cli("get", str(spec_file), "-o", str(work / "cli"), "--ipfs-api", node2.api_multiaddr)
    assert done.returncode == 1, done.stdout
    assert done.stderr.startswith("error: the CAR stream from the gateway"), done.stderr
    assert f"of the Kubo node at {node2.api_url} broke" in done.stderr
    assert os.listdir(work) == []
    assert (dag - {multihash(EMPTY_BLOCK)}).isdisjoint(local_blocks(node2))  # not a block of it arrived
